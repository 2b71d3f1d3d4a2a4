//! The upgrade executor end to end on a test root filesystem: a stand-in
//! `kairos-agent` that records its arguments and rewrites the release file
//! (or leaves the fallback marker), a stand-in reboot, a fake image
//! fetcher, and a simulated restart that runs the start-up check.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_node_client::agent::{self, record, AgentUpgrader};
use kairos_node_client::config::{K3sRoleSetting, UpgradeConfig};
use kairos_node_client::hello::LocalHello;
use kairos_node_client::session::{NodeHandle, Session, SessionSettings};
use kairos_node_client::state::{FileStatusLog, SharedStatusLog, StateDir, STATUS_FILE};
use kairos_node_client::tls::{NodeCredentials, TlsTransport};
use kairos_node_client::upgrader::{BoxFuture, FetchError, FetchedImage, ImageFetcher, Reporter, Upgrader};
use tokio::sync::watch;

const NODE: &str = "00112233445566778899aabbccddeeff";
const TARGET: &str = "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.3-k3sv1.27.6-k3s1";
const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const LIMIT: Duration = Duration::from_secs(30);
const PASSIVE_CMDLINE: &str = "BOOT_IMAGE=/cOS/passive.img root=LABEL=COS_STATE cos-img/filename=/cOS/passive.img\n";

/// Writes a small file as the archive, like a pull that succeeded.
struct FakeFetcher {
    dir: PathBuf,
}

impl ImageFetcher for FakeFetcher {
    fn fetch<'a>(
        &'a self,
        _desired: &'a pb::DesiredState,
        _reporter: &'a Reporter,
    ) -> BoxFuture<'a, Result<FetchedImage, FetchError>> {
        Box::pin(async move {
            let archive = self.dir.join("image.tar");
            std::fs::write(&archive, b"oci-layout")
                .map_err(|e| FetchError { reason: pb::FailureReason::PullFailed, message: e.to_string() })?;
            Ok(FetchedImage { archive, manifest_digest: DIGEST.into(), size: 10 })
        })
    }
}

/// Never finishes: the fetch of a generation that gets cancelled.
struct StuckFetcher;

impl ImageFetcher for StuckFetcher {
    fn fetch<'a>(
        &'a self,
        _desired: &'a pb::DesiredState,
        _reporter: &'a Reporter,
    ) -> BoxFuture<'a, Result<FetchedImage, FetchError>> {
        Box::pin(std::future::pending())
    }
}

