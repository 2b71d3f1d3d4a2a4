//! The command line of `kairosctl rollout ...` and how its flags become
//! requests. Only flags the operator gave are set in the strategy: an unset
//! field takes the change-class default on the server.

use clap::{Args, Subcommand, ValueEnum};
use kairos_fleet_proto::fleet::v1 as pb;

use super::super::node_filter::SelectorArgs;
use super::super::nodes::ConsistencyArg;
use super::super::CliError;
use super::names::proto_duration;
use crate::fleet::strategy::{format_duration, parse_duration, FailureThreshold, Millis, WaveSpec, HOUR};
use crate::fleet::window::MaintenanceWindow;

/// Longest health timeout the API accepts.
const MAX_HEALTH_TIMEOUT: Millis = 24 * HOUR;
/// Shortest health timeout and offline grace (tests and labs use seconds).
const SECOND: Millis = 1000;
/// Longest bake time and offline grace the API accepts.
const MAX_WAIT: Millis = 7 * 24 * HOUR;
/// Most maintenance windows per strategy.
const MAX_WINDOWS: usize = 16;
/// Longest description, reason or comment, in bytes.
const MAX_TEXT: usize = 1024;

/// `kairosctl rollout ...`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Dry run: the waves node by node and every refused node, storing nothing (needs viewer).
    Plan(SpecArgs),
    /// Create and start a rollout (needs operator).
    Create(CreateArgs),
    /// List rollouts, newest first (needs viewer).
    List(ListArgs),
    /// Show one rollout: phase, per-wave progress, optionally every node (needs viewer).
    Status(StatusArgs),
    /// Follow a rollout until it ends, wave by wave (needs viewer).
    Watch(WatchArgs),
    /// Stop dispatching new nodes; nodes in flight finish (needs operator).
    Pause {
        /// The rollout id.
        id: String,
        /// Why, for the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Continue a paused rollout (needs operator).
    Resume(ResumeArgs),
    /// End a rollout for good; upgraded nodes stay where they are (needs operator).
    Abort {
        /// The rollout id.
        id: String,
        /// Why, for the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Let a rollout awaiting approval start its next wave (needs operator).
    Approve {
        /// The rollout id.
        id: String,
        /// Wave index to approve [default: the rollout's current wave].
        #[arg(long, value_name = "N")]
        wave: Option<u32>,
        /// Comment for the audit log.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Move every node the rollout commanded back to its previous image, in waves (needs operator).
    Rollback(RollbackArgs),
}

/// What to roll out, to which nodes, and how: the flags of `plan` and `create`.
#[derive(Debug, Clone, Default, Args)]
pub struct SpecArgs {
    /// Target Kairos release, e.g. v2.4.2.
    #[arg(long = "to", value_name = "RELEASE")]
    pub to: String,
    /// Target Kubernetes version for standard images, e.g. k3sv1.27.6-k3s1 [default: per node, its current minor].
    #[arg(long, value_name = "VERSION")]
    pub software_version: Option<String>,
    /// Free text shown to operators, e.g. a change ticket.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// How the rollout moves; unset flags take the change class's defaults.
    #[command(flatten)]
    pub strategy: StrategyArgs,
    // Last: fields after a flattened group would land under its help heading.
    /// Which nodes [default: the whole fleet].
    #[command(flatten)]
    pub selector: SelectorArgs,
}

/// Strategy flags; each one given overrides the change-class default.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Strategy (unset = the change class's default)")]
pub struct StrategyArgs {
    /// Cumulative wave sizes, counts or percentages, e.g. 1,10%,50%,100%.
    #[arg(long, value_name = "SIZES")]
    pub waves: Option<String>,
    /// Most nodes in flight at once, at least 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unavailable: Option<u32>,
    /// Time a commanded node has to report healthy, 1m to 24h, e.g. 30m.
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Failed nodes tolerated per wave: a count (0 = first failure trips) or a percentage, e.g. 5%.
    #[arg(long, value_name = "N|P%")]
    pub failure_threshold: Option<String>,
    /// Judge the threshold only once this many nodes of the wave finished, at least 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub min_sample: Option<u32>,
    /// What a tripped threshold does.
    #[arg(long, value_enum, value_name = "ACTION")]
    pub on_failure: Option<OnFailureArg>,
    /// Wait after a healthy wave before the next, at most 7d, e.g. 1h.
    #[arg(long, value_name = "DURATION")]
    pub bake: Option<String>,
    /// How long an offline node may hold up a wave before it is deferred, 1m to 7d.
    #[arg(long, value_name = "DURATION")]
    pub offline_grace: Option<String>,
    /// Maintenance window '<days> <HH:MM>+<length> <zone>', e.g. 'Mon-Fri 02:00+3h Europe/Berlin' (repeat for several).
    #[arg(long = "window", value_name = "WINDOW")]
    pub windows: Vec<String>,
    /// Require an approval before each wave after the canary (=false to waive it).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub approve_waves: Option<bool>,
    /// High-score CVE: shorter bake times; the canary and threshold stay.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub urgent: Option<bool>,
    /// Allow in-place major upgrades (only from the newest release of the old major).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allow_major: Option<bool>,
    /// Allow moving nodes to a lower release outside a rollback.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allow_downgrade: Option<bool>,
}

/// Options of `rollout create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Follow the rollout after creating it, as `rollout watch` does.
    #[arg(long)]
    pub watch: bool,
    /// The rollout.
    #[command(flatten)]
    pub spec: SpecArgs,
}

/// Options of `rollout list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only rollouts in this phase (repeat for several).
    #[arg(long, value_enum, value_name = "PHASE")]
    pub phase: Vec<PhaseArg>,
    /// Show at most N rollouts [default: all, page by page].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// How fresh the answer must be.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Local)]
    pub consistency: ConsistencyArg,
}

