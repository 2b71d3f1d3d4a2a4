//! A rollout strategy as kairosctl shows it.

use kairos_fleet_proto::fleet::v1 as pb;
use serde::{Deserialize, Serialize};

use super::names::{duration_text, on_failure_name};
use crate::cli::output::yes_no;

/// A rollout strategy. In a resolved strategy every field is present; in
/// one an operator asked for, absent fields take the class defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyView {
    /// Cumulative wave sizes, e.g. `["1", "10%", "50%", "100%"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<String>,
    /// Most nodes in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// Time a commanded node has to report healthy, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<String>,
    /// Failed nodes tolerated per wave, a count or a percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<String>,
    /// Finished nodes needed before the threshold is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sample: Option<u32>,
    /// `pause` or `abort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// Wait after a healthy wave, e.g. `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<String>,
    /// Maintenance windows; empty = any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<String>,
    /// Approval needed before each wave after the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve_waves: Option<bool>,
    /// Shortened bake times for a high-score CVE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgent: Option<bool>,
    /// In-place major upgrades allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_major: Option<bool>,
    /// Downgrades allowed outside a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_downgrade: Option<bool>,
    /// How long an offline node may hold up a wave, e.g. `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_grace: Option<String>,
}

impl From<pb::RolloutStrategy> for StrategyView {
    fn from(s: pb::RolloutStrategy) -> StrategyView {
        StrategyView {
            max_unavailable: s.max_unavailable,
            health_timeout: s.health_timeout.as_ref().map(duration_text),
            failure_threshold: s.failure_threshold,
            min_sample: s.min_sample,
            on_failure: s.on_failure.map(on_failure_name),
            bake: s.bake.as_ref().map(duration_text),
            approve_waves: s.approve_waves,
            urgent: s.urgent,
            allow_major: s.allow_major,
            allow_downgrade: s.allow_downgrade,
            offline_grace: s.offline_grace.as_ref().map(duration_text),
            waves: s.waves,
            maintenance_windows: s.maintenance_windows,
        }
    }
}

impl StrategyView {
    /// The strategy on one line, fields three spaces apart, e.g.
    /// `waves 1,10%,50%,100%   max unavailable 5   health timeout 30m ...`.
    /// Absent fields are left out.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if !self.waves.is_empty() {
            parts.push(format!("waves {}", self.waves.join(",")));
        }
        if let Some(n) = self.max_unavailable {
            parts.push(format!("max unavailable {n}"));
        }
        if let Some(t) = &self.health_timeout {
            parts.push(format!("health timeout {t}"));
        }
        let mut threshold = Vec::new();
        if let Some(t) = &self.failure_threshold {
            threshold.push(format!("failure threshold {t}"));
        }
        if let Some(n) = self.min_sample {
            threshold.push(format!("min sample {n}"));
        }
        if let Some(a) = &self.on_failure {
            threshold.push(format!("on failure {a}"));
        }
        if !threshold.is_empty() {
            parts.push(threshold.join(", "));
        }
        if let Some(b) = &self.bake {
            parts.push(format!("bake {b}"));
        }
        if let Some(g) = &self.offline_grace {
            parts.push(format!("offline grace {g}"));
        }
        // A resolved strategy has every field; only then does "no windows" mean "any time".
        if !self.maintenance_windows.is_empty() {
            parts.push(format!("windows {}", self.maintenance_windows.join(" | ")));
        } else if self.max_unavailable.is_some() && !self.waves.is_empty() {
            parts.push("windows any time".to_owned());
        }
        for (name, flag) in [
            ("approve waves", self.approve_waves),
            ("urgent", self.urgent),
            ("allow major", self.allow_major),
            ("allow downgrade", self.allow_downgrade),
        ] {
            if let Some(flag) = flag {
                parts.push(format!("{name} {}", yes_no(flag)));
            }
        }
        if parts.is_empty() {
            return "class defaults".to_owned();
        }
        parts.join("   ")
    }
}
