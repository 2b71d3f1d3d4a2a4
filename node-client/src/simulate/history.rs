//! `--history`: what every virtual node heard and what the server
//! acknowledged, one JSON object a line, appended while the simulation runs:
//!
//! ```text
//! {"t_ms":…,"kind":"connect","node":"…","endpoint":"https://…","replica":2}
//! {"t_ms":…,"kind":"desired","node":"…","generation":3,"rollout":"r-1","wave":0,"image":"…","release":"v1.7.0","rollback":false,"repeat":false}
//! {"t_ms":…,"kind":"cancel","node":"…","generation":3,"reason":"…"}
//! {"t_ms":…,"kind":"acked","node":"…","seq":7,"state":"failed","generation":3,"rollout":"r-1","image":"…","release":"v1.6.0","boot_state":"passive","failure_reason":"fallback_boot"}
//! {"t_ms":…,"kind":"disconnect","node":"…","endpoint":"https://…","reason":"restart"}
//! ```
//!
//! `t_ms` is Unix time in milliseconds when the node saw the event. One
//! writer thread appends the lines, fed by a queue, so thousands of nodes
//! never wait on the disk; each batch of whole lines goes to the file in one
//! write, so a reader (or a SIGKILL) sees at most a torn last line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kairos_fleet_proto::fleet::v1 as pb;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::session::SessionObserver;

/// Bytes of lines the writer gathers into one write.
const BATCH_BYTES: usize = 64 * 1024;

/// One event of the history; `kind` names the variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HistoryEvent<'a> {
    /// A stream came up.
    Connect {
        /// Node id.
        node: &'a str,
        /// Server endpoint.
        endpoint: &'a str,
        /// Replica holding the stream (NodeConfig.replica_id).
        replica: u64,
    },
    /// The stream that was up ended.
    Disconnect {
        /// Node id.
        node: &'a str,
        /// Server endpoint.
        endpoint: &'a str,
        /// `restart` (simulated reboot), `shutdown`, or the error.
        reason: &'a str,
    },
    /// A DesiredState arrived.
    Desired {
        /// Node id.
        node: &'a str,
        /// Its generation.
        generation: u64,
        /// Its rollout.
        rollout: &'a str,
        /// Its wave.
        wave: u32,
        /// Target image reference.
        image: &'a str,
        /// Target release.
        release: &'a str,
        /// True for a rollback.
        rollback: bool,
        /// True when the node had already received this generation.
        repeat: bool,
    },
    /// A Cancel arrived.
    Cancel {
        /// Node id.
        node: &'a str,
        /// Generation withdrawn; absent when the Cancel named none.
        #[serde(skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
        /// Why.
        reason: &'a str,
    },
    /// The server acknowledged a status update.
    Acked {
        /// Node id.
        node: &'a str,
        /// The update's seq.
        seq: u64,
        /// Its state, lowercase (`downloading`, `healthy`, `failed`, …).
        state: String,
        /// Its generation.
        generation: u64,
        /// Its rollout.
        rollout: &'a str,
        /// Image the node runs after the transition.
        image: &'a str,
        /// Release the node runs after the transition.
        release: &'a str,
        /// Partition the node runs from, lowercase; absent when not reported.
        #[serde(skip_serializing_if = "Option::is_none")]
        boot_state: Option<String>,
        /// Failure reason, lowercase (`fallback_boot`, `cancelled`, …); absent when none.
        #[serde(skip_serializing_if = "Option::is_none")]
        failure_reason: Option<String>,
    },
}

impl<'a> HistoryEvent<'a> {
    /// The `acked` event of `update` on `node`.
    pub fn acked(node: &'a str, update: &'a pb::StatusUpdate) -> HistoryEvent<'a> {
        let boot_state = match pb::BootState::try_from(update.boot_state) {
            Ok(pb::BootState::Unspecified) => None,
            Ok(state) => Some(wire_name(state.as_str_name(), "BOOT_STATE_")),
            Err(_) => Some(update.boot_state.to_string()),
        };
        let failure_reason = match pb::FailureReason::try_from(update.failure_reason) {
            Ok(pb::FailureReason::Unspecified) => None,
            Ok(reason) => Some(wire_name(reason.as_str_name(), "FAILURE_REASON_")),
            Err(_) => Some(update.failure_reason.to_string()),
        };
        HistoryEvent::Acked {
            node,
            seq: update.seq,
            state: state_name(update.state()),
            generation: update.generation,
            rollout: &update.rollout_id,
            image: &update.image_ref,
            release: &update.release,
            boot_state,
            failure_reason,
        }
    }
}

