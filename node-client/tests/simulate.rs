//! `simulate` against two fake replicas.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kairos_fleet_domain::fleet::matrix::SEED_FLAVORS;
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_node_client::simulate::{machine_id, SimulateOptions, Simulation, STORM_ROLLOUT};
use pb::server_message::Body as ServerBody;
use support::{Behaviour, FakeServer, Fleet, Received, TOKEN};
use tokio::sync::watch;

const COUNT: usize = 50;
const LIMIT: Duration = Duration::from_secs(20);

fn options(servers: Vec<String>, ca_pem: String) -> SimulateOptions {
    SimulateOptions {
        servers,
        token: TOKEN.into(),
        count: COUNT,
        ca_pem,
        seed: 42,
        duration: None,
        storm_after: Some(Duration::from_millis(300)),
        storm_state: pb::NodeState::Downloading,
        upgrade_step: Duration::from_millis(100),
        concurrency: 8,
        progress: false,
        release: None,
        fail_file: None,
        history: None,
    }
}

fn hellos(received: &[Received]) -> BTreeMap<String, Vec<pb::Hello>> {
    let mut by_node: BTreeMap<String, Vec<pb::Hello>> = BTreeMap::new();
    for r in received {
        if let Some(hello) = r.hello() {
            by_node.entry(r.node.clone()).or_default().push(hello.clone());
        }
    }
    by_node
}

