//! The replicated audit log: one entry per mutating call of a public
//! service, stored at `audit/<20-digit zero-padded sequence>` as JSON
//! [`AuditRecord`]s, so keys sort in sequence order.
//!
//! # How an entry is written
//!
//! Sequences come from a counter key, [`AUDIT_SEQUENCE_KEY`], advanced by
//! compare-and-set on its mod revision in the same transaction that stores
//! the entry: sequences are dense and increase in commit order, and two
//! replicas appending at once cannot take the same one (the loser re-reads
//! and retries).
//!
//! - AdminService changes are committed together with their entry, in one
//!   transaction ([`commit_with_entry`]): both or neither.
//! - AddRelease and SyncReleases store each new release together with its
//!   entry, one entry per release, many releases per transaction
//!   ([`commit_with_entries`]).
//! - Membership changes (ClusterService) are not key-value writes; they
//!   append the entry in a second write right after the change succeeded
//!   ([`Call::succeeded`]). A crash between the two loses that entry; the
//!   change stands, and failing the call at that point would misreport it,
//!   so the loss is only logged.
//! - Failed and denied AdminService calls get an entry too (a second
//!   write). Unauthenticated calls do not: anyone who can reach the port
//!   could fill the replicated log with them; they are logged locally.
//! - `NodeService/Enroll` spends its token use, writes the node record and
//!   its entry in one transaction. A refused bootstrap token whose id names
//!   an existing enroll token is audited (a second write, actor
//!   `enroll-token:<id>`); a malformed token or an unknown id is only
//!   logged locally, for the reason above.

use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Status};

use super::auth::Caller;
use super::{read_status, write_status};
use crate::replica::ReplicaClient;
use crate::security::Role;
use crate::store::{Compare, CompareOp, KvReader, Op, Request as Write};

mod list;

pub use list::list;

/// Key prefix of the audit entries.
pub const AUDIT_PREFIX: &str = "audit/";
/// Key of the last sequence used (decimal text); absent before the first entry.
pub const AUDIT_SEQUENCE_KEY: &str = "audit-sequence";
/// Longest request summary kept, in bytes (the proto's limit).
const MAX_SUMMARY_BYTES: usize = 1024;
/// Attempts of an optimistic write before giving up with ABORTED.
pub(crate) const MAX_ATTEMPTS: usize = 32;
/// How long a retry waits for this replica to apply the write that beat it.
pub(crate) const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Full gRPC method names of the audited calls.
pub mod method {
    /// `AdminService/CreateToken`.
    pub const CREATE_TOKEN: &str = "/kairos.fleet.v1.AdminService/CreateToken";
    /// `AdminService/RevokeToken`.
    pub const REVOKE_TOKEN: &str = "/kairos.fleet.v1.AdminService/RevokeToken";
    /// `AdminService/CreateEnrollToken`.
    pub const CREATE_ENROLL_TOKEN: &str = "/kairos.fleet.v1.AdminService/CreateEnrollToken";
    /// `AdminService/RevokeEnrollToken`.
    pub const REVOKE_ENROLL_TOKEN: &str = "/kairos.fleet.v1.AdminService/RevokeEnrollToken";
    /// `ClusterService/AddReplica`.
    pub const ADD_REPLICA: &str = "/kairos.fleet.v1.ClusterService/AddReplica";
    /// `ClusterService/RemoveReplica`.
    pub const REMOVE_REPLICA: &str = "/kairos.fleet.v1.ClusterService/RemoveReplica";
    /// `ReleaseService/AddRelease`.
    pub const ADD_RELEASE: &str = "/kairos.fleet.v1.ReleaseService/AddRelease";
    /// `ReleaseService/SyncReleases`.
    pub const SYNC_RELEASES: &str = "/kairos.fleet.v1.ReleaseService/SyncReleases";
    /// `NodeService/Enroll`.
    pub const ENROLL: &str = "/kairos.fleet.v1.NodeService/Enroll";
    /// RolloutService.Create.
    pub const CREATE_ROLLOUT: &str = "/kairos.fleet.v1.RolloutService/Create";
    /// RolloutService.Pause.
    pub const PAUSE_ROLLOUT: &str = "/kairos.fleet.v1.RolloutService/Pause";
    /// RolloutService.Resume.
    pub const RESUME_ROLLOUT: &str = "/kairos.fleet.v1.RolloutService/Resume";
    /// RolloutService.Abort.
    pub const ABORT_ROLLOUT: &str = "/kairos.fleet.v1.RolloutService/Abort";
    /// RolloutService.Approve.
    pub const APPROVE_WAVE: &str = "/kairos.fleet.v1.RolloutService/Approve";
    /// RolloutService.Rollback.
    pub const ROLLBACK_ROLLOUT: &str = "/kairos.fleet.v1.RolloutService/Rollback";
}

