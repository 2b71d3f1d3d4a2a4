//! Who is calling a public service, and whether their role allows the call.
//!
//! Callers prove who they are in one of two ways:
//! - a client certificate of this cluster's CA: a replica certificate (a
//!   peer joining or forwarding) or an operator certificate from
//!   `Ca::issue_client` counts as `admin`, as a kubeconfig client
//!   certificate does; a node certificate has no operator role;
//! - a bearer token (`authorization: Bearer kft_<id>_<secret>`) checked
//!   against the token records in the replicated state (`tokens/<id>`).
//!
//! The records are read from this replica's state machine: a token created
//! a moment ago on the leader may be unknown on a lagging follower until it
//! catches up (milliseconds); the error says so and clients retry.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Status};

use crate::security::token::authenticate;
use crate::security::{peer_identity, AuthError, PeerIdentity, Role, TokenRecord};
use crate::serve::TOKENS_PREFIX;
use crate::store::KvReader;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A replica of this cluster (certificate).
    Replica(u64),
    /// An operator with a client certificate of this cluster's CA.
    Certificate(String),
    /// An operator with a token.
    Token {
        /// The token id (never the secret).
        id: String,
        /// The token's role.
        role: Role,
    },
}

impl Caller {
    /// The role this caller holds.
    pub fn role(&self) -> Role {
        match self {
            Caller::Replica(_) | Caller::Certificate(_) => Role::Admin,
            Caller::Token { role, .. } => *role,
        }
    }

    /// How the audit log names this caller.
    pub fn name(&self) -> String {
        match self {
            Caller::Replica(id) => format!("replica-{id}"),
            Caller::Certificate(cn) => format!("cert:{cn}"),
            Caller::Token { id, .. } => format!("token:{id}"),
        }
    }
}

/// Now, Unix milliseconds (the clock token expiry and audit times use).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn bearer<T>(request: &Request<T>) -> Result<Option<&str>, Status> {
    let Some(value) = request.metadata().get("authorization") else { return Ok(None) };
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization: the header must be ASCII `Bearer <token>`"))?;
    match text.strip_prefix("Bearer ").or_else(|| text.strip_prefix("bearer ")) {
        Some(token) => Ok(Some(token.trim())),
        None => Err(Status::unauthenticated("authorization: expected `Bearer <token>`")),
    }
}

/// Authenticates the caller of `request` and checks that its role is at
/// least `required`; the error is UNAUTHENTICATED or PERMISSION_DENIED with
/// a message that says what is missing.
pub fn authorize<T>(reader: &KvReader, request: &Request<T>, required: Role) -> Result<Caller, Status> {
    let caller = match (bearer(request)?, peer_identity(request)) {
        // A token wins over the certificate: a follower forwarding an
        // operator's call presents its own replica certificate but passes
        // the operator's token on.
        (Some(token), _) => {
            let mut record: Option<TokenRecord> = None;
            let (id, role) = authenticate(token, now_ms(), |id| {
                let key = format!("{TOKENS_PREFIX}{id}");
                record =
                    reader.get(key.as_bytes()).ok().flatten().and_then(|kv| serde_json::from_slice(&kv.value).ok());
                record.as_ref()
            })
            .map_err(Status::from)?;
            Caller::Token { id: id.to_string(), role }
        }
        (None, Some(PeerIdentity::Replica(id))) => Caller::Replica(id),
        (None, Some(PeerIdentity::Other(cn))) => Caller::Certificate(cn),
        (None, Some(PeerIdentity::Node(id))) => {
            return Err(Status::permission_denied(format!(
                "node-{id}: node certificates may only use the node service; operators need a token"
            )))
        }
        (None, None) => {
            return Err(Status::unauthenticated(
                "no credentials: pass a token (`authorization: Bearer kft_...`, kairosctl --token-file) \
                 or a client certificate of this cluster",
            ))
        }
    };
    caller.role().require(required).map_err(|e: AuthError| Status::from(e))?;
    Ok(caller)
}
