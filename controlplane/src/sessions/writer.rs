//! The batch writer: connects, disconnects, Hellos and status transitions
//! of many nodes in one raft write.
//!
//! Each node's record is written with a guard on the revision it was read
//! at, so a concurrent change (a re-enrollment, another replica's write)
//! is never overwritten: the node's changes are re-read and retried in the
//! next batch. Status updates are acknowledged to the node only after the
//! write that records them has committed.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use pb::server_message::Body as ServerBody;
use tokio::sync::mpsc;
use tonic::Status;

use super::apply::{apply_hello, apply_status};
use super::Sessions;
use crate::api::auth::now_ms;
use crate::nodes::{node_key, read_node, session_key, SessionRecord};
use crate::store::{Compare, CompareOp, Op, OpResult, Request};

/// A change for the writer.
#[derive(Debug)]
pub(crate) enum WriteItem {
    /// A stream was accepted with this Hello.
    Connect {
        /// The node.
        node_id: String,
        /// Its session record.
        session: SessionRecord,
        /// The Hello (already checked).
        hello: Box<pb::Hello>,
    },
    /// A checked status update arrived.
    Status {
        /// The node.
        node_id: String,
        /// The update.
        update: pb::StatusUpdate,
    },
    /// A stream ended.
    Disconnect {
        /// The node.
        node_id: String,
        /// The session record the stream wrote.
        session: SessionRecord,
    },
}

/// How the node's session record must change.
#[derive(Debug, Clone, PartialEq)]
enum SessionOp {
    Put(SessionRecord),
    Remove(SessionRecord),
}

/// One node's gathered changes.
#[derive(Debug, Default)]
struct Pending {
    hello: Option<Box<pb::Hello>>,
    statuses: Vec<pb::StatusUpdate>,
    session: Option<SessionOp>,
    /// A stale stream's record to remove if the connect that replaced its
    /// removal is itself cancelled (connected and gone within the batch).
    prior_remove: Option<SessionRecord>,
    /// Batches this node's record write has lost to a concurrent change.
    conflicts: u32,
}

impl Pending {
    fn add(&mut self, item: WriteItem) {
        match item {
            WriteItem::Connect { session, hello, .. } => {
                self.hello = Some(hello);
                if let Some(SessionOp::Remove(old)) = self.session.take() {
                    self.prior_remove = Some(old);
                }
                self.session = Some(SessionOp::Put(session));
            }
            WriteItem::Status { update, .. } => self.push_status(update),
            WriteItem::Disconnect { session, .. } => {
                self.session = match self.session.take() {
                    // Connected and gone within one batch: only an older
                    // stream's record may still need removing.
                    Some(SessionOp::Put(put)) if put == session => self.prior_remove.take().map(SessionOp::Remove),
                    // A newer stream's connect stays.
                    Some(SessionOp::Put(put)) => Some(SessionOp::Put(put)),
                    _ => Some(SessionOp::Remove(session)),
                };
            }
        }
    }

    /// Adds a status update once: a node resends unacknowledged updates on
    /// every new stream, so the same seq may arrive again.
    fn push_status(&mut self, update: pb::StatusUpdate) {
        if !self.statuses.iter().any(|s| s.seq == update.seq) {
            self.statuses.push(update);
            self.statuses.sort_by_key(|s| s.seq);
        }
    }

    fn touches_record(&self) -> bool {
        self.hello.is_some() || !self.statuses.is_empty()
    }
}

fn node_of(item: &WriteItem) -> &str {
    match item {
        WriteItem::Connect { node_id, .. }
        | WriteItem::Status { node_id, .. }
        | WriteItem::Disconnect { node_id, .. } => node_id,
    }
}

