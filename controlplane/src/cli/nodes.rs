//! `kairosctl nodes ...`: the enrolled nodes (needs viewer).

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use kairos_fleet_proto::fleet::v1 as pb;
use pb::fleet_service_client::FleetServiceClient;
use serde::{Deserialize, Serialize};

use super::error::RpcError;
use super::node_filter::{state_name, NodeFilterArgs};
use super::output::{or_dash, yes_no, Format, Render, Table};
use super::releases::support_name;
use super::{print, timestamp, CliError, Connection};

/// Largest page the server serves.
const MAX_PAGE_SIZE: u32 = 1000;
/// Characters of a node id shown in tables of many nodes.
const SHORT_ID: usize = 12;

/// `kairosctl nodes ...`.
#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes, one page at a time (or every page with --all).
    List(NodesListArgs),
    /// Show one node in full.
    Get {
        /// The node id (its 32-digit machine id).
        id: String,
        /// How fresh the answer must be.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Local)]
        consistency: ConsistencyArg,
    },
    /// Print every matching node, then changes as they happen (until interrupted).
    Watch(NodesWatchArgs),
}

/// Options of `nodes list`.
#[derive(Debug, Clone, Args)]
pub struct NodesListArgs {
    /// Nodes per page, 1 to 1000 [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Continue after a previous page (the token it printed).
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    pub all: bool,
    /// Sort key.
    #[arg(long, value_enum, default_value_t = SortArg::Id)]
    pub sort: SortArg,
    /// Reverse the order.
    #[arg(long)]
    pub desc: bool,
    /// How fresh the answer must be.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Local)]
    pub consistency: ConsistencyArg,
    // Last: fields after a flattened group would land under its help heading.
    /// Which nodes.
    #[command(flatten)]
    pub filter: NodeFilterArgs,
}

/// Options of `nodes watch`.
#[derive(Debug, Clone, Args)]
pub struct NodesWatchArgs {
    /// Send only changes after this revision (from a list or an earlier event) instead of every node first.
    #[arg(long, value_name = "REVISION", default_value_t = 0)]
    pub resume_revision: u64,
    /// Which nodes.
    #[command(flatten)]
    pub filter: NodeFilterArgs,
}

/// A `--sort` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    /// Node id.
    Id,
    /// Last time the node was heard from, oldest first.
    LastSeen,
    /// Installed release (semver order).
    Release,
    /// Flavor, then flavor release.
    Flavor,
    /// Last state change, oldest first.
    StateChanged,
}

impl SortArg {
    fn to_pb(self) -> pb::NodeOrderBy {
        match self {
            SortArg::Id => pb::NodeOrderBy::NodeId,
            SortArg::LastSeen => pb::NodeOrderBy::LastSeen,
            SortArg::Release => pb::NodeOrderBy::Release,
            SortArg::Flavor => pb::NodeOrderBy::Flavor,
            SortArg::StateChanged => pb::NodeOrderBy::StateChanged,
        }
    }
}

/// A `--consistency` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// The answering replica's state, possibly a little behind the leader.
    Local,
    /// Every write acknowledged before the call (asks the leader).
    Linearizable,
}

impl ConsistencyArg {
    /// The protobuf value.
    pub fn to_pb(self) -> pb::ReadConsistency {
        match self {
            ConsistencyArg::Local => pb::ReadConsistency::Local,
            ConsistencyArg::Linearizable => pb::ReadConsistency::Linearizable,
        }
    }
}

/// A protobuf enum value's name without its prefix, lowercase with dashes,
/// e.g. `K3S_ROLE_SERVER` → `server`.
fn enum_name(name: Option<&str>, prefix: &str) -> String {
    name.map_or_else(|| "unknown".to_owned(), |n| n.trim_start_matches(prefix).to_ascii_lowercase().replace('_', "-"))
}