/// Options of `rollout status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The rollout id.
    pub id: String,
    /// Also list every node of the rollout.
    #[arg(long)]
    pub nodes: bool,
    /// How fresh the answer must be.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Local)]
    pub consistency: ConsistencyArg,
}

/// Options of `rollout watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The rollout id.
    pub id: String,
    /// Also show each node's transitions.
    #[arg(long)]
    pub nodes: bool,
    /// Also stop (with exit code 0) when the rollout enters one of these phases, e.g. paused,awaiting-approval.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PHASE[,PHASE]")]
    pub until: Vec<PhaseArg>,
}

/// Options of `rollout resume`.
#[derive(Debug, Clone, Args)]
pub struct ResumeArgs {
    /// The rollout id.
    pub id: String,
    /// After a failure-threshold pause: accept the failures so far and judge the threshold afresh.
    #[arg(long, conflicts_with = "retry_failed")]
    pub accept_failures: bool,
    /// After a failure-threshold pause: command the failed nodes of the latest wave again.
    #[arg(long)]
    pub retry_failed: bool,
}

/// Options of `rollout rollback`.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The rollout id.
    pub id: String,
    /// Why, for the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Most nodes rolling back at once [default: the rollout's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unavailable: Option<u32>,
    /// Time a node has to come back healthy on its previous image [default: the rollout's].
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
}

/// An `--on-failure` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFailureArg {
    /// Stop dispatching and wait for an operator.
    Pause,
    /// End the rollout.
    Abort,
}

/// A rollout phase as `--phase` and `--until` spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    /// Created, not started.
    Pending,
    /// Dispatching nodes.
    Running,
    /// Waiting out the bake time.
    Baking,
    /// Waiting for a maintenance window.
    WaitingWindow,
    /// Waiting for an approval.
    AwaitingApproval,
    /// Stopped by an operator or a failure threshold.
    Paused,
    /// Ended by abort.
    Aborted,
    /// Moving nodes back.
    RollingBack,
    /// Every wave finished.
    Completed,
    /// The rollback finished.
    RolledBack,
}

impl PhaseArg {
    /// The protobuf value.
    pub fn to_pb(self) -> pb::RolloutPhase {
        match self {
            PhaseArg::Pending => pb::RolloutPhase::Pending,
            PhaseArg::Running => pb::RolloutPhase::Running,
            PhaseArg::Baking => pb::RolloutPhase::Baking,
            PhaseArg::WaitingWindow => pb::RolloutPhase::WaitingWindow,
            PhaseArg::AwaitingApproval => pb::RolloutPhase::AwaitingApproval,
            PhaseArg::Paused => pb::RolloutPhase::Paused,
            PhaseArg::Aborted => pb::RolloutPhase::Aborted,
            PhaseArg::RollingBack => pb::RolloutPhase::RollingBack,
            PhaseArg::Completed => pb::RolloutPhase::Completed,
            PhaseArg::RolledBack => pb::RolloutPhase::RolledBack,
        }
    }
}

