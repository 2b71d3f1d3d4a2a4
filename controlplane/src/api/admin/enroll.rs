//! Enroll tokens: the bootstrap secrets nodes present to
//! `NodeService.Enroll`, stored as [`EnrollTokenRecord`]s (hash only) at
//! `enroll-tokens/<id>`, and the rule that spends one use of them.
//!
//! A bootstrap token is `kfe_<id>_<secret>`, shaped like an operator token
//! but with its own prefix, so neither kind is accepted as the other.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::{admit, check_description, lifetime, load_all, now_ms, paginate, timestamp, token_id_field, Position};
use crate::api::audit::{commit_with_entry, Call, Outcome, Planned};
use crate::api::auth::Caller;
use crate::replica::ReplicaClient;
use crate::security::{generate_token, hash_secret, verify, TokenId};
use crate::store::{Compare, CompareOp, KvReader, Op};

/// Key prefix of enroll token records in the replicated state.
pub const ENROLL_TOKENS_PREFIX: &str = "enroll-tokens/";
/// Every bootstrap token starts with this.
pub const ENROLL_TOKEN_PREFIX: &str = "kfe_";
/// Bounds of an enroll token's lifetime.
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(365 * 86_400);
/// Label limits (as `LabelRequirement` in common.proto).
const MAX_LABELS: usize = 64;
const MAX_LABEL_NAME: usize = 63;
const MAX_LABEL_PREFIX: usize = 253;
const MAX_LABEL_VALUE: usize = 63;

/// An enroll token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenRecord {
    /// The token's id (the `<id>` of `kfe_<id>_<secret>`).
    pub id: TokenId,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// SHA-256 of the secret part, lowercase hex.
    pub hash: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Expiry, Unix milliseconds.
    pub expires_at_ms: u64,
    /// Enrollments allowed; 0 = unlimited until expiry.
    pub max_uses: u32,
    /// Enrollments so far.
    #[serde(default)]
    pub uses: u32,
    /// Labels stamped on every node enrolled with it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Token id (or caller name) of the operator who created it.
    #[serde(default)]
    pub created_by: String,
    /// True once revoked.
    #[serde(default)]
    pub revoked: bool,
    /// When it was revoked, Unix milliseconds.
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
}

impl EnrollTokenRecord {
    /// The store key of this record.
    pub fn key(&self) -> String {
        key(self.id.as_str())
    }

    /// Whether a node could enroll with it at `now_ms`.
    pub fn usable(&self, now_ms: u64) -> bool {
        !self.revoked && now_ms < self.expires_at_ms && (self.max_uses == 0 || self.uses < self.max_uses)
    }
}

fn key(id: &str) -> String {
    format!("{ENROLL_TOKENS_PREFIX}{id}")
}

/// Why a bootstrap token was refused. Messages name the token id, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    /// Malformed, unknown, or the secret does not match.
    #[error(
        "bootstrap token refused: {reason}; use the whole token exactly as `kairosctl enroll-tokens create` \
         printed it (`kfe_<8 hex>_<secret>`)"
    )]
    Wrong {
        /// What does not match.
        reason: String,
    },
    /// Its lifetime is over.
    #[error("enroll token {id} expired at {}; ask an admin for a new one", format_ms(*at_ms))]
    Expired {
        /// The token id.
        id: TokenId,
        /// When it expired, Unix milliseconds.
        at_ms: u64,
    },
    /// Every allowed enrollment has happened.
    #[error("enroll token {id} is used up ({max_uses} of {max_uses} enrollments); ask an admin for a new one")]
    UsedUp {
        /// The token id.
        id: TokenId,
        /// Enrollments it allowed.
        max_uses: u32,
    },
    /// An admin revoked it.
    #[error("enroll token {id} was revoked; ask an admin for a new one")]
    Revoked {
        /// The token id.
        id: TokenId,
    },
}

impl From<EnrollError> for Status {
    /// UNAUTHENTICATED, as `NodeService.Enroll` documents: a bootstrap token
    /// is the caller's only credential, and it does not authenticate them,
    /// whether it is wrong, expired, revoked or used up. The message says which.
    fn from(e: EnrollError) -> Status {
        Status::unauthenticated(e.to_string())
    }
}

fn format_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| format!("{ms} ms after the Unix epoch"), |t| t.to_string())
}