/// What a node should run, as the control plane holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredView {
    /// Target image reference.
    pub target_image_ref: String,
    /// Target Kairos release.
    pub target_release: String,
    /// Rollout that set it.
    pub rollout_id: String,
    /// Wave of the rollout, 0 = canary.
    pub wave: u32,
    /// Per-node generation.
    pub generation: u64,
    /// True for a rollback.
    pub rollback: bool,
}

/// The last status transition a node reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Per-node sequence number.
    pub seq: u64,
    /// State entered.
    pub state: String,
    /// Why it failed, `unspecified` when it did not.
    pub failure_reason: String,
    /// Detail.
    pub message: String,
    /// When the node observed it, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub node_id: String,
    /// Contents of /etc/machine-id.
    pub machine_id: String,
    /// Hostname last reported.
    pub hostname: String,
    /// Flavor id.
    pub flavor: String,
    /// Flavor release; empty for v1.x images.
    pub flavor_release: String,
    /// `core` or `standard`.
    pub variant: String,
    /// `amd64` or `arm64`.
    pub arch: String,
    /// Board model.
    pub model: String,
    /// Trusted-boot (UKI) image.
    pub trusted_boot: bool,
    /// Installed Kairos release.
    pub release: String,
    /// Kubernetes version; empty on core images.
    pub software_version: String,
    /// Upgrade state.
    pub state: String,
    /// `current`, `patch-available`, `unsupported-branch` or `unknown`.
    pub support_status: String,
    /// Newest patch on the node's branch; empty when none.
    pub available_patch: String,
    /// A replica holds the node's stream.
    pub online: bool,
    /// The replica holding it; 0 when offline.
    pub connected_replica_id: u64,
    /// Last time the node was heard from, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Enrollment time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<String>,
    /// Last state change, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_changed_at: Option<String>,
    /// Partition booted from: `active`, `passive`, `recovery`, `unknown` or `unspecified`.
    pub boot_state: String,
    /// The node reported a fallback boot.
    pub upgrade_failure: bool,
    /// Effective labels.
    pub labels: BTreeMap<String, String>,
    /// Kubernetes role: `server`, `agent`, `none` or `unspecified`.
    pub k3s_role: String,
    /// Kubernetes cluster name.
    pub k3s_cluster: String,
    /// Node client version.
    pub client_version: String,
    /// Image the node runs.
    pub current_image_ref: String,
    /// Its digest; empty when unknown.
    pub current_image_digest: String,
    /// Image before the last upgrade.
    pub previous_image_ref: String,
    /// What the node should run, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<DesiredView>,
    /// The last reported transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<StatusView>,
    /// Revision of the last change to the node.
    pub revision: u64,
}

impl From<pb::Node> for NodeView {
    fn from(n: pb::Node) -> NodeView {
        let family = n.family.clone().unwrap_or_default();
        let identity = n.identity.clone().unwrap_or_default();
        let k3s = n.k3s.clone().unwrap_or_default();
        let pick = |a: String, b: String| if a.is_empty() { b } else { a };
        NodeView {
            state: state_name(n.state).to_owned(),
            support_status: support_name(n.support_status()).to_owned(),
            last_seen: n.last_seen.as_ref().and_then(timestamp),
            enrolled_at: n.enrolled_at.as_ref().and_then(timestamp),
            state_changed_at: n.state_changed_at.as_ref().and_then(timestamp),
            boot_state: enum_name(pb::BootState::try_from(n.boot_state).ok().map(|b| b.as_str_name()), "BOOT_STATE_"),
            k3s_role: enum_name(pb::K3sRole::try_from(k3s.role).ok().map(|r| r.as_str_name()), "K3S_ROLE_"),
            k3s_cluster: k3s.cluster_name,
            flavor: pick(family.flavor, identity.flavor),
            flavor_release: pick(family.flavor_release, identity.flavor_release),
            variant: pick(family.variant, identity.variant),
            arch: pick(family.arch, identity.arch),
            model: pick(family.model, identity.model),
            trusted_boot: family.trusted_boot || identity.trusted_boot,
            release: identity.release,
            software_version: identity.software_version,
            desired: n.desired_state.map(|d| DesiredView {
                target_image_ref: d.target_image_ref,
                target_release: d.target_release,
                rollout_id: d.rollout_id,
                wave: d.wave,
                generation: d.generation,
                rollback: d.rollback,
            }),
            last_status: n.last_status.map(|s| StatusView {
                seq: s.seq,
                state: state_name(s.state).to_owned(),
                failure_reason: enum_name(
                    pb::FailureReason::try_from(s.failure_reason).ok().map(|r| r.as_str_name()),
                    "FAILURE_REASON_",
                ),
                message: s.message,
                observed_at: s.observed_at.as_ref().and_then(timestamp),
            }),
            labels: n.labels.into_iter().collect(),
            node_id: n.node_id,
            machine_id: n.machine_id,
            hostname: n.hostname,
            available_patch: n.available_patch,
            online: n.online,
            connected_replica_id: n.connected_replica_id,
            upgrade_failure: n.upgrade_failure,
            client_version: n.client_version,
            current_image_ref: n.current_image_ref,
            current_image_digest: n.current_image_digest,
            previous_image_ref: n.previous_image_ref,
            revision: n.revision,
        }
    }
}

