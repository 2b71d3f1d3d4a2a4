//! What the client does at start, before its first Hello: finish the
//! story of an upgrade the previous run (or the previous boot) left.
//!
//! With an `upgrade.toml` record, the root filesystem tells the outcome
//! ([`decide`]): a fallback boot, the wrong release, a reboot that never
//! happened, or the target, which the health hook must then confirm.
//! Without one, a generation the status log accepted but never finished
//! was interrupted by a crash. Either way the node reports a final status,
//! so the control plane does not wait for its health timeout.

use std::path::Path;

use kairos_fleet_domain::fleet::identity::BootState;
use kairos_fleet_proto::fleet::v1 as pb;
use semver::Version;

use super::command::{self, truncate, MAX_MESSAGE};
use super::record::{self, Phase, UpgradeRecord};
use super::{running_update, UPGRADE_FAILURE_MARKER};
use crate::config::UpgradeConfig;
use crate::hello::read_boot_time;
use crate::local::read_local_facts;
use crate::session::NodeHandle;
use crate::state::{StateDir, StateError};

/// Btime may move by a second or two within one boot (it is derived from
/// the clock); a reboot moves it further.
const BOOT_TIME_SLACK: i64 = 5;

/// What the node looks like now, as far as the outcome is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFacts {
    /// `/proc/sys/kernel/random/boot_id`; empty when unknown.
    pub boot_id: String,
    /// `btime` of `/proc/stat`; None when unknown.
    pub boot_time: Option<i64>,
    /// Partition booted, from `/proc/cmdline`.
    pub boot: BootState,
    /// `/run/cos/upgrade_failure` exists.
    pub upgrade_failure_marker: bool,
    /// Running Kairos release, from the release file.
    pub release: Version,
    /// Running Kubernetes software version (`v1.27.6+k3s1`); empty on core images.
    pub software: String,
}

/// How an upgrade in progress ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client stopped in `phase` and the node did not reboot since
    /// (or it rebooted while fetching, which changes nothing on disk).
    Interrupted {
        /// Where it stopped.
        phase: Phase,
    },
    /// The image was installed but the node never rebooted.
    NotRebooted,
    /// The node rebooted while the executor ran and is not on the target.
    RebootedWhileInstalling,
    /// The node booted its fallback: passive (with or without the
    /// marker), or the marker alone, or recovery.
    Fallback {
        /// The partition it booted.
        boot: BootState,
        /// `/run/cos/upgrade_failure` exists.
        marker: bool,
    },
    /// It booted the active partition with another release (or another
    /// Kubernetes version than the target names).
    WrongRelease {
        /// The release it runs, e.g. `v2.4.2`, with its software version when it has one.
        running: String,
    },
    /// It runs the target release from the active partition; the health
    /// hook decides.
    OnTarget,
}

/// True when the boot identified by `now` is not the one `record` was written in.
pub fn rebooted_since(record: &UpgradeRecord, now: &BootFacts) -> bool {
    if !record.boot_id.is_empty() && !now.boot_id.is_empty() {
        return record.boot_id != now.boot_id;
    }
    match (record.boot_time, now.boot_time) {
        (Some(then), Some(now)) => (now - then).abs() > BOOT_TIME_SLACK,
        // Nothing to compare: let the filesystem speak.
        _ => true,
    }
}

/// `v2.4.3` or `2.4.3` as a version.
pub fn parse_release(text: &str) -> Option<Version> {
    Version::parse(text.trim().trim_start_matches('v')).ok()
}

