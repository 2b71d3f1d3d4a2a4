//! A real openraft node on the store: one voter, a network that is never
//! used, writes through `client_write`, reads through the store's reader,
//! and a restart after a snapshot purged the whole log.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_controlplane::store::types::{NodeId, TypeConfig};
use kairos_controlplane::store::{
    Access, Compare, CompareOp, KvReader, LogStore, Op, Raft, ReplicaNode, Request, StateMachineStore, Store,
    StoreError,
};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{Config, RaftNetwork, RaftNetworkFactory, ServerState, SnapshotPolicy};

use crate::common::tempdir;

/// Hands out peers that are never reachable: a single voter never calls them.
struct NoNetwork;

struct NoPeer(NodeId);

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, ReplicaNode, E> {
        RPCError::Unreachable(Unreachable::new(&io::Error::other(format!("no network to node {}", self.0))))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, target: NodeId, _node: &ReplicaNode) -> NoPeer {
        NoPeer(target)
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ReplicaNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, ReplicaNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ReplicaNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}

fn config(snapshot_every: u64) -> Arc<Config> {
    let config = Config {
        cluster_name: "kairos-store-test".into(),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        // Keep nothing behind a snapshot, so a restart starts from a fully purged log.
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

/// Opens the store once every handle of a previous open is gone: after
/// `Raft::shutdown` openraft's state-machine worker drops its store a moment
/// later, and sled refuses a second open while the first holds its lock.
async fn reopen(dir: &Path) -> (LogStore, StateMachineStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir) {
            Ok(pair) => return pair,
            Err(StoreError::Sled { access: Access::Open, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopening {}: {e}", dir.display()),
        }
    }
}

async fn start(dir: &Path, snapshot_every: u64) -> (Raft, KvReader) {
    let (log, sm) = reopen(dir).await;
    let reader = sm.reader();
    let raft = Raft::new(1, config(snapshot_every), NoNetwork, log, sm).await.expect("start raft");
    (raft, reader)
}

async fn wait_leader(raft: &Raft) {
    raft.wait(Some(Duration::from_secs(10)))
        .state(ServerState::Leader, "single voter becomes leader")
        .await
        .expect("leader");
}

#[tokio::test]
async fn single_node_raft_writes_and_reads_back_through_the_store() {
    let dir = tempdir();
    let (raft, reader) = start(dir.path(), 5_000).await;
    raft.initialize(BTreeMap::from([(1, ReplicaNode::new("127.0.0.1:7001"))])).await.expect("initialize");
    wait_leader(&raft).await;

    let put = raft.client_write(Request::put("nodes/1", "registered")).await.expect("write");
    assert_eq!((put.data.revision, put.data.succeeded), (1, true));
    let cas = |rev: u64, value: &str| {
        Request::txn(
            vec![Compare::mod_revision("nodes/1", CompareOp::Equal, rev)],
            vec![Op::put("nodes/1", value)],
            vec![],
        )
    };
    let won = raft.client_write(cas(1, "upgrading")).await.expect("write");
    let lost = raft.client_write(cas(1, "stale")).await.expect("write");
    assert_eq!((won.data.succeeded, won.data.revision), (true, 2));
    assert_eq!((lost.data.succeeded, lost.data.revision), (false, 2));
    raft.client_write(Request::batch(vec![Op::put("nodes/2", "registered"), Op::put("rollouts/r1", "{}")]))
        .await
        .expect("write");

    raft.ensure_linearizable().await.expect("linearizable read");
    let node1 = reader.get(b"nodes/1").expect("get").expect("nodes/1 exists");
    assert_eq!((node1.value.as_slice(), node1.version, node1.mod_revision), (b"upgrading".as_slice(), 2, 2));
    let nodes = reader.range(b"nodes/", None, 10).expect("range");
    assert_eq!(nodes.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(), vec![b"nodes/1".as_slice(), b"nodes/2"]);
    assert_eq!(reader.revision().expect("revision"), 3);
    assert_eq!(
        reader.last_applied().expect("applied").map(|id| id.index),
        raft.metrics().borrow().last_applied.map(|id| id.index)
    );
    raft.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn single_node_raft_restarts_after_snapshot_purged_its_log() {
    let dir = tempdir();
    let writes = 12u64;
    {
        let (raft, _reader) = start(dir.path(), 5).await;
        raft.initialize(BTreeMap::from([(1, ReplicaNode::new("127.0.0.1:7001"))])).await.expect("initialize");
        wait_leader(&raft).await;
        for i in 0..writes {
            raft.client_write(Request::put(format!("nodes/{i:02}"), "v")).await.expect("write");
        }
        let last = raft.metrics().borrow().last_log_index.expect("log not empty");
        raft.trigger().snapshot().await.expect("trigger snapshot");
        raft.wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= last) && m.purged.is_some_and(|p| p.index >= last),
                "snapshot taken and log purged up to it",
            )
            .await
            .expect("snapshot and purge");
        raft.shutdown().await.expect("shutdown");
    }
    {
        let (mut log, _sm) = reopen(dir.path()).await;
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, state.last_log_id, "every entry is behind the snapshot");
    }

    let (raft, reader) = start(dir.path(), 5).await;
    wait_leader(&raft).await;
    assert_eq!(reader.revision().expect("revision"), writes);
    let next = raft.client_write(Request::put("nodes/99", "after restart")).await.expect("write after restart");
    assert_eq!(next.data.revision, writes + 1);
    raft.ensure_linearizable().await.expect("linearizable read");
    assert_eq!(reader.range(b"nodes/", None, 100).expect("range").len() as u64, writes + 1);
    raft.shutdown().await.expect("shutdown");
}
