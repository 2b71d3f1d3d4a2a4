//! Node sessions on three in-process replicas: desired state written
//! through the leader reaches a node whose stream a follower holds, status
//! transitions are replicated in batches and acknowledged after commit,
//! heartbeats write nothing, and a node speaks only for itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_controlplane::fleet::identity::NodeIdentity;
use kairos_controlplane::nodes::{self, identity_to_pb, NodeRecord};
use kairos_controlplane::replica::ReplicaHandle;
use kairos_controlplane::store::{Op, Request};
use kairos_fleet_proto::fleet::v1 as pb;
use pb::node_message::Body as NodeBody;
use pb::node_service_client::NodeServiceClient;
use pb::server_message::Body as ServerBody;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use crate::common::{cluster_client, eventually, leader_of, tuning, Pki, Slot};

const NODE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const NODE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

fn identity() -> pb::NodeIdentity {
    let parsed = NodeIdentity::parse(
        "KAIROS_FLAVOR=ubuntu\nKAIROS_FLAVOR_RELEASE=24.04\nKAIROS_VARIANT=core\nKAIROS_MODEL=generic\n\
         KAIROS_ARCH=amd64\nKAIROS_RELEASE=v3.5.0\n\
         KAIROS_IMAGE_REPO=quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0\n",
    )
    .expect("identity");
    identity_to_pb(&parsed, "/etc/kairos-release")
}

fn record(node_id: &str) -> NodeRecord {
    NodeRecord {
        node_id: node_id.into(),
        machine_id: node_id.into(),
        identity: Some(identity()),
        state: pb::NodeState::Idle as i32,
        enrolled_at_ms: 1,
        ..Default::default()
    }
}

fn node_channel(pki: &Pki, cn: &str, addr: &str) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(pki.client_tls("127.0.0.1", pki.identity(cn)))
        .expect("client tls")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// A node's open stream: send with `tx`, read with `rx`.
struct Stream {
    tx: mpsc::Sender<pb::NodeMessage>,
    rx: Streaming<pb::ServerMessage>,
    beat: tokio::task::JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

impl Stream {
    async fn open(pki: &Pki, cn: &str, addr: &str) -> Result<Stream, tonic::Status> {
        let (tx, out) = mpsc::channel(16);
        let hello = pb::Hello {
            identity: Some(identity()),
            boot_state: pb::BootState::Active as i32,
            hostname: format!("{cn}.local"),
            client_version: "0.1.0".into(),
            ..Default::default()
        };
        tx.send(pb::NodeMessage { body: Some(NodeBody::Hello(hello)) }).await.expect("queue hello");
        let mut client = NodeServiceClient::new(node_channel(pki, cn, addr));
        let rx = client.connect(ReceiverStream::new(out)).await?.into_inner();
        // Keep the stream alive as a node client does (replicas end silent streams).
        let beat = tx.clone();
        let beat = tokio::spawn(async move {
            for sequence in 1_000_000.. {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let hb = pb::Heartbeat { sequence, ..Default::default() };
                if beat.send(pb::NodeMessage { body: Some(NodeBody::Heartbeat(hb)) }).await.is_err() {
                    break;
                }
            }
        });
        Ok(Stream { tx, rx, beat })
    }

    async fn send(&self, body: NodeBody) {
        self.tx.send(pb::NodeMessage { body: Some(body) }).await.expect("stream open");
    }

    /// The next server message, within 5 s.
    async fn next(&mut self) -> ServerBody {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await {
            Ok(Ok(Some(pb::ServerMessage { body: Some(body) }))) => body,
            other => panic!("expected a server message, got {other:?}"),
        }
    }