async fn poll(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_virtual_nodes_enroll_connect_and_cover_every_seed_flavor() {
    let fleet = Fleet::new();
    let a = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let b = FakeServer::start(&fleet, 2, Behaviour::default()).await;
    let (stop, stopped) = watch::channel(false);
    let sim = Simulation::start(options(vec![a.url.clone(), b.url.clone()], fleet.ca_pem.clone()), stopped)
        .expect("simulation starts");

    assert!(fleet.wait_until(LIMIT, |r| hellos(r).len() == COUNT).await, "every node said hello");
    // The storm follows once all are connected; wait until every storm update is acknowledged.
    assert!(poll(LIMIT, || sim.live().storm_acked == COUNT as u64).await, "storm acknowledged: {:?}", sim.live());

    let by_node = hellos(&fleet.received());
    let expected: BTreeSet<String> = (0..COUNT).map(|i| machine_id(42, i)).collect();
    assert_eq!(by_node.keys().cloned().collect::<BTreeSet<_>>(), expected, "distinct, deterministic machine ids");
    let identities: Vec<pb::NodeIdentity> = by_node.values().filter_map(|h| h[0].identity.clone()).collect();
    let flavors: BTreeSet<&str> = identities.iter().map(|i| i.flavor.as_str()).collect();
    assert_eq!(flavors, SEED_FLAVORS.iter().map(|f| f.id).collect::<BTreeSet<_>>(), "every seed flavor");
    let families: BTreeSet<(String, String, String, String)> =
        identities.iter().map(|i| (i.flavor.clone(), i.variant.clone(), i.arch.clone(), i.model.clone())).collect();
    assert_eq!(families.len(), 16, "every seed family: 8 flavors × core/standard");
    assert!(identities.iter().filter(|i| i.variant == "standard").all(|i| !i.software_version.is_empty()));
    assert!(identities.iter().any(|i| i.arch == "arm64" && i.model == "rpi"));
    let servers: BTreeSet<u64> = fleet.received().iter().map(|r| r.server).collect();
    assert_eq!(servers.len(), 2, "nodes spread over both servers");
    let storm_nodes: BTreeSet<String> = fleet
        .received()
        .iter()
        .filter(|r| {
            r.status().is_some_and(|s| s.rollout_id == STORM_ROLLOUT && s.state() == pb::NodeState::Downloading)
        })
        .map(|r| r.node.clone())
        .collect();
    assert_eq!(storm_nodes.len(), COUNT, "one storm update per node");

    let _ = stop.send(true);
    let report = tokio::time::timeout(LIMIT, sim.finish()).await.expect("stops in time").expect("report");
    assert_eq!((report.count, report.enrolled, report.enroll_failures), (COUNT, COUNT as u64, 0));
    assert_eq!(report.sessions.connected, COUNT as u64);
    let json = serde_json::to_value(&report).expect("json");
    for key in
        ["count", "connected", "time_to_all_connected_ms", "heartbeats_acked", "rtt_p99_ms", "reconnects", "storm"]
    {
        assert!(json.get(key).is_some(), "report has {key}: {json}");
    }
    assert!(report.time_to_all_connected_ms.is_some());
    let storm = report.storm.expect("storm in the report");
    assert_eq!((storm.nodes, storm.acked), (COUNT as u64, COUNT as u64));
    assert!(storm.all_acked_ms.is_some());
    assert!(report.sessions.status_updates_acked >= COUNT as u64);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_node_walks_through_an_upgrade_and_comes_back_on_the_target() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let (stop, stopped) = watch::channel(false);
    let mut opts = options(vec![server.url.clone()], fleet.ca_pem.clone());
    opts.count = 1;
    opts.storm_after = None;
    let sim = Simulation::start(opts, stopped).expect("simulation starts");
    let node = machine_id(42, 0);
    assert!(fleet.wait_until(LIMIT, |r| hellos(r).len() == 1).await);
    let before = hellos(&fleet.received())[&node][0].identity.clone().expect("identity");
    assert_eq!(before.flavor, "opensuse");

    let target = "quay.io/kairos/core-opensuse:v1.6.1";
    let desired = pb::DesiredState {
        generation: 1,
        rollout_id: "r-up".into(),
        target_image_ref: target.into(),
        target_release: "v1.6.1".into(),
        ..Default::default()
    };
    assert!(fleet.push(&node, ServerBody::DesiredState(desired)).await);
    let healthy = |r: &[Received]| r.iter().any(|r| r.status().is_some_and(|s| s.state() == pb::NodeState::Healthy));
    assert!(fleet.wait_until(LIMIT, healthy).await, "reaches HEALTHY");

    let received = fleet.received();
    let states: Vec<pb::NodeState> =
        received.iter().filter_map(|r| r.status()).filter(|s| s.rollout_id == "r-up").map(|s| s.state()).fold(
            Vec::new(),
            |mut acc, s| {
                // A resent update repeats a state; keep transitions only.
                if acc.last() != Some(&s) && !acc.contains(&s) {
                    acc.push(s);
                }
                acc
            },
        );
    use pb::NodeState::*;
    assert_eq!(states, [Downloading, Verifying, Installing, Rebooting, Healthy]);
    assert!(received
        .iter()
        .any(|r| matches!(&r.message.body, Some(pb::node_message::Body::Progress(p)) if p.bytes_total > 0)));
    let node_hellos = &hellos(&received)[&node];
    assert_eq!(node_hellos.len(), 2, "the reboot closed the stream and a new Hello followed");
    let after = node_hellos[1].identity.clone().expect("identity");
    assert_eq!((after.release.as_str(), after.image_repo.as_str()), ("v1.6.1", target));
    assert_ne!(node_hellos[0].boot_time, node_hellos[1].boot_time, "a new boot time after the reboot");
    let last = received.iter().rev().find_map(|r| r.status()).expect("status");
    assert_eq!((last.state(), last.release.as_str(), last.image_ref.as_str()), (Healthy, "v1.6.1", target));
    assert!(last.image_digest.starts_with("sha256:"));

    let _ = stop.send(true);
    let report = tokio::time::timeout(LIMIT, sim.finish()).await.expect("stops").expect("report");
    assert!(report.sessions.reconnects >= 1);
    server.shutdown().await;
}

/// The history lines of a finished simulation.
fn history_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("history");
    text.lines().map(|l| serde_json::from_str(l).expect("one JSON object a line")).collect()
}

