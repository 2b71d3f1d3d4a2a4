//! How a rollout is kept in the replicated store, in pieces so that a
//! change to a few nodes writes a few small records:
//!
//! ```text
//! rollouts/<id>                     header: spec, strategy, phase, waves' times and counts
//! rollout-waves/<id>                the wave lists and the rollback order (rarely change)
//! rollout-nodes/<id>/<node id>      one node's entry, generation and last word
//! rollout-sequence                  the last rollout number handed out
//! rollout-requests/<request id>     the rollout a Create with that idempotency key made
//! ```
//!
//! Every write to a rollout puts its header, guarded by the header's mod
//! revision, so the header's revision versions the whole rollout: a reader
//! that sees the same header revision before and after reading the other
//! pieces has read one consistent rollout.

use std::collections::{BTreeMap, BTreeSet};

use kairos_fleet_proto::fleet::v1 as pb;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fleet::model::{NodeId, Target};
use crate::fleet::rollout::{NodeEntry, Phase, Rollout, RolloutError, RolloutParts, WaveCounts, WaveState};
use crate::fleet::strategy::{Millis, Strategy};
use crate::store::{KvReader, StoreError};

/// Prefix of rollout headers.
pub const ROLLOUTS_PREFIX: &str = "rollouts/";
/// Prefix of the wave lists.
pub const WAVES_PREFIX: &str = "rollout-waves/";
/// Prefix of the per-node records.
pub const NODES_PREFIX: &str = "rollout-nodes/";
/// The last rollout number handed out.
pub const SEQUENCE_KEY: &str = "rollout-sequence";
/// Prefix of Create idempotency keys.
pub const REQUESTS_PREFIX: &str = "rollout-requests/";
/// Prefix of the marks an operator's call sets while it reads and changes
/// a rollout, so the engine holds its own steps for a moment.
pub const STEER_PREFIX: &str = "rollout-steer/";
/// How long a mark holds the engine at most (a call that died leaves it).
pub const STEER_HOLD_MS: u64 = 3_000;

/// Format byte in front of every record's postcard encoding.
const FORMAT: u8 = 1;

/// The header key of rollout `id`.
pub fn header_key(id: &str) -> String {
    format!("{ROLLOUTS_PREFIX}{id}")
}

/// The wave-list key of rollout `id`.
pub fn waves_key(id: &str) -> String {
    format!("{WAVES_PREFIX}{id}")
}

/// The prefix of rollout `id`'s node records.
pub fn nodes_prefix(id: &str) -> String {
    format!("{NODES_PREFIX}{id}/")
}

/// The record key of `node` in rollout `id`.
pub fn node_key(id: &str, node: &str) -> String {
    format!("{NODES_PREFIX}{id}/{node}")
}

/// The idempotency key of a Create request id.
pub fn request_key(request_id: &str) -> String {
    format!("{REQUESTS_PREFIX}{request_id}")
}

/// The mark of an operator's call on rollout `id`.
pub fn steer_key(id: &str) -> String {
    format!("{STEER_PREFIX}{id}")
}

/// Rollout id of a `rollout-steer/<id>` key.
pub fn parse_steer_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()?.strip_prefix(STEER_PREFIX)
}

/// The rollouts an operator's call has marked.
pub fn marked_ids(reader: &KvReader) -> Result<BTreeSet<String>, StoreError> {
    let mut out = BTreeSet::new();
    for item in reader.scan_prefix(STEER_PREFIX.as_bytes()) {
        let (key, _) = item?;
        if let Some(id) = parse_steer_key(&key) {
            out.insert(id.to_string());
        }
    }
    Ok(out)
}

/// Rollout id and node id of a `rollout-nodes/<id>/<node>` key.
pub fn parse_node_key(key: &[u8]) -> Option<(&str, &str)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(NODES_PREFIX)?;
    rest.split_once('/')
}

/// Rollout id of a `rollouts/<id>` key.
pub fn parse_header_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key).ok()?.strip_prefix(ROLLOUTS_PREFIX)
}