/// A node: its root, state dir and stand-in commands, in one temp dir.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = Node { dir };
        support::node_root(&node.root(), NODE);
        node.write("root/proc/sys/kernel/random/boot_id", "boot-1\n");
        // The stand-in executor: `mode` says how the new image will boot.
        let root = node.root().display().to_string();
        let base = node.path().display().to_string();
        node.write(
            "kairos-agent",
            &format!(
                "echo \"$@\" >> {base}/agent-args\n\
                 mode=$(cat {base}/mode 2>/dev/null)\n\
                 case \"$mode\" in\n\
                 exit1) echo 'pulling layers'; echo 'error: COS_STATE has no space left' >&2; exit 1 ;;\n\
                 fallback) mkdir -p {root}/run/cos && touch {root}/run/cos/upgrade_failure ;;\n\
                 *) sed -i 's/v2\\.4\\.2/v2.4.3/g' {root}/etc/kairos-release ;;\n\
                 esac\n"
            ),
        );
        node.write("reboot", &format!("echo reboot >> {base}/reboots\n"));
        node
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root(&self) -> PathBuf {
        self.path().join("root")
    }

    fn state(&self) -> StateDir {
        StateDir::new(self.path().join("state"))
    }

    fn write(&self, file: &str, text: &str) {
        let path = self.path().join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path().join(file)).unwrap_or_default()
    }

    /// The stand-ins, run through `sh` so no freshly written file is executed.
    fn config(&self) -> UpgradeConfig {
        let script = |name: &str| self.path().join(name).display().to_string();
        UpgradeConfig {
            command: vec![
                "sh".into(),
                script("kairos-agent"),
                "upgrade".into(),
                "--source".into(),
                "ocifile:{archive}".into(),
            ],
            reboot_command: vec!["sh".into(), script("reboot")],
            ..UpgradeConfig::default()
        }
    }

    /// A session handle over the node's persisted status log (the session never runs).
    fn handle(&self) -> NodeHandle {
        self.state().create().expect("state dir");
        let log = SharedStatusLog::new(FileStatusLog::open(self.state().file(STATUS_FILE)).expect("status log"));
        let hello = LocalHello {
            root: self.root(),
            labels: BTreeMap::new(),
            k3s_role: K3sRoleSetting::None,
            k3s_cluster: String::new(),
        };
        let credentials =
            NodeCredentials { cert_chain_pem: String::new(), key_pem: String::new(), ca_pem: String::new() };
        let upgrader: Arc<dyn Upgrader> = Arc::new(kairos_node_client::upgrader::LoggingUpgrader::default());
        let settings = SessionSettings::new(NODE, Vec::new());
        Session::new(TlsTransport::new(credentials), settings, Arc::new(hello), log, upgrader).handle()
    }

    fn upgrader(&self, config: UpgradeConfig, allowed: &[&str], fetcher: Arc<dyn ImageFetcher>) -> AgentUpgrader {
        let allowed = allowed.iter().map(|s| s.to_string()).collect();
        AgentUpgrader::new(config, allowed, fetcher, self.state(), self.root())
    }

    fn fetcher(&self) -> Arc<dyn ImageFetcher> {
        Arc::new(FakeFetcher { dir: self.path().to_path_buf() })
    }

    /// What a reboot changes: a new boot id and boot time, and the
    /// partition it came up from.
    fn reboot(&self, cmdline: Option<&str>) {
        self.write("root/proc/sys/kernel/random/boot_id", "boot-2\n");
        self.write("root/proc/stat", "cpu  1 2 3\nbtime 1700000600\n");
        if let Some(cmdline) = cmdline {
            self.write("root/proc/cmdline", cmdline);
        }
    }

    /// The client's start after a restart: a fresh log and handle.
    async fn restart(&self, config: &UpgradeConfig) -> Option<pb::StatusUpdate> {
        let handle = self.handle();
        agent::resume(&self.state(), &self.root(), config, &handle).await.expect("resume")
    }

    /// Applies `desired` until it ends or the stand-in reboot ran (a real
    /// reboot stops the client there); returns the updates it reported.
    async fn apply(
        &self,
        upgrader: &AgentUpgrader,
        handle: &NodeHandle,
        desired: pb::DesiredState,
    ) -> Vec<pb::StatusUpdate> {
        let before = handle.log().last_seq();
        let (_cancel, cancelled) = watch::channel(None);
        let reporter = Reporter::new(handle.clone(), &desired, Vec::new(), cancelled);
        let run = upgrader.apply(desired, reporter);
        tokio::pin!(run);
        let rebooted = async {
            while self.read("reboots").is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            () = &mut run => {}
            () = rebooted => {}
            () = tokio::time::sleep(LIMIT) => panic!("the upgrade neither ended nor rebooted within {LIMIT:?}"),
        }
        handle.log().unacked_after(before).0
    }

    fn record(&self) -> Option<record::UpgradeRecord> {
        record::load(&record::record_path(&self.state())).expect("record")
    }
}

fn desired(generation: u64) -> pb::DesiredState {
    pb::DesiredState {
        generation,
        rollout_id: "r-1".into(),
        target_image_ref: TARGET.into(),
        target_image_digest: DIGEST.into(),
        target_release: "v2.4.3".into(),
        target_software_version: "v1.27.6+k3s1".into(),
        ..Default::default()
    }
}

fn states(updates: &[pb::StatusUpdate]) -> Vec<pb::NodeState> {
    updates.iter().map(|u| u.state()).collect()
}

