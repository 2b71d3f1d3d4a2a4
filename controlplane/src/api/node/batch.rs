//! Group commit of enrollments: the enrollments a replica receives within
//! a few milliseconds are planned together and committed in one
//! transaction (token uses, node records, audit entries), so a fleet
//! enrolling thousands of nodes with one token does not turn into
//! thousands of compare-and-set races on that token's record and on the
//! audit sequence.
//!
//! The plan walks the batch in arrival order over an overlay of the token
//! records, so every use is counted; the transaction is guarded by the
//! mod revisions of everything the plan read, and a lost race (another
//! replica's batch, any audited call) re-plans the whole batch on the newer
//! state.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::enroll::{Audited, Enrollment};
use crate::api::admin::{consume_enroll_token, EnrollError, EnrollTokenRecord, ENROLL_TOKENS_PREFIX};
use crate::api::audit::{audit_key, next_sequence, Outcome, APPLY_TIMEOUT, AUDIT_SEQUENCE_KEY, MAX_ATTEMPTS};
use crate::api::auth::now_ms;
use crate::api::{read_status, write_status};
use crate::nodes::{node_key, read_node, NodeRecord};
use crate::replica::ReplicaClient;
use crate::store::{Compare, CompareOp, KvReader, Op, Request};

/// Most enrollments in one transaction.
pub const MAX_BATCH: usize = 128;
/// How long the first enrollment of a batch waits for company.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// What an enrollment returns: the node record and whether it was known.
pub(crate) type Enrolled = Result<(NodeRecord, bool), Status>;

/// One enrollment waiting for its batch.
pub(crate) struct Pending {
    pub(crate) enrollment: Enrollment,
    pub(crate) bootstrap_token: String,
    pub(crate) not_after_ms: u64,
    pub(crate) audited: Audited,
    pub(crate) reply: oneshot::Sender<Enrolled>,
}

/// Runs batches until every sender is gone.
pub(crate) async fn run(client: ReplicaClient, mut rx: mpsc::Receiver<Pending>) {
    let mut applied_up_to = 0u64;
    let mut carried: Vec<Pending> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut carried);
        if batch.is_empty() {
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
        }
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        // One enrollment per machine per batch: a second one waits for the next.
        let mut seen = HashSet::new();
        let (now, later): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|p| seen.insert(p.enrollment.node_id.clone()));
        carried = later;
        applied_up_to = commit(&client, now, applied_up_to).await;
    }
}

/// The outcome of planning one enrollment.
enum Planned {
    Enrolled { record: Box<NodeRecord>, reenrolled: bool },
    Refused { status: Status, audit: bool },
}

/// Commits one batch and answers every enrollment in it; returns the log
/// index this replica must have applied before planning the next batch.
async fn commit(client: &ReplicaClient, batch: Vec<Pending>, mut applied_up_to: u64) -> u64 {
    for _ in 0..MAX_ATTEMPTS {
        if applied_up_to > 0 {
            if let Err(e) = client.wait_applied(applied_up_to, APPLY_TIMEOUT).await {
                answer_all(batch, &read_status(e));
                return applied_up_to;
            }
        }
        let (request, outcomes) = match plan(client.reader(), &batch) {
            Ok(planned) => planned,
            Err(status) => {
                answer_all(batch, &status);
                return applied_up_to;
            }
        };
        if matches!(&request, Request::Txn { success, .. } if success.is_empty()) {
            // Every enrollment was refused without an audit entry: nothing to write.
            answer(batch, outcomes);
            return applied_up_to;
        }
        let committed = match client.write_entry(request).await {
            Ok(committed) => committed,
            Err(e) => {
                answer_all(batch, &write_status(e));
                return applied_up_to;
            }
        };
        applied_up_to = committed.log_index;
        if committed.response.succeeded {
            answer(batch, outcomes);
            return applied_up_to;
        }
    }
    let status = Status::aborted(format!(
        "enrollment: the state it depends on changed {MAX_ATTEMPTS} times while it ran; retry"
    ));
    answer_all(batch, &status);
    applied_up_to
}

fn answer(batch: Vec<Pending>, outcomes: Vec<Planned>) {
    for (pending, outcome) in batch.into_iter().zip(outcomes) {
        let answer = match outcome {
            Planned::Enrolled { record, reenrolled } => Ok((*record, reenrolled)),
            Planned::Refused { status, .. } => Err(status),
        };
        let _ = pending.reply.send(answer);
    }
}

fn answer_all(batch: Vec<Pending>, status: &Status) {
    for pending in batch {
        let _ = pending.reply.send(Err(status.clone()));
    }
}

