//! What `rollout plan` and `rollout create` print: the waves node by node,
//! every refused node with its rule and way out, and the warnings.

use kairos_fleet_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};

use super::names::{class_name, k3s_role_name, rule_name};
use super::status::RolloutView;
use super::strategy::StrategyView;
use crate::cli::output::{or_dash, yes_no, Render, Table};
use crate::cli::releases::FamilyView;

/// A node the policy leaves out, with the rule and the way out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalView {
    /// The refused node.
    pub node_id: String,
    /// The rule, e.g. `major-not-allowed`.
    pub rule: String,
    /// What is wrong, naming the node and its release.
    pub message: String,
    /// What an operator can do about it.
    pub way_out: String,
    /// Class the move would have.
    pub change_class: String,
    /// The node's Kairos release.
    pub current_release: String,
    /// The node's Kubernetes version; empty on core images.
    pub current_software_version: String,
}

impl From<pb::NodeRefusal> for RefusalView {
    fn from(r: pb::NodeRefusal) -> RefusalView {
        RefusalView {
            rule: rule_name(r.rule),
            change_class: class_name(r.change_class),
            node_id: r.node_id,
            message: r.message,
            way_out: r.way_out,
            current_release: r.current_release,
            current_software_version: r.current_software_version,
        }
    }
}

/// A node as planned into a wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedNodeView {
    /// The node.
    pub node_id: String,
    /// Its image family; absent when the server sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<FamilyView>,
    /// Its Kairos release.
    pub current_release: String,
    /// Its Kubernetes version; empty on core images.
    pub current_software_version: String,
    /// The image it will be told to run.
    pub target_image_ref: String,
    /// That image's digest; empty when unresolved.
    pub target_image_digest: String,
    /// Class of its move.
    pub change_class: String,
    /// Kubernetes role: `server`, `agent`, `none` or `unspecified`.
    pub k3s_role: String,
    /// Kubernetes cluster name.
    pub k3s_cluster: String,
    /// Connected right now.
    pub online: bool,
    /// `canary` or `last` when its wave label forced its position.
    pub pinned_by_label: String,
}

impl From<pb::PlannedNode> for PlannedNodeView {
    fn from(n: pb::PlannedNode) -> PlannedNodeView {
        let k3s = n.k3s.unwrap_or_default();
        PlannedNodeView {
            family: n.family.map(FamilyView::from),
            change_class: class_name(n.change_class),
            k3s_role: k3s_role_name(k3s.role),
            k3s_cluster: k3s.cluster_name,
            node_id: n.node_id,
            current_release: n.current_release,
            current_software_version: n.current_software_version,
            target_image_ref: n.target_image_ref,
            target_image_digest: n.target_image_digest,
            online: n.online,
            pinned_by_label: n.pinned_by_label,
        }
    }
}

/// An image family in one cell: `opensuse/leap-15.5/standard/amd64/generic`,
/// with `+uki` for trusted-boot families.
fn family_cell(family: Option<&FamilyView>) -> String {
    let Some(f) = family else { return "-".to_owned() };
    let parts: Vec<&str> = [&f.flavor, &f.flavor_release, &f.variant, &f.arch, &f.model]
        .into_iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect();
    let mut cell = or_dash(&parts.join("/"));
    if f.trusted_boot {
        cell.push_str("+uki");
    }
    cell
}

/// A release and, on standard images, its Kubernetes version: `v2.4.1/k3sv1.27.6-k3s1`.
fn release_cell(release: &str, software: &str) -> String {
    match software {
        "" => or_dash(release),
        software => format!("{}/{software}", or_dash(release)),
    }
}

/// One wave of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedWaveView {
    /// Wave index, 0 = canary wave.
    pub index: u32,
    /// Its nodes in dispatch order.
    pub nodes: Vec<PlannedNodeView>,
}

/// `rollout plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanView {
    /// Class of the rollout; decides the defaults.
    pub change_class: String,
    /// The strategy with every default filled in.
    pub resolved_strategy: StrategyView,
    /// Nodes matching the selector.
    pub selected_nodes: u32,
    /// Nodes that would be upgraded.
    pub eligible_nodes: u32,
    /// The waves, node by node.
    pub waves: Vec<PlannedWaveView>,
    /// Every selected node the policy refuses.
    pub refused: Vec<RefusalView>,
    /// Selected nodes already on the target.
    pub up_to_date_node_ids: Vec<String>,
    /// Things worth a second look.
    pub warnings: Vec<String>,
}