#[tokio::test]
async fn a_successful_upgrade_installs_reboots_and_reports_healthy_on_the_new_release() {
    let node = Node::new();
    let config = node.config();
    let upgrader = node.upgrader(config.clone(), &[], node.fetcher());
    let handle = node.handle();

    let updates = node.apply(&upgrader, &handle, desired(3)).await;
    assert_eq!(states(&updates), [pb::NodeState::Installing, pb::NodeState::Rebooting]);
    let archive = node.path().join("image.tar").display().to_string();
    assert_eq!(node.read("agent-args").trim(), format!("upgrade --source ocifile:{archive}"));
    assert_eq!(node.read("reboots").lines().count(), 1, "rebooted once");
    let record = node.record().expect("the upgrade is persisted before the reboot");
    assert_eq!((record.generation, record.phase, record.digest.as_str()), (3, record::Phase::Rebooting, DIGEST));
    assert_eq!((record.target_release.as_str(), record.rollout_id.as_str()), ("v2.4.3", "r-1"));

    node.reboot(None);
    let healthy = node.restart(&config).await.expect("an outcome");
    assert_eq!(healthy.state(), pb::NodeState::Healthy);
    assert_eq!((healthy.generation, healthy.rollout_id.as_str()), (3, "r-1"));
    assert_eq!((healthy.release.as_str(), healthy.software_version.as_str()), ("v2.4.3", "v1.27.6+k3s1"));
    assert_eq!((healthy.image_ref.as_str(), healthy.image_digest.as_str()), (TARGET, DIGEST));
    assert_eq!(healthy.boot_state(), pb::BootState::Active);
    assert!(healthy.seq > updates[1].seq, "the status log's seq carries on across the restart");
    assert_eq!(node.record(), None, "the record is removed");
    assert_eq!(node.restart(&config).await, None, "a further start has nothing to report");
}

#[tokio::test]
async fn a_recovery_upgrade_passes_the_recovery_flag() {
    let node = Node::new();
    let upgrader = node.upgrader(node.config(), &[], node.fetcher());
    let mut wanted = desired(3);
    wanted.executor = Some(pb::ExecutorHints { recovery: true, ..Default::default() });
    node.apply(&upgrader, &node.handle(), wanted).await;
    assert!(node.read("agent-args").trim().ends_with("image.tar --recovery"), "{}", node.read("agent-args"));
}

#[tokio::test]
async fn a_fallback_boot_after_the_upgrade_is_reported_as_rolled_back() {
    let node = Node::new();
    node.write("mode", "fallback");
    let config = node.config();
    let upgrader = node.upgrader(config.clone(), &[], node.fetcher());
    let updates = node.apply(&upgrader, &node.handle(), desired(4)).await;
    assert_eq!(states(&updates), [pb::NodeState::Installing, pb::NodeState::Rebooting]);

    node.reboot(Some(PASSIVE_CMDLINE));
    let outcome = node.restart(&config).await.expect("an outcome");
    assert_eq!(outcome.state(), pb::NodeState::RolledBack);
    assert_eq!(outcome.failure_reason(), pb::FailureReason::FallbackBoot);
    assert_eq!((outcome.release.as_str(), outcome.boot_state()), ("v2.4.2", pb::BootState::Passive));
    assert!(outcome.message.contains("/run/cos/upgrade_failure"), "{}", outcome.message);
    assert_eq!(node.record(), None);
}

#[tokio::test]
async fn an_executor_outside_the_allow_list_is_refused_before_anything_runs() {
    let node = Node::new();
    let upgrader = node.upgrader(node.config(), &[], node.fetcher());
    let mut wanted = desired(5);
    wanted.executor = Some(pb::ExecutorHints { name: "custom".into(), ..Default::default() });
    let updates = node.apply(&upgrader, &node.handle(), wanted).await;
    assert_eq!(states(&updates), [pb::NodeState::Failed]);
    assert_eq!(updates[0].failure_reason(), pb::FailureReason::CommandNotAllowed);
    assert!(updates[0].message.contains("custom"), "{}", updates[0].message);
    assert_eq!(node.read("agent-args"), "", "the executor never ran");
    assert!(!node.path().join("image.tar").exists(), "nothing was fetched");
    assert_eq!(node.record(), None);
}

#[tokio::test]
async fn an_allowed_executor_without_a_command_is_refused() {
    let node = Node::new();
    let upgrader = node.upgrader(node.config(), &["custom"], node.fetcher());
    let mut wanted = desired(5);
    wanted.executor = Some(pb::ExecutorHints { name: "custom".into(), ..Default::default() });
    let updates = node.apply(&upgrader, &node.handle(), wanted).await;
    assert_eq!(updates.iter().map(|u| u.failure_reason()).collect::<Vec<_>>(), [pb::FailureReason::CommandNotAllowed]);
    assert!(updates[0].message.contains("upgrade.executors.custom"), "{}", updates[0].message);
}