/// The outcome of the upgrade `record` describes, given the node as it is now.
pub fn decide(record: &UpgradeRecord, now: &BootFacts) -> Outcome {
    if record.phase == Phase::Fetching {
        return Outcome::Interrupted { phase: Phase::Fetching };
    }
    if !rebooted_since(record, now) {
        return match record.phase {
            Phase::Rebooting => Outcome::NotRebooted,
            phase => Outcome::Interrupted { phase },
        };
    }
    if now.upgrade_failure_marker || matches!(now.boot, BootState::Passive | BootState::Recovery) {
        return Outcome::Fallback { boot: now.boot, marker: now.upgrade_failure_marker };
    }
    let release_matches = match parse_release(&record.target_release) {
        Some(target) => target == now.release,
        None => record.target_release.trim_start_matches('v') == now.release.to_string(),
    };
    // Core images and older release files name no software: nothing to compare.
    let software_matches =
        record.target_software.is_empty() || now.software.is_empty() || record.target_software == now.software;
    let on_target = release_matches && software_matches;
    match (on_target, record.phase) {
        (true, _) => Outcome::OnTarget,
        (false, Phase::Installing) => Outcome::RebootedWhileInstalling,
        (false, _) => {
            let software = if now.software.is_empty() { String::new() } else { format!(" ({})", now.software) };
            Outcome::WrongRelease { running: format!("v{}{software}", now.release) }
        }
    }
}

/// Reads [`BootFacts`] below `root`.
pub fn read_boot_facts(root: &Path) -> Result<BootFacts, crate::local::LocalError> {
    let facts = read_local_facts(root)?;
    Ok(BootFacts {
        boot_id: record::read_boot_id(root),
        boot_time: read_boot_time(root).map(|t| t.seconds),
        boot: facts.boot,
        upgrade_failure_marker: facts.upgrade_failure_marker,
        release: facts.identity.release,
        software: facts.identity.software.as_ref().map(|s| s.upstream()).unwrap_or_default(),
    })
}

/// State and reason of the report for `outcome`, and its message; None
/// for [`Outcome::OnTarget`], which the health hook decides.
pub fn verdict(record: &UpgradeRecord, outcome: &Outcome) -> Option<(pb::NodeState, pb::FailureReason, String)> {
    use pb::FailureReason as R;
    use pb::NodeState as S;
    let target = format!("{} ({})", record.target_release, record.target_image);
    let generation = record.generation;
    Some(match outcome {
        Outcome::Interrupted { phase: Phase::Fetching } => (
            S::Failed,
            R::Other,
            format!("interrupted: the node client stopped while fetching {target} for generation {generation}"),
        ),
        Outcome::Interrupted { .. } => (
            S::Failed,
            R::Other,
            format!("interrupted: the node client stopped while the executor installed {target}; not retried"),
        ),
        Outcome::NotRebooted => (
            S::Failed,
            R::Other,
            format!("{target} was installed but the node did not reboot (same boot as before the reboot command)"),
        ),
        Outcome::RebootedWhileInstalling => {
            (S::Failed, R::Other, format!("interrupted: the node rebooted while the executor installed {target}"))
        }
        // node.proto: ROLLED_BACK is the node back on its previous image
        // after a fallback boot; recovery is not the previous image.
        Outcome::Fallback { boot: BootState::Recovery, .. } => {
            (S::Failed, R::FallbackBoot, format!("{target} did not boot: the node booted its recovery system"))
        }
        Outcome::Fallback { marker, .. } => {
            let marker = if *marker { format!(", {UPGRADE_FAILURE_MARKER} present") } else { String::new() };
            let message = format!("{target} did not boot: the node fell back to its passive partition{marker}");
            (S::RolledBack, R::FallbackBoot, message)
        }
        Outcome::WrongRelease { running } => (
            S::Failed,
            R::WrongRelease,
            format!(
                "after the reboot the node runs {running} from its active partition, expected {target}{}",
                if record.target_software.is_empty() {
                    String::new()
                } else {
                    format!(" with {}", record.target_software)
                }
            ),
        ),
        Outcome::OnTarget => return None,
    })
}

fn is_final(state: pb::NodeState) -> bool {
    matches!(state, pb::NodeState::Healthy | pb::NodeState::Failed | pb::NodeState::RolledBack | pb::NodeState::Idle)
}

