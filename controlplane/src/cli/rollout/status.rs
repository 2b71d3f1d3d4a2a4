//! What `rollout status`, `rollout list` and the phase-changing commands
//! print: a rollout's phase, its per-wave progress and its nodes.

use kairos_fleet_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};

use super::names::{
    class_name, failure_name, node_state_name, pause_reason_name, phase_name, time_text, wave_phase_name,
};
use super::plan::nodes_text;
use super::strategy::StrategyView;
use crate::cli::nodes::ReadMetaView;
use crate::cli::output::{or_dash, yes_no, Render, Table};

/// Node counts of a wave or a whole rollout; the states add up to `total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountsView {
    /// Nodes.
    pub total: u32,
    /// Not commanded yet.
    pub pending: u32,
    /// Commanded, not yet healthy or failed.
    pub in_flight: u32,
    /// Healthy on the target.
    pub healthy: u32,
    /// Failed.
    pub failed: u32,
    /// Offline past the grace; retried when they return.
    pub deferred: u32,
    /// Left out after planning.
    pub skipped: u32,
    /// Back on their previous image.
    pub rolled_back: u32,
    /// Withdrawn by an abort before they started.
    pub cancelled: u32,
}

impl From<pb::WaveCounts> for CountsView {
    fn from(c: pb::WaveCounts) -> CountsView {
        CountsView {
            total: c.total,
            pending: c.pending,
            in_flight: c.in_flight,
            healthy: c.healthy,
            failed: c.failed,
            deferred: c.deferred,
            skipped: c.skipped,
            rolled_back: c.rolled_back,
            cancelled: c.cancelled,
        }
    }
}

impl CountsView {
    /// Nodes done with: healthy or failed.
    pub fn finished(&self) -> u32 {
        self.healthy.saturating_add(self.failed)
    }

    /// `20 nodes: 5 healthy, 3 failed, 12 pending`: the states with nodes in them.
    pub fn summary(&self) -> String {
        let states = [
            ("healthy", self.healthy),
            ("failed", self.failed),
            ("in flight", self.in_flight),
            ("pending", self.pending),
            ("deferred", self.deferred),
            ("skipped", self.skipped),
            ("rolled back", self.rolled_back),
            ("cancelled", self.cancelled),
        ];
        let parts: Vec<String> = states.iter().filter(|(_, n)| *n > 0).map(|(s, n)| format!("{n} {s}")).collect();
        match parts.is_empty() {
            true => nodes_text(self.total as usize),
            false => format!("{}: {}", nodes_text(self.total as usize), parts.join(", ")),
        }
    }
}

/// Progress of one wave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveView {
    /// Wave index, 0 = canary wave.
    pub index: u32,
    /// `pending`, `running`, `baking`, `completed` or `failed`.
    pub phase: String,
    /// Node counts.
    pub counts: CountsView,
    /// First node commanded, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Last node finished, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Token id of the approver; empty when none.
    pub approved_by: String,
    /// When approved, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
}

impl From<pb::WaveStatus> for WaveView {
    fn from(w: pb::WaveStatus) -> WaveView {
        WaveView {
            index: w.index,
            phase: wave_phase_name(w.phase),
            counts: w.counts.map(CountsView::from).unwrap_or_default(),
            started_at: time_text(w.started_at.as_ref()),
            finished_at: time_text(w.finished_at.as_ref()),
            approved_by: w.approved_by,
            approved_at: time_text(w.approved_at.as_ref()),
        }
    }
}

/// A rollout: what it was asked to do and where it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    /// Id assigned by the server.
    pub rollout_id: String,
    /// Target Kairos release.
    pub target_release: String,
    /// Target Kubernetes version, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_software_version: Option<String>,
    /// Free text, e.g. a change ticket.
    pub description: String,
    /// The strategy as asked for; absent fields took the class defaults.
    pub requested_strategy: StrategyView,
    /// The strategy in force.
    pub resolved_strategy: StrategyView,
    /// Phase, e.g. `awaiting-approval`.
    pub phase: String,
    /// Why it is paused (`operator`, `failure-threshold`); absent unless paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// Detail of the pause or abort.
    pub reason_message: String,
    /// Index of the wave worked on or waited for.
    pub current_wave: u32,
    /// Class of the rollout.
    pub change_class: String,
    /// Every wave, by index.
    pub waves: Vec<WaveView>,
    /// Counts over all waves.
    pub totals: CountsView,
    /// Nodes refused at creation.
    pub refused_nodes: u32,
    /// Token id of the creator.
    pub created_by: String,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// First node commanded, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Last phase change, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_changed_at: Option<String>,
    /// While baking: when the bake ends, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_until: Option<String>,
    /// While waiting for a window: when it opens, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window_at: Option<String>,
    /// When a terminal phase was reached, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Store revision of the last change.
    pub revision: u64,
}

