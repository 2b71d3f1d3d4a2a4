//! The simulated upgrader of virtual nodes: DOWNLOADING (with progress) →
//! VERIFYING → INSTALLING → REBOOTING (the stream closes and comes back
//! with the new image in Hello) → HEALTHY, one step each.
//!
//! When a rule of the fail file matches at the reboot, the node does what a
//! Kairos node does when the new image does not boot: it comes back on its
//! old image from the passive partition, with `/run/cos/upgrade_failure`
//! present, and reports FAILED with FAILURE_REASON_FALLBACK_BOOT. A step of
//! zero makes every step instant; the reboot still closes the stream and
//! opens a new one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kairos_fleet_domain::fleet::image::ImageRef;
use kairos_fleet_domain::fleet::model::{K8sDistro, SoftwareVersion};
use kairos_fleet_proto::fleet::v1 as pb;
use pb::NodeState;
use semver::Version;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::failures::FailFile;
use super::fleet::VirtualMachine;
use crate::hello::image_ref_of;
use crate::upgrader::{BoxFuture, Reporter, Upgrader};

/// Simulated image size, for progress messages.
const IMAGE_BYTES: u64 = 800 * 1024 * 1024;
const IMAGE_LAYERS: u32 = 8;
/// Progress messages per download step.
const PROGRESS_TICKS: u32 = 8;
/// Longest wait for the stream to come back after the simulated reboot.
const REBOOT_LIMIT: Duration = Duration::from_secs(120);
/// The marker a Kairos node finds after booting its fallback partition.
pub const UPGRADE_FAILURE_MARKER: &str = "/run/cos/upgrade_failure";

/// How upgrades ended, summed over every virtual node.
#[derive(Debug, Default)]
pub struct UpgradeCounters {
    started: AtomicU64,
    healthy: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
}

/// A snapshot of [`UpgradeCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UpgradeStats {
    /// Desired states acted on.
    pub started: u64,
    /// Upgrades (and rollbacks) that ended HEALTHY on their target.
    pub healthy: u64,
    /// Upgrades that ended FAILED: a fallback boot or an unusable target.
    pub failed: u64,
    /// Upgrades stopped before installing: cancelled or superseded.
    pub cancelled: u64,
}

impl UpgradeCounters {
    /// The counters now.
    pub fn stats(&self) -> UpgradeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UpgradeStats {
            started: get(&self.started),
            healthy: get(&self.healthy),
            failed: get(&self.failed),
            cancelled: get(&self.cancelled),
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Walks a virtual node through an upgrade, `step` per state.
pub struct SimulatedUpgrader {
    machine: Arc<VirtualMachine>,
    step: Duration,
    failures: Option<Arc<FailFile>>,
    counters: Arc<UpgradeCounters>,
}

impl SimulatedUpgrader {
    /// An upgrader for `machine` taking `step` per state.
    pub fn new(machine: Arc<VirtualMachine>, step: Duration) -> Self {
        SimulatedUpgrader { machine, step, failures: None, counters: Arc::default() }
    }

    /// Fails the upgrades that a rule of `failures` matches at their reboot.
    pub fn with_failures(mut self, failures: Arc<FailFile>) -> Self {
        self.failures = Some(failures);
        self
    }

    /// Counts upgrades into `counters` (shared by every virtual node).
    pub fn with_counters(mut self, counters: Arc<UpgradeCounters>) -> Self {
        self.counters = counters;
        self
    }

    /// An update for `state` describing the image the machine runs now.
    fn update(&self, reporter: &Reporter, state: NodeState) -> pb::StatusUpdate {
        let identity = self.machine.identity();
        pb::StatusUpdate {
            image_ref: image_ref_of(&identity),
            image_digest: self.machine.digest(),
            release: format!("v{}", identity.release),
            software_version: identity.software.as_ref().map(|s| s.upstream()).unwrap_or_default(),
            boot_state: self.machine.boot_state() as i32,
            ..reporter.update(state)
        }
    }

    fn report(&self, reporter: &Reporter, update: pb::StatusUpdate) -> bool {
        match reporter.report(update) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(node = %self.machine.machine_id, error = %e, "cannot record status");
                false
            }
        }
    }