    /// Skips heartbeat acks until a message `pick` accepts.
    async fn until<T>(&mut self, mut pick: impl FnMut(ServerBody) -> Option<T>) -> T {
        loop {
            if let Some(found) = pick(self.next().await) {
                return found;
            }
        }
    }
}

fn status(seq: u64, state: pb::NodeState) -> NodeBody {
    NodeBody::Status(pb::StatusUpdate { seq, state: state as i32, ..Default::default() })
}

fn online_on(handle: &ReplicaHandle, node_id: &str) -> Option<u64> {
    nodes::read_session(handle.reader(), node_id).expect("read session").map(|(s, _)| s.replica_id)
}

fn state_on(handle: &ReplicaHandle, node_id: &str) -> i32 {
    nodes::read_node(handle.reader(), node_id).expect("read node").expect("node exists").record.state
}

async fn three_replicas(pki: &Arc<Pki>, root: &std::path::Path) -> (Vec<Slot>, Vec<ReplicaHandle>) {
    let slots: Vec<Slot> = (1..=3).map(|id| Slot::new(id, root)).collect();
    let r1 = slots[0].start(pki, true, tuning()).await;
    assert_eq!(leader_of(&r1).await, 1);
    let r2 = slots[1].start(pki, false, tuning()).await;
    let r3 = slots[2].start(pki, false, tuning()).await;
    for slot in &slots[1..] {
        let request = pb::AddReplicaRequest { replica_id: slot.id, address: slot.addr(), ..Default::default() };
        cluster_client(pki, &slots[0].addr()).add_replica(request).await.expect("AddReplica");
    }
    (slots, vec![r1, r2, r3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_follower_gets_desired_state_written_through_the_leader_and_its_status_is_replicated() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let (slots, replicas) = three_replicas(&pki, root.path()).await;
    let leader = &replicas[0];
    let seed = vec![
        Op::put(nodes::node_key(NODE_A), record(NODE_A).encode()),
        Op::put(nodes::node_key(NODE_B), record(NODE_B).encode()),
    ];
    leader.write(Request::batch(seed)).await.expect("seed node records");

    // Replica 3 is a follower; the node's stream lands there.
    let mut stream = Stream::open(&pki, &format!("node-{NODE_A}"), &slots[2].addr()).await.expect("Connect");
    let config = stream
        .until(|b| match b {
            ServerBody::Config(c) => Some(c),
            _ => None,
        })
        .await;
    assert_eq!(config.replica_id, 3, "{config:?}");
    for replica in &replicas {
        eventually("the connect replicated everywhere", Duration::from_secs(5), || async {
            (online_on(replica, NODE_A) == Some(3)).then_some(())
        })
        .await;
    }
    let hostname = nodes::read_node(replicas[1].reader(), NODE_A).expect("read").expect("node").record.hostname;
    assert_eq!(hostname, format!("node-{NODE_A}.local"), "the Hello is recorded");

    // Desired state written through the leader reaches the follower's stream.
    let desired = pb::DesiredState {
        generation: 7,
        rollout_id: "r-1".into(),
        target_image_ref: "quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.1".into(),
        target_release: "v3.5.1".into(),
        ..Default::default()
    };
    let written = Instant::now();
    leader
        .write(Request::put(nodes::desired_key(NODE_A), prost::Message::encode_to_vec(&desired)))
        .await
        .expect("write desired state");
    let pushed = stream
        .until(|b| match b {
            ServerBody::DesiredState(d) => Some(d),
            _ => None,
        })
        .await;
    println!("desired state reached the node through replica 3 {:?} after the leader's write", written.elapsed());
    assert_eq!(pushed, desired);

    // A status transition is acknowledged only once it is replicated.
    stream.send(status(1, pb::NodeState::Downloading)).await;
    let acked = stream
        .until(|b| match b {
            ServerBody::StatusAck(a) => Some(a.seq),
            _ => None,
        })
        .await;
    assert_eq!(acked, 1);
    for replica in &replicas {
        eventually("the status replicated", Duration::from_secs(5), || async {
            (state_on(replica, NODE_A) == pb::NodeState::Downloading as i32).then_some(())
        })
        .await;
    }
    // Download progress stays in the memory of the replica holding the
    // stream, which shows it in GetNode; other replicas do not have it.
    let progress = pb::Progress {
        generation: 7,
        phase: pb::NodeState::Downloading as i32,
        bytes_done: 4096,
        bytes_total: 8192,
        ..Default::default()
    };
    stream.send(NodeBody::Progress(progress.clone())).await;
    let get = |addr: String| {
        let pki = Arc::clone(&pki);
        async move {
            let mut fleet = pb::fleet_service_client::FleetServiceClient::new(crate::common::channel(&pki, &addr));
            let request = pb::GetNodeRequest { node_id: NODE_A.into(), ..Default::default() };
            fleet.get_node(request).await.ok().and_then(|r| r.into_inner().node)
        }
    };
    let seen = eventually("progress on the holding replica", Duration::from_secs(5), || async {
        get(slots[2].addr()).await.filter(|n| n.progress.as_ref() == Some(&progress))
    })
    .await;
    assert!(seen.online && seen.connected_replica_id == 3, "{seen:?}");
    let elsewhere = get(slots[0].addr()).await.expect("GetNode on the leader");
    assert_eq!(elsewhere.progress, None, "progress is not replicated");

    // A resent update is acknowledged again and changes nothing.
    let before = nodes::read_node(leader.reader(), NODE_A).expect("read").expect("node").mod_revision;
    stream.send(status(1, pb::NodeState::Failed)).await;
    let acked = stream
        .until(|b| match b {
            ServerBody::StatusAck(a) => Some(a.seq),
            _ => None,
        })
        .await;
    assert_eq!(acked, 1);
    assert_eq!(state_on(leader, NODE_A), pb::NodeState::Downloading as i32);
    let after = nodes::read_node(leader.reader(), NODE_A).expect("read").expect("node").mod_revision;
    assert!(after >= before);

    // The node spoke only for itself.
    assert_eq!(online_on(leader, NODE_B), None);
    assert_eq!(state_on(leader, NODE_B), pb::NodeState::Idle as i32);

    // Heartbeats are answered from memory: no raft entry.
    let last_log = |h: &ReplicaHandle| h.raft().metrics().borrow().last_log_index.unwrap_or(0);
    let entries_before = last_log(leader);
    for sequence in 1..=40 {
        stream.send(NodeBody::Heartbeat(pb::Heartbeat { sequence, ..Default::default() })).await;
        stream
            .until(|b| match b {
                ServerBody::HeartbeatAck(a) if a.sequence == sequence => Some(()),
                _ => None,
            })
            .await;
    }
    assert_eq!(last_log(leader), entries_before, "heartbeats added raft entries");

    // The stream ends: the node goes offline everywhere.
    drop(stream);
    for replica in &replicas {
        eventually("the disconnect replicated", Duration::from_secs(10), || async {
            online_on(replica, NODE_A).is_none().then_some(())
        })
        .await;
    }
    for r in replicas {
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_callers_without_a_node_certificate_and_nodes_that_are_not_enrolled() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let slot = Slot::new(1, root.path());
    let replica = slot.start(&pki, true, tuning()).await;
    leader_of(&replica).await;
    replica.write(Request::put(nodes::node_key(NODE_A), record(NODE_A).encode())).await.expect("seed");

    let err = Stream::open(&pki, "operator", &slot.addr()).await.err().expect("operator refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = Stream::open(&pki, "replica-2", &slot.addr()).await.err().expect("replica refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // A certificate naming node A but issued by another CA does not get past TLS.
    let forger = Pki::new();
    let forged = Endpoint::from_shared(format!("https://{}", slot.addr()))
        .expect("endpoint")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pki.ca_pem()))
                .domain_name("127.0.0.1")
                .identity(forger.identity(&format!("node-{NODE_A}"))),
        )
        .expect("client tls")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let (tx, out) = mpsc::channel(4);
    tx.send(pb::NodeMessage {
        body: Some(NodeBody::Hello(pb::Hello { identity: Some(identity()), ..Default::default() })),
    })
    .await
    .expect("queue");
    let refused = NodeServiceClient::new(forged).connect(ReceiverStream::new(out)).await;
    assert!(refused.is_err(), "a node certificate from a foreign CA was accepted");
    assert_eq!(online_on(&replica, NODE_A), None);

    let err = Stream::open(&pki, &format!("node-{NODE_B}"), &slot.addr()).await.err().expect("unknown node");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not enrolled"), "{err:?}");

    // A Hello that breaks a rule is refused with the field named.
    let (tx, out) = mpsc::channel(4);
    let mut bad = pb::Hello { identity: Some(identity()), ..Default::default() };
    bad.labels.insert("no spaces allowed".into(), "x".into());
    tx.send(pb::NodeMessage { body: Some(NodeBody::Hello(bad)) }).await.expect("queue");
    let mut client = NodeServiceClient::new(node_channel(&pki, &format!("node-{NODE_A}"), &slot.addr()));
    let err = client.connect(ReceiverStream::new(out)).await.expect_err("bad hello refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("hello.labels"), "{err:?}");

    // The first message must be Hello.
    let (tx, out) = mpsc::channel(4);
    tx.send(pb::NodeMessage { body: Some(status(1, pb::NodeState::Idle)) }).await.expect("queue");
    let err = client.connect(ReceiverStream::new(out)).await.expect_err("no hello refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(online_on(&replica, NODE_A), None);
    replica.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_stopped_replica_are_swept_and_the_node_comes_back_online_elsewhere() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let (slots, mut replicas) = three_replicas(&pki, root.path()).await;
    replicas[0].write(Request::put(nodes::node_key(NODE_A), record(NODE_A).encode())).await.expect("seed");
    replicas[0].write(Request::put(nodes::node_key(NODE_B), record(NODE_B).encode())).await.expect("seed");

    let mut a = Stream::open(&pki, &format!("node-{NODE_A}"), &slots[1].addr()).await.expect("Connect A");
    let _b = Stream::open(&pki, &format!("node-{NODE_B}"), &slots[1].addr()).await.expect("Connect B");
    eventually("both online via replica 2", Duration::from_secs(5), || async {
        (online_on(&replicas[0], NODE_A) == Some(2) && online_on(&replicas[0], NODE_B) == Some(2)).then_some(())
    })
    .await;

    // Replica 2 stops; A's stream breaks and A reconnects to replica 3.
    let r2 = replicas.remove(1);
    let stopped = Instant::now();
    r2.shutdown().await.expect("shutdown replica 2");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match a.rx.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a stopped replica ends");
    let _a2 = Stream::open(&pki, &format!("node-{NODE_A}"), &slots[2].addr()).await.expect("reconnect A");
    eventually("A online via replica 3", Duration::from_secs(5), || async {
        (online_on(&replicas[0], NODE_A) == Some(3)).then_some(())
    })
    .await;
    println!("node A online through replica 3 {:?} after replica 2 stopped", stopped.elapsed());
    // B never came back: the leader sweeps replica 2's record once it stops answering.
    eventually("B swept offline", Duration::from_secs(20), || async {
        online_on(&replicas[0], NODE_B).is_none().then_some(())
    })
    .await;
    println!("node B (not reconnected) offline {:?} after replica 2 stopped", stopped.elapsed());
    assert_eq!(online_on(&replicas[0], NODE_A), Some(3), "the sweep leaves the live session alone");
    for r in replicas {
        r.shutdown().await.expect("shutdown");
    }
}