/// A record that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record does not decode.
    #[error("{key}: {detail}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The rollout kept changing while it was read.
    #[error("rollout {id} changed on every read; retry")]
    Busy {
        /// The rollout.
        id: String,
    },
    /// The pieces do not fit together.
    #[error("rollout {id}: {source}")]
    Inconsistent {
        /// The rollout.
        id: String,
        /// What does not fit.
        source: RolloutError,
    },
}

/// Encodes a record: format byte, then postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT];
    // postcard fails only on types it cannot represent, which these records are not.
    match postcard::to_extend(value, out) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "encoding a rollout record");
            vec![FORMAT]
        }
    }
}

/// Decodes a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, RecordError> {
    let corrupt = |detail: String| RecordError::Corrupt { key: key.to_string(), detail };
    match bytes.split_first() {
        Some((&FORMAT, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string())),
        Some((other, _)) => Err(corrupt(format!("unknown record format {other}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// Times and approval of one wave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveMeta {
    /// When the wave started.
    pub started_at: Option<Millis>,
    /// When every node of it had a result.
    pub completed_at: Option<Millis>,
    /// Whether an operator approved it.
    pub approved: bool,
    /// Who approved it.
    pub approved_by: String,
    /// When it was approved.
    pub approved_at: Option<Millis>,
}

/// What the rollout header holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The rollout id.
    pub id: String,
    /// The spec as asked (`pb::RolloutSpec`, protobuf).
    pub spec: Vec<u8>,
    /// Who created it.
    pub created_by: String,
    /// The rollout's change class (`pb::ChangeClass`).
    pub change_class: i32,
    /// Nodes the policy refused at creation.
    pub refused: u32,
    /// The release it moves to.
    pub target: Option<Target>,
    /// The resolved strategy.
    pub strategy: Strategy,
    /// The phase.
    pub phase: Phase,
    /// The pause came from an operator (not from the failure threshold).
    pub paused_by_operator: bool,
    /// The wave being worked on.
    pub current_wave: usize,
    /// Every wave's times and approval.
    pub waves: Vec<WaveMeta>,
    /// Every wave's node counts (kept so status reads need no node records).
    pub counts: Vec<WaveCounts>,
    /// When it was created.
    pub created_at: Millis,
    /// When it started.
    pub started_at: Option<Millis>,
    /// Time of the last change.
    pub updated_at: Millis,
    /// When it finished.
    pub finished_at: Option<Millis>,
    /// When the phase last changed.
    pub phase_changed_at: Millis,
    /// What the last change decided, in words.
    pub messages: Vec<String>,
}

impl Header {
    /// The spec as asked.
    pub fn spec(&self) -> pb::RolloutSpec {
        pb::RolloutSpec::decode(self.spec.as_slice()).unwrap_or_default()
    }
}

/// The wave lists and the rollback order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveLists {
    /// Each wave's nodes in dispatch order.
    pub waves: Vec<Vec<NodeId>>,
    /// The order reverts are sent in.
    pub rollback_order: Vec<NodeId>,
}

/// What the engine keeps about a node beside its entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Generation of the latest desired state this rollout gave the node (0 = none).
    pub generation: u64,
    /// Digest the target image must have; empty when the catalog has none.
    pub target_digest: String,
    /// The node's or the engine's last word about it.
    pub message: String,
    /// Why it failed (`pb::FailureReason`).
    pub failure_reason: i32,
}

/// One node of a rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node's entry in the state machine.
    pub entry: NodeEntry,
    /// What the engine keeps beside it.
    pub meta: NodeMeta,
}

/// A rollout read from the store, with what is needed to write it back.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The header as stored (its state fields are rewritten from `rollout` on commit).
    pub header: Header,
    /// Mod revision of the header when it was read or last written.
    pub header_revision: u64,
    /// The state machine.
    pub rollout: Rollout,
    /// Per-node engine data.
    pub meta: BTreeMap<NodeId, NodeMeta>,
    /// The node records as stored, to write only what changed.
    pub(super) stored_nodes: BTreeMap<NodeId, NodeRecord>,
    /// The wave lists as stored; None before the first write.
    pub(super) stored_waves: Option<WaveLists>,
}