impl NodeView {
    fn short_id(&self) -> String {
        self.node_id.chars().take(SHORT_ID).collect()
    }

    fn flavor_cell(&self) -> String {
        match (self.flavor.as_str(), self.flavor_release.as_str()) {
            ("", _) => "-".to_owned(),
            (flavor, "") => flavor.to_owned(),
            (flavor, release) => format!("{flavor} {release}"),
        }
    }
}

/// Where and how fresh a read was served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMetaView {
    /// Replica that answered.
    pub replica_id: u64,
    /// Revision of the state read; a resume point for `nodes watch`.
    pub revision: u64,
    /// Upper bound on staleness in milliseconds; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_bound_ms: Option<u64>,
}

impl From<pb::ReadMeta> for ReadMetaView {
    fn from(m: pb::ReadMeta) -> ReadMetaView {
        let ms = m.staleness_bound.map(|d| {
            u64::try_from(d.seconds).unwrap_or(0).saturating_mul(1000) + u64::try_from(d.nanos / 1_000_000).unwrap_or(0)
        });
        ReadMetaView { replica_id: m.replica_id, revision: m.revision, staleness_bound_ms: ms }
    }
}

/// `nodes list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeListView {
    /// The nodes, in the requested order.
    pub nodes: Vec<NodeView>,
    /// Nodes matching the filter across all pages.
    pub total_size: u32,
    /// Token of the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    /// The read of the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ReadMetaView>,
}