/// Reports how the upgrade left by the previous run ended (see the module
/// doc) and removes its record; returns the update it recorded, if any.
/// Runs the health hook when the node is on the target.
pub async fn resume(
    state: &StateDir,
    root: &Path,
    config: &UpgradeConfig,
    node: &NodeHandle,
) -> Result<Option<pb::StatusUpdate>, StateError> {
    let path = record::record_path(state);
    let record = match record::load(&path) {
        Ok(record) => record,
        Err(e @ StateError::Invalid { .. }) => {
            // Keeping it would stop every start; the generation is then
            // failed below as interrupted.
            tracing::error!(error = %e, "unreadable upgrade record; removing it");
            record::remove(&path)?;
            None
        }
        Err(e) => return Err(e),
    };
    let snapshot = node.log().snapshot();
    let finished = |generation: u64| {
        snapshot.last_status.as_ref().is_some_and(|s| s.generation >= generation && is_final(s.state()))
    };
    let Some(record) = record else {
        let generation = snapshot.desired_generation;
        if generation == 0 || finished(generation) {
            return Ok(None);
        }
        let rollout_id = snapshot
            .last_status
            .as_ref()
            .filter(|s| s.generation == generation)
            .map(|s| s.rollout_id.clone())
            .unwrap_or_default();
        let mut update = running_update(root, rollout_id, generation, pb::NodeState::Failed);
        update.set_failure_reason(pb::FailureReason::Other);
        update.message =
            format!("interrupted: the node client stopped while acting on generation {generation}; not retried");
        return node.report(update).map(Some);
    };
    if finished(record.generation) {
        // Reported before a crash that kept the record.
        record::remove(&path)?;
        return Ok(None);
    }
    let update = match read_boot_facts(root) {
        Err(e) => {
            let mut update = running_update(root, record.rollout_id.clone(), record.generation, pb::NodeState::Failed);
            update.set_failure_reason(pb::FailureReason::Other);
            update.message = truncate(&format!("cannot tell how the upgrade ended: {e}"), MAX_MESSAGE);
            update
        }
        Ok(facts) => outcome_update(root, &record, &decide(&record, &facts), config).await,
    };
    tracing::info!(
        generation = record.generation,
        state = update.state().as_str_name(),
        reason = update.failure_reason().as_str_name(),
        message = %update.message,
        "upgrade finished"
    );
    let update = node.report(update)?;
    record::remove(&path)?;
    Ok(Some(update))
}