/// How an audited call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The call succeeded.
    Succeeded,
    /// Validation, a precondition or an internal error failed it.
    Failed,
    /// The caller's role does not allow it.
    Denied,
}

impl Outcome {
    /// The proto enum value.
    pub fn to_proto(self) -> pb::AuditOutcome {
        match self {
            Outcome::Succeeded => pb::AuditOutcome::Succeeded,
            Outcome::Failed => pb::AuditOutcome::Failed,
            Outcome::Denied => pb::AuditOutcome::Denied,
        }
    }
}

/// One audit entry as stored. Never holds a secret: summaries are built
/// from the fields that are not secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1; also the key suffix.
    pub sequence: u64,
    /// When the receiving replica got the call, Unix milliseconds.
    pub time_ms: i64,
    /// [`Caller::name`]: `token:<id>`, `cert:<cn>` or `replica-<id>`.
    pub actor: String,
    /// The caller's role at the time of the call.
    pub role: Option<Role>,
    /// Full gRPC method, `/kairos.fleet.v1.<Service>/<Method>`.
    pub method: String,
    /// What the call acted on, `kind/id`; empty when not known.
    pub target: String,
    /// Short rendering of the request, secrets left out; at most 1 KiB.
    pub summary: String,
    /// How it ended.
    pub outcome: Outcome,
    /// gRPC status code name, e.g. `OK` or `FAILED_PRECONDITION`.
    pub status_code: String,
    /// The error message of a failed or denied call.
    pub error_message: String,
    /// The caller's `ip:port`, as the receiving replica saw it.
    pub peer_address: String,
    /// The replica that received the call.
    pub replica_id: u64,
}

/// The store key of entry `sequence`: `audit/` and 20 zero-padded digits.
pub fn audit_key(sequence: u64) -> String {
    format!("{AUDIT_PREFIX}{sequence:020}")
}

/// The sequence an audit key encodes; `None` for any other key.
pub fn parse_audit_key(key: &[u8]) -> Option<u64> {
    let digits = key.strip_prefix(AUDIT_PREFIX.as_bytes())?;
    if digits.len() != 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `…`.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The proto form of a role.
pub fn role_to_proto(role: Role) -> pb::TokenRole {
    match role {
        Role::Viewer => pb::TokenRole::Viewer,
        Role::Operator => pb::TokenRole::Operator,
        Role::Admin => pb::TokenRole::Admin,
    }
}

/// The gRPC name of a status code, e.g. `PERMISSION_DENIED`.
pub fn code_name(code: Code) -> String {
    format!("{code:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
            sep.into_iter().chain(std::iter::once(c.to_ascii_uppercase()))
        })
        .collect()
}

/// One audited call: who made it, from where, when, and what about.
#[derive(Debug, Clone)]
pub struct Call {
    caller: Caller,
    method: &'static str,
    peer: String,
    received_ms: i64,
    target: String,
    summary: String,
}

impl Call {
    /// Starts the record of `request`, a call of `method` by `caller`.
    pub fn new<T>(request: &Request<T>, method: &'static str, caller: &Caller) -> Call {
        Call {
            caller: caller.clone(),
            method,
            peer: request.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
            received_ms: jiff::Timestamp::now().as_millisecond(),
            target: String::new(),
            summary: String::new(),
        }
    }

