//! Operator bearer tokens and roles.
//!
//! A token is `kft_<id>_<secret>`: `id` is 8 hex characters the server
//! uses to find the record without scanning, `secret` is 64 hex characters
//! (256 random bits). The server keeps only the SHA-256 of the secret in a
//! [`TokenRecord`]. The id may be logged and audited; the secret never.
//! Ids are random: whoever creates a record must check the id is unused.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::SecurityError;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "kft_";
const ID_BYTES: usize = 4;
const SECRET_BYTES: usize = 32;
const MIN_SECRET_CHARS: usize = 32;
const MAX_SECRET_CHARS: usize = 128;

/// What a token may do. Ordered: `Admin` ⊇ `Operator` ⊇ `Viewer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read-only: list, get, watch, report, plan, cluster status.
    Viewer,
    /// Viewer plus releases and rollouts.
    Operator,
    /// Operator plus tokens, enroll tokens, audit log and cluster membership.
    Admin,
}

impl Role {
    /// Whether a token with this role may make a call that needs `required`.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }

    /// `Ok` when [`allows`](Role::allows), else [`AuthError::Forbidden`].
    pub fn require(self, required: Role) -> Result<(), AuthError> {
        if self.allows(required) {
            Ok(())
        } else {
            Err(AuthError::Forbidden { role: self, required })
        }
    }

    /// The lowercase name used in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: expected viewer, operator or admin")),
        }
    }
}

/// The public part of a token: 8 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TokenId(String);

impl TokenId {
    /// Checks the form: 8 lowercase hex characters.
    pub fn parse(s: &str) -> Result<TokenId, AuthError> {
        if s.len() == 2 * ID_BYTES && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(TokenId(s.to_string()))
        } else {
            Err(AuthError::Malformed { reason: format!("token id {s:?} is not 8 lowercase hex characters") })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TokenId {
    type Error = AuthError;

    fn try_from(s: String) -> Result<TokenId, AuthError> {
        TokenId::parse(&s)
    }
}

impl From<TokenId> for String {
    fn from(id: TokenId) -> String {
        id.0
    }
}

/// A whole bearer token, `kft_<id>_<secret>`. Its `Debug` hides the
/// secret and it has no `Display`, so it does not end up in logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    token: String,
    id: TokenId,
}

impl Secret {
    /// The token's id.
    pub fn id(&self) -> &TokenId {
        &self.id
    }

    /// The secret part (what [`hash_secret`] hashes).
    pub fn secret_part(&self) -> &str {
        &self.token[TOKEN_PREFIX.len() + 2 * ID_BYTES + 1..]
    }

    /// The whole token, to show once or write to a 0600 file.
    pub fn expose(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({TOKEN_PREFIX}{}_<redacted>)", self.id)
    }
}

/// Creates a new random token.
pub fn generate_token() -> Result<Secret, SecurityError> {
    let mut bytes = [0u8; ID_BYTES + SECRET_BYTES];
    getrandom::fill(&mut bytes).map_err(SecurityError::Random)?;
    let id = TokenId(hex(&bytes[..ID_BYTES]));
    let token = format!("{TOKEN_PREFIX}{id}_{}", hex(&bytes[ID_BYTES..]));
    Ok(Secret { token, id })
}

/// Splits a bearer token into its id and secret, checking the form.
pub fn parse_token(token: &str) -> Result<(TokenId, &str), AuthError> {
    let malformed = |reason: &str| AuthError::Malformed { reason: reason.to_string() };
    let rest = token.strip_prefix(TOKEN_PREFIX).ok_or_else(|| malformed("it does not start with `kft_`"))?;
    let (id, secret) = rest.split_once('_').ok_or_else(|| malformed("no `_` between id and secret"))?;
    let id = TokenId::parse(id)?;
    if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&secret.len())
        || !secret.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(malformed("the secret is not 32 to 128 letters and digits"));
    }
    Ok((id, secret))
}

/// SHA-256 of a secret, lowercase hex: what a [`TokenRecord`] stores.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Whether `secret` hashes to `hash`, compared in constant time.
pub fn verify(secret: &str, hash: &str) -> bool {
    hash_secret(secret).as_bytes().ct_eq(hash.as_bytes()).into()
}