/// Reads the header of rollout `id` and its mod revision.
pub fn read_header(reader: &KvReader, id: &str) -> Result<Option<(Header, u64)>, RecordError> {
    let key = header_key(id);
    let Some(kv) = reader.get(key.as_bytes())? else { return Ok(None) };
    Ok(Some((decode(&key, &kv.value)?, kv.mod_revision)))
}

/// Every rollout header, in id order.
pub fn read_headers(reader: &KvReader) -> Result<Vec<(Header, u64)>, RecordError> {
    let mut out = Vec::new();
    for item in reader.scan_prefix(ROLLOUTS_PREFIX.as_bytes()) {
        let (key, kv) = item?;
        let key = String::from_utf8_lossy(&key).into_owned();
        match decode(&key, &kv.value) {
            Ok(header) => out.push((header, kv.mod_revision)),
            // One unreadable rollout must not hide (or stop) the others.
            Err(e) => tracing::error!(%key, error = %e, "skipping a rollout header that does not decode"),
        }
    }
    Ok(out)
}

/// Every node record of rollout `id`.
pub fn read_nodes(reader: &KvReader, id: &str) -> Result<BTreeMap<NodeId, NodeRecord>, RecordError> {
    let prefix = nodes_prefix(id);
    let mut out = BTreeMap::new();
    for item in reader.scan_prefix(prefix.as_bytes()) {
        let (key, kv) = item?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let node = NodeId::new(key.get(prefix.len()..).unwrap_or_default());
        out.insert(node, decode(&key, &kv.value)?);
    }
    Ok(out)
}

/// How often a load retries when the rollout changes while it is read.
const LOAD_ATTEMPTS: usize = 8;

/// Reads rollout `id` as one consistent state; None when it does not exist.
pub fn load(reader: &KvReader, id: &str) -> Result<Option<Loaded>, RecordError> {
    for _ in 0..LOAD_ATTEMPTS {
        let Some((header, header_revision)) = read_header(reader, id)? else { return Ok(None) };
        let key = waves_key(id);
        let waves: WaveLists = match reader.get(key.as_bytes())? {
            Some(kv) => decode(&key, &kv.value)?,
            None => WaveLists::default(),
        };
        let nodes = read_nodes(reader, id)?;
        // A write in between changes the header: read again.
        match read_header(reader, id)? {
            Some((_, again)) if again == header_revision => {
                return assemble(header, header_revision, waves, nodes).map(Some)
            }
            Some(_) => continue,
            None => return Ok(None),
        }
    }
    Err(RecordError::Busy { id: id.to_string() })
}

fn assemble(
    header: Header,
    header_revision: u64,
    waves: WaveLists,
    nodes: BTreeMap<NodeId, NodeRecord>,
) -> Result<Loaded, RecordError> {
    let wave_states = waves
        .waves
        .iter()
        .enumerate()
        .map(|(i, list)| {
            let meta = header.waves.get(i).cloned().unwrap_or_default();
            WaveState {
                nodes: list.clone(),
                started_at: meta.started_at,
                completed_at: meta.completed_at,
                approved: meta.approved,
            }
        })
        .collect();
    let parts = RolloutParts {
        id: header.id.clone(),
        target: header.target.clone(),
        strategy: header.strategy.clone(),
        phase: header.phase.clone(),
        waves: wave_states,
        nodes: nodes.iter().map(|(id, r)| (id.clone(), r.entry.clone())).collect(),
        current_wave: header.current_wave,
        rollback_order: waves.rollback_order.clone(),
        created_at: header.created_at,
        started_at: header.started_at,
        updated_at: header.updated_at,
        finished_at: header.finished_at,
    };
    let rollout =
        Rollout::from_parts(parts).map_err(|source| RecordError::Inconsistent { id: header.id.clone(), source })?;
    let meta = nodes.iter().map(|(id, r)| (id.clone(), r.meta.clone())).collect();
    Ok(Loaded { header, header_revision, rollout, meta, stored_nodes: nodes, stored_waves: Some(waves) })
}