/// The newest status of `generation` in `state`, if any.
fn status_of(received: &[Received], generation: u64, state: pb::NodeState) -> Option<pb::StatusUpdate> {
    received.iter().rev().filter_map(|r| r.status()).find(|s| s.generation == generation && s.state() == state).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_file_rule_makes_the_upgrade_fall_back_until_emptied_and_a_rollback_ends_healthy() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (fail_file, history) = (dir.path().join("fail"), dir.path().join("history.jsonl"));
    std::fs::write(&fail_file, "# the v1.6.0 opensuse image does not boot\nopensuse/core@v1.6.0\n").expect("fail file");
    let (stop, stopped) = watch::channel(false);
    let mut opts = options(vec![server.url.clone()], fleet.ca_pem.clone());
    (opts.count, opts.storm_after, opts.upgrade_step) = (1, None, Duration::ZERO);
    opts.release = Some(semver::Version::new(1, 5, 0));
    (opts.fail_file, opts.history) = (Some(fail_file.clone()), Some(history.clone()));
    let sim = Simulation::start(opts, stopped).expect("simulation starts");
    let node = machine_id(42, 0);
    assert!(fleet.wait_until(LIMIT, |r| hellos(r).len() == 1).await);
    let first = hellos(&fleet.received())[&node][0].clone();
    let old_image = first.current_image_ref.clone();
    assert_eq!(first.identity.as_ref().map(|i| i.release.as_str()), Some("v1.5.0"), "--release");

    use pb::NodeState::*;
    let target = "quay.io/kairos/core-opensuse:v1.6.0";
    let desired = |generation, image: &str, release: &str, rollback| pb::DesiredState {
        generation,
        rollout_id: "r-1".into(),
        wave: 1,
        target_image_ref: image.into(),
        target_release: release.into(),
        rollback,
        ..Default::default()
    };
    assert!(fleet.push(&node, ServerBody::DesiredState(desired(1, target, "v1.6.0", false))).await);
    assert!(fleet.wait_until(LIMIT, |r| status_of(r, 1, Failed).is_some()).await, "the upgrade fails");
    let failed = status_of(&fleet.received(), 1, Failed).expect("failed");
    assert_eq!(failed.failure_reason(), pb::FailureReason::FallbackBoot);
    assert_eq!(failed.boot_state(), pb::BootState::Passive);
    assert_eq!((failed.release.as_str(), failed.image_ref.as_str()), ("v1.5.0", old_image.as_str()));
    assert!(failed.message.contains("/run/cos/upgrade_failure"), "{}", failed.message);
    assert!(status_of(&fleet.received(), 1, Rebooting).is_some(), "it installed and rebooted first");
    let fallback_hello = hellos(&fleet.received())[&node].last().cloned().expect("hello after the reboot");
    assert_eq!((fallback_hello.boot_state(), fallback_hello.upgrade_failure), (pb::BootState::Passive, true));
    assert_eq!(fallback_hello.current_image_ref, old_image);

    // A fixed image is published: the same target now boots.
    std::fs::write(&fail_file, "").expect("empty the fail file");
    assert!(fleet.push(&node, ServerBody::DesiredState(desired(2, target, "v1.6.0", false))).await);
    assert!(fleet.wait_until(LIMIT, |r| status_of(r, 2, Healthy).is_some()).await, "the retry is healthy");
    let healthy = status_of(&fleet.received(), 2, Healthy).expect("healthy");
    assert_eq!((healthy.release.as_str(), healthy.boot_state()), ("v1.6.0", pb::BootState::Active));

    assert!(fleet.push(&node, ServerBody::DesiredState(desired(3, &old_image, "v1.5.0", true))).await);
    assert!(fleet.wait_until(LIMIT, |r| status_of(r, 3, Healthy).is_some()).await, "the rollback is healthy");
    let back = status_of(&fleet.received(), 3, Healthy).expect("healthy");
    assert_eq!((back.release.as_str(), back.image_ref.as_str()), ("v1.5.0", old_image.as_str()));
    let last_hello = hellos(&fleet.received())[&node].last().cloned().expect("hello");
    assert_eq!((last_hello.current_image_ref.as_str(), last_hello.previous_image_ref.as_str()), (&*old_image, target));

    let _ = stop.send(true);
    let report = tokio::time::timeout(LIMIT, sim.finish()).await.expect("stops").expect("report");
    assert_eq!(
        report.upgrades,
        kairos_node_client::simulate::UpgradeStats { started: 3, healthy: 2, failed: 1, cancelled: 0 }
    );
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["upgrades"]["failed"], 1, "{json}");

    let lines = history_lines(&history);
    assert_eq!(report.history_lines, Some(lines.len() as u64));
    let desired: Vec<(u64, bool, bool)> = lines
        .iter()
        .filter(|l| l["kind"] == "desired")
        .map(|l| (l["generation"].as_u64().unwrap_or(0), l["rollback"] == true, l["repeat"] == true))
        .collect();
    assert_eq!(desired, [(1, false, false), (2, false, false), (3, true, false)]);
    let fallback = lines
        .iter()
        .find(|l| l["kind"] == "acked" && l["state"] == "failed")
        .unwrap_or_else(|| panic!("the failure was acknowledged: {lines:?}"));
    assert_eq!(fallback["failure_reason"], "fallback_boot");
    assert_eq!((fallback["boot_state"].as_str(), fallback["release"].as_str()), (Some("passive"), Some("v1.5.0")));
    assert_eq!((fallback["node"].as_str(), fallback["generation"].as_u64()), (Some(node.as_str()), Some(1)));
    let healthy_acked: Vec<u64> = lines
        .iter()
        .filter(|l| l["kind"] == "acked" && l["state"] == "healthy")
        .filter_map(|l| l["generation"].as_u64())
        .collect();
    assert_eq!(healthy_acked, [2, 3]);
    let restarts = lines.iter().filter(|l| l["kind"] == "disconnect" && l["reason"] == "restart").count();
    assert_eq!(restarts, 3, "every reboot, the fallback included, closed the stream");
    assert_eq!(lines.iter().filter(|l| l["kind"] == "connect").count(), 4);
    let times: Vec<u64> = lines.iter().filter_map(|l| l["t_ms"].as_u64()).collect();
    assert_eq!(times.len(), lines.len(), "every line has t_ms");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_before_installing_ends_idle_cancelled() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history.jsonl");
    let (stop, stopped) = watch::channel(false);
    let mut opts = options(vec![server.url.clone()], fleet.ca_pem.clone());
    (opts.count, opts.storm_after, opts.upgrade_step) = (1, None, Duration::from_secs(5));
    opts.history = Some(history.clone());
    let sim = Simulation::start(opts, stopped).expect("simulation starts");
    let node = machine_id(42, 0);
    assert!(fleet.wait_until(LIMIT, |r| hellos(r).len() == 1).await);
    let desired = pb::DesiredState {
        generation: 7,
        rollout_id: "r-2".into(),
        target_image_ref: "quay.io/kairos/core-opensuse:v1.6.1".into(),
        target_release: "v1.6.1".into(),
        ..Default::default()
    };
    assert!(fleet.push(&node, ServerBody::DesiredState(desired)).await);
    use pb::NodeState::*;
    assert!(fleet.wait_until(LIMIT, |r| status_of(r, 7, Downloading).is_some()).await);
    let cancel = pb::Cancel { generation: 7, reason: "rollout r-2 aborted".into() };
    assert!(fleet.push(&node, ServerBody::Cancel(cancel)).await);
    assert!(fleet.wait_until(LIMIT, |r| status_of(r, 7, Idle).is_some()).await, "the node goes idle");
    let idle = status_of(&fleet.received(), 7, Idle).expect("idle");
    assert_eq!((idle.failure_reason(), idle.message.as_str()), (pb::FailureReason::Cancelled, "rollout r-2 aborted"));
    assert!(status_of(&fleet.received(), 7, Installing).is_none(), "it never installed");

    let _ = stop.send(true);
    let report = tokio::time::timeout(LIMIT, sim.finish()).await.expect("stops").expect("report");
    assert_eq!((report.upgrades.started, report.upgrades.cancelled, report.upgrades.healthy), (1, 1, 0));
    let lines = history_lines(&history);
    let cancel = lines.iter().find(|l| l["kind"] == "cancel").expect("a cancel line");
    assert_eq!((cancel["generation"].as_u64(), cancel["reason"].as_str()), (Some(7), Some("rollout r-2 aborted")));
    assert!(lines.iter().any(|l| l["kind"] == "acked" && l["state"] == "idle" && l["failure_reason"] == "cancelled"));
    server.shutdown().await;
}