#[tokio::test]
async fn a_failing_executor_is_reported_with_its_last_error_line_and_no_reboot() {
    let node = Node::new();
    node.write("mode", "exit1");
    let upgrader = node.upgrader(node.config(), &[], node.fetcher());
    let updates = node.apply(&upgrader, &node.handle(), desired(6)).await;
    assert_eq!(states(&updates), [pb::NodeState::Installing, pb::NodeState::Failed]);
    let failed = &updates[1];
    assert_eq!(failed.failure_reason(), pb::FailureReason::ExecutorFailed);
    assert!(failed.message.ends_with("error: COS_STATE has no space left"), "{}", failed.message);
    assert!(failed.message.contains("exited with 1"), "{}", failed.message);
    assert_eq!(failed.release, "v2.4.2", "still on the old release");
    assert_eq!(node.read("reboots"), "", "no reboot");
    assert_eq!(node.record(), None);
}

#[tokio::test]
async fn an_executor_past_its_timeout_is_killed_and_reported() {
    let node = Node::new();
    let mut config = node.config();
    config.command = vec!["sleep".into(), "30".into()];
    let upgrader = node.upgrader(config, &[], node.fetcher());
    let mut wanted = desired(6);
    let timeout = prost_types::Duration { seconds: 0, nanos: 300_000_000 };
    wanted.executor = Some(pb::ExecutorHints { timeout: Some(timeout), ..Default::default() });
    let updates = node.apply(&upgrader, &node.handle(), wanted).await;
    assert_eq!(states(&updates), [pb::NodeState::Installing, pb::NodeState::Failed]);
    assert_eq!(updates[1].failure_reason(), pb::FailureReason::ExecutorFailed);
    assert!(updates[1].message.contains("did not finish within"), "{}", updates[1].message);
}

#[tokio::test]
async fn a_failing_health_hook_fails_the_upgrade_on_the_target() {
    let node = Node::new();
    let mut config = node.config();
    config.health_command = Some(vec!["sh".into(), "-c".into(), "echo 'k3s is not ready' >&2; exit 2".into()]);
    let upgrader = node.upgrader(config.clone(), &[], node.fetcher());
    node.apply(&upgrader, &node.handle(), desired(7)).await;

    node.reboot(None);
    let outcome = node.restart(&config).await.expect("an outcome");
    assert_eq!(outcome.state(), pb::NodeState::Failed);
    assert_eq!(outcome.release, "v2.4.3");
    assert!(outcome.message.contains("health check failed"), "{}", outcome.message);
    assert!(outcome.message.contains("k3s is not ready"), "{}", outcome.message);
    assert_eq!(node.record(), None);
}

#[tokio::test]
async fn a_passing_health_hook_lets_the_node_report_healthy() {
    let node = Node::new();
    let mut config = node.config();
    config.health_command = Some(vec!["true".into()]);
    let upgrader = node.upgrader(config.clone(), &[], node.fetcher());
    node.apply(&upgrader, &node.handle(), desired(7)).await;
    node.reboot(None);
    assert_eq!(node.restart(&config).await.map(|u| u.state()), Some(pb::NodeState::Healthy));
}

#[tokio::test]
async fn a_reboot_that_never_happened_is_reported_as_failed() {
    let node = Node::new();
    let config = node.config();
    let upgrader = node.upgrader(config.clone(), &[], node.fetcher());
    node.apply(&upgrader, &node.handle(), desired(8)).await;
    // The client restarts, but the node did not reboot.
    let outcome = node.restart(&config).await.expect("an outcome");
    assert_eq!((outcome.state(), outcome.failure_reason()), (pb::NodeState::Failed, pb::FailureReason::Other));
    assert!(outcome.message.contains("did not reboot"), "{}", outcome.message);
}

#[tokio::test]
async fn a_rollback_goes_the_same_way_and_reports_healthy_on_its_target() {
    let node = Node::new();
    let config = node.config();
    let upgrader = node.upgrader(config.clone(), &[], node.fetcher());
    let mut wanted = desired(9);
    wanted.rollback = true;
    wanted.target_release.clear();
    let updates = node.apply(&upgrader, &node.handle(), wanted).await;
    assert_eq!(states(&updates), [pb::NodeState::Installing, pb::NodeState::Rebooting]);
    node.reboot(None);
    let outcome = node.restart(&config).await.expect("an outcome");
    assert_eq!((outcome.state(), outcome.release.as_str()), (pb::NodeState::Healthy, "v2.4.3"));
}

