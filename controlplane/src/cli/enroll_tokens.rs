//! `kairosctl enroll-tokens ...`: bootstrap tokens nodes enroll with (needs admin).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use kairos_fleet_proto::fleet::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use serde::{Deserialize, Serialize};

use super::output::{or_dash, yes_no, Format, Render, Table};
use super::tokens::{missing, parse_ttl, proto_duration, SECRET_WARNING};
use super::{print, timestamp, CliError, Connection};

/// Largest page the server serves.
const PAGE_SIZE: u32 = 1000;

/// `kairosctl enroll-tokens ...`.
#[derive(Debug, Subcommand)]
pub enum EnrollTokensCommand {
    /// Create an enroll token and print its secret (shown only once).
    Create {
        /// Lifetime, e.g. 24h, 7d (1m to 365d).
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl, default_value = "24h")]
        ttl: Duration,
        /// How many nodes may enroll with it; 0 = unlimited until it expires.
        #[arg(long, value_name = "N", default_value_t = 0)]
        uses: u32,
        /// Label to stamp on every node enrolled with it, KEY=VALUE (repeat for several).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Free text, e.g. `berlin stores`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List enroll tokens, newest first (never their secrets).
    List {
        /// Also list revoked, expired and used-up tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an enroll token; nodes already enrolled keep their certificates.
    Revoke {
        /// The enroll token id (8 hex characters, as `enroll-tokens list` shows).
        id: String,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE, e.g. site=berlin")),
    }
}

/// One enroll token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenView {
    /// The token id.
    pub token_id: String,
    /// Free text.
    pub description: String,
    /// When it was created, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When it expires, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Enrollments allowed; 0 = unlimited until expiry.
    pub max_uses: u32,
    /// Enrollments so far.
    pub uses: u32,
    /// Labels stamped on enrolled nodes.
    pub labels: BTreeMap<String, String>,
    /// Token id of its creator.
    pub created_by: String,
    /// Whether it was revoked.
    pub revoked: bool,
    /// When it was revoked, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<pb::EnrollToken> for EnrollTokenView {
    fn from(t: pb::EnrollToken) -> EnrollTokenView {
        EnrollTokenView {
            created_at: t.created_at.as_ref().and_then(timestamp),
            expires_at: t.expires_at.as_ref().and_then(timestamp),
            revoked_at: t.revoked_at.as_ref().and_then(timestamp),
            labels: t.labels.into_iter().collect(),
            token_id: t.token_id,
            description: t.description,
            max_uses: t.max_uses,
            uses: t.uses,
            created_by: t.created_by,
            revoked: t.revoked,
        }
    }
}

/// `enroll-tokens list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenListView {
    /// Enroll tokens, newest first.
    pub tokens: Vec<EnrollTokenView>,
}

/// `enroll-tokens create`: the new token and, this once, its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedEnrollTokenView {
    /// The new enroll token.
    pub token: EnrollTokenView,
    /// The bootstrap secret nodes enroll with; not shown again.
    pub secret: String,
}

fn enroll_table(tokens: &[EnrollTokenView], out: &mut String) {
    let mut table = Table::new(&["ID", "DESCRIPTION", "EXPIRES", "USES", "LABELS", "CREATED BY", "REVOKED"]);
    for t in tokens {
        let uses = match t.max_uses {
            0 => format!("{}/unlimited", t.uses),
            max => format!("{}/{max}", t.uses),
        };
        let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.row(vec![
            t.token_id.clone(),
            or_dash(&t.description),
            t.expires_at.clone().unwrap_or_else(|| "-".into()),
            uses,
            or_dash(&labels.join(",")),
            or_dash(&t.created_by),
            t.revoked_at.clone().unwrap_or_else(|| yes_no(t.revoked)),
        ]);
    }
    table.write(out);
}

impl Render for EnrollTokenView {
    fn table(&self, out: &mut String) {
        enroll_table(std::slice::from_ref(self), out);
    }
}

impl Render for EnrollTokenListView {
    fn table(&self, out: &mut String) {
        enroll_table(&self.tokens, out);
    }
}

impl Render for CreatedEnrollTokenView {
    fn table(&self, out: &mut String) {
        enroll_table(std::slice::from_ref(&self.token), out);
        out.push_str(&format!("\nsecret: {}\n", self.secret));
    }
}

/// Runs an `enroll-tokens` command.
pub async fn run(
    conn: &Connection,
    command: EnrollTokensCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        EnrollTokensCommand::Create { ttl, uses, labels, description } => {
            let request = pb::CreateEnrollTokenRequest {
                ttl: Some(proto_duration(ttl)),
                max_uses: uses,
                labels: labels.into_iter().collect(),
                description,
            };
            let response = conn
                .call("AdminService/CreateEnrollToken", |channel| {
                    let request = request.clone();
                    async move { AdminServiceClient::new(channel).create_enroll_token(request).await }
                })
                .await?;
            let token = response.token.map(EnrollTokenView::from).ok_or_else(|| missing("token"))?;
            print(out, &CreatedEnrollTokenView { token, secret: response.secret }, format)?;
            eprintln!("{SECRET_WARNING}");
            Ok(())
        }
        EnrollTokensCommand::List { all } => {
            let mut tokens = Vec::new();
            let mut page_token = String::new();
            loop {
                let request = pb::ListEnrollTokensRequest { include_revoked: all, page_size: PAGE_SIZE, page_token };
                let page = conn
                    .call("AdminService/ListEnrollTokens", |channel| {
                        let request = request.clone();
                        async move { AdminServiceClient::new(channel).list_enroll_tokens(request).await }
                    })
                    .await?;
                tokens.extend(page.tokens.into_iter().map(EnrollTokenView::from));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print(out, &EnrollTokenListView { tokens }, format)
        }
        EnrollTokensCommand::Revoke { id } => {
            let request = pb::RevokeEnrollTokenRequest { token_id: id };
            let response = conn
                .call("AdminService/RevokeEnrollToken", |channel| {
                    let request = request.clone();
                    async move { AdminServiceClient::new(channel).revoke_enroll_token(request).await }
                })
                .await?;
            print(out, &response.token.map(EnrollTokenView::from).ok_or_else(|| missing("token"))?, format)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::args::Command;
    use crate::cli::Cli;

    #[test]
    fn enroll_tokens_create_collects_repeated_labels() {
        let args = ["kairosctl", "enroll-tokens", "create", "--uses", "5", "--label", "site=berlin", "--label", "a/b="];
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
        let Command::EnrollTokens { command: EnrollTokensCommand::Create { ttl, uses, labels, .. } } = cli.command
        else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!((ttl, uses), (Duration::from_secs(86_400), 5), "the default lifetime is a day");
        assert_eq!(labels, [("site".to_owned(), "berlin".to_owned()), ("a/b".to_owned(), String::new())]);
        for bad in ["berlin", "=berlin"] {
            assert!(Cli::try_parse_from(["kairosctl", "enroll-tokens", "create", "--label", bad]).is_err(), "{bad}");
        }
    }
}