/// A node state's short name: `downloading`, `rolled_back`, ….
pub fn state_name(state: pb::NodeState) -> String {
    wire_name(state.as_str_name(), "NODE_STATE_")
}

fn wire_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

#[derive(Serialize)]
struct Line<'a> {
    t_ms: u64,
    #[serde(flatten)]
    event: &'a HistoryEvent<'a>,
}

/// One history line, newline included, for `event` at `t_ms`.
pub fn history_line(t_ms: u64, event: &HistoryEvent<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(&Line { t_ms, event })?;
    line.push(b'\n');
    Ok(line)
}

/// Unix time now in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where events go: a queue to the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct History {
    // Unbounded on purpose: a line dropped or a node held up would falsify
    // the very timing a test reads from the history. The volume is bounded
    // by what the server sends: a few lines per node and upgrade.
    lines: mpsc::UnboundedSender<Vec<u8>>,
}

/// What the writer did, once every [`History`] is gone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistorySummary {
    /// Lines written.
    pub lines: u64,
    /// Lines lost to write errors.
    pub lost: u64,
}

/// The writer thread of a history file.
pub struct HistoryWriter {
    done: oneshot::Receiver<HistorySummary>,
}

impl HistoryWriter {
    /// Waits up to `limit` for the writer to write every queued line; it
    /// ends once every [`History`] clone is dropped. None on timeout.
    pub async fn finish(self, limit: Duration) -> Option<HistorySummary> {
        tokio::time::timeout(limit, self.done).await.ok().and_then(Result::ok)
    }
}

impl History {
    /// Opens `path` for appending (creating it) and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<(History, HistoryWriter)> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (lines, queue) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        let name = path.display().to_string();
        std::thread::Builder::new().name("sim-history".into()).spawn(move || {
            let _ = done_tx.send(write_lines(file, queue, &name));
        })?;
        Ok((History { lines }, HistoryWriter { done }))
    }

    /// Queues `event`, stamped now.
    pub fn record(&self, event: &HistoryEvent<'_>) {
        match history_line(unix_ms(), event) {
            // Fails only once the writer is gone, at the very end.
            Ok(line) => {
                let _ = self.lines.send(line);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a history line"),
        }
    }

    /// The history of one node.
    pub fn node(&self, node: &str) -> NodeHistory {
        NodeHistory { history: self.clone(), node: Arc::from(node) }
    }
}

/// Appends lines until every sender is gone; each batch in one write.
fn write_lines(mut file: File, mut queue: mpsc::UnboundedReceiver<Vec<u8>>, name: &str) -> HistorySummary {
    let mut summary = HistorySummary::default();
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let mut failing = false;
    while let Some(line) = queue.blocking_recv() {
        batch.clear();
        batch.extend_from_slice(&line);
        let mut count = 1u64;
        while batch.len() < BATCH_BYTES {
            match queue.try_recv() {
                Ok(line) => {
                    batch.extend_from_slice(&line);
                    count += 1;
                }
                Err(_) => break,
            }
        }
        match file.write_all(&batch) {
            Ok(()) => {
                summary.lines += count;
                failing = false;
            }
            Err(e) => {
                summary.lost += count;
                if !failing {
                    tracing::error!(file = name, error = %e, "cannot append to the history; lines are lost");
                    failing = true;
                }
            }
        }
    }
    summary
}

/// One node's history: what its session saw and which of its updates the
/// server acknowledged.
#[derive(Debug, Clone)]
pub struct NodeHistory {
    history: History,
    node: Arc<str>,
}

impl NodeHistory {
    /// Records that the server acknowledged `update`.
    pub fn acked(&self, update: &pb::StatusUpdate) {
        self.history.record(&HistoryEvent::acked(&self.node, update));
    }
}

impl SessionObserver for NodeHistory {
    fn connected(&self, endpoint: &str, replica_id: u64) {
        self.history.record(&HistoryEvent::Connect { node: &self.node, endpoint, replica: replica_id });
    }

    fn disconnected(&self, endpoint: &str, reason: &str) {
        self.history.record(&HistoryEvent::Disconnect { node: &self.node, endpoint, reason });
    }