impl From<pb::Rollout> for RolloutView {
    fn from(r: pb::Rollout) -> RolloutView {
        let spec = r.spec.unwrap_or_default();
        let s = r.status.unwrap_or_default();
        let paused = s.phase == pb::RolloutPhase::Paused as i32;
        RolloutView {
            rollout_id: r.rollout_id,
            target_release: spec.target_release,
            target_software_version: spec.target_software_version,
            description: spec.description,
            requested_strategy: spec.strategy.map(StrategyView::from).unwrap_or_default(),
            resolved_strategy: s.resolved_strategy.map(StrategyView::from).unwrap_or_default(),
            phase: phase_name(s.phase),
            pause_reason: paused.then(|| pause_reason_name(s.pause_reason)),
            reason_message: s.reason_message,
            current_wave: s.current_wave,
            change_class: class_name(s.change_class),
            waves: s.waves.into_iter().map(WaveView::from).collect(),
            totals: s.totals.map(CountsView::from).unwrap_or_default(),
            refused_nodes: s.refused_nodes,
            created_by: r.created_by,
            created_at: time_text(s.created_at.as_ref()),
            started_at: time_text(s.started_at.as_ref()),
            phase_changed_at: time_text(s.phase_changed_at.as_ref()),
            bake_until: time_text(s.bake_until.as_ref()),
            next_window_at: time_text(s.next_window_at.as_ref()),
            finished_at: time_text(s.finished_at.as_ref()),
            revision: r.revision,
        }
    }
}

impl RolloutView {
    /// `v2.4.2`, or `v2.4.2 k3sv1.27.6-k3s1` with a software version.
    pub fn target(&self) -> String {
        match &self.target_software_version {
            Some(software) => format!("{} {software}", self.target_release),
            None => self.target_release.clone(),
        }
    }

    /// The current wave as a position, `2/4` for index 1 of 4 waves.
    pub fn wave_position(&self) -> String {
        match self.waves.len() {
            0 => "-".to_owned(),
            n => format!("{}/{n}", (self.current_wave as usize + 1).min(n)),
        }
    }

    /// The phase with its reason: `paused (failure-threshold): wave 1: 3 of 10 failed`.
    pub fn phase_detail(&self) -> String {
        let mut text = self.phase.clone();
        if let Some(reason) = &self.pause_reason {
            text.push_str(&format!(" ({reason})"));
        }
        if !self.reason_message.is_empty() {
            text.push_str(&format!(": {}", self.reason_message));
        }
        text
    }

    /// The counts of the current wave, when it exists.
    pub fn current_counts(&self) -> Option<&CountsView> {
        self.waves.iter().find(|w| w.index == self.current_wave).map(|w| &w.counts)
    }
}

/// One node inside a rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutNodeView {
    /// The node.
    pub node_id: String,
    /// Its wave.
    pub wave: u32,
    /// Its state in the rollout, e.g. `in-flight`.
    pub state: String,
    /// Image it was told to run.
    pub target_image_ref: String,
    /// Image it ran before.
    pub previous_image_ref: String,
    /// Generation of its desired state; 0 while pending.
    pub generation: u64,
    /// Why it failed; absent unless it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Last detail reported.
    pub message: String,
    /// When commanded, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commanded_at: Option<String>,
    /// When it finished, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Connected to a replica.
    pub online: bool,
    /// Times commanded.
    pub attempt: u32,
}

impl From<pb::RolloutNode> for RolloutNodeView {
    fn from(n: pb::RolloutNode) -> RolloutNodeView {
        let failed = n.failure_reason != pb::FailureReason::Unspecified as i32;
        RolloutNodeView {
            state: node_state_name(n.state),
            failure_reason: failed.then(|| failure_name(n.failure_reason)),
            commanded_at: time_text(n.commanded_at.as_ref()),
            finished_at: time_text(n.finished_at.as_ref()),
            node_id: n.node_id,
            wave: n.wave,
            target_image_ref: n.target_image_ref,
            previous_image_ref: n.previous_image_ref,
            generation: n.generation,
            message: n.message,
            online: n.online,
            attempt: n.attempt,
        }
    }
}

/// `rollout status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// The rollout.
    pub rollout: RolloutView,
    /// Its nodes, with `--nodes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<RolloutNodeView>,
    /// Where it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ReadMetaView>,
}