/// The update reporting `outcome`; runs the health hook for the target.
async fn outcome_update(
    root: &Path,
    record: &UpgradeRecord,
    outcome: &Outcome,
    config: &UpgradeConfig,
) -> pb::StatusUpdate {
    let mut update = running_update(root, record.rollout_id.clone(), record.generation, pb::NodeState::Failed);
    if let Some((state, reason, message)) = verdict(record, outcome) {
        update.set_state(state);
        update.set_failure_reason(reason);
        update.message = truncate(&message, MAX_MESSAGE);
        return update;
    }
    if let Some(health) = &config.health_command {
        if let Err(e) = command::run(health, config.health_timeout).await {
            update.set_failure_reason(pb::FailureReason::Other);
            update.message = truncate(
                &format!("the node runs {} but its health check failed: {e}", record.target_release),
                MAX_MESSAGE,
            );
            return update;
        }
    }
    update.set_state(pb::NodeState::Healthy);
    update.image_ref.clone_from(&record.target_image);
    update.image_digest.clone_from(&record.digest);
    if record.rollback {
        update.message = format!("rolled back to {}", record.target_image);
    }
    update
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: Phase) -> UpgradeRecord {
        UpgradeRecord {
            generation: 4,
            rollout_id: "r-1".into(),
            phase,
            target_image: "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.3-k3sv1.27.6-k3s1".into(),
            target_release: "v2.4.3".into(),
            target_software: "v1.27.6+k3s1".into(),
            digest: "sha256:aa".into(),
            rollback: false,
            started_at: "2026-01-01T00:00:00Z".into(),
            attempt: 1,
            boot_id: "boot-1".into(),
            boot_time: Some(1_700_000_000),
        }
    }

    fn after_reboot(release: &str) -> BootFacts {
        BootFacts {
            boot_id: "boot-2".into(),
            boot_time: Some(1_700_000_300),
            boot: BootState::Active,
            upgrade_failure_marker: false,
            release: parse_release(release).expect("release"),
            software: "v1.27.6+k3s1".into(),
        }
    }

    #[test]
    fn the_active_partition_on_the_target_release_is_left_to_the_health_hook() {
        assert_eq!(decide(&record(Phase::Rebooting), &after_reboot("v2.4.3")), Outcome::OnTarget);
        assert_eq!(verdict(&record(Phase::Rebooting), &Outcome::OnTarget), None);
    }

    #[test]
    fn the_fallback_marker_means_a_fallback_boot_even_on_active() {
        let now = BootFacts { upgrade_failure_marker: true, ..after_reboot("v2.4.2") };
        let outcome = decide(&record(Phase::Rebooting), &now);
        assert_eq!(outcome, Outcome::Fallback { boot: BootState::Active, marker: true });
        let (state, reason, message) = verdict(&record(Phase::Rebooting), &outcome).expect("final");
        assert_eq!((state, reason), (pb::NodeState::RolledBack, pb::FailureReason::FallbackBoot));
        assert!(message.contains(UPGRADE_FAILURE_MARKER), "{message}");
    }

    #[test]
    fn a_passive_boot_is_a_fallback_boot_and_recovery_a_failure() {
        let passive = BootFacts { boot: BootState::Passive, ..after_reboot("v2.4.2") };
        let outcome = decide(&record(Phase::Rebooting), &passive);
        assert_eq!(outcome, Outcome::Fallback { boot: BootState::Passive, marker: false });
        let recovery = BootFacts { boot: BootState::Recovery, ..after_reboot("v2.4.3") };
        let outcome = decide(&record(Phase::Rebooting), &recovery);
        let (state, reason, _) = verdict(&record(Phase::Rebooting), &outcome).expect("final");
        assert_eq!((state, reason), (pb::NodeState::Failed, pb::FailureReason::FallbackBoot));
    }

    #[test]
    fn another_release_on_active_is_the_wrong_release() {
        let outcome = decide(&record(Phase::Rebooting), &after_reboot("v2.4.2"));
        assert_eq!(outcome, Outcome::WrongRelease { running: "v2.4.2 (v1.27.6+k3s1)".into() });
        let (state, reason, message) = verdict(&record(Phase::Rebooting), &outcome).expect("final");
        assert_eq!((state, reason), (pb::NodeState::Failed, pb::FailureReason::WrongRelease));
        assert!(message.contains("v2.4.2") && message.contains("v2.4.3"), "{message}");
        // The right release with another Kubernetes version is not the target either.
        let other_k3s = BootFacts { software: "v1.28.2+k3s1".into(), ..after_reboot("v2.4.3") };
        let outcome = decide(&record(Phase::Rebooting), &other_k3s);
        assert_eq!(outcome, Outcome::WrongRelease { running: "v2.4.3 (v1.28.2+k3s1)".into() });
        // A core image names no software: the release decides.
        let core = BootFacts { software: String::new(), ..after_reboot("v2.4.3") };
        assert_eq!(decide(&record(Phase::Rebooting), &core), Outcome::OnTarget);
    }

    #[test]
    fn the_same_boot_means_the_reboot_never_happened() {
        let same = BootFacts { boot_id: "boot-1".into(), ..after_reboot("v2.4.2") };
        assert_eq!(decide(&record(Phase::Rebooting), &same), Outcome::NotRebooted);
        assert_eq!(decide(&record(Phase::Installing), &same), Outcome::Interrupted { phase: Phase::Installing });
        // Without a boot id, btime within a few seconds is the same boot.
        let mut old = record(Phase::Rebooting);
        old.boot_id.clear();
        let jittered = BootFacts { boot_id: String::new(), boot_time: Some(1_700_000_001), ..after_reboot("v2.4.2") };
        assert_eq!(decide(&old, &jittered), Outcome::NotRebooted);
        let (state, reason, _) = verdict(&old, &Outcome::NotRebooted).expect("final");
        assert_eq!((state, reason), (pb::NodeState::Failed, pb::FailureReason::Other));
    }

    #[test]
    fn a_fetch_that_never_ended_is_interrupted_whatever_the_boot() {
        let outcome = decide(&record(Phase::Fetching), &after_reboot("v2.4.3"));
        assert_eq!(outcome, Outcome::Interrupted { phase: Phase::Fetching });
        let installing = decide(&record(Phase::Installing), &after_reboot("v2.4.2"));
        assert_eq!(installing, Outcome::RebootedWhileInstalling);
    }
}
