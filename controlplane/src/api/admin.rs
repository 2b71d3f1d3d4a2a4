//! `kairos.fleet.v1.AdminService`: operator tokens (`tokens/<id>`), enroll
//! tokens (`enroll-tokens/<id>`) and the audit log. Every call needs role
//! admin.
//!
//! Any replica answers: changes go to the leader through the replicated
//! store, each committed in one transaction with its audit entry (see
//! [`audit`](super::audit)); lists read this replica's applied state (the
//! `kairos-read-consistency: linearizable` metadata makes them fresh).
//! Failed and denied changes are audited too.

mod enroll;
mod tokens;

use std::time::Duration;

use super::auth::now_ms;

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::admin_service_server::{AdminService, AdminServiceServer};
use tonic::{Request, Response, Status};

pub use enroll::{
    consume_enroll_token, enroll_token_id, EnrollError, EnrollTokenRecord, ENROLL_TOKENS_PREFIX, ENROLL_TOKEN_PREFIX,
};

use super::audit::{self, method, Call};
use super::auth::authorize;
use super::{read_status, wants_linearizable};
use crate::raft::MAX_MESSAGE_BYTES;
use crate::replica::ReplicaClient;
use crate::security::{Role, TokenId};
use crate::store::KvReader;

/// Longest description, in bytes.
const MAX_DESCRIPTION_BYTES: usize = 256;
/// Page size when the request asks for 0, and the largest honoured.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// `AdminService` of one replica.
#[derive(Clone)]
pub struct AdminApi {
    client: ReplicaClient,
}

impl AdminApi {
    /// The service answering through `client`'s replica.
    pub fn new(client: ReplicaClient) -> Self {
        AdminApi { client }
    }

    /// The tonic server wrapper with the replica's message limits.
    pub fn into_server(self) -> AdminServiceServer<Self> {
        AdminServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Authenticates the caller of a change and opens its audit record;
    /// the role is checked by [`admit`], so a refusal is audited with the
    /// caller's name. Unauthenticated calls are refused here, unaudited.
    fn begin<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        target: String,
        summary: String,
    ) -> Result<Call, Status> {
        let caller = authorize(self.client.reader(), request, Role::Viewer)?;
        Ok(Call::new(request, method, &caller).about(target, summary))
    }

    /// The handler's result; a failure is appended to the audit log first.
    async fn finish<T>(&self, call: &Call, result: Result<T, Status>) -> Result<Response<T>, Status> {
        if let Err(status) = &result {
            call.failed(&self.client, status).await;
        }
        result.map(Response::new)
    }

    /// Authorizes a read-only call, confirming freshness when asked to.
    async fn read<T>(&self, request: &Request<T>) -> Result<(), Status> {
        authorize(self.client.reader(), request, Role::Admin)?;
        if wants_linearizable(request)? {
            self.client.read_linearizable().await.map_err(read_status)?;
        }
        Ok(())
    }
}

/// PERMISSION_DENIED unless the call's caller is an admin.
fn admit(call: &Call) -> Result<(), Status> {
    call.caller().role().require(Role::Admin).map_err(Status::from)
}

/// A protobuf timestamp of Unix milliseconds.
fn timestamp(ms: u64) -> prost_types::Timestamp {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    // Below 1e9 by construction, so the cast cannot truncate.
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A lifetime field, checked against `[min, max]`; errors name the field.
fn lifetime(ttl: &prost_types::Duration, field: &str, min: Duration, max: Duration) -> Result<Duration, Status> {
    let range = || {
        let got =
            if ttl.nanos == 0 { format!("{}s", ttl.seconds) } else { format!("{}.{:09}s", ttl.seconds, ttl.nanos) };
        format!("{field}: must be between {} and {} (got {got})", human(min), human(max))
    };
    let seconds = u64::try_from(ttl.seconds).map_err(|_| Status::invalid_argument(range()))?;
    let nanos = u32::try_from(ttl.nanos).map_err(|_| Status::invalid_argument(range()))?;
    let ttl = Duration::new(seconds, nanos);
    if ttl < min || ttl > max {
        return Err(Status::invalid_argument(range()));
    }
    Ok(ttl)
}

/// `90s`, `15m`, `36h`, `365d`: how limits appear in messages.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        _ if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

fn check_description(description: &str) -> Result<(), Status> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(Status::invalid_argument(format!(
            "description: at most {MAX_DESCRIPTION_BYTES} bytes (got {})",
            description.len()
        )));
    }
    Ok(())
}

/// The token id of a request field; INVALID_ARGUMENT naming the field.
fn token_id_field(value: &str) -> Result<TokenId, Status> {
    TokenId::parse(value.trim()).map_err(|_| {
        Status::invalid_argument(format!(
            "token_id: must be 8 lowercase hex characters, as the list shows (got {:?})",
            audit::truncate(value, 64)
        ))
    })
}

fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// Where a token sorts in a list: newest first, then by id.
type Position = (std::cmp::Reverse<u64>, String);

/// The position after which the next page starts, `<created ms>.<id>`.
fn page_token(position: &Position) -> String {
    format!("{}.{}", position.0 .0, position.1)
}

