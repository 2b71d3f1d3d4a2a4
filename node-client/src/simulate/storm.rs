//! Status storms: every virtual node reports one update at the same moment,
//! and the simulator measures how long until the control plane has
//! acknowledged all of them.

use std::sync::Arc;

use kairos_fleet_proto::fleet::v1 as pb;
use tokio::sync::watch;

use super::history::NodeHistory;
use crate::state::{MemoryStatusLog, StateError, StatusLog, StatusLogState};

/// Rollout id of storm updates.
pub const STORM_ROLLOUT: &str = "storm";

/// Counts storm updates acknowledged across every virtual node.
#[derive(Debug)]
pub struct StormTracker {
    acked: watch::Sender<u64>,
}

impl Default for StormTracker {
    fn default() -> Self {
        StormTracker { acked: watch::channel(0).0 }
    }
}

impl StormTracker {
    /// Follows the number of acknowledged storm updates.
    pub fn watch_acked(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// Storm updates acknowledged so far.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }
}

/// A virtual node's in-memory status log that notices when its storm
/// update gets acknowledged, and tells the history which updates a
/// StatusAck covered (the log is where the session applies every ack).
#[derive(Debug)]
pub struct SimStatusLog {
    inner: MemoryStatusLog,
    tracker: Arc<StormTracker>,
    storm_seq: Option<u64>,
    history: Option<NodeHistory>,
}

impl SimStatusLog {
    /// An empty log reporting storm acks to `tracker`.
    pub fn new(tracker: Arc<StormTracker>) -> Self {
        SimStatusLog { inner: MemoryStatusLog::new(), tracker, storm_seq: None, history: None }
    }

    /// Records every acknowledged update in `history`.
    pub fn with_history(mut self, history: NodeHistory) -> Self {
        self.history = Some(history);
        self
    }
}

impl StatusLog for SimStatusLog {
    fn state(&self) -> &StatusLogState {
        self.inner.state()
    }

    fn record(&mut self, update: pb::StatusUpdate) -> Result<pb::StatusUpdate, StateError> {
        let update = self.inner.record(update)?;
        if update.rollout_id == STORM_ROLLOUT {
            self.storm_seq = Some(update.seq);
        }
        Ok(update)
    }

    fn acknowledge(&mut self, seq: u64) -> Result<usize, StateError> {
        let state = self.inner.state();
        let covered: Vec<pb::StatusUpdate> = match &self.history {
            Some(_) => state.unacked.iter().filter(|u| u.seq > state.acked_through && u.seq <= seq).cloned().collect(),
            None => Vec::new(),
        };
        let dropped = self.inner.acknowledge(seq)?;
        if let Some(history) = &self.history {
            for update in &covered {
                history.acked(update);
            }
        }
        if self.storm_seq.is_some_and(|storm| self.inner.state().acked_through >= storm) {
            self.storm_seq = None;
            self.tracker.acked.send_modify(|n| *n += 1);
        }
        Ok(dropped)
    }

    fn accept_generation(&mut self, generation: u64) -> Result<bool, StateError> {
        self.inner.accept_generation(generation)
    }
}

/// Parses a storm state name such as `downloading` or `healthy`.
pub fn parse_storm_state(name: &str) -> Result<pb::NodeState, String> {
    let wire = format!("NODE_STATE_{}", name.trim().to_ascii_uppercase().replace('-', "_"));
    match pb::NodeState::from_str_name(&wire) {
        Some(pb::NodeState::Unspecified) | None => Err(format!(
            "{name:?}: expected one of idle, downloading, verifying, installing, rebooting, healthy, failed, rolled_back"
        )),
        Some(state) => Ok(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_ack_is_counted_once_when_covered() {
        let tracker = Arc::new(StormTracker::default());
        let mut log = SimStatusLog::new(Arc::clone(&tracker));
        log.record(pb::StatusUpdate::default()).expect("record");
        let storm = log.record(pb::StatusUpdate { rollout_id: STORM_ROLLOUT.into(), ..Default::default() });
        assert_eq!(storm.expect("record").seq, 2);
        log.acknowledge(1).expect("ack");
        assert_eq!(tracker.acked(), 0);
        log.acknowledge(2).expect("ack");
        log.acknowledge(2).expect("ack again");
        assert_eq!(tracker.acked(), 1);
    }

    #[tokio::test]
    async fn an_ack_puts_each_update_it_covers_into_the_history_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        let (history, writer) = crate::simulate::History::open(&path).expect("open");
        let mut log = SimStatusLog::new(Arc::new(StormTracker::default())).with_history(history.node("n1"));
        drop(history);
        for state in [pb::NodeState::Downloading, pb::NodeState::Verifying, pb::NodeState::Installing] {
            let mut update = pb::StatusUpdate { rollout_id: "r-1".into(), generation: 2, ..Default::default() };
            update.set_state(state);
            log.record(update).expect("record");
        }
        log.acknowledge(2).expect("ack");
        log.acknowledge(2).expect("the same ack again");
        log.acknowledge(99).expect("an ack past the end covers what was handed out");
        drop(log);
        writer.finish(std::time::Duration::from_secs(10)).await.expect("writer ends");
        let text = std::fs::read_to_string(&path).expect("read");
        let acked: Vec<(u64, String)> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .map(|v| (v["seq"].as_u64().unwrap_or_default(), v["state"].as_str().unwrap_or_default().to_string()))
            .collect();
        assert_eq!(acked, [(1, "downloading".into()), (2, "verifying".into()), (3, "installing".into())]);
    }

    #[test]
    fn storm_states_parse_by_their_short_names() {
        assert_eq!(parse_storm_state("downloading"), Ok(pb::NodeState::Downloading));
        assert_eq!(parse_storm_state("rolled-back"), Ok(pb::NodeState::RolledBack));
        assert!(parse_storm_state("unspecified").is_err());
        assert!(parse_storm_state("exploding").is_err());
    }
}
