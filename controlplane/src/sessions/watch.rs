//! The two background loops of a replica's sessions: pushing desired state
//! as it is applied, and reconciling session records with the streams held.

use std::time::{Instant, SystemTime};

use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use super::Sessions;
use crate::api::auth::now_ms;
use crate::nodes::{
    decode_desired, decode_session, node_id_of_key, read_desired, session_key, DESIRED_PREFIX, SESSIONS_PREFIX,
};
use crate::store::{Applied, Compare, CompareOp, Op, Request};

/// Follows the change feed and offers every desired state written for a
/// node this replica holds to its stream.
pub(crate) async fn push_desired(sessions: Sessions) {
    let feed = sessions.client().reader().feed().clone();
    let mut rx = feed.subscribe();
    loop {
        match rx.recv().await {
            Ok(applied) => match &*applied {
                Applied::Changes { changes, revision } => {
                    for change in changes {
                        let Some((DESIRED_PREFIX, node_id)) = node_id_of_key(&change.key) else { continue };
                        let (desired, at) = match &change.kv {
                            Some(kv) => match decode_desired(DESIRED_PREFIX, kv) {
                                Ok(d) => (Some(d), kv.mod_revision),
                                Err(e) => {
                                    tracing::error!(node = %node_id, error = %e, "undecodable desired state");
                                    continue;
                                }
                            },
                            None => (None, *revision),
                        };
                        sessions.offer_desired(node_id, desired, at);
                    }
                }
                Applied::Reset { .. } => resync(&sessions),
            },
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "desired-state watcher fell behind; re-reading every held node");
                resync(&sessions);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Offers the stored desired state of every held node again.
fn resync(sessions: &Sessions) {
    let reader = sessions.client().reader();
    for node_id in sessions.node_ids() {
        // Read the revision first: a deletion seen below is at least this new.
        let now = reader.revision().unwrap_or(0);
        match read_desired(reader, &node_id) {
            Ok(Some((desired, revision))) => sessions.offer_desired(&node_id, Some(desired), revision),
            Ok(None) => sessions.offer_desired(&node_id, None, now),
            Err(e) => tracing::warn!(node = %node_id, error = %e, "reading a desired state"),
        }
    }
}

/// Least age of a session before the reconciler repairs its record: under a
/// connect storm the writer may take seconds to record a connect.
const RECONCILE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// Ops per raft write of the reconciler.
const WRITE_CHUNK: usize = 5000;

/// Every `reconcile_every`:
/// - records this replica holds are (re)written when missing or wrong, and
///   records naming this replica for streams it no longer holds are removed;
///   a newer stream of the same node on another replica ends ours;
/// - on the leader, records of replicas that left the membership or have
///   not answered for `sweep_after` are removed (their nodes are offline
///   until they reconnect elsewhere);
/// - a replica that has had no leader for a liveness timeout ends its
///   streams, so its nodes move to a replica that can record them.
pub(crate) async fn reconcile(sessions: Sessions) {
    let settings = sessions.settings().clone();
    // The first round runs one period after start, not at once.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + settings.reconcile_every, settings.reconcile_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader_since: Option<Instant> = None;
    let mut leaderless_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let client = sessions.client();
        let me = client.id();
        let metrics = client.raft().metrics().borrow().clone();
        match metrics.current_leader {
            Some(leader) => {
                leaderless_since = None;
                if leader == me {
                    leader_since.get_or_insert_with(Instant::now);
                } else {
                    leader_since = None;
                }
            }
            None => {
                leader_since = None;
                let since = *leaderless_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= settings.liveness_timeout && sessions.connected() > 0 {
                    tracing::warn!(
                        replica = me,
                        "no leader for {:?}; sending nodes to other replicas",
                        since.elapsed()
                    );
                    sessions.close_all(&Status::unavailable(format!(
                        "replica {me} has no raft leader and cannot record status; reconnect to another replica"
                    )));
                }
                continue;
            }
        }
        // Changes younger than this may still be in the writer's queue.
        let grace = (settings.reconcile_every * 2).max(RECONCILE_GRACE).as_millis() as u64;
        let members: Vec<u64> = metrics.membership_config.membership().nodes().map(|(id, _)| *id).collect();
        let dead = |replica: u64| -> bool {
            if replica == me {
                return false;
            }
            if !members.contains(&replica) {
                return true;
            }
            let Some(since) = leader_since else { return false };
            if since.elapsed() < settings.sweep_after {
                return false;
            }
            match client.peers().contact(replica).and_then(|c| c.last_ok) {
                Some(last_ok) => SystemTime::now().duration_since(last_ok).is_ok_and(|d| d >= settings.sweep_after),
                None => true,
            }
        };
        let mut held = sessions.held();
        let mut ops = Vec::new();
        let now = now_ms();
        for item in client.reader().scan_prefix(SESSIONS_PREFIX.as_bytes()) {
            let (key, kv) = match item {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "scanning session records");
                    break;
                }
            };
            let Some((_, node_id)) = node_id_of_key(&key) else { continue };
            let Ok(record) = decode_session(SESSIONS_PREFIX, &kv) else { continue };
            // Every write here holds only over the record as scanned: a newer write wins.
            let unchanged = || vec![Compare::value(key.clone(), CompareOp::Equal, kv.value.clone())];
            match held.remove(node_id) {
                Some(ours) if ours == record => {}
                Some(ours) => {
                    if record.replica_id != me
                        && record.connected_at_ms > ours.connected_at_ms
                        && !dead(record.replica_id)
                    {
                        sessions.close(
                            node_id,
                            ours.session_id,
                            Status::aborted(format!("the node has a newer stream on replica {}", record.replica_id)),
                        );
                    } else if now.saturating_sub(ours.connected_at_ms) > grace {
                        ops.push(Op::guarded(unchanged(), vec![Op::put(key.clone(), ours.encode())]));
                    }
                }
                // Not held here: left over from before a restart, or
                // written after the stream ended.
                None if record.replica_id == me && now.saturating_sub(record.connected_at_ms) > grace => {
                    ops.push(Op::guarded(unchanged(), vec![Op::delete(key.clone())]));
                }
                None if dead(record.replica_id) && leader_since.is_some() => {
                    ops.push(Op::guarded(unchanged(), vec![Op::delete(key.clone())]));
                }
                None => {}
            }
        }
        // Held streams whose record is missing (swept, or never written).
        for (node_id, ours) in held {
            // A stream accepted in the last moments may still be in the writer's queue.
            if now.saturating_sub(ours.connected_at_ms) > grace {
                let key = session_key(&node_id);
                ops.push(Op::guarded(vec![Compare::missing(key.as_str())], vec![Op::put(key.as_str(), ours.encode())]));
            }
        }
        if ops.is_empty() {
            continue;
        }
        tracing::info!(replica = me, ops = ops.len(), "reconciling session records");
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(WRITE_CHUNK));
            if let Err(e) = client.write(Request::batch(std::mem::replace(&mut ops, rest))).await {
                tracing::warn!(error = %e, "writing reconciled session records");
                break;
            }
        }
    }
}
