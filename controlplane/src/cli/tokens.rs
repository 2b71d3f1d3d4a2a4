//! `kairosctl tokens ...`: operator tokens (needs admin).

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use kairos_fleet_proto::fleet::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use serde::{Deserialize, Serialize};

use super::output::{or_dash, yes_no, Format, Render, Table};
use super::settings::parse_timeout;
use super::{print, timestamp, CliError, Connection};
use crate::security::Role;

/// Largest page the server serves.
const PAGE_SIZE: u32 = 1000;

/// `kairosctl tokens ...`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token and print its secret (shown only once).
    Create {
        /// What the token may do: viewer, operator or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Free text, e.g. `ci pipeline` or a person's name.
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. 90d, 12h, 30m (at least 1m) [default: never expires].
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// List tokens, newest first (never their secrets).
    List {
        /// Also list revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token; every replica refuses it once the change is applied.
    Revoke {
        /// The token id (8 hex characters, as `tokens list` shows).
        id: String,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

/// A lifetime flag: `90d`, `12h`, `30m`, `3600` (seconds) or ISO 8601.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    if let Some(days) = text.trim().strip_suffix('d').and_then(|d| d.parse::<u64>().ok()) {
        return Ok(Duration::from_secs(days.saturating_mul(86_400)));
    }
    parse_timeout(text).map_err(|e| e.replace("30s, 500ms or 2m", "90d, 12h or 30m"))
}

/// A protobuf duration of `d`.
pub fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: d.subsec_nanos() as i32 }
}

/// The lowercase name of a token role.
pub fn role_name(role: i32) -> &'static str {
    match pb::TokenRole::try_from(role) {
        Ok(pb::TokenRole::Viewer) => "viewer",
        Ok(pb::TokenRole::Operator) => "operator",
        Ok(pb::TokenRole::Admin) => "admin",
        _ => "unknown",
    }
}

/// One operator token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// The token id.
    pub token_id: String,
    /// `viewer`, `operator` or `admin`.
    pub role: String,
    /// Free text.
    pub description: String,
    /// When it was created, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When it expires, RFC 3339; absent = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Token id of its creator; `init` for the first admin token.
    pub created_by: String,
    /// Whether it was revoked.
    pub revoked: bool,
    /// When it was revoked, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<pb::ApiToken> for TokenView {
    fn from(t: pb::ApiToken) -> TokenView {
        TokenView {
            role: role_name(t.role).to_owned(),
            created_at: t.created_at.as_ref().and_then(timestamp),
            expires_at: t.expires_at.as_ref().and_then(timestamp),
            revoked_at: t.revoked_at.as_ref().and_then(timestamp),
            token_id: t.token_id,
            description: t.description,
            created_by: t.created_by,
            revoked: t.revoked,
        }
    }
}

/// `tokens list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenListView {
    /// Tokens, newest first.
    pub tokens: Vec<TokenView>,
}

/// `tokens create`: the new token and, this once, its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedTokenView {
    /// The new token.
    pub token: TokenView,
    /// The bearer secret; not shown again.
    pub secret: String,
}

fn token_table(tokens: &[TokenView], out: &mut String) {
    let mut table = Table::new(&["ID", "ROLE", "DESCRIPTION", "CREATED", "EXPIRES", "CREATED BY", "REVOKED"]);
    for t in tokens {
        table.row(vec![
            t.token_id.clone(),
            t.role.clone(),
            or_dash(&t.description),
            t.created_at.clone().unwrap_or_else(|| "-".into()),
            t.expires_at.clone().unwrap_or_else(|| "never".into()),
            or_dash(&t.created_by),
            t.revoked_at.clone().unwrap_or_else(|| yes_no(t.revoked)),
        ]);
    }
    table.write(out);
}

impl Render for TokenView {
    fn table(&self, out: &mut String) {
        token_table(std::slice::from_ref(self), out);
    }
}

impl Render for TokenListView {
    fn table(&self, out: &mut String) {
        token_table(&self.tokens, out);
    }
}

impl Render for CreatedTokenView {
    fn table(&self, out: &mut String) {
        token_table(std::slice::from_ref(&self.token), out);
        out.push_str(&format!("\nsecret: {}\n", self.secret));
    }
}