impl Render for NodeListView {
    fn table(&self, out: &mut String) {
        if self.nodes.is_empty() {
            out.push_str(&format!("no nodes match (of {} matching)\n", self.total_size));
        } else {
            let mut table = Table::new(&[
                "ID",
                "HOSTNAME",
                "FLAVOR",
                "VARIANT",
                "ARCH",
                "MODEL",
                "RELEASE",
                "STATE",
                "SUPPORT",
                "ONLINE",
                "LAST SEEN",
            ]);
            for n in &self.nodes {
                table.row(vec![
                    n.short_id(),
                    or_dash(&n.hostname),
                    n.flavor_cell(),
                    or_dash(&n.variant),
                    or_dash(&n.arch),
                    or_dash(&n.model),
                    or_dash(&n.release),
                    n.state.clone(),
                    n.support_status.clone(),
                    yes_no(n.online),
                    n.last_seen.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            table.write(out);
            out.push_str(&format!("{} of {} matching nodes\n", self.nodes.len(), self.total_size));
        }
        if let Some(token) = &self.next_page_token {
            out.push_str(&format!("next page: --page-token {token}\n"));
        }
    }
}

/// `nodes get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDetailView {
    /// The node.
    pub node: NodeView,
    /// Where it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ReadMetaView>,
}

impl Render for NodeDetailView {
    fn table(&self, out: &mut String) {
        let n = &self.node;
        let mut lines: Vec<(&str, String)> = vec![
            ("ID", n.node_id.clone()),
            ("HOSTNAME", or_dash(&n.hostname)),
            ("FLAVOR", n.flavor_cell()),
            (
                "FAMILY",
                format!(
                    "{} {} {}{}",
                    or_dash(&n.variant),
                    or_dash(&n.arch),
                    or_dash(&n.model),
                    if n.trusted_boot { " uki" } else { "" }
                ),
            ),
            ("RELEASE", or_dash(&n.release)),
            ("SOFTWARE", or_dash(&n.software_version)),
        ];
        let support = match n.available_patch.as_str() {
            "" => n.support_status.clone(),
            patch => format!("{} (patch {patch})", n.support_status),
        };
        lines.push(("SUPPORT", support));
        lines.push(("STATE", n.state.clone()));
        if let Some(s) = &n.last_status {
            let mut status = format!("#{} {}", s.seq, s.state);
            if s.failure_reason != "unspecified" {
                status.push_str(&format!(" ({})", s.failure_reason));
            }
            if !s.message.is_empty() {
                status.push_str(&format!(": {}", s.message));
            }
            lines.push(("LAST STATUS", status));
        }
        let online = if n.online { format!("yes (replica {})", n.connected_replica_id) } else { "no".to_owned() };
        lines.push(("ONLINE", online));
        let time = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
        lines.push(("LAST SEEN", time(&n.last_seen)));
        lines.push(("STATE CHANGED", time(&n.state_changed_at)));
        lines.push(("ENROLLED", time(&n.enrolled_at)));
        lines.push(("BOOT", format!("{}{}", n.boot_state, if n.upgrade_failure { " (upgrade failure)" } else { "" })));
        let k3s = match n.k3s_cluster.as_str() {
            "" => n.k3s_role.clone(),
            cluster => format!("{} in {cluster}", n.k3s_role),
        };
        lines.push(("KUBERNETES", k3s));
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        lines.push(("LABELS", or_dash(&labels.join(", "))));
        lines.push(("IMAGE", or_dash(&n.current_image_ref)));
        if !n.current_image_digest.is_empty() {
            lines.push(("DIGEST", n.current_image_digest.clone()));
        }
        lines.push(("PREVIOUS", or_dash(&n.previous_image_ref)));
        let desired = n.desired.as_ref().map_or_else(
            || "-".to_owned(),
            |d| {
                let what = if d.rollback { "rollback to" } else { "run" };
                format!("{what} {} (rollout {}, wave {})", d.target_image_ref, or_dash(&d.rollout_id), d.wave)
            },
        );
        lines.push(("DESIRED", desired));
        lines.push(("CLIENT", or_dash(&n.client_version)));
        lines.push(("REVISION", n.revision.to_string()));
        let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 3;
        for (key, value) in lines {
            out.push_str(&format!("{key:<width$}{value}\n"));
        }
    }
}

/// One `nodes watch` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEventView {
    /// `existing`, `synced`, `enrolled`, `changed`, `connected`, `disconnected` or `removed`.
    pub kind: String,
    /// Revision of the change; pass it to --resume-revision to continue.
    pub revision: u64,
    /// The node after the change; absent for `synced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeView>,
}

impl From<pb::NodeEvent> for NodeEventView {
    fn from(e: pb::NodeEvent) -> NodeEventView {
        let kind = pb::NodeEventKind::try_from(e.kind).ok().map(|k| k.as_str_name());
        NodeEventView {
            kind: enum_name(kind, "NODE_EVENT_KIND_"),
            revision: e.revision,
            node: e.node.map(NodeView::from),
        }
    }
}

/// The header of `nodes watch` table lines.
const WATCH_HEADER: &str = "REVISION   EVENT          ID             STATE          ONLINE   RELEASE      HOSTNAME";

impl NodeEventView {
    /// One fixed-width line, aligned with [`WATCH_HEADER`].
    fn line(&self) -> String {
        let Some(n) = &self.node else {
            return format!("{:<10} {:<14} (every matching node sent; changes follow)", self.revision, self.kind);
        };
        format!(
            "{:<10} {:<14} {:<14} {:<14} {:<8} {:<12} {}",
            self.revision,
            self.kind,
            n.short_id(),
            n.state,
            yes_no(n.online),
            or_dash(&n.release),
            or_dash(&n.hostname)
        )
    }
}

fn list_request(args: &NodesListArgs, filter: pb::NodeFilter) -> pb::ListNodesRequest {
    pb::ListNodesRequest {
        filter: Some(filter),
        page_size: args.limit.unwrap_or(0),
        page_token: args.page_token.clone().unwrap_or_default(),
        order_by: args.sort.to_pb() as i32,
        descending: args.desc,
        consistency: args.consistency.to_pb() as i32,
    }
}

fn filter_of(args: &NodeFilterArgs) -> Result<pb::NodeFilter, CliError> {
    args.to_filter()
        .map_err(|message| CliError::usage(message, "e.g. -l site=berlin -l 'tier in (edge,core)' -l '!gpu'"))
}

/// `nodes list`: one page, or every page with `--all`.
pub async fn list(conn: &Connection, args: &NodesListArgs) -> Result<NodeListView, CliError> {
    let mut request = list_request(args, filter_of(&args.filter)?);
    if args.all && request.page_size == 0 {
        request.page_size = MAX_PAGE_SIZE;
    }
    let mut view = NodeListView { nodes: Vec::new(), total_size: 0, next_page_token: None, meta: None };
    loop {
        let page = conn
            .call("FleetService/ListNodes", |channel| {
                let request = request.clone();
                async move { FleetServiceClient::new(channel).list_nodes(request).await }
            })
            .await?;
        view.nodes.extend(page.nodes.into_iter().map(NodeView::from));
        view.total_size = page.total_size;
        view.meta = page.meta.map(ReadMetaView::from);
        view.next_page_token = Some(page.next_page_token).filter(|t| !t.is_empty());
        let Some(next) = view.next_page_token.clone().filter(|_| args.all) else { break };
        if next == request.page_token {
            return Err(CliError::Output(format!(
                "the server returned page token {next:?} twice; stopping after {} nodes",
                view.nodes.len()
            )));
        }
        request.page_token = next;
    }
    Ok(view)
}

/// `nodes get`.
pub async fn get(conn: &Connection, id: &str, consistency: ConsistencyArg) -> Result<NodeDetailView, CliError> {
    let request = pb::GetNodeRequest { node_id: id.trim().to_owned(), consistency: consistency.to_pb() as i32 };
    let answer = conn
        .call("FleetService/GetNode", |channel| {
            let request = request.clone();
            async move { FleetServiceClient::new(channel).get_node(request).await }
        })
        .await?;
    let node = answer.node.ok_or_else(|| CliError::Output("the server answered without the node".to_owned()))?;
    Ok(NodeDetailView { node: node.into(), meta: answer.meta.map(ReadMetaView::from) })
}

/// Writes and flushes; `false` when the reader went away (closed pipe).
fn emit(out: &mut dyn Write, text: &str) -> Result<bool, CliError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Output(e.to_string())),
    }
}

