//! `kairosctl fleet ...`: fleet-wide counts (needs viewer).

use std::io::Write;

use clap::{Args, Subcommand};
use kairos_fleet_proto::fleet::v1 as pb;
use pb::fleet_service_client::FleetServiceClient;
use serde::{Deserialize, Serialize};

use super::node_filter::{state_name, NodeFilterArgs};
use super::nodes::{ConsistencyArg, ReadMetaView};
use super::output::{or_dash, Format, Render, Table};
use super::releases::support_name;
use super::{print, CliError, Connection};

/// `kairosctl fleet ...`.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Nodes per flavor, release and support status, per state, and online.
    Report(ReportArgs),
}

/// Options of `fleet report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// How fresh the counts must be.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Local)]
    pub consistency: ConsistencyArg,
    /// Which nodes to count [default: all].
    #[command(flatten)]
    pub filter: NodeFilterArgs,
}

/// Nodes of one flavor on one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCountView {
    /// Flavor id.
    pub flavor: String,
    /// Installed Kairos release.
    pub release: String,
    /// Its support status.
    pub support_status: String,
    /// Nodes.
    pub nodes: u32,
    /// Of which online.
    pub online: u32,
}

/// Nodes in one upgrade state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCountView {
    /// The state.
    pub state: String,
    /// Nodes.
    pub nodes: u32,
    /// Of which online.
    pub online: u32,
}

/// `fleet report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReportView {
    /// Nodes counted.
    pub total_nodes: u32,
    /// Of which online.
    pub online_nodes: u32,
    /// Of which offline.
    pub offline_nodes: u32,
    /// Newest stable release in the catalog; support statuses are relative to it.
    pub latest_release: String,
    /// Per flavor and release, newest release first.
    pub by_release: Vec<ReleaseCountView>,
    /// Per state, in lifecycle order.
    pub by_state: Vec<StateCountView>,
    /// Where the counts were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ReadMetaView>,
}

impl From<pb::FleetReportResponse> for FleetReportView {
    fn from(r: pb::FleetReportResponse) -> FleetReportView {
        FleetReportView {
            total_nodes: r.total_nodes,
            online_nodes: r.online_nodes,
            offline_nodes: r.offline_nodes,
            latest_release: r.latest_release,
            by_release: r
                .by_release
                .into_iter()
                .map(|c| ReleaseCountView {
                    support_status: support_name(c.support_status()).to_owned(),
                    flavor: c.flavor,
                    release: c.release,
                    nodes: c.nodes,
                    online: c.online,
                })
                .collect(),
            by_state: r
                .by_state
                .into_iter()
                .map(|c| StateCountView { state: state_name(c.state).to_owned(), nodes: c.nodes, online: c.online })
                .collect(),
            meta: r.meta.map(ReadMetaView::from),
        }
    }
}

impl Render for FleetReportView {
    fn table(&self, out: &mut String) {
        if !self.by_release.is_empty() {
            let mut table = Table::new(&["FLAVOR", "RELEASE", "SUPPORT", "NODES", "ONLINE"]);
            for c in &self.by_release {
                table.row(vec![
                    or_dash(&c.flavor),
                    or_dash(&c.release),
                    c.support_status.clone(),
                    c.nodes.to_string(),
                    c.online.to_string(),
                ]);
            }
            table.write(out);
            out.push('\n');
        }
        if !self.by_state.is_empty() {
            let mut table = Table::new(&["STATE", "NODES", "ONLINE"]);
            for c in &self.by_state {
                table.row(vec![c.state.clone(), c.nodes.to_string(), c.online.to_string()]);
            }
            table.write(out);
            out.push('\n');
        }
        out.push_str(&format!(
            "total {}   online {}   offline {}   latest release {}\n",
            self.total_nodes,
            self.online_nodes,
            self.offline_nodes,
            or_dash(&self.latest_release)
        ));
    }
}

/// `fleet report`.
pub async fn report(conn: &Connection, args: &ReportArgs) -> Result<FleetReportView, CliError> {
    let filter = args
        .filter
        .to_filter()
        .map_err(|message| CliError::usage(message, "e.g. -l site=berlin -l 'tier in (edge,core)' -l '!gpu'"))?;
    let request = pb::FleetReportRequest { filter: Some(filter), consistency: args.consistency.to_pb() as i32 };
    let answer = conn
        .call("FleetService/FleetReport", |channel| {
            let request = request.clone();
            async move { FleetServiceClient::new(channel).fleet_report(request).await }
        })
        .await?;
    Ok(answer.into())
}

/// Runs a `fleet` command.
pub async fn run(
    conn: &Connection,
    command: FleetCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        FleetCommand::Report(args) => print(out, &report(conn, &args).await?, format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::render;

    #[test]
    fn report_table_lists_releases_then_states_then_totals() {
        let view = FleetReportView::from(pb::FleetReportResponse {
            total_nodes: 3,
            online_nodes: 1,
            offline_nodes: 2,
            by_release: vec![pb::ReleaseCount {
                flavor: "opensuse".into(),
                release: "v2.4.2".into(),
                support_status: pb::SupportStatus::PatchAvailable as i32,
                nodes: 3,
                online: 1,
            }],
            by_state: vec![pb::StateCount { state: pb::NodeState::Idle as i32, nodes: 3, online: 1 }],
            latest_release: "v2.4.3".into(),
            meta: None,
        });
        let text = render(&view, Format::Table).expect("table");
        assert_eq!(
            text,
            "FLAVOR     RELEASE   SUPPORT           NODES   ONLINE\n\
             opensuse   v2.4.2    patch-available   3       1\n\
             \n\
             STATE   NODES   ONLINE\n\
             idle    3       1\n\
             \n\
             total 3   online 1   offline 2   latest release v2.4.3\n"
        );
    }
}