/// Splits a bootstrap token into its id and secret, checking the form.
fn split(bootstrap: &str) -> Result<(TokenId, &str), EnrollError> {
    let malformed = || EnrollError::Wrong { reason: "it is not of the form kfe_<8 hex>_<64 hex>".into() };
    let rest = bootstrap.trim().strip_prefix(ENROLL_TOKEN_PREFIX).ok_or_else(malformed)?;
    let (id, secret) = rest.split_once('_').ok_or_else(malformed)?;
    let id = TokenId::parse(id).map_err(|_| malformed())?;
    if secret.len() != 64 || !secret.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(malformed());
    }
    Ok((id, secret))
}

/// The id of a bootstrap token, to find its record; the Enroll handler
/// answers an id without a record with [`EnrollError::Wrong`] too.
pub fn enroll_token_id(bootstrap: &str) -> Result<TokenId, EnrollError> {
    split(bootstrap).map(|(id, _)| id)
}

/// Spends one use of `record` for the bootstrap token a node presented at
/// `now_ms`, returning the record to store (compare-and-set on the mod
/// revision it was read at). The secret is checked first, so a caller who
/// only knows the id learns nothing about the token's state.
pub fn consume_enroll_token(
    record: &EnrollTokenRecord,
    bootstrap: &str,
    now_ms: u64,
) -> Result<EnrollTokenRecord, EnrollError> {
    let (id, secret) = split(bootstrap)?;
    if id != record.id || !verify(secret, &record.hash) {
        return Err(EnrollError::Wrong { reason: format!("wrong secret for enroll token {id}") });
    }
    if record.revoked {
        return Err(EnrollError::Revoked { id });
    }
    if now_ms >= record.expires_at_ms {
        return Err(EnrollError::Expired { id, at_ms: record.expires_at_ms });
    }
    if record.max_uses > 0 && record.uses >= record.max_uses {
        return Err(EnrollError::UsedUp { id, max_uses: record.max_uses });
    }
    let mut spent = record.clone();
    spent.uses = record.uses.saturating_add(1);
    Ok(spent)
}

/// Checks one label: an optional DNS prefix and `/`, then 1 to 63
/// characters of `[A-Za-z0-9._-]`; a value of at most 63 printable characters.
fn check_label(key: &str, value: &str) -> Result<(), Status> {
    let invalid = |rule: &str| Status::invalid_argument(format!("labels: {key:?}={value:?}: {rule}"));
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    let name_ok = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > MAX_LABEL_NAME || !name_ok(name) {
        return Err(invalid("the key's name must be 1 to 63 characters of A-Z a-z 0-9 . _ -"));
    }
    if let Some(prefix) = prefix {
        let dns_ok = |label: &str| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if prefix.len() > MAX_LABEL_PREFIX || !prefix.split('.').all(dns_ok) {
            return Err(invalid("the key's prefix must be a DNS name, e.g. fleet.kairos.io/wave"));
        }
    }
    if value.chars().count() > MAX_LABEL_VALUE || value.chars().any(char::is_control) {
        return Err(invalid("the value must be at most 63 printable characters"));
    }
    Ok(())
}

/// The proto view of a record: never the hash.
fn api_token(r: &EnrollTokenRecord) -> pb::EnrollToken {
    pb::EnrollToken {
        token_id: r.id.to_string(),
        description: r.description.clone(),
        created_at: Some(timestamp(r.created_at_ms)),
        expires_at: Some(timestamp(r.expires_at_ms)),
        max_uses: r.max_uses,
        uses: r.uses,
        labels: r.labels.clone().into_iter().collect(),
        created_by: r.created_by.clone(),
        revoked: r.revoked,
        revoked_at: r.revoked_at_ms.map(timestamp),
    }
}

/// The audit summary of a CreateEnrollToken request (it carries no secret).
pub(super) fn summary_create(req: &pb::CreateEnrollTokenRequest) -> String {
    let ttl = req.ttl.as_ref().map_or_else(|| "none".to_owned(), |d| format!("{}s", d.seconds));
    let labels: BTreeMap<&String, &String> = req.labels.iter().collect();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("ttl={ttl} max_uses={} labels={{{}}} description={:?}", req.max_uses, labels.join(","), req.description)
}

