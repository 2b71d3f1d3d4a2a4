//! The session loop against fake replicas: hello, heartbeats, failover,
//! half-open detection, status resend and desired-state handling.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_node_client::config::K3sRoleSetting;
use kairos_node_client::enroll::{enroll, EnrollParams};
use kairos_node_client::hello::{node_path, pb_identity, LocalHello};
use kairos_node_client::local::read_local_facts;
use kairos_node_client::session::{Backoff, NodeHandle, Session, SessionSettings};
use kairos_node_client::state::{FileStatusLog, SharedStatusLog, StatusLog};
use kairos_node_client::tls::{NodeCredentials, TlsTransport};
use kairos_node_client::upgrader::{BoxFuture, LoggingUpgrader, Reporter, Upgrader};
use pb::server_message::Body as ServerBody;
use support::{Behaviour, FakeServer, Fleet, Received, TOKEN};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NODE: &str = "00112233445566778899aabbccddeeff";
const LIMIT: Duration = Duration::from_secs(15);

/// A node's root filesystem and credentials, enrolled at `url`.
async fn enrolled(fleet: &Arc<Fleet>, url: &str, root: &Path) -> NodeCredentials {
    support::node_root(root, NODE);
    let facts = read_local_facts(root).expect("facts");
    let params = EnrollParams {
        token: TOKEN.into(),
        machine_id: NODE.into(),
        identity: pb_identity(&facts.identity, &node_path(root, &facts.identity_source)),
        hostname: "edge-1".into(),
    };
    enroll(url, &fleet.ca_pem, &params).await.expect("enroll").credentials
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    handle: NodeHandle,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(LIMIT, self.task).await.expect("session stops").expect("no panic");
    }
}

fn start(
    credentials: &NodeCredentials,
    endpoints: Vec<String>,
    root: &Path,
    log: SharedStatusLog,
    upgrader: Arc<dyn Upgrader>,
) -> Running {
    let mut settings = SessionSettings::new(NODE, endpoints);
    settings.backoff = Backoff { initial: Duration::from_millis(200), max: Duration::from_secs(2) };
    let hello = LocalHello {
        root: root.to_path_buf(),
        labels: BTreeMap::from([("site".to_string(), "berlin".to_string())]),
        k3s_role: K3sRoleSetting::Agent,
        k3s_cluster: "edge".into(),
    };
    let session = Session::new(TlsTransport::new(credentials.clone()), settings, Arc::new(hello), log, upgrader);
    let handle = session.handle();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(session.run(stopped));
    Running { stop, task, handle }
}

fn memory_log() -> SharedStatusLog {
    SharedStatusLog::new(kairos_node_client::state::MemoryStatusLog::new())
}

fn on(server: u64) -> impl Fn(&Received) -> bool {
    move |r| r.server == server && r.node == NODE
}

fn hellos_on(received: &[Received], server: u64) -> usize {
    received.iter().filter(|r| on(server)(r) && r.hello().is_some()).count()
}