/// Plans the batch on `reader`'s state: one guarded transaction and the
/// outcome of each enrollment, in order.
fn plan(reader: &KvReader, batch: &[Pending]) -> Result<(Request, Vec<Planned>), Status> {
    let internal = |e: String| Status::internal(e);
    // Token records as the batch leaves them, with the revision they were read at.
    let mut tokens: BTreeMap<String, Option<(EnrollTokenRecord, u64, bool)>> = BTreeMap::new();
    let mut compares = Vec::new();
    let mut ops = Vec::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let now = now_ms();
    for pending in batch {
        let e = &pending.enrollment;
        let token_key = format!("{ENROLL_TOKENS_PREFIX}{}", e.token_id);
        if !tokens.contains_key(&token_key) {
            let loaded = match reader.get(token_key.as_bytes()).map_err(|e| internal(e.to_string()))? {
                Some(kv) => {
                    let record: EnrollTokenRecord = serde_json::from_slice(&kv.value)
                        .map_err(|err| internal(format!("stored record {token_key} does not decode: {err}")))?;
                    Some((record, kv.mod_revision, false))
                }
                None => None,
            };
            tokens.insert(token_key.clone(), loaded);
        }
        let Some(Some((token, _, changed))) = tokens.get_mut(&token_key) else {
            // Not audited: anyone could fill the log with made-up ids.
            let status = Status::from(EnrollError::Wrong {
                reason: format!(
                    "enroll token {} does not exist (if it was created a moment ago, retry in a few seconds)",
                    e.token_id
                ),
            });
            outcomes.push(Planned::Refused { status, audit: false });
            continue;
        };
        let spent = match consume_enroll_token(token, &pending.bootstrap_token, now) {
            Ok(spent) => spent,
            Err(refusal) => {
                outcomes.push(Planned::Refused { status: Status::from(refusal), audit: true });
                continue;
            }
        };
        *token = spent.clone();
        *changed = true;

        let key = node_key(&e.node_id);
        let existing = read_node(reader, &e.node_id).map_err(|err| internal(err.to_string()))?;
        let (reenrolled, mut record) = match existing {
            Some(stored) => {
                compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, stored.mod_revision));
                (true, stored.record)
            }
            None => {
                compares.push(Compare::missing(key.as_str()));
                let fresh = NodeRecord {
                    node_id: e.node_id.clone(),
                    machine_id: e.node_id.clone(),
                    state: pb::NodeState::Idle as i32,
                    boot_state: pb::BootState::Unknown as i32,
                    enrolled_at_ms: now,
                    state_changed_at_ms: now,
                    ..NodeRecord::default()
                };
                (false, fresh)
            }
        };
        // A known machine keeps its status and state; what enrollment says
        // about it is refreshed.
        record.hostname = e.hostname.clone();
        record.identity = Some(e.identity.clone());
        record.family = Some(e.family.clone());
        record.enrollment_labels = spent.labels.clone();
        record.enrolled_with = spent.id.to_string();
        record.certificate_not_after_ms = pending.not_after_ms;
        ops.push(Op::put(key.as_str(), record.encode()));
        outcomes.push(Planned::Enrolled { record: Box::new(record), reenrolled });
    }
    for (key, token) in &tokens {
        if let Some((record, mod_revision, true)) = token {
            compares.push(Compare::mod_revision(key.as_str(), CompareOp::Equal, *mod_revision));
            let value = serde_json::to_vec(record).map_err(|err| internal(format!("encoding {key}: {err}")))?;
            ops.push(Op::put(key.as_str(), value));
        }
    }
    // Audit entries: every enrollment and every refusal of a real token.
    let (mut sequence, counter_revision) = next_sequence(reader)?;
    let mut audited = 0;
    for (pending, outcome) in batch.iter().zip(&outcomes) {
        let entry = match outcome {
            Planned::Enrolled { .. } => pending.audited.entry(Outcome::Succeeded, None),
            Planned::Refused { status, audit: true } => pending.audited.entry(Outcome::Denied, Some(status)),
            Planned::Refused { audit: false, .. } => continue,
        };
        let mut entry = entry;
        entry.sequence = sequence;
        let value = serde_json::to_vec(&entry).map_err(|err| internal(format!("encoding audit entry: {err}")))?;
        ops.push(Op::put(audit_key(sequence), value));
        sequence += 1;
        audited += 1;
    }
    if audited > 0 {
        compares.push(Compare::mod_revision(AUDIT_SEQUENCE_KEY, CompareOp::Equal, counter_revision));
        ops.push(Op::put(AUDIT_SEQUENCE_KEY, (sequence - 1).to_string()));
    }
    Ok((Request::txn(compares, ops, Vec::new()), outcomes))
}