/// A usage error naming `flag` and what it got.
fn bad_flag(flag: &str, value: &str, rule: &str, example: &str) -> CliError {
    CliError::usage(format!("{flag} {value:?}: {rule}"), format!("e.g. {flag} {example}"))
}

/// A duration flag as a protobuf duration, within `[min, max]`.
fn duration_flag(
    flag: &'static str,
    value: &str,
    min: Millis,
    max: Millis,
    example: &str,
) -> Result<prost_types::Duration, CliError> {
    let ms = parse_duration(flag, value).map_err(|e| bad_flag(flag, value, &e.rule, example))?;
    if ms < min || ms > max {
        let range = match min {
            0 => format!("must be at most {}", format_duration(max)),
            _ => format!("must be from {} to {}", format_duration(min), format_duration(max)),
        };
        return Err(bad_flag(flag, value, &range, example));
    }
    Ok(proto_duration(ms))
}

/// A free-text flag, at most [`MAX_TEXT`] bytes.
fn text_flag(flag: &str, value: Option<&str>) -> Result<String, CliError> {
    let text = value.unwrap_or_default().trim().to_owned();
    if text.len() > MAX_TEXT {
        return Err(CliError::usage(
            format!("{flag}: {} bytes, at most {MAX_TEXT} are kept", text.len()),
            "shorten it, or point to a ticket",
        ));
    }
    Ok(text)
}

/// A rollout id argument, trimmed and not empty.
pub fn rollout_id(id: &str) -> Result<String, CliError> {
    let id = id.trim();
    if id.is_empty() {
        return Err(CliError::usage("the rollout id is empty", "list the rollouts with `kairosctl rollout list`"));
    }
    Ok(id.to_owned())
}

impl StrategyArgs {
    /// The strategy these flags describe, with only the given flags set.
    /// Values are checked here where that is cheap, so a typo fails before
    /// any call and the error names the flag.
    pub fn to_strategy(&self) -> Result<pb::RolloutStrategy, CliError> {
        let waves = match &self.waves {
            None => Vec::new(),
            Some(text) => WaveSpec::parse(text)
                .map_err(|e| bad_flag("--waves", text, &e.rule, "1,10%,50%,100%"))?
                .0
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        let failure_threshold = self
            .failure_threshold
            .as_deref()
            .map(|text| {
                text.parse::<FailureThreshold>()
                    .map(|t| t.to_string())
                    .map_err(|e| bad_flag("--failure-threshold", text, &e.rule, "2 or 5%"))
            })
            .transpose()?;
        if self.windows.len() > MAX_WINDOWS {
            return Err(CliError::usage(
                format!("--window: {} windows given, at most {MAX_WINDOWS}", self.windows.len()),
                "merge windows that share a time, e.g. 'Mon-Fri 02:00+3h Europe/Berlin'",
            ));
        }
        let mut maintenance_windows = Vec::with_capacity(self.windows.len());
        for text in &self.windows {
            MaintenanceWindow::parse(text)
                .map_err(|e| bad_flag("--window", text, &e.rule, "'Mon-Fri 02:00+3h Europe/Berlin'"))?;
            maintenance_windows.push(text.trim().to_owned());
        }
        let duration = |flag, value: &Option<String>, min, max, example| {
            value.as_deref().map(|v| duration_flag(flag, v, min, max, example)).transpose()
        };
        Ok(pb::RolloutStrategy {
            waves,
            max_unavailable: self.max_unavailable,
            health_timeout: duration("--health-timeout", &self.health_timeout, SECOND, MAX_HEALTH_TIMEOUT, "30m")?,
            failure_threshold,
            min_sample: self.min_sample,
            on_failure: self.on_failure.map(|a| a.to_pb() as i32),
            bake: duration("--bake", &self.bake, 0, MAX_WAIT, "1h")?,
            maintenance_windows,
            approve_waves: self.approve_waves,
            urgent: self.urgent,
            allow_major: self.allow_major,
            allow_downgrade: self.allow_downgrade,
            offline_grace: duration("--offline-grace", &self.offline_grace, SECOND, MAX_WAIT, "15m")?,
        })
    }
}

impl OnFailureArg {
    /// The protobuf value.
    pub fn to_pb(self) -> pb::OnFailure {
        match self {
            OnFailureArg::Pause => pb::OnFailure::Pause,
            OnFailureArg::Abort => pb::OnFailure::Abort,
        }
    }
}

impl SpecArgs {
    /// The rollout spec these flags describe.
    pub fn to_spec(&self) -> Result<pb::RolloutSpec, CliError> {
        let target_release = self.to.trim().to_owned();
        if target_release.is_empty() {
            return Err(CliError::usage("--to: the target release is empty", "e.g. --to v2.4.2"));
        }
        let target_software_version = self.software_version.as_deref().map(str::trim).map(str::to_owned);
        if target_software_version.as_deref() == Some("") {
            return Err(CliError::usage(
                "--software-version is empty",
                "leave it out to keep each node's Kubernetes minor, or e.g. --software-version k3sv1.27.6-k3s1",
            ));
        }
        Ok(pb::RolloutSpec {
            target_release,
            target_software_version,
            selector: Some(self.selector.to_selector().map_err(|message| {
                CliError::usage(message, "e.g. -l site=berlin -l 'tier in (edge,core)' -l '!gpu'")
            })?),
            strategy: Some(self.strategy.to_strategy()?),
            description: text_flag("--description", self.description.as_deref())?,
        })
    }

