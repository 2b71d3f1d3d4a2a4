//! The upgrader of `run`: fetch the target image, install it with the
//! executor (`kairos-agent upgrade` by default), persist the upgrade, reboot,
//! and after the reboot report how it ended ([`resume`]).
//!
//! ```text
//! apply:  allow-list → record (fetching) → fetch → record (installing)
//!         → INSTALLING → executor → record (rebooting) → REBOOTING → reboot
//!         → wait to be stopped by it (FAILED after upgrade.reboot_timeout)
//! start:  record? → fallback boot / wrong release / no reboot / health hook
//!         → ROLLED_BACK, FAILED or HEALTHY → remove the record
//! ```
//!
//! The record (`upgrade.toml`) is written before every step that a crash
//! or a reboot could cut short, so the next start always knows where the
//! upgrade stood and reports a final status for its generation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kairos_fleet_domain::fleet::image::ImageRef;
use kairos_fleet_proto::fleet::v1 as pb;

use crate::config::{UpgradeConfig, DEFAULT_EXECUTOR};
use crate::hello::{image_ref_of, pb_boot_state, read_boot_time};
use crate::local::read_local_facts;
use crate::state::StateDir;
use crate::upgrader::{executor_allowed, BoxFuture, FetchError, ImageFetcher, Reporter, Upgrader};

pub mod command;
pub mod record;
pub mod resume;

use command::{truncate, CommandError, Placeholders, MAX_MESSAGE};
use record::{Phase, UpgradeRecord};
pub use resume::resume;

/// The marker a Kairos node finds after booting its fallback partition.
pub const UPGRADE_FAILURE_MARKER: &str = "/run/cos/upgrade_failure";
/// Longest wait for the reboot command to return.
const REBOOT_COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Fetches, installs and reboots into desired states; see the module doc.
pub struct AgentUpgrader {
    config: UpgradeConfig,
    allowed_executors: Vec<String>,
    fetcher: Arc<dyn ImageFetcher>,
    state: StateDir,
    root: PathBuf,
}

impl AgentUpgrader {
    /// An upgrader running `config`'s commands, fetching with `fetcher`,
    /// keeping its record in `state` and reading boot facts below `root`.
    pub fn new(
        config: UpgradeConfig,
        allowed_executors: Vec<String>,
        fetcher: Arc<dyn ImageFetcher>,
        state: StateDir,
        root: PathBuf,
    ) -> Self {
        AgentUpgrader { config, allowed_executors, fetcher, state, root }
    }

