//! Enrolled nodes as the replicated state holds them.
//!
//! Three key spaces, one writer each, so that writers never overwrite each
//! other's fields:
//!
//! ```text
//! nodes/<node id>          NodeRecord     enrollment, the last Hello, status
//! node-sessions/<node id>  SessionRecord  which replica holds the stream
//! desired/<node id>        DesiredState   what the node should run
//! ```
//!
//! Records are protobuf messages (the wire types of `kairos.fleet.v1` where
//! they fit), so old and new replicas read each other's records.
//! The node record is written by `Enroll` (compare-and-set) and by the
//! replica holding the node's stream (batched, guarded by the revision it
//! read); the session record by the replica holding the stream and by the
//! leader's sweep of replicas that stopped answering; the desired state by
//! the rollout engine on the leader.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use kairos_fleet_proto::fleet::v1 as pb;
use prost::Message;

pub use kairos_fleet_domain::wire::{family_to_pb, identity_from_pb, identity_to_pb, image_ref_of, IdentityFieldError};

use crate::store::{KeyValue, KvReader, StoreError};

/// Key prefix of node records.
pub const NODES_PREFIX: &str = "nodes/";
/// Key prefix of session records (present while a replica holds the stream).
pub const SESSIONS_PREFIX: &str = "node-sessions/";
/// Key prefix of desired states.
pub const DESIRED_PREFIX: &str = "desired/";

/// Store key of a node record.
pub fn node_key(node_id: &str) -> String {
    format!("{NODES_PREFIX}{node_id}")
}

/// Store key of a node's session record.
pub fn session_key(node_id: &str) -> String {
    format!("{SESSIONS_PREFIX}{node_id}")
}

/// Store key of a node's desired state.
pub fn desired_key(node_id: &str) -> String {
    format!("{DESIRED_PREFIX}{node_id}")
}

/// The node id in a key of one of the three key spaces.
pub fn node_id_of_key(key: &[u8]) -> Option<(&'static str, &str)> {
    let key = std::str::from_utf8(key).ok()?;
    [NODES_PREFIX, SESSIONS_PREFIX, DESIRED_PREFIX]
        .into_iter()
        .find_map(|prefix| key.strip_prefix(prefix).map(|id| (prefix, id)))
}

/// Checks a node id (the machine id: 32 lowercase hex digits).
pub fn check_node_id(field: &str, id: &str) -> Result<(), String> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(format!("{field}: must be a machine id, 32 lowercase hex digits, got {:?}", truncate(id, 80)))
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A node as stored at `nodes/<id>`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeRecord {
    /// The node id (today the machine id).
    #[prost(string, tag = "1")]
    pub node_id: String,
    /// The node's /etc/machine-id.
    #[prost(string, tag = "2")]
    pub machine_id: String,
    /// Hostname last reported.
    #[prost(string, tag = "3")]
    pub hostname: String,
    /// Identity from the last Hello (or from enrollment).
    #[prost(message, optional, tag = "4")]
    pub identity: Option<pb::NodeIdentity>,
    /// The image family derived from the identity.
    #[prost(message, optional, tag = "5")]
    pub family: Option<pb::ImageFamily>,
    /// Partition the node last booted from (`pb::BootState`).
    #[prost(enumeration = "pb::BootState", tag = "6")]
    pub boot_state: i32,
    /// The last Hello reported a fallback boot.
    #[prost(bool, tag = "7")]
    pub upgrade_failure: bool,
    /// Labels the node declares for itself (last Hello).
    #[prost(btree_map = "string, string", tag = "8")]
    pub node_labels: BTreeMap<String, String>,
    /// Labels stamped by the enroll token; they win over node labels.
    #[prost(btree_map = "string, string", tag = "9")]
    pub enrollment_labels: BTreeMap<String, String>,
    /// Kubernetes membership from the last Hello.
    #[prost(message, optional, tag = "10")]
    pub k3s: Option<pb::K3sMembership>,
    /// Node client version.
    #[prost(string, tag = "11")]
    pub client_version: String,
    /// Image the node runs.
    #[prost(string, tag = "12")]
    pub current_image_ref: String,
    /// Digest of the image the node runs; empty when unknown.
    #[prost(string, tag = "13")]
    pub current_image_digest: String,
    /// Image before the last upgrade.
    #[prost(string, tag = "14")]
    pub previous_image_ref: String,
    /// Digest of the image before the last upgrade.
    #[prost(string, tag = "15")]
    pub previous_image_digest: String,
    /// Last reported state (`pb::NodeState`).
    #[prost(enumeration = "pb::NodeState", tag = "16")]
    pub state: i32,
    /// The last recorded status transition.
    #[prost(message, optional, tag = "17")]
    pub last_status: Option<pb::StatusUpdate>,
    /// Enrollment time, Unix milliseconds.
    #[prost(uint64, tag = "18")]
    pub enrolled_at_ms: u64,
    /// Time of the last state change, Unix milliseconds.
    #[prost(uint64, tag = "19")]
    pub state_changed_at_ms: u64,
    /// Time of the last replicated event from the node, Unix milliseconds.
    #[prost(uint64, tag = "20")]
    pub last_seen_ms: u64,
    /// Id of the enroll token the node (last) enrolled with.
    #[prost(string, tag = "21")]
    pub enrolled_with: String,
    /// When the node last booted, Unix milliseconds (0 = unknown).
    #[prost(uint64, tag = "22")]
    pub boot_time_ms: u64,
    /// Expiry of the node certificate issued last, Unix milliseconds.
    #[prost(uint64, tag = "23")]
    pub certificate_not_after_ms: u64,
}