    /// Sleeps `d` unless cancelled first; returns the cancel reason. A zero
    /// wait only checks for a cancel.
    async fn wait(d: Duration, reporter: &mut Reporter) -> Result<(), String> {
        if let Some(reason) = reporter.cancelled() {
            return Err(reason);
        }
        if d.is_zero() {
            return Ok(());
        }
        tokio::select! {
            biased;
            reason = reporter.cancellation() => Err(reason),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Downloading and verifying, cancellable; Err carries the cancel reason.
    async fn fetch(&self, reporter: &mut Reporter) -> Result<(), String> {
        // Instant steps offer only the final progress of each phase.
        let ticks = if self.step.is_zero() { 1 } else { PROGRESS_TICKS };
        let tick = self.step / ticks;
        let per_second = IMAGE_BYTES * 1000 / u64::try_from(self.step.as_millis().max(1)).unwrap_or(1);
        for phase in [NodeState::Downloading, NodeState::Verifying] {
            if !self.report(reporter, self.update(reporter, phase)) {
                return Err("the status log failed".into());
            }
            for i in 1..=ticks {
                Self::wait(tick, reporter).await?;
                reporter.progress(pb::Progress {
                    phase: phase as i32,
                    bytes_done: IMAGE_BYTES / u64::from(ticks) * u64::from(i),
                    bytes_total: IMAGE_BYTES,
                    bytes_per_second: per_second,
                    layers_done: IMAGE_LAYERS * i / ticks,
                    layers_total: IMAGE_LAYERS,
                    ..Default::default()
                });
            }
        }
        Ok(())
    }

    /// The release the target image carries: `target_release`, or else the
    /// release in the image's tag (a rollback may name only the image).
    fn target_release(desired: &pb::DesiredState) -> Result<Version, String> {
        if desired.target_release.is_empty() {
            return ImageRef::parse(&desired.target_image_ref)
                .map(|image| image.release().clone())
                .map_err(|e| format!("no target_release, and target_image_ref {:?}: {e}", desired.target_image_ref));
        }
        Version::parse(desired.target_release.trim_start_matches('v'))
            .map_err(|e| format!("target_release {:?}: {e}", desired.target_release))
    }

    /// The digest the node pins for the target.
    fn target_digest(desired: &pb::DesiredState) -> String {
        if desired.target_image_digest.is_empty() {
            // No digest given: "resolve" the tag once, deterministically.
            let digest = Sha256::digest(desired.target_image_ref.as_bytes());
            format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
        } else {
            desired.target_image_digest.clone()
        }
    }

    /// The fail-file rule that makes an upgrade to `target` fail on this
    /// node now, shown as written.
    fn failing_rule(&self, target: &Version) -> Option<String> {
        let failures = self.failures.as_ref()?;
        let identity = self.machine.identity();
        failures.rules().failing(&identity.flavor, identity.variant, target).map(ToString::to_string)
    }

    async fn upgrade(&self, desired: pb::DesiredState, mut reporter: Reporter) {
        UpgradeCounters::count(&self.counters.started);
        let release = match Self::target_release(&desired) {
            Ok(release) => release,
            Err(message) => {
                let mut failed = self.update(&reporter, NodeState::Failed);
                failed.set_failure_reason(pb::FailureReason::IncompatibleTarget);
                failed.message = message;
                self.report(&reporter, failed);
                UpgradeCounters::count(&self.counters.failed);
                return;
            }
        };
        if let Err(reason) = self.fetch(&mut reporter).await {
            let mut idle = self.update(&reporter, NodeState::Idle);
            idle.set_failure_reason(pb::FailureReason::Cancelled);
            idle.message = reason;
            self.report(&reporter, idle);
            UpgradeCounters::count(&self.counters.cancelled);
            return;
        }
        // From here on the upgrade cannot be cancelled (node.proto, Cancel).
        if !self.report(&reporter, self.update(&reporter, NodeState::Installing)) {
            return;
        }
        tokio::time::sleep(self.step).await;
        if !self.report(&reporter, self.update(&reporter, NodeState::Rebooting)) {
            return;
        }
        // Whether the new image boots is decided now, so a test can change
        // the fail file while upgrades are under way.
        if let Some(rule) = self.failing_rule(&release) {
            self.machine.fall_back(SystemTime::now() + self.step);
            self.reboot(&reporter).await;
            let old = self.machine.identity();
            let mut failed = self.update(&reporter, NodeState::Failed);
            failed.set_failure_reason(pb::FailureReason::FallbackBoot);
            failed.message = format!(
                "v{release} ({}) did not boot: fell back to the passive partition, {UPGRADE_FAILURE_MARKER} \
                 present; running v{} again (fail-file rule `{rule}`)",
                desired.target_image_ref, old.release
            );
            self.report(&reporter, failed);
            UpgradeCounters::count(&self.counters.failed);
            return;
        }
        let mut identity = self.machine.identity();
        let image = ImageRef::parse(&desired.target_image_ref).ok();
        identity.release = release;
        if !desired.target_software_version.is_empty() {
            identity.software = SoftwareVersion::parse(&desired.target_software_version, Some(K8sDistro::K3s)).ok();
        } else if let Some(software) = image.as_ref().and_then(ImageRef::software) {
            identity.software = Some(software.clone());
        }
        identity.image_repo_raw = Some(desired.target_image_ref.clone());
        identity.image_repo = image;
        self.machine.reboot_into(identity, Self::target_digest(&desired), SystemTime::now() + self.step);
        self.reboot(&reporter).await;
        self.report(&reporter, self.update(&reporter, NodeState::Healthy));
        UpgradeCounters::count(&self.counters.healthy);
    }

    /// Closes the stream and waits for the next one, as a reboot does.
    async fn reboot(&self, reporter: &Reporter) {
        if !reporter.restart_stream(self.step, REBOOT_LIMIT).await {
            tracing::warn!(node = %self.machine.machine_id, "no stream after the simulated reboot; reporting anyway");
        }
    }
}

impl Upgrader for SimulatedUpgrader {
    fn apply<'a>(&'a self, desired: pb::DesiredState, reporter: Reporter) -> BoxFuture<'a, ()> {
        Box::pin(self.upgrade(desired, reporter))
    }
}