    fn desired_state(&self, desired: &pb::DesiredState, new: bool) {
        self.history.record(&HistoryEvent::Desired {
            node: &self.node,
            generation: desired.generation,
            rollout: &desired.rollout_id,
            wave: desired.wave,
            image: &desired.target_image_ref,
            release: &desired.target_release,
            rollback: desired.rollback,
            repeat: !new,
        });
    }

    fn cancel(&self, cancel: &pb::Cancel) {
        self.history.record(&HistoryEvent::Cancel {
            node: &self.node,
            generation: (cancel.generation != 0).then_some(cancel.generation),
            reason: &cancel.reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn parse(line: &[u8]) -> Value {
        assert_eq!(line.last(), Some(&b'\n'), "a line ends with a newline");
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(line).expect("json")
    }

    #[test]
    fn desired_and_cancel_lines_carry_the_documented_fields() {
        let desired = HistoryEvent::Desired {
            node: "n1",
            generation: 3,
            rollout: "r-1",
            wave: 2,
            image: "quay.io/kairos/core-ubuntu:v1.7.0",
            release: "v1.7.0",
            rollback: false,
            repeat: false,
        };
        let line = history_line(1_700_000_000_123, &desired).expect("line");
        assert_eq!(
            parse(&line),
            json!({"t_ms": 1_700_000_000_123u64, "kind": "desired", "node": "n1", "generation": 3, "rollout": "r-1",
                   "wave": 2, "image": "quay.io/kairos/core-ubuntu:v1.7.0", "release": "v1.7.0",
                   "rollback": false, "repeat": false})
        );
        assert!(String::from_utf8_lossy(&line).starts_with(r#"{"t_ms":1700000000123,"kind":"desired","node":"n1""#));
        let cancel = HistoryEvent::Cancel { node: "n1", generation: None, reason: "aborted" };
        assert_eq!(
            parse(&history_line(5, &cancel).expect("line")),
            json!({"t_ms": 5, "kind": "cancel", "node": "n1", "reason": "aborted"})
        );
    }

    #[test]
    fn acked_lines_name_state_boot_state_and_failure_reason_in_lowercase() {
        let mut failed = pb::StatusUpdate {
            seq: 7,
            generation: 3,
            rollout_id: "r-1".into(),
            image_ref: "quay.io/kairos/core-ubuntu:v1.6.0".into(),
            release: "v1.6.0".into(),
            ..Default::default()
        };
        failed.set_state(pb::NodeState::Failed);
        failed.set_boot_state(pb::BootState::Passive);
        failed.set_failure_reason(pb::FailureReason::FallbackBoot);
        assert_eq!(
            parse(&history_line(9, &HistoryEvent::acked("n1", &failed)).expect("line")),
            json!({"t_ms": 9, "kind": "acked", "node": "n1", "seq": 7, "state": "failed", "generation": 3,
                   "rollout": "r-1", "image": "quay.io/kairos/core-ubuntu:v1.6.0", "release": "v1.6.0",
                   "boot_state": "passive", "failure_reason": "fallback_boot"})
        );
        let mut healthy = pb::StatusUpdate { seq: 1, ..Default::default() };
        healthy.set_state(pb::NodeState::RolledBack);
        let value = parse(&history_line(9, &HistoryEvent::acked("n1", &healthy)).expect("line"));
        assert_eq!(value["state"], "rolled_back");
        assert!(value.get("failure_reason").is_none() && value.get("boot_state").is_none(), "{value}");
    }

    #[tokio::test]
    async fn every_line_reaches_the_file_before_the_writer_finishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        std::fs::write(&path, "{\"kind\":\"earlier\"}\n").expect("an earlier run");
        let (history, writer) = History::open(&path).expect("open");
        let tasks: Vec<_> = (0..8)
            .map(|n| {
                let node = history.node(&format!("n{n}"));
                tokio::spawn(async move {
                    for g in 1..=100 {
                        let desired = pb::DesiredState { generation: g, ..Default::default() };
                        node.desired_state(&desired, true);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        drop(history);
        let summary = writer.finish(Duration::from_secs(10)).await.expect("writer ends");
        assert_eq!(summary, HistorySummary { lines: 800, lost: 0 });
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert_eq!(lines.len(), 801, "appended after the earlier run's line");
        assert_eq!(lines.iter().filter(|l| l["kind"] == "desired").count(), 800);
        assert!(lines[1..].iter().all(|l| l["t_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000)));
    }
}
