//! `kairosctl audit ...`: the replicated log of mutating calls (needs admin).

use std::io::Write;

use clap::{Subcommand, ValueEnum};
use kairos_fleet_proto::fleet::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use serde::{Deserialize, Serialize};

use super::output::{or_dash, Format, Render, Table};
use super::tokens::role_name;
use super::{print, timestamp, CliError, Connection};

/// Largest page the server serves.
const MAX_PAGE_SIZE: u32 = 1000;

/// `kairosctl audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit entries, newest first.
    List {
        /// Show at most N entries.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Only calls by this actor: a token id, token:ID, cert:CN or node:ID.
        #[arg(long, value_name = "ACTOR")]
        actor: Option<String>,
        /// Only this method, e.g. AdminService/CreateToken or /kairos.fleet.v1.ReleaseService/AddRelease.
        #[arg(long, value_name = "METHOD")]
        method: Option<String>,
        /// Only targets starting with this, e.g. token/ or release/.
        #[arg(long, value_name = "PREFIX")]
        target: Option<String>,
        /// Only these outcomes (repeat for several).
        #[arg(long, value_enum)]
        outcome: Vec<OutcomeArg>,
        /// Oldest entries first.
        #[arg(long)]
        oldest_first: bool,
    },
}

/// An `--outcome` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutcomeArg {
    /// The call succeeded.
    Succeeded,
    /// The call failed.
    Failed,
    /// The caller's role did not allow it.
    Denied,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntryView {
    /// Position in the log.
    pub sequence: u64,
    /// When the call was received, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Who: `token:<id>`, `cert:<cn>`, `node:<id>`, `enroll-token:<id>` or `replica-<id>`.
    pub actor: String,
    /// The token's role at the time; empty for other actors.
    pub role: String,
    /// Full gRPC method.
    pub method: String,
    /// What it acted on, `kind/id`.
    pub target: String,
    /// The request, secrets left out.
    pub request_summary: String,
    /// `succeeded`, `failed` or `denied`.
    pub outcome: String,
    /// gRPC status code name.
    pub status_code: String,
    /// The error of a failed or denied call.
    pub error_message: String,
    /// The caller's address.
    pub peer_address: String,
    /// The replica that received the call.
    pub replica_id: u64,
}

impl From<pb::AuditEntry> for AuditEntryView {
    fn from(e: pb::AuditEntry) -> AuditEntryView {
        use pb::audit_actor::Actor;
        let (actor, role) = match e.actor.and_then(|a| a.actor) {
            Some(Actor::Token(t)) if t.token_id.starts_with("cert:") => (t.token_id, role_name(t.role)),
            Some(Actor::Token(t)) => (format!("token:{}", t.token_id), role_name(t.role)),
            Some(Actor::NodeId(id)) => (format!("node:{id}"), ""),
            Some(Actor::EnrollTokenId(id)) => (format!("enroll-token:{id}"), ""),
            Some(Actor::ReplicaId(id)) => (format!("replica-{id}"), ""),
            None => (String::new(), ""),
        };
        let outcome = match pb::AuditOutcome::try_from(e.outcome) {
            Ok(pb::AuditOutcome::Succeeded) => "succeeded",
            Ok(pb::AuditOutcome::Failed) => "failed",
            Ok(pb::AuditOutcome::Denied) => "denied",
            _ => "unknown",
        };
        AuditEntryView {
            sequence: e.sequence,
            time: e.time.as_ref().and_then(timestamp),
            actor,
            role: role.to_owned(),
            method: e.method,
            target: e.target,
            request_summary: e.request_summary,
            outcome: outcome.to_owned(),
            status_code: e.status_code,
            error_message: e.error_message,
            peer_address: e.peer_address,
            replica_id: e.replica_id,
        }
    }
}

/// `audit list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditListView {
    /// Entries in the requested order.
    pub entries: Vec<AuditEntryView>,
}