    /// Records `update`; false (logged) when the status log failed.
    fn report(&self, reporter: &Reporter, update: pb::StatusUpdate) -> bool {
        match reporter.report(update) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(generation = reporter.generation(), error = %e, "cannot record status");
                false
            }
        }
    }

    /// Reports `state` with `reason` and `message` and forgets the upgrade.
    fn finish(&self, reporter: &Reporter, state: pb::NodeState, reason: pb::FailureReason, message: String) {
        let mut update = self.update(reporter, state);
        update.set_failure_reason(reason);
        update.message = truncate(&message, MAX_MESSAGE);
        tracing::warn!(
            generation = reporter.generation(),
            state = state.as_str_name(),
            reason = reason.as_str_name(),
            message = %update.message,
            "upgrade ended"
        );
        // Reported first: a crash in between leaves a record that the next
        // start drops because its generation already has a final status.
        if self.report(reporter, update) {
            if let Err(e) = record::remove(&record::record_path(&self.state)) {
                tracing::error!(error = %e, "cannot remove the upgrade record");
            }
        }
    }

    fn failed(&self, reporter: &Reporter, reason: pb::FailureReason, message: String) {
        self.finish(reporter, pb::NodeState::Failed, reason, message);
    }

    /// An update for `state` describing what the node runs now.
    fn update(&self, reporter: &Reporter, state: pb::NodeState) -> pb::StatusUpdate {
        with_running(&self.root, reporter.update(state))
    }

    /// The command of executor `name`, or why it may not run.
    fn executor_command(&self, name: &str, reporter: &Reporter) -> Result<&[String], String> {
        if !executor_allowed(name, &self.allowed_executors, reporter.server_executors()) {
            return Err(format!(
                "executor {name:?} is not allowed: it must be in this node's allowed_executors ({:?}) and in the \
                 server's list ({:?})",
                self.allowed_executors,
                reporter.server_executors()
            ));
        }
        match name {
            "" | DEFAULT_EXECUTOR => Ok(&self.config.command),
            other => self.config.executors.get(other).map(Vec::as_slice).ok_or_else(|| {
                format!("executor {other:?} is allowed but has no command: set upgrade.executors.{other}")
            }),
        }
    }

    fn store(&self, record: &UpgradeRecord, reporter: &Reporter) -> bool {
        match record::store(&record::record_path(&self.state), record) {
            Ok(()) => true,
            Err(e) => {
                self.failed(reporter, pb::FailureReason::Other, format!("cannot persist the upgrade: {e}"));
                false
            }
        }
    }

    async fn upgrade(&self, desired: pb::DesiredState, reporter: Reporter) {
        let hints = desired.executor.clone().unwrap_or_default();
        tracing::info!(
            generation = desired.generation,
            rollout = %desired.rollout_id,
            target = %desired.target_image_ref,
            release = %desired.target_release,
            rollback = desired.rollback,
            executor = %hints.name,
            "upgrading"
        );
        let template = match self.executor_command(&hints.name, &reporter) {
            Ok(template) => template.to_vec(),
            Err(message) => return self.failed(&reporter, pb::FailureReason::CommandNotAllowed, message),
        };
        let target_release = match target_release(&desired) {
            Ok(release) => release,
            Err(message) => return self.failed(&reporter, pb::FailureReason::IncompatibleTarget, message),
        };
        let mut record = UpgradeRecord {
            generation: desired.generation,
            rollout_id: desired.rollout_id.clone(),
            phase: Phase::Fetching,
            target_image: desired.target_image_ref.clone(),
            target_release,
            target_software: desired.target_software_version.clone(),
            digest: desired.target_image_digest.clone(),
            rollback: desired.rollback,
            started_at: jiff::Timestamp::now().to_string(),
            attempt: 1,
            boot_id: record::read_boot_id(&self.root),
            boot_time: read_boot_time(&self.root).map(|t| t.seconds),
        };
        if !self.store(&record, &reporter) {
            return;
        }

        let mut watcher = reporter.clone();
        let fetched = tokio::select! {
            biased;
            reason = watcher.cancellation() => Err(FetchError { reason: pb::FailureReason::Cancelled, message: reason }),
            fetched = self.fetcher.fetch(&desired, &reporter) => fetched,
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            // node.proto, Cancel: IDLE with CANCELLED before installing.
            Err(e) if e.reason == pb::FailureReason::Cancelled => {
                return self.finish(&reporter, pb::NodeState::Idle, e.reason, e.message);
            }
            Err(e) => return self.failed(&reporter, e.reason, e.message),
        };
        if !desired.target_image_digest.is_empty() && fetched.manifest_digest != desired.target_image_digest {
            let message =
                format!("fetched {} but the target is {}", fetched.manifest_digest, desired.target_image_digest);
            return self.failed(&reporter, pb::FailureReason::DigestMismatch, message);
        }

        // From here on the upgrade cannot be cancelled (node.proto, Cancel).
        record.digest.clone_from(&fetched.manifest_digest);
        record.phase = Phase::Installing;
        if !self.store(&record, &reporter) || !self.report(&reporter, self.update(&reporter, pb::NodeState::Installing))
        {
            return;
        }
        let mut template = template;
        if hints.recovery {
            template.extend(self.config.recovery_arguments.iter().cloned());
        }
        let values = Placeholders {
            archive: &fetched.archive,
            image: &desired.target_image_ref,
            digest: &fetched.manifest_digest,
        };
        let argv = command::expand(&template, &values);
        let limit = hints
            .timeout
            .and_then(|t| Duration::try_from(t).ok())
            .filter(|t| !t.is_zero())
            .unwrap_or(self.config.executor_timeout);
        tracing::info!(generation = desired.generation, command = ?argv, timeout = ?limit, "running the executor");
        if let Err(e) = command::run(&argv, limit).await {
            let message = match &e {
                CommandError::Exited { last_line, status, .. } => format!("the executor {status}: {last_line}"),
                other => other.to_string(),
            };
            return self.failed(&reporter, pb::FailureReason::ExecutorFailed, message);
        }

        record.phase = Phase::Rebooting;
        if !self.store(&record, &reporter) || !self.report(&reporter, self.update(&reporter, pb::NodeState::Rebooting))
        {
            return;
        }
        tracing::info!(generation = desired.generation, command = ?self.config.reboot_command, "rebooting");
        if let Err(e) = command::run(&self.config.reboot_command, REBOOT_COMMAND_LIMIT).await {
            return self.failed(&reporter, pb::FailureReason::Other, format!("the reboot command failed: {e}"));
        }
        tracing::info!(
            generation = desired.generation,
            "reboot requested; the outcome is reported when the client starts again"
        );
        // The reboot ends this process. Returning earlier would let a newer
        // generation start work while the node goes down (the session runs
        // it only after this one returns); a Cancel cannot stop a reboot.
        tokio::time::sleep(self.config.reboot_timeout).await;
        let message = format!(
            "the reboot command succeeded but the node did not go down within {:?} (upgrade.reboot_timeout)",
            self.config.reboot_timeout
        );
        self.failed(&reporter, pb::FailureReason::Other, message);
    }
}