/// Pause before retrying a write that found no leader.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// A record write that loses this many times in a row is dropped (logged).
const MAX_CONFLICTS: u32 = 20;
/// How long the writer waits for its own last write to be applied locally.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Runs the writer until the queue closes.
pub(crate) async fn run(sessions: Sessions, mut rx: mpsc::Receiver<WriteItem>) {
    let settings = sessions.settings().clone();
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let mut applied_up_to: u64 = 0;
    loop {
        if pending.is_empty() {
            let Some(first) = rx.recv().await else { return };
            pending.entry(node_of(&first).to_string()).or_default().add(first);
        }
        // Gather for one window, or until the batch is full.
        let deadline = tokio::time::Instant::now() + settings.batch_window;
        while pending.len() < settings.max_batch_nodes {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(item)) => pending.entry(node_of(&item).to_string()).or_default().add(item),
                Ok(None) if pending.is_empty() => return,
                Ok(None) | Err(_) => break,
            }
        }
        let client = sessions.client();
        // Read records at least as new as this writer's last write.
        if applied_up_to > 0 {
            if let Err(e) = client.wait_applied(applied_up_to, APPLY_WAIT).await {
                tracing::warn!(error = %e, "the local state lags behind the last session write");
            }
        }
        let batch: Vec<(String, Pending)> = {
            let keys: Vec<String> = pending.keys().take(settings.max_batch_nodes).cloned().collect();
            keys.into_iter().filter_map(|k| pending.remove(&k).map(|p| (k, p))).collect()
        };
        let now = now_ms();
        let mut ops = Vec::with_capacity(batch.len() * 2);
        // Index of each node's record op in `ops`, and its status acks.
        let mut record_ops: Vec<(usize, usize, Option<u64>)> = Vec::new();
        for (i, (node_id, p)) in batch.iter().enumerate() {
            if p.touches_record() {
                match read_node(client.reader(), node_id) {
                    Ok(Some(stored)) => {
                        let mut record = stored.record;
                        let mut ack = None;
                        if let Some(hello) = &p.hello {
                            if let Err(e) = apply_hello(&mut record, hello, now) {
                                tracing::warn!(node = %node_id, error = %e, "dropping a Hello that no longer applies");
                            }
                        }
                        for update in &p.statuses {
                            apply_status(&mut record, update, now);
                            ack = ack.max(Some(update.seq));
                        }
                        let guard = Compare::mod_revision(node_key(node_id), CompareOp::Equal, stored.mod_revision);
                        record_ops.push((i, ops.len(), ack));
                        ops.push(Op::guarded(vec![guard], vec![Op::put(node_key(node_id), record.encode())]));
                    }
                    Ok(None) => {
                        tracing::info!(node = %node_id, "node record gone; ending its stream");
                        sessions.close_node(node_id, Status::failed_precondition("the node is no longer enrolled"));
                    }
                    Err(e) => {
                        tracing::warn!(node = %node_id, error = %e, "reading a node record; the node will resend");
                        sessions.close_node(node_id, Status::unavailable("cannot record the node's state; reconnect"));
                    }
                }
            }
            match &p.session {
                // Only for an enrolled node: a removed node stays offline.
                Some(SessionOp::Put(s)) => ops.push(Op::guarded(
                    vec![Compare::exists(node_key(node_id))],
                    vec![Op::put(session_key(node_id), s.encode())],
                )),
                Some(SessionOp::Remove(s)) => ops.push(Op::guarded(
                    vec![Compare::value(session_key(node_id), CompareOp::Equal, s.encode())],
                    vec![Op::delete(session_key(node_id))],
                )),
                None => {}
            }
        }
        if ops.is_empty() {
            continue;
        }
        match client.write_entry(Request::batch(ops)).await {
            Ok(committed) => {
                applied_up_to = committed.log_index;
                let mut retry: Vec<(String, Pending)> = Vec::new();
                let mut batch: Vec<Option<(String, Pending)>> = batch.into_iter().map(Some).collect();
                for (i, op_index, ack) in record_ops {
                    let applied = matches!(
                        committed.response.results.get(op_index),
                        Some(OpResult::Guarded { applied: true, .. })
                    );
                    let Some((node_id, mut p)) = batch[i].take() else { continue };
                    if applied {
                        if let Some(seq) = ack {
                            sessions.send(&node_id, ServerBody::StatusAck(pb::StatusAck { seq }));
                        }
                    } else if p.conflicts < MAX_CONFLICTS {
                        // Someone else changed the record: re-read and retry
                        // (the session op was written; do not repeat it).
                        p.conflicts += 1;
                        p.session = None;
                        retry.push((node_id, p));
                    } else {
                        tracing::error!(node = %node_id, "node record kept changing under the session writer");
                        sessions.close_node(&node_id, Status::aborted("the node's record kept changing; reconnect"));
                    }
                }
                for (node_id, p) in retry {
                    merge_front(&mut pending, node_id, p);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, nodes = batch.len(), "session write failed; retrying");
                // Nothing is lost: the changes go back in front of newer ones.
                for (node_id, p) in batch {
                    merge_front(&mut pending, node_id, p);
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Puts `older` changes of a node back, before any newer ones gathered meanwhile.
fn merge_front(pending: &mut BTreeMap<String, Pending>, node_id: String, older: Pending) {
    match pending.remove(&node_id) {
        None => {
            pending.insert(node_id, older);
        }
        Some(newer) => {
            let mut merged = older;
            if newer.hello.is_some() {
                merged.hello = newer.hello;
            }
            for update in newer.statuses {
                merged.push_status(update);
            }
            if newer.prior_remove.is_some() {
                merged.prior_remove = newer.prior_remove;
            }
            if newer.session.is_some() {
                merged.session = newer.session;
            }
            pending.insert(node_id, merged);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64) -> SessionRecord {
        SessionRecord { replica_id: 1, session_id: id, connected_at_ms: 10 }
    }

    fn connect(id: u64) -> WriteItem {
        WriteItem::Connect { node_id: "n".into(), session: session(id), hello: Box::default() }
    }

    fn disconnect(id: u64) -> WriteItem {
        WriteItem::Disconnect { node_id: "n".into(), session: session(id) }
    }

    #[test]
    fn a_stream_that_comes_and_goes_within_one_batch_writes_no_session_change() {
        let mut p = Pending::default();
        p.add(connect(1));
        p.add(disconnect(1));
        assert_eq!(p.session, None);
    }

    #[test]
    fn the_disconnect_of_an_older_stream_does_not_undo_a_newer_connect() {
        let mut p = Pending::default();
        p.add(connect(2));
        p.add(disconnect(1));
        assert_eq!(p.session, Some(SessionOp::Put(session(2))));
        let mut p = Pending::default();
        p.add(disconnect(1));
        p.add(connect(2));
        assert_eq!(p.session, Some(SessionOp::Put(session(2))));
    }

    #[test]
    fn a_stale_record_removal_survives_a_connect_that_comes_and_goes() {
        let mut p = Pending::default();
        p.add(disconnect(1));
        p.add(connect(2));
        p.add(disconnect(2));
        assert_eq!(p.session, Some(SessionOp::Remove(session(1))));
    }

    #[test]
    fn a_resent_status_is_kept_once_in_seq_order() {
        let mut p = Pending::default();
        for seq in [2, 1, 2, 3, 1] {
            p.add(WriteItem::Status { node_id: "n".into(), update: pb::StatusUpdate { seq, ..Default::default() } });
        }
        assert_eq!(p.statuses.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn changes_put_back_after_a_failed_write_stay_before_newer_ones() {
        let mut pending = BTreeMap::new();
        let mut newer = Pending::default();
        newer.statuses.push(pb::StatusUpdate { seq: 3, ..Default::default() });
        pending.insert("n".to_string(), newer);
        let mut older = Pending::default();
        older.statuses.push(pb::StatusUpdate { seq: 2, ..Default::default() });
        older.session = Some(SessionOp::Put(session(1)));
        merge_front(&mut pending, "n".into(), older);
        let merged = &pending["n"];
        assert_eq!(merged.statuses.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(merged.session, Some(SessionOp::Put(session(1))));
    }
}