impl NodeRecord {
    /// Effective labels: node labels overlaid with enrollment labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.node_labels.clone();
        labels.extend(self.enrollment_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels
    }

    /// The record's store encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// The sequence number of the last recorded status transition.
    pub fn last_seq(&self) -> u64 {
        self.last_status.as_ref().map_or(0, |s| s.seq)
    }
}

/// Which replica holds a node's stream, stored at `node-sessions/<id>`.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct SessionRecord {
    /// Replica holding the stream.
    #[prost(uint64, tag = "1")]
    pub replica_id: u64,
    /// Random id of the stream, so a replica removes only its own record.
    #[prost(uint64, tag = "2")]
    pub session_id: u64,
    /// When the stream was accepted, Unix milliseconds (replica clock).
    #[prost(uint64, tag = "3")]
    pub connected_at_ms: u64,
}

impl SessionRecord {
    /// The record's store encoding (deterministic, so it can be compared).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

/// A record read from the store failed to decode.
#[derive(Debug, thiserror::Error)]
#[error("{key}: stored record does not decode: {source}")]
pub struct RecordError {
    /// The key read.
    pub key: String,
    /// The decode error.
    #[source]
    pub source: prost::DecodeError,
}

/// Errors reading node state.
#[derive(Debug, thiserror::Error)]
pub enum ReadNodeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record is corrupt.
    #[error(transparent)]
    Record(#[from] RecordError),
}

fn decode<M: Message + Default>(key: &str, kv: &KeyValue) -> Result<M, RecordError> {
    M::decode(kv.value.as_slice()).map_err(|source| RecordError { key: key.to_string(), source })
}

/// Decodes a node record.
pub fn decode_node(key: &str, kv: &KeyValue) -> Result<NodeRecord, RecordError> {
    decode(key, kv)
}

/// Decodes a session record.
pub fn decode_session(key: &str, kv: &KeyValue) -> Result<SessionRecord, RecordError> {
    decode(key, kv)
}

/// Decodes a desired state.
pub fn decode_desired(key: &str, kv: &KeyValue) -> Result<pb::DesiredState, RecordError> {
    decode(key, kv)
}

/// A node record with its store revision.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    /// The record.
    pub record: NodeRecord,
    /// Mod revision of `nodes/<id>`.
    pub mod_revision: u64,
}

/// Reads a node record.
pub fn read_node(reader: &KvReader, node_id: &str) -> Result<Option<StoredNode>, ReadNodeError> {
    let key = node_key(node_id);
    let Some(kv) = reader.get(key.as_bytes())? else { return Ok(None) };
    Ok(Some(StoredNode { record: decode_node(&key, &kv)?, mod_revision: kv.mod_revision }))
}

/// Reads a node's session record and its mod revision.
pub fn read_session(reader: &KvReader, node_id: &str) -> Result<Option<(SessionRecord, u64)>, ReadNodeError> {
    let key = session_key(node_id);
    let Some(kv) = reader.get(key.as_bytes())? else { return Ok(None) };
    Ok(Some((decode_session(&key, &kv)?, kv.mod_revision)))
}