impl Loaded {
    /// A rollout not stored yet (header revision 0 = must not exist).
    pub fn new(header: Header, rollout: Rollout, meta: BTreeMap<NodeId, NodeMeta>) -> Loaded {
        Loaded { header, header_revision: 0, rollout, meta, stored_nodes: BTreeMap::new(), stored_waves: None }
    }

    /// The rollout id.
    pub fn id(&self) -> &str {
        self.rollout.id()
    }

    /// The header as it would be stored now: the state fields taken from
    /// the state machine.
    pub fn current_header(&self) -> Header {
        let r = &self.rollout;
        let mut h = self.header.clone();
        if h.phase.name() != r.phase().name() {
            h.phase_changed_at = r.updated_at();
        }
        if !matches!(r.phase(), Phase::Paused { .. }) {
            h.paused_by_operator = false;
        }
        h.phase = r.phase().clone();
        h.strategy = r.strategy().clone();
        h.current_wave = r.current_wave();
        h.waves = r
            .waves()
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let old = self.header.waves.get(i).cloned().unwrap_or_default();
                WaveMeta {
                    started_at: w.started_at,
                    completed_at: w.completed_at,
                    approved: w.approved,
                    approved_by: old.approved_by,
                    approved_at: old.approved_at,
                }
            })
            .collect();
        h.counts = (0..r.waves().len()).map(|i| r.counts_for_wave(i)).collect();
        h.created_at = r.created_at();
        h.started_at = r.started_at();
        h.updated_at = r.updated_at();
        h.finished_at = r.finished_at();
        h
    }

    /// The wave lists as they would be stored now.
    pub fn current_waves(&self) -> WaveLists {
        WaveLists {
            waves: self.rollout.waves().iter().map(|w| w.nodes.clone()).collect(),
            rollback_order: self.rollout.rollback_order().to_vec(),
        }
    }

    /// The node records that differ from what is stored.
    pub fn changed_nodes(&self) -> Vec<(NodeId, NodeRecord)> {
        let empty = NodeMeta::default();
        self.rollout
            .nodes()
            .filter(|(id, entry)| {
                let meta = self.meta.get(*id).unwrap_or(&empty);
                self.stored_nodes.get(*id).is_none_or(|stored| &stored.entry != *entry || &stored.meta != meta)
            })
            .map(|(id, entry)| {
                let meta = self.meta.get(id).cloned().unwrap_or_default();
                (id.clone(), NodeRecord { entry: entry.clone(), meta })
            })
            .collect()
    }

    /// Marks the current state as stored at `revision`.
    pub fn mark_stored(&mut self, header: Header, waves: WaveLists, changed: Vec<(NodeId, NodeRecord)>, revision: u64) {
        self.header = header;
        self.header_revision = revision;
        self.stored_waves = Some(waves);
        for (id, record) in changed {
            self.stored_nodes.insert(id, record);
        }
    }

    /// Whether the wave lists differ from what is stored.
    pub fn waves_changed(&self, waves: &WaveLists) -> bool {
        self.stored_waves.as_ref() != Some(waves)
    }
}

/// Which rollout each busy node belongs to: every node of an unfinished
/// rollout, and the nodes a finished one still has in flight.
pub fn active_nodes(reader: &KvReader) -> Result<BTreeMap<NodeId, String>, RecordError> {
    let mut out = BTreeMap::new();
    for (header, _) in read_headers(reader)? {
        let finished = header.phase.is_terminal();
        if finished && header.counts.iter().all(|c| c.in_flight == 0) {
            continue;
        }
        let prefix = nodes_prefix(&header.id);
        for item in reader.scan_prefix(prefix.as_bytes()) {
            let (key, kv) = item?;
            let Some((_, node)) = parse_node_key(&key) else { continue };
            if finished {
                let key = String::from_utf8_lossy(&key).into_owned();
                match decode::<NodeRecord>(&key, &kv.value) {
                    Ok(r) if r.entry.state.is_in_flight() => {}
                    Ok(_) => continue,
                    // Unknown: count it busy, the safe side.
                    Err(_) => {}
                }
            }
            out.insert(NodeId::new(node), header.id.clone());
        }
    }
    Ok(out)
}