#[tokio::test]
async fn a_generation_left_unfinished_by_a_crash_is_reported_as_interrupted() {
    let node = Node::new();
    let handle = node.handle();
    assert!(handle.log().accept_generation(11).expect("accept"));
    let mut downloading = pb::StatusUpdate { rollout_id: "r-2".into(), generation: 11, ..Default::default() };
    downloading.set_state(pb::NodeState::Downloading);
    handle.report(downloading).expect("record");
    drop(handle);

    let outcome = node.restart(&node.config()).await.expect("an outcome");
    assert_eq!((outcome.state(), outcome.generation, outcome.rollout_id.as_str()), (pb::NodeState::Failed, 11, "r-2"));
    assert!(outcome.message.contains("interrupted"), "{}", outcome.message);
    assert_eq!(node.restart(&node.config()).await, None, "reported once");
}

#[tokio::test]
async fn a_crash_while_fetching_is_reported_from_the_record() {
    let node = Node::new();
    let handle = node.handle();
    let upgrader = node.upgrader(node.config(), &[], Arc::new(StuckFetcher));
    let (_cancel, cancelled) = watch::channel(None);
    let reporter = Reporter::new(handle.clone(), &desired(12), Vec::new(), cancelled);
    let stuck = tokio::time::timeout(Duration::from_millis(300), upgrader.apply(desired(12), reporter)).await;
    assert!(stuck.is_err(), "the fetch never ends");
    assert_eq!(node.record().map(|r| r.phase), Some(record::Phase::Fetching));

    let outcome = node.restart(&node.config()).await.expect("an outcome");
    assert_eq!((outcome.state(), outcome.rollout_id.as_str()), (pb::NodeState::Failed, "r-1"));
    assert!(outcome.message.contains("while fetching"), "{}", outcome.message);
}

#[tokio::test]
async fn a_cancel_while_fetching_reports_idle_cancelled() {
    let node = Node::new();
    let handle = node.handle();
    let upgrader = node.upgrader(node.config(), &[], Arc::new(StuckFetcher));
    let (cancel, cancelled) = watch::channel(None);
    let reporter = Reporter::new(handle.clone(), &desired(13), Vec::new(), cancelled);
    let before = handle.log().last_seq();
    let run = upgrader.apply(desired(13), reporter);
    cancel.send_replace(Some("rollout r-1 aborted by operator".into()));
    run.await;
    let updates = handle.log().unacked_after(before).0;
    assert_eq!(states(&updates), [pb::NodeState::Idle]);
    assert_eq!(updates[0].failure_reason(), pb::FailureReason::Cancelled);
    assert_eq!(updates[0].message, "rollout r-1 aborted by operator");
    assert_eq!(node.record(), None);
}

#[tokio::test]
async fn a_node_still_up_after_the_reboot_timeout_reports_failed() {
    let node = Node::new();
    let mut config = node.config();
    config.reboot_timeout = Duration::from_millis(200);
    let upgrader = node.upgrader(config, &[], node.fetcher());
    let handle = node.handle();
    let (_cancel, cancelled) = watch::channel(None);
    let reporter = Reporter::new(handle.clone(), &desired(14), Vec::new(), cancelled);
    tokio::time::timeout(LIMIT, upgrader.apply(desired(14), reporter)).await.expect("ends after the reboot timeout");
    let updates = handle.log().unacked_after(0).0;
    assert_eq!(states(&updates), [pb::NodeState::Installing, pb::NodeState::Rebooting, pb::NodeState::Failed]);
    assert!(updates[2].message.contains("did not go down"), "{}", updates[2].message);
    assert_eq!(node.record(), None);
}

#[tokio::test]
async fn a_failing_reboot_command_is_reported() {
    let node = Node::new();
    let mut config = node.config();
    config.reboot_command = vec!["false".into()];
    let upgrader = node.upgrader(config, &[], node.fetcher());
    let updates = node.apply(&upgrader, &node.handle(), desired(15)).await;
    assert_eq!(states(&updates), [pb::NodeState::Installing, pb::NodeState::Rebooting, pb::NodeState::Failed]);
    assert!(updates[2].message.contains("reboot command failed"), "{}", updates[2].message);
    assert_eq!(node.record(), None);
}