/// Reads a node's desired state and its mod revision.
pub fn read_desired(reader: &KvReader, node_id: &str) -> Result<Option<(pb::DesiredState, u64)>, ReadNodeError> {
    let key = desired_key(node_id);
    let Some(kv) = reader.get(key.as_bytes())? else { return Ok(None) };
    Ok(Some((decode_desired(&key, &kv)?, kv.mod_revision)))
}

/// What the fleet domain (policy, planner) needs to know about a node, from
/// its record: the identity it last reported, parsed with the release-file
/// rules; its effective labels; its Kubernetes membership.
pub fn facts(record: &NodeRecord) -> Result<crate::fleet::model::NodeFacts, IdentityFieldError> {
    use crate::fleet::model::{K3sMembership, K3sRole, NodeFacts, NodeId};
    let wire = record.identity.as_ref().ok_or_else(|| IdentityFieldError {
        field: "identity".into(),
        rule: format!("node {} has not reported an identity", record.node_id),
    })?;
    let identity = identity_from_pb(wire)?;
    let k3s = record.k3s.as_ref().and_then(|k| {
        let role = match pb::K3sRole::try_from(k.role) {
            Ok(pb::K3sRole::Server) => K3sRole::Server,
            Ok(pb::K3sRole::Agent) => K3sRole::Agent,
            _ => return None,
        };
        Some(K3sMembership { cluster: k.cluster_name.clone(), role })
    });
    Ok(NodeFacts {
        id: NodeId(record.node_id.clone()),
        family: identity.family(),
        release: identity.release.clone(),
        software: identity.software.clone(),
        labels: record.labels(),
        k3s,
    })
}

/// Unix milliseconds as a protobuf timestamp; `None` for 0 (unknown).
pub fn timestamp_ms(ms: u64) -> Option<prost_types::Timestamp> {
    if ms == 0 {
        return None;
    }
    let seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    // Below 1e9 by construction.
    let nanos = i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0);
    Some(prost_types::Timestamp { seconds, nanos })
}

/// A protobuf timestamp as Unix milliseconds; 0 for unset or before 1970.
pub fn ms_of_timestamp(ts: Option<&prost_types::Timestamp>) -> u64 {
    let Some(ts) = ts else { return 0 };
    let Ok(seconds) = u64::try_from(ts.seconds) else { return 0 };
    let millis = u64::try_from(ts.nanos.max(0) / 1_000_000).unwrap_or(0);
    seconds.saturating_mul(1000).saturating_add(millis)
}

/// Everything known about one node, assembled into the API's `Node`.
///
/// `session` and `desired` come from their own keys; `revision` is the
/// newest mod revision of the three. Support status and available patch are
/// left for the caller, who holds the release catalog.
pub fn to_api_node(
    record: &NodeRecord,
    session: Option<&SessionRecord>,
    desired: Option<&pb::DesiredState>,
    revision: u64,
) -> pb::Node {
    pb::Node {
        node_id: record.node_id.clone(),
        machine_id: record.machine_id.clone(),
        hostname: record.hostname.clone(),
        identity: record.identity.clone(),
        family: record.family.clone(),
        boot_state: record.boot_state,
        upgrade_failure: record.upgrade_failure,
        labels: record.labels().into_iter().collect(),
        k3s: record.k3s.clone(),
        client_version: record.client_version.clone(),
        current_image_ref: record.current_image_ref.clone(),
        current_image_digest: record.current_image_digest.clone(),
        previous_image_ref: record.previous_image_ref.clone(),
        previous_image_digest: record.previous_image_digest.clone(),
        state: record.state,
        last_status: record.last_status.clone(),
        desired_state: desired.cloned(),
        support_status: pb::SupportStatus::Unspecified as i32,
        available_patch: String::new(),
        online: session.is_some(),
        connected_replica_id: session.map_or(0, |s| s.replica_id),
        last_seen: timestamp_ms(record.last_seen_ms.max(session.map_or(0, |s| s.connected_at_ms))),
        enrolled_at: timestamp_ms(record.enrolled_at_ms),
        state_changed_at: timestamp_ms(record.state_changed_at_ms),
        progress: None,
        revision,
    }
}
