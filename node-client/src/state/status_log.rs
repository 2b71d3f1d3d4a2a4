//! The status log: every state transition gets the next sequence number and
//! is kept until the server acknowledges it, across streams, restarts and
//! reboots. The highest desired-state generation the node acted on lives
//! here too, so a re-sent desired state is never acted on twice.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kairos_fleet_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{write_atomic, StateError};

/// Most unacknowledged updates kept; older ones are dropped first (the
/// newest transition also travels in every Hello as `last_status`).
pub const MAX_UNACKED: usize = 256;

/// What the status log holds; the logic shared by every [`StatusLog`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatusLogState {
    /// Sequence number the next transition gets (starts at 1).
    pub next_seq: u64,
    /// Highest seq the server acknowledged.
    pub acked_through: u64,
    /// Transitions not yet acknowledged, oldest first.
    pub unacked: Vec<pb::StatusUpdate>,
    /// The newest transition, acknowledged or not.
    pub last_status: Option<pb::StatusUpdate>,
    /// Highest DesiredState generation handed to the upgrader.
    pub desired_generation: u64,
}

impl Default for StatusLogState {
    fn default() -> Self {
        StatusLogState { next_seq: 1, acked_through: 0, unacked: Vec::new(), last_status: None, desired_generation: 0 }
    }
}

impl StatusLogState {
    /// Gives `update` the next seq and keeps it as unacknowledged and last.
    pub fn record(&mut self, mut update: pb::StatusUpdate) -> pb::StatusUpdate {
        update.seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push(update.clone());
        if self.unacked.len() > MAX_UNACKED {
            let excess = self.unacked.len() - MAX_UNACKED;
            self.unacked.drain(..excess);
        }
        self.last_status = Some(update.clone());
        update
    }

    /// Drops every update with seq up to `seq`; returns how many. An ack
    /// for a seq never handed out is capped at the last one handed out.
    pub fn acknowledge(&mut self, seq: u64) -> usize {
        let seq = seq.min(self.next_seq.saturating_sub(1));
        if seq <= self.acked_through {
            return 0;
        }
        self.acked_through = seq;
        let before = self.unacked.len();
        self.unacked.retain(|u| u.seq > seq);
        before - self.unacked.len()
    }

    /// True (and remembered) when `generation` is higher than any seen before.
    pub fn accept_generation(&mut self, generation: u64) -> bool {
        if generation <= self.desired_generation {
            return false;
        }
        self.desired_generation = generation;
        true
    }
}

/// Where a node's status log lives: a file for `run`, memory for `simulate`.
///
/// ### Contract
/// A method that changes the state returns only after the change is
/// durable (for the file log: written and fsynced); on error the state is
/// unchanged, so a seq is never handed out twice.
pub trait StatusLog: Send {
    /// The current state.
    fn state(&self) -> &StatusLogState;
    /// Records a transition; returns it with its seq.
    fn record(&mut self, update: pb::StatusUpdate) -> Result<pb::StatusUpdate, StateError>;
    /// Applies a StatusAck; returns how many updates it dropped.
    fn acknowledge(&mut self, seq: u64) -> Result<usize, StateError>;
    /// Remembers a desired-state generation; true when it is new.
    fn accept_generation(&mut self, generation: u64) -> Result<bool, StateError>;
}

/// A status log that forgets everything when the process ends.
#[derive(Debug, Default, Clone)]
pub struct MemoryStatusLog {
    state: StatusLogState,
}

impl MemoryStatusLog {
    /// An empty log: the next seq is 1.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StatusLog for MemoryStatusLog {
    fn state(&self) -> &StatusLogState {
        &self.state
    }
    fn record(&mut self, update: pb::StatusUpdate) -> Result<pb::StatusUpdate, StateError> {
        Ok(self.state.record(update))
    }
    fn acknowledge(&mut self, seq: u64) -> Result<usize, StateError> {
        Ok(self.state.acknowledge(seq))
    }
    fn accept_generation(&mut self, generation: u64) -> Result<bool, StateError> {
        Ok(self.state.accept_generation(generation))
    }
}