/// A token as the control plane stores it: never the secret, only its hash.
///
/// Every field has a fixed place (no skipped `None`s), so the record
/// encodes with postcard as well as with TOML and JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's id.
    pub id: TokenId,
    /// What it may do.
    pub role: Role,
    /// Free text, e.g. `ci pipeline`.
    #[serde(default)]
    pub description: String,
    /// [`hash_secret`] of the secret.
    pub hash: String,
    /// Creation time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Expiry, Unix milliseconds; `None` = never.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// True once revoked.
    #[serde(default)]
    pub revoked: bool,
    /// Token id of the creator; `init` for the token `init` made.
    #[serde(default)]
    pub created_by: String,
    /// When it was revoked, Unix milliseconds.
    #[serde(default)]
    pub revoked_at_ms: Option<u64>,
}

impl TokenRecord {
    /// The record for a new token, valid for `ttl` from `now_ms` (`None` = forever).
    pub fn new(
        secret: &Secret,
        role: Role,
        description: &str,
        created_by: &str,
        now_ms: u64,
        ttl: Option<Duration>,
    ) -> Self {
        let ttl_ms = |ttl: Duration| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        TokenRecord {
            id: secret.id().clone(),
            role,
            description: description.to_string(),
            hash: hash_secret(secret.secret_part()),
            created_at_ms: now_ms,
            expires_at_ms: ttl.map(|ttl| now_ms.saturating_add(ttl_ms(ttl))),
            revoked: false,
            created_by: created_by.to_string(),
            revoked_at_ms: None,
        }
    }

    /// The role `secret` grants at `now_ms`. The secret is checked first,
    /// so a caller who only knows the id learns nothing about the token.
    pub fn check(&self, secret: &str, now_ms: u64) -> Result<Role, AuthError> {
        let id = self.id.clone();
        if !verify(secret, &self.hash) {
            return Err(AuthError::BadSecret { id });
        }
        if self.revoked {
            return Err(AuthError::Revoked { id });
        }
        match self.expires_at_ms {
            Some(at_ms) if now_ms >= at_ms => Err(AuthError::Expired { id, at_ms }),
            _ => Ok(self.role),
        }
    }
}

/// Authenticates a bearer token: parses it, finds its record with `find`
/// and [checks](TokenRecord::check) it at `now_ms`.
pub fn authenticate<'a>(
    token: &str,
    now_ms: u64,
    find: impl FnOnce(&TokenId) -> Option<&'a TokenRecord>,
) -> Result<(TokenId, Role), AuthError> {
    let (id, secret) = parse_token(token)?;
    let record = find(&id).ok_or_else(|| AuthError::Unknown { id: id.clone() })?;
    let role = record.check(secret, now_ms)?;
    Ok((id, role))
}

/// Why a token was refused. Messages name the token id, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not of the form `kft_<id>_<secret>`.
    #[error("malformed token: {reason}; use the whole token exactly as it was printed (`kft_<8 hex>_<secret>`)")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// No record has this id.
    #[error("token {id} is unknown to this cluster; it may belong to another cluster: ask an admin for a new token")]
    Unknown {
        /// The id from the token.
        id: TokenId,
    },
    /// The secret does not hash to the record's hash.
    #[error("token {id}: wrong secret; use the whole token exactly as it was printed, or ask an admin for a new one")]
    BadSecret {
        /// The id from the token.
        id: TokenId,
    },
    /// The token has expired.
    #[error("token {id} expired at {}; ask an admin for a new token", format_ms(*at_ms))]
    Expired {
        /// The token's id.
        id: TokenId,
        /// When it expired, Unix milliseconds.
        at_ms: u64,
    },
    /// The token was revoked.
    #[error("token {id} was revoked; ask an admin for a new token")]
    Revoked {
        /// The token's id.
        id: TokenId,
    },
    /// The token is valid but its role is too low for the call.
    #[error("this call needs role {required} but the token has role {role}; ask an admin for a {required} token")]
    Forbidden {
        /// The token's role.
        role: Role,
        /// The role the call needs.
        required: Role,
    },
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> tonic::Status {
        match e {
            AuthError::Forbidden { .. } => tonic::Status::permission_denied(e.to_string()),
            _ => tonic::Status::unauthenticated(e.to_string()),
        }
    }
}

fn format_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| format!("{ms} ms after the Unix epoch"), |t| t.to_string())
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