fn parse_page_token(token: &str) -> Result<Option<Position>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let parsed = token.split_once('.').and_then(|(ms, id)| Some((std::cmp::Reverse(ms.parse().ok()?), id.to_owned())));
    parsed.map(Some).ok_or_else(|| Status::invalid_argument("page_token: not a token this server returned"))
}

/// One page of `items` (already sorted by `position`) after `page_token`.
fn paginate<T>(
    mut items: Vec<T>,
    position: impl Fn(&T) -> Position,
    page_token_in: &str,
    requested: u32,
) -> Result<(Vec<T>, String), Status> {
    if let Some(mark) = parse_page_token(page_token_in)? {
        items.retain(|item| position(item) > mark);
    }
    let size = page_size(requested);
    let more = items.len() > size;
    items.truncate(size);
    let next = if more { items.last().map(|i| page_token(&position(i))).unwrap_or_default() } else { String::new() };
    Ok((items, next))
}

/// Every JSON record under `prefix`, with its key's mod revision.
fn load_all<T: serde::de::DeserializeOwned>(reader: &KvReader, prefix: &str) -> Result<Vec<(u64, T)>, Status> {
    reader
        .scan_prefix(prefix.as_bytes())
        .map(|item| {
            let (key, kv) = item.map_err(|e| Status::internal(e.to_string()))?;
            let record = serde_json::from_slice(&kv.value)
                .map_err(|e| Status::internal(format!("stored record {} does not decode: {e}", key.escape_ascii())))?;
            Ok((kv.mod_revision, record))
        })
        .collect()
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let call =
            self.begin(&request, method::CREATE_TOKEN, String::new(), tokens::summary_create(request.get_ref()))?;
        let result = tokens::create(&self.client, &call, request.into_inner()).await;
        self.finish(&call, result).await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.read(&request).await?;
        tokens::list(self.client.reader(), request.get_ref()).map(Response::new)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id = audit::truncate(&request.get_ref().token_id, 64);
        let call = self.begin(&request, method::REVOKE_TOKEN, format!("token/{id}"), format!("token_id={id}"))?;
        let result = tokens::revoke(&self.client, &call, request.get_ref()).await;
        self.finish(&call, result).await
    }

    async fn create_enroll_token(
        &self,
        request: Request<pb::CreateEnrollTokenRequest>,
    ) -> Result<Response<pb::CreateEnrollTokenResponse>, Status> {
        let call = self.begin(
            &request,
            method::CREATE_ENROLL_TOKEN,
            String::new(),
            enroll::summary_create(request.get_ref()),
        )?;
        let result = enroll::create(&self.client, &call, request.into_inner()).await;
        self.finish(&call, result).await
    }

    async fn list_enroll_tokens(
        &self,
        request: Request<pb::ListEnrollTokensRequest>,
    ) -> Result<Response<pb::ListEnrollTokensResponse>, Status> {
        self.read(&request).await?;
        enroll::list(self.client.reader(), request.get_ref()).map(Response::new)
    }

    async fn revoke_enroll_token(
        &self,
        request: Request<pb::RevokeEnrollTokenRequest>,
    ) -> Result<Response<pb::RevokeEnrollTokenResponse>, Status> {
        let id = audit::truncate(&request.get_ref().token_id, 64);
        let target = format!("enroll-token/{id}");
        let call = self.begin(&request, method::REVOKE_ENROLL_TOKEN, target, format!("token_id={id}"))?;
        let result = enroll::revoke(&self.client, &call, request.get_ref()).await;
        self.finish(&call, result).await
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.read(&request).await?;
        audit::list(self.client.reader(), request.get_ref()).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_outside_the_range_name_the_field_and_the_bounds() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(365 * 86_400));
        let ok = lifetime(&prost_types::Duration { seconds: 3600, nanos: 0 }, "ttl", min, max);
        assert_eq!(ok.ok(), Some(Duration::from_secs(3600)));
        for seconds in [59, -5, 365 * 86_400 + 1] {
            let err = lifetime(&prost_types::Duration { seconds, nanos: 0 }, "ttl", min, max).unwrap_err();
            assert!(err.message().starts_with("ttl: must be between 1m and 365d"), "{seconds}: {err:?}");
        }
    }

    #[test]
    fn pages_continue_after_the_last_position_shown() {
        let items: Vec<Position> = (0..5u64).map(|i| (std::cmp::Reverse(100 - i), format!("{i:08x}"))).collect();
        let (first, next) = paginate(items.clone(), Clone::clone, "", 2).expect("first page");
        assert_eq!((first.len(), next.as_str()), (2, "99.00000001"));
        let (second, next) = paginate(items.clone(), Clone::clone, &next, 2).expect("second page");
        assert_eq!(second.first().map(|p| p.0 .0), Some(98));
        let (last, next) = paginate(items, Clone::clone, &next, 2).expect("last page");
        assert_eq!((last.len(), next.as_str()), (1, ""));
        assert!(parse_page_token("garbage").is_err());
    }
}