/// The status log in `status.toml`, rewritten atomically on every change.
#[derive(Debug)]
pub struct FileStatusLog {
    path: PathBuf,
    state: StatusLogState,
}

impl FileStatusLog {
    /// Loads `path`, or starts an empty log when it does not exist.
    pub fn open(path: PathBuf) -> Result<FileStatusLog, StateError> {
        let state = match std::fs::read_to_string(&path) {
            Ok(text) => decode(&text).map_err(|reason| StateError::Invalid { path: path.clone(), reason })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StatusLogState::default(),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        Ok(FileStatusLog { path, state })
    }

    /// Applies `change` to a copy, persists the copy, then keeps it.
    fn change<T>(&mut self, change: impl FnOnce(&mut StatusLogState) -> T) -> Result<T, StateError> {
        let mut next = self.state.clone();
        let out = change(&mut next);
        if next != self.state {
            let text = encode(&next).map_err(|reason| StateError::Invalid { path: self.path.clone(), reason })?;
            write_atomic(&self.path, text.as_bytes(), 0o600)?;
            self.state = next;
        }
        Ok(out)
    }
}

impl StatusLog for FileStatusLog {
    fn state(&self) -> &StatusLogState {
        &self.state
    }
    fn record(&mut self, update: pb::StatusUpdate) -> Result<pb::StatusUpdate, StateError> {
        self.change(|s| s.record(update))
    }
    fn acknowledge(&mut self, seq: u64) -> Result<usize, StateError> {
        self.change(|s| s.acknowledge(seq))
    }
    fn accept_generation(&mut self, generation: u64) -> Result<bool, StateError> {
        self.change(|s| s.accept_generation(generation))
    }
}

/// A status log shared by the session and the upgrader it runs.
#[derive(Clone)]
pub struct SharedStatusLog(Arc<Mutex<Box<dyn StatusLog>>>);

impl SharedStatusLog {
    /// Shares `log`.
    pub fn new(log: impl StatusLog + 'static) -> Self {
        SharedStatusLog(Arc::new(Mutex::new(Box::new(log))))
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn StatusLog>> {
        // Every change is applied whole or not at all, so a panic elsewhere
        // cannot leave the state half-changed.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> StatusLogState {
        self.lock().state().clone()
    }

    /// See [`StatusLog::record`].
    pub fn record(&self, update: pb::StatusUpdate) -> Result<pb::StatusUpdate, StateError> {
        self.lock().record(update)
    }

    /// See [`StatusLog::acknowledge`].
    pub fn acknowledge(&self, seq: u64) -> Result<usize, StateError> {
        self.lock().acknowledge(seq)
    }

    /// See [`StatusLog::accept_generation`].
    pub fn accept_generation(&self, generation: u64) -> Result<bool, StateError> {
        self.lock().accept_generation(generation)
    }

    /// Unacknowledged updates with a seq above `after`, oldest first, and
    /// the last seq handed out.
    pub fn unacked_after(&self, after: u64) -> (Vec<pb::StatusUpdate>, u64) {
        let log = self.lock();
        let state = log.state();
        let pending = state.unacked.iter().filter(|u| u.seq > after).cloned().collect();
        (pending, state.next_seq.saturating_sub(1))
    }

    /// The last seq handed out (0 before the first update).
    pub fn last_seq(&self) -> u64 {
        self.lock().state().next_seq.saturating_sub(1)
    }
}

/// `status.toml` as written: enum values by their proto names, times in RFC 3339.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredLog {
    next_seq: u64,
    acked_through: u64,
    desired_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_status: Option<StoredStatus>,
    #[serde(default)]
    unacked: Vec<StoredStatus>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredStatus {
    seq: u64,
    state: String,
    #[serde(default)]
    rollout_id: String,
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    failure_reason: String,
    #[serde(default)]
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    observed_at: Option<String>,
    #[serde(default)]
    image_ref: String,
    #[serde(default)]
    image_digest: String,
    #[serde(default)]
    release: String,
    #[serde(default)]
    software_version: String,
    #[serde(default)]
    boot_state: String,
}

fn encode(state: &StatusLogState) -> Result<String, String> {
    let stored = StoredLog {
        next_seq: state.next_seq,
        acked_through: state.acked_through,
        desired_generation: state.desired_generation,
        last_status: state.last_status.as_ref().map(store_status),
        unacked: state.unacked.iter().map(store_status).collect(),
    };
    toml::to_string(&stored).map_err(|e| format!("cannot encode the status log: {e}"))
}

fn decode(text: &str) -> Result<StatusLogState, String> {
    let stored: StoredLog = toml::from_str(text).map_err(|e| e.to_string())?;
    if stored.next_seq == 0 {
        return Err("next_seq: must be at least 1".into());
    }
    let unacked = stored.unacked.into_iter().map(load_status).collect::<Result<Vec<_>, _>>()?;
    if let Some(bad) = unacked.iter().find(|u| u.seq == 0 || u.seq >= stored.next_seq) {
        return Err(format!("unacked seq {}: must be between 1 and next_seq - 1 ({})", bad.seq, stored.next_seq - 1));
    }
    Ok(StatusLogState {
        next_seq: stored.next_seq,
        acked_through: stored.acked_through,
        unacked,
        last_status: stored.last_status.map(load_status).transpose()?,
        desired_generation: stored.desired_generation,
    })
}

fn store_status(u: &pb::StatusUpdate) -> StoredStatus {
    StoredStatus {
        seq: u.seq,
        state: u.state().as_str_name().to_string(),
        rollout_id: u.rollout_id.clone(),
        generation: u.generation,
        failure_reason: u.failure_reason().as_str_name().to_string(),
        message: u.message.clone(),
        observed_at: u.observed_at.as_ref().and_then(rfc3339),
        image_ref: u.image_ref.clone(),
        image_digest: u.image_digest.clone(),
        release: u.release.clone(),
        software_version: u.software_version.clone(),
        boot_state: u.boot_state().as_str_name().to_string(),
    }
}

fn load_status(s: StoredStatus) -> Result<pb::StatusUpdate, String> {
    let state = pb::NodeState::from_str_name(&s.state).ok_or(format!("seq {}: unknown state {:?}", s.seq, s.state))?;
    let reason = if s.failure_reason.is_empty() {
        pb::FailureReason::Unspecified
    } else {
        pb::FailureReason::from_str_name(&s.failure_reason)
            .ok_or(format!("seq {}: unknown failure_reason {:?}", s.seq, s.failure_reason))?
    };
    let boot = if s.boot_state.is_empty() {
        pb::BootState::Unspecified
    } else {
        pb::BootState::from_str_name(&s.boot_state)
            .ok_or(format!("seq {}: unknown boot_state {:?}", s.seq, s.boot_state))?
    };
    let observed_at = match s.observed_at {
        None => None,
        Some(text) => Some(parse_rfc3339(&text).map_err(|e| format!("seq {}: observed_at {text:?}: {e}", s.seq))?),
    };
    let mut update = pb::StatusUpdate {
        seq: s.seq,
        rollout_id: s.rollout_id,
        generation: s.generation,
        message: s.message,
        observed_at,
        image_ref: s.image_ref,
        image_digest: s.image_digest,
        release: s.release,
        software_version: s.software_version,
        ..Default::default()
    };
    update.set_state(state);
    update.set_failure_reason(reason);
    update.set_boot_state(boot);
    Ok(update)
}

/// A protobuf timestamp in RFC 3339; None when out of range.
pub(crate) fn rfc3339(t: &prost_types::Timestamp) -> Option<String> {
    jiff::Timestamp::new(t.seconds, t.nanos).ok().map(|t| t.to_string())
}

fn parse_rfc3339(text: &str) -> Result<prost_types::Timestamp, String> {
    let t: jiff::Timestamp = text.parse().map_err(|e: jiff::Error| e.to_string())?;
    Ok(prost_types::Timestamp { seconds: t.as_second(), nanos: t.subsec_nanosecond() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(state: pb::NodeState) -> pb::StatusUpdate {
        let mut u = pb::StatusUpdate {
            rollout_id: "r-1".into(),
            generation: 3,
            observed_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            release: "v2.4.2".into(),
            ..Default::default()
        };
        u.set_state(state);
        u.set_boot_state(pb::BootState::Active);
        u
    }

    #[test]
    fn seq_starts_at_one_and_increases_by_one() {
        let mut log = MemoryStatusLog::new();
        let seqs: Vec<u64> = [pb::NodeState::Downloading, pb::NodeState::Verifying, pb::NodeState::Installing]
            .into_iter()
            .map(|s| log.record(update(s)).expect("record").seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(log.state().last_status.as_ref().map(|u| u.seq), Some(3));
    }

    #[test]
    fn ack_drops_covered_updates_and_ignores_stale_or_future_acks() {
        let mut state = StatusLogState::default();
        for _ in 0..3 {
            state.record(update(pb::NodeState::Downloading));
        }
        assert_eq!(state.acknowledge(2), 2);
        assert_eq!(state.unacked.iter().map(|u| u.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(state.acknowledge(1), 0, "stale ack");
        assert_eq!(state.acknowledge(99), 1, "an ack past the last seq covers what exists");
        assert_eq!(state.acked_through, 3);
        assert_eq!(state.record(update(pb::NodeState::Healthy)).seq, 4);
    }

    #[test]
    fn generation_is_accepted_only_when_higher() {
        let mut state = StatusLogState::default();
        assert!(state.accept_generation(5));
        assert!(!state.accept_generation(5));
        assert!(!state.accept_generation(4));
        assert!(state.accept_generation(6));
    }

    #[test]
    fn unacked_updates_are_bounded() {
        let mut state = StatusLogState::default();
        for _ in 0..MAX_UNACKED + 10 {
            state.record(update(pb::NodeState::Downloading));
        }
        assert_eq!(state.unacked.len(), MAX_UNACKED);
        assert_eq!(state.unacked.first().map(|u| u.seq), Some(11));
    }

    #[test]
    fn seq_and_unacked_updates_survive_a_restart_of_the_file_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status.toml");
        {
            let mut log = FileStatusLog::open(path.clone()).expect("open");
            log.record(update(pb::NodeState::Downloading)).expect("record");
            log.record(update(pb::NodeState::Verifying)).expect("record");
            log.acknowledge(1).expect("ack");
            assert!(log.accept_generation(3).expect("generation"));
        }
        let mut log = FileStatusLog::open(path.clone()).expect("reopen");
        assert_eq!(log.state().unacked, vec![pb::StatusUpdate { seq: 2, ..update(pb::NodeState::Verifying) }]);
        assert_eq!(log.state().desired_generation, 3);
        assert!(!log.accept_generation(3).expect("generation"));
        let failed = pb::StatusUpdate {
            failure_reason: pb::FailureReason::DigestMismatch as i32,
            ..update(pb::NodeState::Failed)
        };
        assert_eq!(log.record(failed.clone()).expect("record").seq, 3);
        let reopened = FileStatusLog::open(path).expect("reopen again");
        assert_eq!(reopened.state().next_seq, 4);
        assert_eq!(reopened.state().last_status, Some(pb::StatusUpdate { seq: 3, ..failed }));
    }

    #[test]
    fn a_corrupt_status_file_names_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status.toml");
        std::fs::write(&path, "next_seq = 2\nacked_through = 0\ndesired_generation = 0\n[[unacked]]\nseq = 5\nstate = \"NODE_STATE_IDLE\"\n")
            .expect("write");
        let err = FileStatusLog::open(path).expect_err("seq beyond next_seq");
        let text = err.to_string();
        assert!(text.contains("status.toml") && text.contains("unacked seq 5"), "{text}");
    }
}
