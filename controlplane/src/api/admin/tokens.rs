//! Operator tokens: CreateToken, ListTokens, RevokeToken over the
//! [`TokenRecord`]s at `tokens/<id>`.

use std::cmp::Reverse;
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use tonic::Status;

use super::{admit, check_description, lifetime, load_all, now_ms, paginate, timestamp, token_id_field, Position};
use crate::api::audit::{commit_with_entry, role_to_proto, Call, Outcome, Planned};
use crate::api::auth::Caller;
use crate::replica::ReplicaClient;
use crate::security::{generate_token, Role, Secret, TokenRecord};
use crate::serve::TOKENS_PREFIX;
use crate::store::{Compare, CompareOp, KvReader, Op};

/// Shortest lifetime of a token that expires.
const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest lifetime of a token that expires (ten years).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

fn key(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

/// The role a request asks for; UNSPECIFIED and unknown values are invalid.
fn role_from_proto(value: i32) -> Result<Role, Status> {
    match pb::TokenRole::try_from(value) {
        Ok(pb::TokenRole::Viewer) => Ok(Role::Viewer),
        Ok(pb::TokenRole::Operator) => Ok(Role::Operator),
        Ok(pb::TokenRole::Admin) => Ok(Role::Admin),
        _ => Err(Status::invalid_argument(format!("role: must be VIEWER, OPERATOR or ADMIN (got {value})"))),
    }
}

/// The proto view of a record: never the hash.
fn api_token(r: &TokenRecord) -> pb::ApiToken {
    pb::ApiToken {
        token_id: r.id.to_string(),
        role: role_to_proto(r.role) as i32,
        description: r.description.clone(),
        created_at: Some(timestamp(r.created_at_ms)),
        expires_at: r.expires_at_ms.map(timestamp),
        created_by: r.created_by.clone(),
        revoked: r.revoked,
        revoked_at: r.revoked_at_ms.map(timestamp),
    }
}

/// Whether the token works at `now_ms`: not revoked, not expired.
fn active(r: &TokenRecord, now_ms: u64) -> bool {
    !r.revoked && r.expires_at_ms.is_none_or(|at| now_ms < at)
}

/// How a record names its creator: the token id, else the caller's name.
fn creator(caller: &Caller) -> String {
    match caller {
        Caller::Token { id, .. } => id.clone(),
        other => other.name(),
    }
}

/// The audit summary of a CreateToken request (it carries no secret).
pub(super) fn summary_create(req: &pb::CreateTokenRequest) -> String {
    let role = role_from_proto(req.role).map_or_else(|_| req.role.to_string(), |r| r.as_str().to_owned());
    let ttl = req.ttl.as_ref().map_or_else(|| "none".to_owned(), |d| format!("{}s", d.seconds));
    format!("role={role} ttl={ttl} description={:?}", req.description)
}

pub(super) async fn create(
    client: &ReplicaClient,
    call: &Call,
    req: pb::CreateTokenRequest,
) -> Result<pb::CreateTokenResponse, Status> {
    admit(call)?;
    let role = role_from_proto(req.role)?;
    check_description(&req.description)?;
    let ttl = req.ttl.as_ref().map(|ttl| lifetime(ttl, "ttl", MIN_TTL, MAX_TTL)).transpose()?;
    let created_by = creator(call.caller());
    let entry = call.entry(Outcome::Succeeded, None, client.id());
    // A fresh id and secret per attempt: a lost race may have been an id collision.
    let plan = |_: &KvReader| -> Result<Planned<(TokenRecord, Secret)>, Status> {
        let secret = generate_token().map_err(|e| Status::internal(format!("generating a token: {e}")))?;
        let record = TokenRecord::new(&secret, role, &req.description, &created_by, now_ms(), ttl);
        let key = key(record.id.as_str());
        let value = serde_json::to_vec(&record).map_err(|e| Status::internal(format!("encoding {key}: {e}")))?;
        Ok(Planned {
            compares: vec![Compare::missing(key.as_str())],
            ops: vec![Op::put(key.as_str(), value)],
            target: format!("token/{}", record.id),
            value: (record, secret),
        })
    };
    let (record, secret) = commit_with_entry(client, entry, plan).await?;
    tracing::info!(token_id = %record.id, role = %record.role, by = %created_by, "operator token created");
    Ok(pb::CreateTokenResponse { token: Some(api_token(&record)), secret: secret.expose().to_owned() })
}

pub(super) fn list(reader: &KvReader, req: &pb::ListTokensRequest) -> Result<pb::ListTokensResponse, Status> {
    let now = now_ms();
    let mut records: Vec<TokenRecord> = load_all::<TokenRecord>(reader, TOKENS_PREFIX)?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| req.include_revoked || active(r, now))
        .collect();
    let position = |r: &TokenRecord| -> Position { (Reverse(r.created_at_ms), r.id.to_string()) };
    records.sort_by_key(position);
    let (page, next_page_token) = paginate(records, position, &req.page_token, req.page_size)?;
    Ok(pb::ListTokensResponse { tokens: page.iter().map(api_token).collect(), next_page_token })
}