pub(super) async fn create(
    client: &ReplicaClient,
    call: &Call,
    req: pb::CreateEnrollTokenRequest,
) -> Result<pb::CreateEnrollTokenResponse, Status> {
    admit(call)?;
    let ttl = req.ttl.as_ref().ok_or_else(|| Status::invalid_argument("ttl: required, between 1m and 365d"))?;
    let ttl = lifetime(ttl, "ttl", MIN_TTL, MAX_TTL)?;
    check_description(&req.description)?;
    if req.labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!("labels: at most {MAX_LABELS} (got {})", req.labels.len())));
    }
    let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
    for (k, v) in &labels {
        check_label(k, v)?;
    }
    let created_by = match call.caller() {
        Caller::Token { id, .. } => id.clone(),
        other => other.name(),
    };
    let entry = call.entry(Outcome::Succeeded, None, client.id());
    // A fresh id and secret per attempt: a lost race may have been an id collision.
    let plan = |_: &KvReader| -> Result<Planned<(EnrollTokenRecord, String)>, Status> {
        let generated = generate_token().map_err(|e| Status::internal(format!("generating a token: {e}")))?;
        let now = now_ms();
        let record = EnrollTokenRecord {
            id: generated.id().clone(),
            description: req.description.clone(),
            hash: hash_secret(generated.secret_part()),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            max_uses: req.max_uses,
            uses: 0,
            labels: labels.clone(),
            created_by: created_by.clone(),
            revoked: false,
            revoked_at_ms: None,
        };
        let bootstrap = format!("{ENROLL_TOKEN_PREFIX}{}_{}", record.id, generated.secret_part());
        let key = record.key();
        let value = serde_json::to_vec(&record).map_err(|e| Status::internal(format!("encoding {key}: {e}")))?;
        Ok(Planned {
            compares: vec![Compare::missing(key.as_str())],
            ops: vec![Op::put(key.as_str(), value)],
            target: format!("enroll-token/{}", record.id),
            value: (record, bootstrap),
        })
    };
    let (record, secret) = commit_with_entry(client, entry, plan).await?;
    tracing::info!(token_id = %record.id, max_uses = record.max_uses, by = %created_by, "enroll token created");
    Ok(pb::CreateEnrollTokenResponse { token: Some(api_token(&record)), secret })
}

pub(super) fn list(
    reader: &KvReader,
    req: &pb::ListEnrollTokensRequest,
) -> Result<pb::ListEnrollTokensResponse, Status> {
    let now = now_ms();
    let mut records: Vec<EnrollTokenRecord> = load_all::<EnrollTokenRecord>(reader, ENROLL_TOKENS_PREFIX)?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| req.include_revoked || r.usable(now))
        .collect();
    let position = |r: &EnrollTokenRecord| -> Position { (Reverse(r.created_at_ms), r.id.to_string()) };
    records.sort_by_key(position);
    let (page, next_page_token) = paginate(records, position, &req.page_token, req.page_size)?;
    Ok(pb::ListEnrollTokensResponse { tokens: page.iter().map(api_token).collect(), next_page_token })
}

/// Revokes an enroll token; revoking it again changes nothing.
pub(super) async fn revoke(
    client: &ReplicaClient,
    call: &Call,
    req: &pb::RevokeEnrollTokenRequest,
) -> Result<pb::RevokeEnrollTokenResponse, Status> {
    admit(call)?;
    let id = token_id_field(&req.token_id)?;
    let key = key(id.as_str());
    let entry = call.entry(Outcome::Succeeded, None, client.id());
    let plan = |reader: &KvReader| -> Result<Planned<EnrollTokenRecord>, Status> {
        let stored = reader.get(key.as_bytes()).map_err(|e| Status::internal(e.to_string()))?;
        let kv = stored.ok_or_else(|| {
            Status::not_found(format!(
                "enroll token {id} does not exist; `kairosctl enroll-tokens list --all` shows all"
            ))
        })?;
        let mut record: EnrollTokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| Status::internal(format!("stored record {key} does not decode: {e}")))?;
        let mut ops = Vec::new();
        if !record.revoked {
            record.revoked = true;
            record.revoked_at_ms = Some(now_ms());
            let value = serde_json::to_vec(&record).map_err(|e| Status::internal(format!("encoding {key}: {e}")))?;
            ops.push(Op::put(key.as_str(), value));
        }
        Ok(Planned {
            compares: vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision)],
            ops,
            target: format!("enroll-token/{id}"),
            value: record,
        })
    };
    let record = commit_with_entry(client, entry, plan).await?;
    tracing::info!(token_id = %id, by = %call.caller().name(), "enroll token revoked");
    Ok(pb::RevokeEnrollTokenResponse { token: Some(api_token(&record)) })
}

#[cfg(test)]
#[path = "enroll_tests.rs"]
mod tests;