impl From<pb::PlanRolloutResponse> for PlanView {
    fn from(p: pb::PlanRolloutResponse) -> PlanView {
        PlanView {
            change_class: class_name(p.change_class),
            resolved_strategy: p.resolved_strategy.map(StrategyView::from).unwrap_or_default(),
            selected_nodes: p.selected_nodes,
            eligible_nodes: p.eligible_nodes,
            waves: p
                .waves
                .into_iter()
                .map(|w| PlannedWaveView {
                    index: w.index,
                    nodes: w.nodes.into_iter().map(PlannedNodeView::from).collect(),
                })
                .collect(),
            refused: p.refused.into_iter().map(RefusalView::from).collect(),
            up_to_date_node_ids: p.up_to_date_node_ids,
            warnings: p.warnings,
        }
    }
}

/// `1 node`, `3 nodes`.
pub fn nodes_text(n: usize) -> String {
    format!("{n} node{}", if n == 1 { "" } else { "s" })
}

/// `wave 0 (canary)` or `wave 3`.
pub fn wave_title(index: u32) -> String {
    if index == 0 {
        "wave 0 (canary)".to_owned()
    } else {
        format!("wave {index}")
    }
}

/// Appends the refused nodes, each with its rule, message and way out.
pub fn write_refusals(refused: &[RefusalView], out: &mut String) {
    if refused.is_empty() {
        return;
    }
    out.push_str(&format!("\nrefused: {}\n", nodes_text(refused.len())));
    for r in refused {
        let on = release_cell(&r.current_release, &r.current_software_version);
        out.push_str(&format!("  {}   {}   on {on}, {}\n", r.node_id, r.rule, r.change_class));
        if !r.message.is_empty() {
            out.push_str(&format!("    {}\n", r.message));
        }
        if !r.way_out.is_empty() {
            out.push_str(&format!("    way out: {}\n", r.way_out));
        }
    }
}

impl Render for PlanView {
    fn table(&self, out: &mut String) {
        out.push_str(&format!(
            "change class {}: {} of {} selected nodes eligible, {} refused, {} up to date\n",
            self.change_class,
            self.eligible_nodes,
            self.selected_nodes,
            self.refused.len(),
            self.up_to_date_node_ids.len()
        ));
        out.push_str(&format!("strategy: {}\n", self.resolved_strategy.line()));
        if self.waves.iter().all(|w| w.nodes.is_empty()) {
            out.push_str("\nno node would be upgraded\n");
        }
        for wave in self.waves.iter().filter(|w| !w.nodes.is_empty()) {
            out.push_str(&format!("\n{}: {}\n", wave_title(wave.index), nodes_text(wave.nodes.len())));
            let mut table = Table::new(&["NODE", "FAMILY", "CURRENT", "TARGET IMAGE", "CLASS", "ONLINE", "PINNED"]);
            for n in &wave.nodes {
                table.row(vec![
                    n.node_id.clone(),
                    family_cell(n.family.as_ref()),
                    release_cell(&n.current_release, &n.current_software_version),
                    or_dash(&n.target_image_ref),
                    n.change_class.clone(),
                    yes_no(n.online),
                    or_dash(&n.pinned_by_label),
                ]);
            }
            table.write(out);
        }
        write_refusals(&self.refused, out);
        if !self.up_to_date_node_ids.is_empty() {
            out.push_str(&format!("\nup to date (skipped): {}\n", nodes_text(self.up_to_date_node_ids.len())));
            for id in &self.up_to_date_node_ids {
                out.push_str(&format!("  {id}\n"));
            }
        }
        if !self.warnings.is_empty() {
            out.push_str("\nwarnings:\n");
            for w in &self.warnings {
                out.push_str(&format!("  {w}\n"));
            }
        }
    }
}

/// `rollout create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateView {
    /// The new rollout.
    pub rollout: RolloutView,
    /// Selected nodes the policy left out.
    pub refused: Vec<RefusalView>,
}

impl From<pb::CreateRolloutResponse> for CreateView {
    fn from(c: pb::CreateRolloutResponse) -> CreateView {
        CreateView {
            rollout: c.rollout.map(RolloutView::from).unwrap_or_default(),
            refused: c.refused.into_iter().map(RefusalView::from).collect(),
        }
    }
}

impl Render for CreateView {
    fn table(&self, out: &mut String) {
        let r = &self.rollout;
        out.push_str(&format!(
            "created rollout {} to {}: class {}, {}, phase {}\n",
            r.rollout_id,
            r.target(),
            r.change_class,
            nodes_text(r.totals.total as usize),
            r.phase
        ));
        out.push_str(&format!("strategy: {}\n", r.resolved_strategy.line()));
        let sizes: Vec<String> =
            r.waves.iter().map(|w| format!("{}: {}", w.index, nodes_text(w.counts.total as usize))).collect();
        out.push_str(&format!("waves: {}\n", if sizes.is_empty() { "-".to_owned() } else { sizes.join("   ") }));
        write_refusals(&self.refused, out);
    }
}