    /// Sets what the call acts on (`kind/id`) and the request summary,
    /// which must hold no secret.
    pub fn about(mut self, target: impl Into<String>, summary: impl AsRef<str>) -> Call {
        self.target = target.into();
        self.summary = truncate(summary.as_ref(), MAX_SUMMARY_BYTES);
        self
    }

    /// The authenticated caller.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The full gRPC method of the call.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The entry for this call with `outcome`, not yet sequenced.
    pub fn entry(&self, outcome: Outcome, error: Option<&Status>, replica_id: u64) -> AuditRecord {
        AuditRecord {
            sequence: 0,
            time_ms: self.received_ms,
            actor: self.caller.name(),
            role: Some(self.caller.role()),
            method: self.method.to_owned(),
            target: self.target.clone(),
            summary: self.summary.clone(),
            outcome,
            status_code: code_name(error.map_or(Code::Ok, Status::code)),
            error_message: error.map(|e| truncate(e.message(), MAX_SUMMARY_BYTES)).unwrap_or_default(),
            peer_address: self.peer.clone(),
            replica_id,
        }
    }

    /// Appends the entry of this call's success in its own write, after
    /// the change; a failure is logged, not returned (see the module docs).
    pub async fn succeeded(&self, client: &ReplicaClient) {
        self.append(client, self.entry(Outcome::Succeeded, None, client.id())).await;
    }

    /// Appends the entry of this call's failure: DENIED for a refused role,
    /// FAILED otherwise.
    pub async fn failed(&self, client: &ReplicaClient, status: &Status) {
        let outcome = match status.code() {
            Code::PermissionDenied | Code::Unauthenticated => Outcome::Denied,
            _ => Outcome::Failed,
        };
        self.append(client, self.entry(outcome, Some(status), client.id())).await;
    }

    async fn append(&self, client: &ReplicaClient, entry: AuditRecord) {
        append(client, entry).await;
    }
}

/// Appends `entry` in a write of its own; a failure is logged, not
/// returned: the call it records has already been answered or decided.
pub async fn append(client: &ReplicaClient, entry: AuditRecord) {
    let (method, actor, target) = (entry.method.clone(), entry.actor.clone(), entry.target.clone());
    let nothing =
        |_: &KvReader| Ok(Planned { compares: Vec::new(), ops: Vec::new(), target: target.clone(), value: () });
    if let Err(e) = commit_with_entry(client, entry, nothing).await {
        tracing::warn!(%method, %actor, error = %e.message(), "audit entry lost");
    }
}

/// A change planned against this replica's applied state: the compares
/// that must still hold, the ops, the audit target, and what to return.
#[derive(Debug)]
pub struct Planned<T> {
    /// Guards of what the plan read.
    pub compares: Vec<Compare>,
    /// The change.
    pub ops: Vec<Op>,
    /// The audit entry's target; empty keeps the entry's own.
    pub target: String,
    /// The handler's result when the change commits.
    pub value: T,
}

/// The next sequence and the counter's mod revision (0 while absent).
pub(crate) fn next_sequence(reader: &KvReader) -> Result<(u64, u64), Status> {
    let stored = reader.get(AUDIT_SEQUENCE_KEY.as_bytes()).map_err(|e| Status::internal(e.to_string()))?;
    let Some(kv) = stored else { return Ok((1, 0)) };
    let last: u64 = std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| Status::internal(format!("{AUDIT_SEQUENCE_KEY} does not hold a number")))?;
    Ok((last + 1, kv.mod_revision))
}

/// Commits the change `plan` makes together with `entry`, in one
/// transaction guarded by the plan's compares and the sequence counter.
///
/// `plan` runs on this replica's applied state and again after every lost
/// race (a compare failed: the state it read changed, or this replica was
/// behind), once this replica has applied the write that beat it. A plan
/// answering NOT_FOUND is retried once after a linearizable read, so a
/// lagging follower does not deny what the leader already has.
pub async fn commit_with_entry<T>(
    client: &ReplicaClient,
    entry: AuditRecord,
    mut plan: impl FnMut(&KvReader) -> Result<Planned<T>, Status>,
) -> Result<T, Status> {
    let method = entry.method.clone();
    commit_with_entries(client, &method, |reader| {
        let planned = plan(reader)?;
        let mut entry = entry.clone();
        if !planned.target.is_empty() {
            entry.target.clone_from(&planned.target);
        }
        Ok((planned, vec![entry]))
    })
    .await
}