#[tokio::test]
async fn hello_comes_first_then_heartbeats_at_the_configured_interval() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = enrolled(&fleet, &server.url, dir.path()).await;
    let node =
        start(&credentials, vec![server.url.clone()], dir.path(), memory_log(), Arc::new(LoggingUpgrader::default()));

    let three = |r: &[Received]| r.iter().filter(|r| r.heartbeat().is_some()).count() >= 3;
    assert!(fleet.wait_until(LIMIT, three).await, "three heartbeats");
    let received: Vec<_> = fleet.received_at().into_iter().filter(|(_, r)| r.node == NODE).collect();
    let hello = received[0].1.hello().expect("the first message is Hello");
    let identity = hello.identity.as_ref().expect("identity");
    assert_eq!((identity.flavor.as_str(), identity.release.as_str()), ("opensuse", "v2.4.2"));
    assert_eq!(hello.boot_state(), pb::BootState::Active);
    assert_eq!(hello.client_version, kairos_node_client::CLIENT_VERSION);
    assert_eq!(hello.labels.get("site").map(String::as_str), Some("berlin"));
    assert_eq!(hello.k3s.as_ref().map(|k| (k.role(), k.cluster_name.as_str())), Some((pb::K3sRole::Agent, "edge")));
    assert!(hello.boot_time.is_some() && hello.last_status.is_none());

    let beats: Vec<_> = received.iter().filter_map(|(at, r)| r.heartbeat().map(|h| (*at, *h))).collect();
    assert_eq!(beats.iter().take(3).map(|(_, h)| h.sequence).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(beats[0].1.last_round_trip.is_none(), "no round trip before the first ack");
    assert!(beats[1].1.last_round_trip.is_some(), "the second heartbeat carries the first round trip");
    for pair in beats.windows(2).take(2) {
        let sent = |h: &pb::Heartbeat| h.sent_at.map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9).expect("sent_at");
        let gap = sent(&pair[1].1) - sent(&pair[0].1);
        // The server asked for 1 s; the ticker never fires early.
        assert!(gap >= 0.9, "heartbeats {gap:.3} s apart");
        assert!(pair[1].0.duration_since(pair[0].0) >= Duration::from_millis(700));
    }
    node.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn session_moves_to_the_next_endpoint_when_its_server_shuts_down() {
    let fleet = Fleet::new();
    let first = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let second = FakeServer::start(&fleet, 2, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = enrolled(&fleet, &first.url, dir.path()).await;
    let endpoints = vec![first.url.clone(), second.url.clone()];
    let node = start(&credentials, endpoints, dir.path(), memory_log(), Arc::new(LoggingUpgrader::default()));

    assert!(fleet.wait_until(LIMIT, |r| hellos_on(r, 1) == 1).await, "hello on the first server");
    first.shutdown().await;
    assert!(fleet.wait_until(LIMIT, |r| hellos_on(r, 2) == 1).await, "hello on the second server");
    let on_second = |r: &[Received]| r.iter().any(|r| on(2)(r) && r.heartbeat().is_some());
    assert!(fleet.wait_until(LIMIT, on_second).await, "heartbeats on the second server");
    node.stop().await;
    second.shutdown().await;
}

#[tokio::test]
async fn session_leaves_a_server_that_stops_acknowledging_heartbeats() {
    let fleet = Fleet::new();
    *fleet.config.lock().expect("lock") = support::node_config(Duration::from_secs(1), Duration::from_secs(2));
    let silent = FakeServer::start(&fleet, 1, Behaviour { ack_heartbeats: false, ..Behaviour::default() }).await;
    let healthy = FakeServer::start(&fleet, 2, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = enrolled(&fleet, &silent.url, dir.path()).await;
    let endpoints = vec![silent.url.clone(), healthy.url.clone()];
    let node = start(&credentials, endpoints, dir.path(), memory_log(), Arc::new(LoggingUpgrader::default()));

    assert!(fleet.wait_until(LIMIT, |r| hellos_on(r, 1) == 1).await, "hello on the silent server");
    // The silent server keeps the connection open; only the missing acks reveal it.
    assert!(fleet.wait_until(LIMIT, |r| hellos_on(r, 2) == 1).await, "moved to the healthy server");
    let beats_on_silent = fleet.received().iter().filter(|r| on(1)(r) && r.heartbeat().is_some()).count();
    assert!(beats_on_silent >= 1, "it heartbeated before giving up");
    node.stop().await;
    silent.shutdown().await;
    healthy.shutdown().await;
}

fn status(state: pb::NodeState) -> pb::StatusUpdate {
    let mut update = pb::StatusUpdate { rollout_id: "r-1".into(), generation: 1, ..Default::default() };
    update.set_state(state);
    update
}

#[tokio::test]
async fn unacknowledged_updates_are_resent_after_reconnect_and_dropped_after_ack() {
    let fleet = Fleet::new();
    let forgetful = FakeServer::start(&fleet, 1, Behaviour { ack_status: false, ..Behaviour::default() }).await;
    let durable = FakeServer::start(&fleet, 2, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = enrolled(&fleet, &forgetful.url, &dir.path().join("root")).await;
    let status_file = dir.path().join("status.toml");
    let log = SharedStatusLog::new(FileStatusLog::open(status_file.clone()).expect("log"));
    let endpoints = vec![forgetful.url.clone(), durable.url.clone()];
    let node = start(&credentials, endpoints, &dir.path().join("root"), log, Arc::new(LoggingUpgrader::default()));

    assert!(fleet.wait_until(LIMIT, |r| hellos_on(r, 1) == 1).await);
    assert_eq!(node.handle.report(status(pb::NodeState::Downloading)).expect("record").seq, 1);
    assert_eq!(node.handle.report(status(pb::NodeState::Verifying)).expect("record").seq, 2);
    let both_on_first = |r: &[Received]| r.iter().filter(|r| on(1)(r) && r.status().is_some()).count() == 2;
    assert!(fleet.wait_until(LIMIT, both_on_first).await, "updates sent on the first stream");
    assert_eq!(node.handle.log().snapshot().unacked.len(), 2, "the first server never acknowledged");

    forgetful.shutdown().await;
    let resent = |r: &[Received]| r.iter().filter(|r| on(2)(r) && r.status().is_some()).count() >= 2;
    assert!(fleet.wait_until(LIMIT, resent).await, "updates resent on the second stream");
    let on_second: Vec<Received> = fleet.received().into_iter().filter(on(2)).collect();
    let hello = on_second[0].hello().expect("Hello first on the new stream");
    assert_eq!(hello.last_status.as_ref().map(|s| s.seq), Some(2));
    let seqs: Vec<u64> = on_second.iter().filter_map(|r| r.status().map(|s| s.seq)).collect();
    assert_eq!(seqs, [1, 2], "resent in order, right after Hello");
    assert!(on_second[1].status().is_some() && on_second[2].status().is_some());

    let end = tokio::time::Instant::now() + LIMIT;
    while !node.handle.log().snapshot().unacked.is_empty() {
        assert!(tokio::time::Instant::now() < end, "StatusAck drops the updates");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let persisted = FileStatusLog::open(status_file).expect("reopen");
    assert!(persisted.state().unacked.is_empty());
    assert_eq!((persisted.state().next_seq, persisted.state().acked_through), (3, 2));
    node.stop().await;
    durable.shutdown().await;
}

/// Records the generations it was handed.
#[derive(Default)]
struct CountingUpgrader {
    generations: Mutex<Vec<u64>>,
}

impl CountingUpgrader {
    fn seen(&self) -> Vec<u64> {
        self.generations.lock().expect("lock").clone()
    }
}

impl Upgrader for CountingUpgrader {
    fn apply<'a>(&'a self, desired: pb::DesiredState, _reporter: Reporter) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.generations.lock().expect("lock").push(desired.generation) })
    }
}