impl Render for AuditListView {
    fn table(&self, out: &mut String) {
        let mut table = Table::new(&["SEQ", "TIME", "ACTOR", "ROLE", "METHOD", "TARGET", "OUTCOME", "REQUEST"]);
        for e in &self.entries {
            let method = e.method.trim_start_matches('/').trim_start_matches("kairos.fleet.v1.");
            let outcome = match e.status_code.as_str() {
                "OK" | "" => e.outcome.clone(),
                code => format!("{} ({code})", e.outcome),
            };
            table.row(vec![
                e.sequence.to_string(),
                e.time.clone().unwrap_or_else(|| "-".into()),
                or_dash(&e.actor),
                or_dash(&e.role),
                method.to_owned(),
                or_dash(&e.target),
                outcome,
                or_dash(&e.request_summary),
            ]);
        }
        table.write(out);
    }
}

/// The `ListAuditRequest` fields for `--actor`.
fn actor_filter(actor: &str, request: &mut pb::ListAuditRequest) {
    let actor = actor.trim();
    if let Some(node) = actor.strip_prefix("node:") {
        request.actor_node_id = node.to_owned();
    } else {
        request.actor_token_id = actor.strip_prefix("token:").unwrap_or(actor).to_owned();
    }
}

/// `--method` as the server stores it: `/kairos.fleet.v1.<Service>/<Method>`.
fn full_method(method: &str) -> String {
    let bare = method.trim().trim_start_matches('/');
    if bare.starts_with("kairos.") {
        format!("/{bare}")
    } else {
        format!("/kairos.fleet.v1.{bare}")
    }
}

/// Runs an `audit` command.
pub async fn run(
    conn: &Connection,
    command: AuditCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let AuditCommand::List { limit, actor, method, target, outcome, oldest_first } = command;
    let mut request = pb::ListAuditRequest {
        method: method.as_deref().map(full_method).unwrap_or_default(),
        target_prefix: target.unwrap_or_default(),
        outcomes: outcome
            .iter()
            .map(|o| match o {
                OutcomeArg::Succeeded => pb::AuditOutcome::Succeeded as i32,
                OutcomeArg::Failed => pb::AuditOutcome::Failed as i32,
                OutcomeArg::Denied => pb::AuditOutcome::Denied as i32,
            })
            .collect(),
        oldest_first,
        ..pb::ListAuditRequest::default()
    };
    if let Some(actor) = &actor {
        actor_filter(actor, &mut request);
    }
    let mut entries: Vec<AuditEntryView> = Vec::new();
    loop {
        let remaining = limit.saturating_sub(u32::try_from(entries.len()).unwrap_or(u32::MAX));
        request.page_size = remaining.min(MAX_PAGE_SIZE);
        let page = conn
            .call("AdminService/ListAudit", |channel| {
                let request = request.clone();
                async move { AdminServiceClient::new(channel).list_audit(request).await }
            })
            .await?;
        entries.extend(page.entries.into_iter().map(AuditEntryView::from));
        if page.next_page_token.is_empty() || entries.len() >= limit as usize {
            break;
        }
        request.page_token = page.next_page_token;
    }
    entries.truncate(limit as usize);
    print(out, &AuditListView { entries }, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_and_actor_flags_take_short_and_full_forms() {
        let full = "/kairos.fleet.v1.AdminService/CreateToken";
        for given in ["AdminService/CreateToken", "kairos.fleet.v1.AdminService/CreateToken", full] {
            assert_eq!(full_method(given), full, "{given}");
        }
        let mut request = pb::ListAuditRequest::default();
        actor_filter("token:0123abcd", &mut request);
        assert_eq!(request.actor_token_id, "0123abcd");
        let mut request = pb::ListAuditRequest::default();
        actor_filter("node:n-1", &mut request);
        assert_eq!((request.actor_node_id.as_str(), request.actor_token_id.as_str()), ("n-1", ""));
    }
}