impl Render for StatusView {
    fn table(&self, out: &mut String) {
        let r = &self.rollout;
        let mut lines: Vec<(&str, String)> =
            vec![("ROLLOUT", r.rollout_id.clone()), ("PHASE", r.phase_detail()), ("TARGET", or_dash(&r.target()))];
        if !r.description.is_empty() {
            lines.push(("DESCRIPTION", r.description.clone()));
        }
        lines.push(("CLASS", r.change_class.clone()));
        lines.push(("WAVE", format!("{} ({})", r.current_wave, r.wave_position())));
        lines.push(("NODES", r.totals.summary()));
        lines.push(("STRATEGY", r.resolved_strategy.line()));
        if let Some(t) = &r.bake_until {
            lines.push(("BAKE UNTIL", t.clone()));
        }
        if let Some(t) = &r.next_window_at {
            lines.push(("NEXT WINDOW", t.clone()));
        }
        let time = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
        let by = if r.created_by.is_empty() { String::new() } else { format!(" by {}", r.created_by) };
        lines.push(("CREATED", format!("{}{by}", time(&r.created_at))));
        lines.push(("STARTED", time(&r.started_at)));
        lines.push(("PHASE CHANGED", time(&r.phase_changed_at)));
        if let Some(t) = &r.finished_at {
            lines.push(("FINISHED", t.clone()));
        }
        if r.refused_nodes > 0 {
            lines.push(("REFUSED", format!("{} at creation", nodes_text(r.refused_nodes as usize))));
        }
        lines.push(("REVISION", r.revision.to_string()));
        let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 3;
        for (key, value) in lines {
            out.push_str(&format!("{key:<width$}{value}\n"));
        }
        if !r.waves.is_empty() {
            out.push('\n');
            wave_table(&r.waves, out);
        }
        if !self.nodes.is_empty() {
            out.push('\n');
            node_table(&self.nodes, out);
        }
    }
}

/// The per-wave progress table.
pub fn wave_table(waves: &[WaveView], out: &mut String) {
    let mut table = Table::new(&[
        "WAVE",
        "PHASE",
        "TOTAL",
        "HEALTHY",
        "FAILED",
        "IN FLIGHT",
        "PENDING",
        "DEFERRED",
        "SKIPPED",
        "ROLLED BACK",
        "CANCELLED",
        "STARTED",
        "FINISHED",
        "APPROVED BY",
    ]);
    for w in waves {
        let c = &w.counts;
        let time = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
        table.row(vec![
            w.index.to_string(),
            w.phase.clone(),
            c.total.to_string(),
            c.healthy.to_string(),
            c.failed.to_string(),
            c.in_flight.to_string(),
            c.pending.to_string(),
            c.deferred.to_string(),
            c.skipped.to_string(),
            c.rolled_back.to_string(),
            c.cancelled.to_string(),
            time(&w.started_at),
            time(&w.finished_at),
            or_dash(&w.approved_by),
        ]);
    }
    table.write(out);
}

fn node_table(nodes: &[RolloutNodeView], out: &mut String) {
    let mut table = Table::new(&["NODE", "WAVE", "STATE", "ONLINE", "ATTEMPT", "FAILURE", "TARGET IMAGE", "MESSAGE"]);
    for n in nodes {
        table.row(vec![
            n.node_id.clone(),
            n.wave.to_string(),
            n.state.clone(),
            yes_no(n.online),
            n.attempt.to_string(),
            n.failure_reason.clone().unwrap_or_else(|| "-".into()),
            or_dash(&n.target_image_ref),
            n.message.clone(),
        ]);
    }
    table.write(out);
}

/// `rollout list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListView {
    /// Rollouts, newest first.
    pub rollouts: Vec<RolloutView>,
    /// Token of the next page, when `--limit` stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
    /// The read of the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<ReadMetaView>,
}

impl Render for ListView {
    fn table(&self, out: &mut String) {
        if self.rollouts.is_empty() {
            out.push_str("no rollouts match\n");
            return;
        }
        let mut table =
            Table::new(&["ID", "PHASE", "TARGET", "WAVE", "HEALTHY/TOTAL", "FAILED", "IN FLIGHT", "CREATED"]);
        for r in &self.rollouts {
            table.row(vec![
                r.rollout_id.clone(),
                r.phase.clone(),
                or_dash(&r.target()),
                r.wave_position(),
                format!("{}/{}", r.totals.healthy, r.totals.total),
                r.totals.failed.to_string(),
                r.totals.in_flight.to_string(),
                r.created_at.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        table.write(out);
    }
}

/// The result of `pause`, `resume`, `abort`, `approve` and `rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionView {
    /// What was done, e.g. `paused` or `approved wave 2 of`.
    pub action: String,
    /// The rollout after the change.
    pub rollout: RolloutView,
}

impl Render for ActionView {
    fn table(&self, out: &mut String) {
        let r = &self.rollout;
        out.push_str(&format!("{} rollout {}: now {}\n", self.action, r.rollout_id, r.phase_detail()));
    }
}