fn desired(generation: u64) -> ServerBody {
    ServerBody::DesiredState(pb::DesiredState {
        generation,
        rollout_id: "r-1".into(),
        target_image_ref: "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.3-k3sv1.27.6-k3s1".into(),
        target_release: "v2.4.3".into(),
        ..Default::default()
    })
}

async fn wait_for_generation(upgrader: &CountingUpgrader, generation: u64) {
    let end = tokio::time::Instant::now() + LIMIT;
    while !upgrader.seen().contains(&generation) {
        assert!(tokio::time::Instant::now() < end, "generation {generation} reaches the upgrader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_desired_generation_reaches_the_upgrader_once_even_when_resent_or_after_restart() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let credentials = enrolled(&fleet, &server.url, &root).await;
    let status_file = dir.path().join("status.toml");

    let upgrader = Arc::new(CountingUpgrader::default());
    let log = SharedStatusLog::new(FileStatusLog::open(status_file.clone()).expect("log"));
    let node = start(&credentials, vec![server.url.clone()], &root, log, upgrader.clone());
    assert!(fleet.wait_until(LIMIT, |r| hellos_on(r, 1) == 1).await);
    for generation in [5, 5, 4, 6] {
        assert!(fleet.push(NODE, desired(generation)).await);
    }
    wait_for_generation(&upgrader, 6).await;
    // The stream is ordered: the repeated 5 and the stale 4 came before 6.
    assert_eq!(upgrader.seen(), [5, 6]);
    node.stop().await;

    // A restarted client remembers generation 6.
    let upgrader = Arc::new(CountingUpgrader::default());
    let log = SharedStatusLog::new(FileStatusLog::open(status_file).expect("log"));
    let node = start(&credentials, vec![server.url.clone()], &root, log, upgrader.clone());
    assert!(fleet.wait_until(LIMIT, |r| hellos_on(r, 1) == 2).await, "second stream");
    assert!(fleet.push(NODE, desired(6)).await);
    assert!(fleet.push(NODE, desired(7)).await);
    wait_for_generation(&upgrader, 7).await;
    assert_eq!(upgrader.seen(), [7]);
    node.stop().await;
    server.shutdown().await;
}