/// The warning printed to stderr with every newly shown secret.
pub const SECRET_WARNING: &str =
    "warning: this secret is shown only now and cannot be retrieved later; store it somewhere safe (e.g. a 0600 file for --token-file)";

/// Runs a `tokens` command.
pub async fn run(
    conn: &Connection,
    command: TokensCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        TokensCommand::Create { role, description, ttl } => {
            let request = pb::CreateTokenRequest {
                role: crate::api::audit::role_to_proto(role) as i32,
                description,
                ttl: ttl.map(proto_duration),
            };
            let response = conn
                .call("AdminService/CreateToken", |channel| {
                    let request = request.clone();
                    async move { AdminServiceClient::new(channel).create_token(request).await }
                })
                .await?;
            let token = response.token.map(TokenView::from).ok_or_else(|| missing("token"))?;
            print(out, &CreatedTokenView { token, secret: response.secret }, format)?;
            eprintln!("{SECRET_WARNING}");
            Ok(())
        }
        TokensCommand::List { all } => {
            let mut tokens = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListTokensRequest { include_revoked: all, page_size: PAGE_SIZE, page_token };
                let page = conn
                    .call("AdminService/ListTokens", |channel| {
                        let request = request.clone();
                        async move { AdminServiceClient::new(channel).list_tokens(request).await }
                    })
                    .await?;
                tokens.extend(page.tokens.into_iter().map(TokenView::from));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print(out, &TokenListView { tokens }, format)
        }
        TokensCommand::Revoke { id } => {
            let request = pb::RevokeTokenRequest { token_id: id };
            let response = conn
                .call("AdminService/RevokeToken", |channel| {
                    let request = request.clone();
                    async move { AdminServiceClient::new(channel).revoke_token(request).await }
                })
                .await?;
            print(out, &response.token.map(TokenView::from).ok_or_else(|| missing("token"))?, format)
        }
    }
}

/// The error for a response without a field the server always sends.
pub fn missing(field: &str) -> CliError {
    CliError::Output(format!("the server's answer has no {field}; is it a newer or older version?"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::Command;
    use crate::cli::output::render;
    use crate::cli::Cli;

    #[test]
    fn ttl_flags_take_days_hours_minutes_and_seconds() {
        assert_eq!(parse_ttl("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        let err = parse_ttl("soon").unwrap_err();
        assert!(err.contains("90d, 12h or 30m"), "{err}");
    }

    #[test]
    fn tokens_create_takes_a_role_and_refuses_unknown_ones() {
        let cli = Cli::try_parse_from(["kairosctl", "tokens", "create", "--role", "operator", "--ttl", "1h"])
            .unwrap_or_else(|e| panic!("{e}"));
        let Command::Tokens { command: TokensCommand::Create { role, ttl, .. } } = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!((role, ttl), (Role::Operator, Some(Duration::from_secs(3600))));
        assert!(Cli::try_parse_from(["kairosctl", "tokens", "create", "--role", "root"]).is_err());
        assert!(Cli::try_parse_from(["kairosctl", "tokens", "create"]).is_err(), "--role is required");
    }

    #[test]
    fn created_token_shows_its_secret_in_every_format_but_a_listed_one_never() {
        let token = TokenView {
            token_id: "0123abcd".into(),
            role: "viewer".into(),
            description: "ci".into(),
            created_at: Some("2024-06-01T00:00:00Z".into()),
            expires_at: None,
            created_by: "init".into(),
            revoked: false,
            revoked_at: None,
        };
        let created = CreatedTokenView { token: token.clone(), secret: "kft_0123abcd_s3cr3t".into() };
        for format in [Format::Table, Format::Json, Format::Yaml] {
            let shown = render(&created, format).expect("render");
            assert!(shown.contains("kft_0123abcd_s3cr3t"), "{format:?}: {shown}");
        }
        let table = render(&TokenListView { tokens: vec![token] }, Format::Table).expect("render");
        assert!(table.contains("0123abcd") && table.contains("never") && !table.contains("kft_"), "{table}");
    }
}