/// `nodes watch`: prints each event as it arrives (a line in a table, a
/// JSON object per line with `-o json`, a YAML document with `-o yaml`).
pub async fn watch(
    conn: &Connection,
    args: &NodesWatchArgs,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    const METHOD: &str = "FleetService/WatchNodes";
    let request =
        pb::WatchNodesRequest { filter: Some(filter_of(&args.filter)?), resume_revision: args.resume_revision };
    let mut stream = conn
        .call(METHOD, |channel| {
            let request = request.clone();
            async move { FleetServiceClient::new(channel).watch_nodes(request).await }
        })
        .await?;
    if format == Format::Table && !emit(out, &format!("{WATCH_HEADER}\n"))? {
        return Ok(());
    }
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => NodeEventView::from(event),
            Ok(None) => return Ok(()),
            Err(status) => {
                return Err(RpcError {
                    method: METHOD,
                    code: status.code(),
                    message: status.message().to_owned(),
                    tried: Vec::new(),
                    leader: None,
                }
                .into())
            }
        };
        let text = match format {
            Format::Table => format!("{}\n", event.line()),
            Format::Json => {
                let mut line = serde_json::to_string(&event).map_err(|e| CliError::Output(e.to_string()))?;
                line.push('\n');
                line
            }
            Format::Yaml => {
                let doc = serde_yaml_ng::to_string(&event).map_err(|e| CliError::Output(e.to_string()))?;
                format!("---\n{doc}")
            }
        };
        if !emit(out, &text)? {
            return Ok(());
        }
    }
}