    /// The `Plan` request.
    pub fn plan_request(&self) -> Result<pb::PlanRolloutRequest, CliError> {
        Ok(pb::PlanRolloutRequest { spec: Some(self.to_spec()?) })
    }

    /// The `Create` request, with `request_id` as its idempotency key.
    pub fn create_request(&self, request_id: String) -> Result<pb::CreateRolloutRequest, CliError> {
        Ok(pb::CreateRolloutRequest { spec: Some(self.to_spec()?), request_id })
    }
}

impl RollbackArgs {
    /// The `Rollback` request: only the given flags are set in its strategy.
    pub fn to_request(&self) -> Result<pb::RollbackRolloutRequest, CliError> {
        let health_timeout = self
            .health_timeout
            .as_deref()
            .map(|v| duration_flag("--health-timeout", v, SECOND, MAX_HEALTH_TIMEOUT, "30m"))
            .transpose()?;
        let strategy = pb::RolloutStrategy {
            max_unavailable: self.max_unavailable,
            health_timeout,
            ..pb::RolloutStrategy::default()
        };
        Ok(pb::RollbackRolloutRequest {
            rollout_id: rollout_id(&self.id)?,
            reason: text_flag("--reason", self.reason.as_deref())?,
            strategy: Some(strategy),
        })
    }
}

impl ResumeArgs {
    /// The `Resume` request.
    pub fn to_request(&self) -> Result<pb::ResumeRolloutRequest, CliError> {
        Ok(pb::ResumeRolloutRequest {
            rollout_id: rollout_id(&self.id)?,
            accept_failures: self.accept_failures,
            retry_failed: self.retry_failed,
        })
    }
}

/// The `Pause` request.
pub fn pause_request(id: &str, reason: Option<&str>) -> Result<pb::PauseRolloutRequest, CliError> {
    Ok(pb::PauseRolloutRequest { rollout_id: rollout_id(id)?, reason: text_flag("--reason", reason)? })
}

/// The `Abort` request.
pub fn abort_request(id: &str, reason: Option<&str>) -> Result<pb::AbortRolloutRequest, CliError> {
    Ok(pb::AbortRolloutRequest { rollout_id: rollout_id(id)?, reason: text_flag("--reason", reason)? })
}

/// The `Approve` request for wave `wave`.
pub fn approve_request(id: &str, wave: u32, comment: Option<&str>) -> Result<pb::ApproveWaveRequest, CliError> {
    Ok(pb::ApproveWaveRequest { rollout_id: rollout_id(id)?, wave, comment: text_flag("--comment", comment)? })
}
