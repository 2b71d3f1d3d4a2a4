//! The simulated upgrader of virtual nodes: DOWNLOADING (with progress) →
//! VERIFYING → INSTALLING → REBOOTING (the stream closes and comes back
//! with the new image in Hello) → HEALTHY, one step each.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kairos_controlplane::fleet::image::ImageRef;
use kairos_controlplane::fleet::model::{K8sDistro, SoftwareVersion};
use kairos_fleet_proto::fleet::v1 as pb;
use pb::NodeState;
use semver::Version;
use sha2::{Digest, Sha256};

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

/// Walks a virtual node through an upgrade, `step` per state.
pub struct SimulatedUpgrader {
    machine: Arc<VirtualMachine>,
    step: Duration,
}

impl SimulatedUpgrader {
    /// An upgrader for `machine` taking `step` per state.
    pub fn new(machine: Arc<VirtualMachine>, step: Duration) -> Self {
        SimulatedUpgrader { machine, step }
    }

    /// An update for `state` describing the image the machine runs now.
    fn update(&self, reporter: &Reporter, state: NodeState) -> pb::StatusUpdate {
        let identity = self.machine.identity();
        pb::StatusUpdate {
            image_ref: image_ref_of(&identity),
            release: format!("v{}", identity.release),
            software_version: identity.software.as_ref().map(|s| s.upstream()).unwrap_or_default(),
            boot_state: pb::BootState::Active as i32,
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

    /// Sleeps `d` unless cancelled first; returns the cancel reason.
    async fn wait(d: Duration, reporter: &mut Reporter) -> Result<(), String> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            reason = reporter.cancellation() => Err(reason),
        }
    }

    /// Downloading and verifying, cancellable; Err carries the cancel reason.
    async fn fetch(&self, reporter: &mut Reporter) -> Result<(), String> {
        let tick = self.step / PROGRESS_TICKS;
        for phase in [NodeState::Downloading, NodeState::Verifying] {
            if !self.report(reporter, self.update(reporter, phase)) {
                return Err("the status log failed".into());
            }
            for i in 1..=PROGRESS_TICKS {
                Self::wait(tick, reporter).await?;
                let done = IMAGE_BYTES / u64::from(PROGRESS_TICKS) * u64::from(i);
                reporter.progress(pb::Progress {
                    phase: phase as i32,
                    bytes_done: done,
                    bytes_total: IMAGE_BYTES,
                    bytes_per_second: IMAGE_BYTES * 1000 / u64::try_from(self.step.as_millis().max(1)).unwrap_or(1),
                    layers_done: IMAGE_LAYERS * i / PROGRESS_TICKS,
                    layers_total: IMAGE_LAYERS,
                    ..Default::default()
                });
            }
        }
        Ok(())
    }

    async fn upgrade(&self, desired: pb::DesiredState, mut reporter: Reporter) {
        let release = match Version::parse(desired.target_release.trim_start_matches('v')) {
            Ok(release) => release,
            Err(e) => {
                let mut failed = self.update(&reporter, NodeState::Failed);
                failed.set_failure_reason(pb::FailureReason::IncompatibleTarget);
                failed.message = format!("target_release {:?}: {e}", desired.target_release);
                self.report(&reporter, failed);
                return;
            }
        };
        if let Err(reason) = self.fetch(&mut reporter).await {
            let mut idle = self.update(&reporter, NodeState::Idle);
            idle.set_failure_reason(pb::FailureReason::Cancelled);
            idle.message = reason;
            self.report(&reporter, idle);
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
        let mut identity = self.machine.identity();
        identity.release = release.clone();
        if !desired.target_software_version.is_empty() {
            identity.software = SoftwareVersion::parse(&desired.target_software_version, Some(K8sDistro::K3s)).ok();
        }
        identity.image_repo_raw = Some(desired.target_image_ref.clone());
        identity.image_repo = ImageRef::parse(&desired.target_image_ref).ok();
        self.machine.reboot_into(identity, SystemTime::now() + self.step);
        if !reporter.restart_stream(self.step, REBOOT_LIMIT).await {
            tracing::warn!(node = %self.machine.machine_id, "no stream after the simulated reboot; reporting anyway");
        }
        let mut healthy = self.update(&reporter, NodeState::Healthy);
        healthy.image_digest = if desired.target_image_digest.is_empty() {
            // No digest given: "resolve" the tag once, deterministically.
            let digest = Sha256::digest(desired.target_image_ref.as_bytes());
            format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
        } else {
            desired.target_image_digest.clone()
        };
        self.report(&reporter, healthy);
    }
}

impl Upgrader for SimulatedUpgrader {
    fn apply<'a>(&'a self, desired: pb::DesiredState, reporter: Reporter) -> BoxFuture<'a, ()> {
        Box::pin(self.upgrade(desired, reporter))
    }
}
