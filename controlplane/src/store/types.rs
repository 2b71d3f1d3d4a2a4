//! The openraft type configuration shared by the store and the raft network.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::kv::{Request, Response};

/// A replica's raft id. Stable for the replica's lifetime; kept in its data dir.
pub type NodeId = u64;

/// What the cluster membership records about a replica.
///
/// This struct is written into raft log entries and snapshots, so adding a
/// field is an on-disk format change (see `codec`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaNode {
    /// Address (`host:port`) of the replica's internal raft RPC service.
    pub addr: String,
}

impl ReplicaNode {
    /// A node reachable for raft RPCs at `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        ReplicaNode { addr: addr.into() }
    }
}

impl fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

openraft::declare_raft_types!(
    /// openraft type configuration of a Kairos Fleet replica: the replicated
    /// state is the revisioned key-value store of [`super::kv`].
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = ReplicaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running raft node of this type configuration.
pub type Raft = openraft::Raft<TypeConfig>;
/// One raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// What a log entry carries (blank, membership or a [`Request`]).
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
/// Identifies a log entry: leader term and node, plus index.
pub type LogId = openraft::LogId<NodeId>;
/// A replica's persisted vote.
pub type Vote = openraft::Vote<NodeId>;
/// A cluster configuration (voters and learners with their [`ReplicaNode`]s).
pub type Membership = openraft::Membership<NodeId, ReplicaNode>;
/// A membership together with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<NodeId, ReplicaNode>;
/// Describes a snapshot: last included log id, membership and snapshot id.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ReplicaNode>;
/// A snapshot with its data.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// The bytes of a snapshot, as held in memory and sent over the network.
pub type SnapshotData = std::io::Cursor<Vec<u8>>;
/// openraft's storage error for this node id type.
pub type StorageError = openraft::StorageError<NodeId>;
/// Last purged and last present log ids.
pub type LogState = openraft::storage::LogState<TypeConfig>;