/// Commits the change `plan` makes together with the audit entries it
/// returns (sequenced in that order), in one transaction, with the retries
/// of [`commit_with_entry`]; the plan's `target` is not used. A plan with
/// neither ops nor entries changes nothing and is not written. `method`
/// names the call in the error when the retries run out.
pub async fn commit_with_entries<T>(
    client: &ReplicaClient,
    method: &str,
    mut plan: impl FnMut(&KvReader) -> Result<(Planned<T>, Vec<AuditRecord>), Status>,
) -> Result<T, Status> {
    let mut confirmed = false;
    for _ in 0..MAX_ATTEMPTS {
        let (planned, entries) = match plan(client.reader()) {
            Err(status) if status.code() == Code::NotFound && !confirmed => {
                client.read_linearizable().await.map_err(read_status)?;
                confirmed = true;
                continue;
            }
            other => other?,
        };
        if planned.ops.is_empty() && entries.is_empty() {
            return Ok(planned.value);
        }
        let mut compares = planned.compares;
        let mut ops = planned.ops;
        if !entries.is_empty() {
            let (first, counter_revision) = next_sequence(client.reader())?;
            compares.push(Compare::mod_revision(AUDIT_SEQUENCE_KEY, CompareOp::Equal, counter_revision));
            let mut last = first;
            for (sequence, mut entry) in (first..).zip(entries) {
                entry.sequence = sequence;
                let value =
                    serde_json::to_vec(&entry).map_err(|e| Status::internal(format!("encoding audit entry: {e}")))?;
                ops.push(Op::put(audit_key(sequence), value));
                last = sequence;
            }
            ops.push(Op::put(AUDIT_SEQUENCE_KEY, last.to_string()));
        }
        let committed = client.write_entry(Write::txn(compares, ops, Vec::new())).await.map_err(write_status)?;
        if committed.response.succeeded {
            return Ok(planned.value);
        }
        client.wait_applied(committed.log_index, APPLY_TIMEOUT).await.map_err(read_status)?;
    }
    Err(Status::aborted(format!("{method}: the state it depends on changed {MAX_ATTEMPTS} times while it ran; retry")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_keys_are_zero_padded_so_byte_order_is_sequence_order() {
        assert_eq!(audit_key(42), "audit/00000000000000000042");
        assert_eq!(audit_key(u64::MAX), "audit/18446744073709551615");
        let mut keys: Vec<String> = [10u64, 9, 100, 1, u64::MAX].iter().map(|&s| audit_key(s)).collect();
        keys.sort();
        let sequences: Vec<u64> = keys.iter().filter_map(|k| parse_audit_key(k.as_bytes())).collect();
        assert_eq!(sequences, [1, 9, 10, 100, u64::MAX]);
    }

    #[test]
    fn only_well_formed_audit_keys_parse() {
        assert_eq!(parse_audit_key(audit_key(7).as_bytes()), Some(7));
        for other in ["audit/7", "audit/0000000000000000000x", "tokens/00000000000000000007", "audit-sequence"] {
            assert_eq!(parse_audit_key(other.as_bytes()), None, "{other}");
        }
        assert_eq!(parse_audit_key(b"audit/99999999999999999999"), None, "above u64::MAX");
    }

    #[test]
    fn summaries_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate(&"é".repeat(600), MAX_SUMMARY_BYTES);
        assert!(cut.len() <= MAX_SUMMARY_BYTES && cut.ends_with('…'), "{} bytes", cut.len());
    }

    #[test]
    fn status_codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::PermissionDenied), "PERMISSION_DENIED");
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
    }
}