/// Revokes a token. Revoking an active admin token needs another active
/// admin token; the compare on that token's mod revision keeps two
/// concurrent revocations from each relying on the other.
pub(super) async fn revoke(
    client: &ReplicaClient,
    call: &Call,
    req: &pb::RevokeTokenRequest,
) -> Result<pb::RevokeTokenResponse, Status> {
    admit(call)?;
    let id = token_id_field(&req.token_id)?;
    let key = key(id.as_str());
    let entry = call.entry(Outcome::Succeeded, None, client.id());
    let plan = |reader: &KvReader| -> Result<Planned<TokenRecord>, Status> {
        let now = now_ms();
        let all = load_all::<TokenRecord>(reader, TOKENS_PREFIX)?;
        let Some((revision, record)) = all.iter().find(|(_, r)| r.id == id).cloned() else {
            return Err(Status::not_found(format!(
                "token {id} does not exist; `kairosctl tokens list --all` shows every token"
            )));
        };
        let mut compares = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)];
        let mut updated = record.clone();
        let mut ops = Vec::new();
        if !record.revoked {
            if record.role == Role::Admin && active(&record, now) {
                let other = all.iter().find(|(_, r)| r.id != id && r.role == Role::Admin && active(r, now));
                let Some((other_revision, other)) = other else {
                    return Err(Status::failed_precondition(format!(
                        "token {id} is the last active admin token: revoking it would leave no admin; create \
                         another admin token first (`kairosctl tokens create --role admin`)"
                    )));
                };
                compares.push(Compare::mod_revision(self::key(other.id.as_str()), CompareOp::Equal, *other_revision));
            }
            updated.revoked = true;
            updated.revoked_at_ms = Some(now);
            let value = serde_json::to_vec(&updated).map_err(|e| Status::internal(format!("encoding {key}: {e}")))?;
            ops.push(Op::put(key.as_str(), value));
        }
        Ok(Planned { compares, ops, target: format!("token/{id}"), value: updated })
    };
    let record = commit_with_entry(client, entry, plan).await?;
    tracing::info!(token_id = %id, by = %call.caller().name(), "operator token revoked");
    Ok(pb::RevokeTokenResponse { token: Some(api_token(&record)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_carry_no_hash_and_roles_round_trip() {
        let secret = generate_token().expect("random");
        let record = TokenRecord::new(&secret, Role::Operator, "ci", "init", 1_000, Some(MIN_TTL));
        let token = api_token(&record);
        let shown = format!("{token:?}");
        assert!(!shown.contains(&record.hash) && !shown.contains(secret.secret_part()), "{shown}");
        assert_eq!(role_from_proto(token.role).ok(), Some(Role::Operator));
        assert_eq!(token.expires_at.map(|t| t.seconds), Some(61));
        assert!(role_from_proto(pb::TokenRole::Unspecified as i32).is_err());
        assert!(role_from_proto(42).is_err());
    }

    #[test]
    fn revoked_and_expired_tokens_are_inactive() {
        let secret = generate_token().expect("random");
        let mut record = TokenRecord::new(&secret, Role::Admin, "", "init", 1_000, Some(MIN_TTL));
        assert!(active(&record, 1_000));
        assert!(!active(&record, 61_000), "expired at 61 s");
        record.expires_at_ms = None;
        record.revoked = true;
        assert!(!active(&record, 1_000));
    }

    #[test]
    fn create_summary_names_role_and_ttl_but_no_secret() {
        let req = pb::CreateTokenRequest {
            role: pb::TokenRole::Viewer as i32,
            description: "ci".into(),
            ttl: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        };
        assert_eq!(summary_create(&req), "role=viewer ttl=3600s description=\"ci\"");
    }
}
