//! ListAudit: filtering and paging the audit log, newest or oldest first,
//! from this replica's applied state.

use kairos_fleet_proto::fleet::v1 as pb;
use tonic::Status;

use super::{audit_key, parse_audit_key, role_to_proto, AuditRecord, AUDIT_PREFIX, AUDIT_SEQUENCE_KEY};
use crate::store::KvReader;

/// Page size when the request asks for 0, and the largest honoured.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Entries read from the store per range call.
const SCAN_BATCH: u64 = 500;
/// Entries examined per call: a filter matching little in a long log
/// returns a short page and a token to go on, not one unbounded scan.
const SCAN_BUDGET: usize = 50_000;

/// One page of the audit log matching `req`.
pub fn list(reader: &KvReader, req: &pb::ListAuditRequest) -> Result<pb::ListAuditResponse, Status> {
    let filter = Filter::new(req)?;
    let cursor = parse_page_token(&req.page_token, req.oldest_first)?;
    let page_size = match req.page_size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let mut scan = Scan::new(reader, req.oldest_first, cursor)?;
    let mut entries: Vec<AuditRecord> = Vec::new();
    let mut scanned = 0;
    let mut resume_after = None;
    'pages: while let Some(batch) = scan.next_batch()? {
        for record in batch {
            scanned += 1;
            if filter.matches(&record) {
                if entries.len() == page_size {
                    resume_after = entries.last().map(|e| e.sequence);
                    break 'pages;
                }
                entries.push(record);
            } else if scanned >= SCAN_BUDGET {
                resume_after = Some(record.sequence);
                break 'pages;
            }
        }
    }
    let next_page_token = resume_after.map(|s| page_token(s, req.oldest_first)).unwrap_or_default();
    Ok(pb::ListAuditResponse { entries: entries.iter().map(to_proto).collect(), next_page_token })
}

/// Walks the log in batches in one direction, from just past a cursor.
struct Scan<'a> {
    reader: &'a KvReader,
    oldest_first: bool,
    /// Oldest first: the last sequence returned. Newest first: the next
    /// (highest) sequence to return; 0 when done.
    mark: u64,
    done: bool,
}

impl<'a> Scan<'a> {
    fn new(reader: &'a KvReader, oldest_first: bool, cursor: Option<u64>) -> Result<Scan<'a>, Status> {
        let mark = match (oldest_first, cursor) {
            (true, cursor) => cursor.unwrap_or(0),
            (false, Some(after)) => after.saturating_sub(1),
            (false, None) => last_sequence(reader)?,
        };
        Ok(Scan { reader, oldest_first, mark, done: false })
    }

    fn next_batch(&mut self) -> Result<Option<Vec<AuditRecord>>, Status> {
        if self.done {
            return Ok(None);
        }
        let batch = if self.oldest_first {
            let after = (self.mark > 0).then(|| audit_key(self.mark));
            let batch = self.read(after, SCAN_BATCH, u64::MAX)?;
            self.done = batch.len() < SCAN_BATCH as usize;
            self.mark = batch.last().map_or(self.mark, |r| r.sequence);
            batch
        } else {
            let upper = self.mark;
            if upper == 0 {
                return Ok(None);
            }
            let lower = upper.saturating_sub(SCAN_BATCH - 1).max(1);
            let after = (lower > 1).then(|| audit_key(lower - 1));
            let mut batch = self.read(after, upper - lower + 1, upper)?;
            batch.reverse();
            self.mark = lower - 1;
            self.done = self.mark == 0;
            batch
        };
        Ok(Some(batch))
    }

    /// Up to `limit` entries after key `after`, none above `upper`.
    fn read(&self, after: Option<String>, limit: u64, upper: u64) -> Result<Vec<AuditRecord>, Status> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let page = self
            .reader
            .range(AUDIT_PREFIX.as_bytes(), after.as_deref().map(str::as_bytes), limit)
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut records = Vec::with_capacity(page.len());
        for (key, kv) in page {
            let Some(sequence) = parse_audit_key(&key) else { continue };
            if sequence > upper {
                break;
            }
            let record: AuditRecord = serde_json::from_slice(&kv.value).map_err(|e| {
                Status::internal(format!("stored audit entry {} does not decode: {e}", key.escape_ascii()))
            })?;
            records.push(record);
        }
        Ok(records)
    }
}