/// Runs a `nodes` command.
pub async fn run(
    conn: &Connection,
    command: NodesCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        NodesCommand::List(args) => print(out, &list(conn, &args).await?, format),
        NodesCommand::Get { id, consistency } => print(out, &get(conn, &id, consistency).await?, format),
        NodesCommand::Watch(args) => watch(conn, &args, format, out).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::render;

    fn node() -> pb::Node {
        pb::Node {
            node_id: "0123456789abcdef0123456789abcdef".into(),
            hostname: "edge-1".into(),
            family: Some(pb::ImageFamily {
                flavor: "opensuse".into(),
                flavor_release: "leap-15.5".into(),
                variant: "standard".into(),
                arch: "amd64".into(),
                model: "generic".into(),
                trusted_boot: false,
            }),
            identity: Some(pb::NodeIdentity { release: "v2.4.2".into(), ..Default::default() }),
            state: pb::NodeState::RolledBack as i32,
            support_status: pb::SupportStatus::PatchAvailable as i32,
            available_patch: "v2.4.3".into(),
            online: true,
            connected_replica_id: 2,
            labels: [("site".to_owned(), "berlin".to_owned())].into_iter().collect(),
            revision: 42,
            ..Default::default()
        }
    }

    #[test]
    fn list_tables_shorten_ids_and_show_the_next_page() {
        let view = NodeListView {
            nodes: vec![node().into()],
            total_size: 7,
            next_page_token: Some("0a0b".into()),
            meta: None,
        };
        let text = render(&view, Format::Table).expect("table");
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(header[..4], ["ID", "HOSTNAME", "FLAVOR", "VARIANT"]);
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[..5], ["0123456789ab", "edge-1", "opensuse", "leap-15.5", "standard"], "{text}");
        assert!(lines[1].contains("rolled-back") && lines[1].contains("patch-available"), "{text}");
        assert_eq!(lines[2], "1 of 7 matching nodes");
        assert_eq!(lines[3], "next page: --page-token 0a0b");
    }

    #[test]
    fn get_shows_the_full_id_and_json_keeps_every_field() {
        let view = NodeDetailView { node: node().into(), meta: None };
        let text = render(&view, Format::Table).expect("table");
        assert!(text.starts_with("ID              0123456789abcdef0123456789abcdef\n"), "{text}");
        assert!(text.contains("SUPPORT         patch-available (patch v2.4.3)\n"), "{text}");
        assert!(text.contains("ONLINE          yes (replica 2)\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&render(&view, Format::Json).expect("json")).expect("json");
        assert_eq!(json["node"]["labels"]["site"], "berlin");
        assert_eq!(json["node"]["state"], "rolled-back");
        assert_eq!(json["node"]["k3s_role"], "unspecified");
    }

    #[test]
    fn watch_events_name_their_kind() {
        let synced =
            NodeEventView::from(pb::NodeEvent { kind: pb::NodeEventKind::Synced as i32, node: None, revision: 9 });
        assert_eq!((synced.kind.as_str(), synced.node.is_none()), ("synced", true));
        let connected = NodeEventView::from(pb::NodeEvent {
            kind: pb::NodeEventKind::Connected as i32,
            node: Some(node()),
            revision: 10,
        });
        assert!(
            connected.line().starts_with("10         connected      0123456789ab   rolled-back"),
            "{}",
            connected.line()
        );
    }
}