impl Upgrader for AgentUpgrader {
    fn apply<'a>(&'a self, desired: pb::DesiredState, reporter: Reporter) -> BoxFuture<'a, ()> {
        Box::pin(self.upgrade(desired, reporter))
    }
}

/// The release the target carries: `target_release`, or else the one in
/// the image's tag (a rollback may name only the image), as `vX.Y.Z`.
pub fn target_release(desired: &pb::DesiredState) -> Result<String, String> {
    if !desired.target_release.is_empty() {
        return resume::parse_release(&desired.target_release)
            .map(|v| format!("v{v}"))
            .ok_or_else(|| format!("target_release {:?} is not a semver release", desired.target_release));
    }
    ImageRef::parse(&desired.target_image_ref)
        .map(|image| format!("v{}", image.release()))
        .map_err(|e| format!("no target_release, and target_image_ref {:?}: {e}", desired.target_image_ref))
}

/// `update` with the image, release, software and boot state the node runs
/// now (left empty when the root filesystem cannot be read).
fn with_running(root: &Path, mut update: pb::StatusUpdate) -> pb::StatusUpdate {
    if let Ok(facts) = read_local_facts(root) {
        update.image_ref = image_ref_of(&facts.identity);
        update.release = format!("v{}", facts.identity.release);
        update.software_version = facts.identity.software.as_ref().map(|s| s.upstream()).unwrap_or_default();
        update.set_boot_state(pb_boot_state(facts.boot));
    }
    update
}

/// An update for `state` of `generation` with what the node runs now.
pub(crate) fn running_update(
    root: &Path,
    rollout_id: String,
    generation: u64,
    state: pb::NodeState,
) -> pb::StatusUpdate {
    let mut update = pb::StatusUpdate {
        rollout_id,
        generation,
        observed_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        ..Default::default()
    };
    update.set_state(state);
    with_running(root, update)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_release_comes_from_the_desired_state_or_the_image_tag() {
        let mut desired = pb::DesiredState { target_release: "2.4.3".into(), ..Default::default() };
        assert_eq!(target_release(&desired), Ok("v2.4.3".into()));
        desired.target_release.clear();
        desired.target_image_ref =
            "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.3-k3sv1.27.6-k3s1".into();
        assert_eq!(target_release(&desired), Ok("v2.4.3".into()));
        desired.target_image_ref = "nothing".into();
        assert!(target_release(&desired).is_err());
        desired.target_release = "latest".into();
        assert!(target_release(&desired).is_err());
    }
}