/// The highest sequence used so far; 0 before the first entry.
fn last_sequence(reader: &KvReader) -> Result<u64, Status> {
    let stored = reader.get(AUDIT_SEQUENCE_KEY.as_bytes()).map_err(|e| Status::internal(e.to_string()))?;
    stored.map_or(Ok(0), |kv| {
        std::str::from_utf8(&kv.value)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| Status::internal(format!("{AUDIT_SEQUENCE_KEY} does not hold a number")))
    })
}

/// The request's filters, checked once.
struct Filter<'a> {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    token_id: &'a str,
    node_id: &'a str,
    method: &'a str,
    target_prefix: &'a str,
    outcomes: Vec<pb::AuditOutcome>,
}

impl<'a> Filter<'a> {
    fn new(req: &'a pb::ListAuditRequest) -> Result<Filter<'a>, Status> {
        let ms = |t: &Option<prost_types::Timestamp>, field: &str| -> Result<Option<i64>, Status> {
            t.as_ref()
                .map(|t| {
                    jiff::Timestamp::new(t.seconds, t.nanos)
                        .map(|t| t.as_millisecond())
                        .map_err(|e| Status::invalid_argument(format!("{field}: not a valid time: {e}")))
                })
                .transpose()
        };
        let outcomes = req
            .outcomes
            .iter()
            .map(|&o| match pb::AuditOutcome::try_from(o) {
                Ok(pb::AuditOutcome::Unspecified) | Err(_) => {
                    Err(Status::invalid_argument(format!("outcomes: {o} is not SUCCEEDED, FAILED or DENIED")))
                }
                Ok(outcome) => Ok(outcome),
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            since_ms: ms(&req.since, "since")?,
            until_ms: ms(&req.until, "until")?,
            token_id: req.actor_token_id.trim(),
            node_id: req.actor_node_id.trim(),
            method: req.method.trim().trim_start_matches('/'),
            target_prefix: &req.target_prefix,
            outcomes,
        })
    }

    fn matches(&self, r: &AuditRecord) -> bool {
        self.since_ms.is_none_or(|since| r.time_ms >= since)
            && self.until_ms.is_none_or(|until| r.time_ms < until)
            && (self.token_id.is_empty() || actor_token_id(&r.actor) == Some(self.token_id))
            && (self.node_id.is_empty() || r.actor.strip_prefix(NODE_ACTOR) == Some(self.node_id))
            && (self.method.is_empty() || r.method.trim_start_matches('/') == self.method)
            && r.target.starts_with(self.target_prefix)
            && (self.outcomes.is_empty() || self.outcomes.contains(&r.outcome.to_proto()))
    }
}

/// Actor name prefixes, as [`Caller::name`](crate::api::auth::Caller::name)
/// writes them, plus those of node calls.
const TOKEN_ACTOR: &str = "token:";
const CERT_ACTOR: &str = "cert:";
const REPLICA_ACTOR: &str = "replica-";
const NODE_ACTOR: &str = "node:";
const ENROLL_ACTOR: &str = "enroll-token:";

/// The token id an actor is listed under: the token's id, or `cert:<cn>`
/// for an operator certificate (an admin credential the proto's actor kinds
/// do not name otherwise).
fn actor_token_id(actor: &str) -> Option<&str> {
    actor.strip_prefix(TOKEN_ACTOR).or_else(|| actor.starts_with(CERT_ACTOR).then_some(actor))
}

fn actor_to_proto(actor: &str, role: Option<crate::security::Role>) -> Option<pb::AuditActor> {
    use pb::audit_actor::Actor;
    let kind = if let Some(id) = actor_token_id(actor) {
        let role = role.map_or(pb::TokenRole::Unspecified, role_to_proto) as i32;
        Actor::Token(pb::TokenActor { token_id: id.to_owned(), role })
    } else if let Some(id) = actor.strip_prefix(REPLICA_ACTOR).and_then(|id| id.parse().ok()) {
        Actor::ReplicaId(id)
    } else if let Some(id) = actor.strip_prefix(NODE_ACTOR) {
        Actor::NodeId(id.to_owned())
    } else if let Some(id) = actor.strip_prefix(ENROLL_ACTOR) {
        Actor::EnrollTokenId(id.to_owned())
    } else {
        return None;
    };
    Some(pb::AuditActor { actor: Some(kind) })
}

fn to_proto(r: &AuditRecord) -> pb::AuditEntry {
    pb::AuditEntry {
        sequence: r.sequence,
        time: Some(prost_types::Timestamp {
            seconds: r.time_ms.div_euclid(1000),
            // Below 1e9 by construction, so the cast cannot truncate.
            nanos: (r.time_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        actor: actor_to_proto(&r.actor, r.role),
        method: r.method.clone(),
        target: r.target.clone(),
        request_summary: r.summary.clone(),
        outcome: r.outcome.to_proto() as i32,
        status_code: r.status_code.clone(),
        error_message: r.error_message.clone(),
        peer_address: r.peer_address.clone(),
        replica_id: r.replica_id,
    }
}

/// `n<seq>` or `o<seq>`: where the next page starts, in which order.
fn page_token(after: u64, oldest_first: bool) -> String {
    format!("{}{after}", if oldest_first { 'o' } else { 'n' })
}

fn parse_page_token(token: &str, oldest_first: bool) -> Result<Option<u64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let order = if oldest_first { 'o' } else { 'n' };
    token
        .strip_prefix(order)
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("page_token: not a token this server returned for this order"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::audit::Outcome;

    fn record(sequence: u64, actor: &str, method: &str, outcome: Outcome) -> AuditRecord {
        AuditRecord {
            sequence,
            time_ms: 1_700_000_000_000 + sequence as i64,
            actor: actor.into(),
            role: Some(crate::security::Role::Admin),
            method: method.into(),
            target: format!("token/{sequence:08x}"),
            summary: String::new(),
            outcome,
            status_code: "OK".into(),
            error_message: String::new(),
            peer_address: String::new(),
            replica_id: 1,
        }
    }

    #[test]
    fn page_tokens_carry_the_order_they_were_made_for() {
        assert_eq!(parse_page_token(&page_token(42, false), false).ok(), Some(Some(42)));
        assert_eq!(parse_page_token(&page_token(42, true), true).ok(), Some(Some(42)));
        assert!(parse_page_token(&page_token(42, true), false).is_err());
        assert!(parse_page_token("n-1", false).is_err());
    }

    #[test]
    fn filters_match_actor_method_with_or_without_slash_and_outcome() {
        let req = pb::ListAuditRequest {
            actor_token_id: "0123abcd".into(),
            method: "kairos.fleet.v1.AdminService/CreateToken".into(),
            outcomes: vec![pb::AuditOutcome::Succeeded as i32],
            ..Default::default()
        };
        let filter = Filter::new(&req).expect("valid");
        let create = "/kairos.fleet.v1.AdminService/CreateToken";
        assert!(filter.matches(&record(1, "token:0123abcd", create, Outcome::Succeeded)));
        assert!(!filter.matches(&record(2, "token:ffffffff", create, Outcome::Succeeded)));
        assert!(!filter.matches(&record(3, "token:0123abcd", create, Outcome::Denied)));
        assert!(!filter.matches(&record(4, "token:0123abcd", "/x.Y/Z", Outcome::Succeeded)));
        let bad = pb::ListAuditRequest { outcomes: vec![0], ..Default::default() };
        assert!(Filter::new(&bad).is_err());
    }

    #[test]
    fn actors_map_to_the_proto_kinds() {
        use pb::audit_actor::Actor;
        let token = actor_to_proto("token:0123abcd", Some(crate::security::Role::Viewer)).and_then(|a| a.actor);
        let role = pb::TokenRole::Viewer as i32;
        assert_eq!(token, Some(Actor::Token(pb::TokenActor { token_id: "0123abcd".into(), role })));
        let replica = actor_to_proto("replica-3", None).and_then(|a| a.actor);
        assert_eq!(replica, Some(Actor::ReplicaId(3)));
        let cert = actor_to_proto("cert:ops", None).and_then(|a| a.actor);
        assert!(matches!(cert, Some(Actor::Token(t)) if t.token_id == "cert:ops"));
        assert_eq!(actor_to_proto("someone", None), None);
    }
}
