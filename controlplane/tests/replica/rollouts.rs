//! The rollout engine and RolloutService on an in-process replica, with
//! nodes played by the test: it writes their records and status
//! transitions into the store the way the session writer does, and
//! answers every desired state the engine writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_controlplane::nodes::{self, NodeRecord, SessionRecord};
use kairos_controlplane::replica::ReplicaHandle;
use kairos_controlplane::store::{Op, Request};
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::rollout_service_client::RolloutServiceClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{add_release, channel, eventually, leader_of, seeded_sessions, tuning, Pki, Slot};

const FROM: &str = "v2.4.2";
const TO: &str = "v2.4.3";
/// (flavor, flavor release) of the test fleet's two image families.
const FAMILIES: [(&str, &str); 2] = [("ubuntu", "22.04"), ("opensuse", "leap-15.6")];

fn image(family: usize, release: &str) -> String {
    let (flavor, flavor_release) = FAMILIES[family];
    format!("quay.io/kairos/{flavor}:{flavor_release}-core-amd64-generic-{release}")
}

fn node_id(i: usize) -> String {
    format!("{:032x}", 0xabc000 + i)
}

fn record(i: usize, release: &str) -> NodeRecord {
    let family = i % FAMILIES.len();
    let (flavor, flavor_release) = FAMILIES[family];
    NodeRecord {
        node_id: node_id(i),
        machine_id: node_id(i),
        hostname: format!("edge-{i}"),
        identity: Some(pb::NodeIdentity {
            flavor: flavor.into(),
            flavor_release: flavor_release.into(),
            variant: "core".into(),
            arch: "amd64".into(),
            model: "generic".into(),
            release: release.into(),
            ..Default::default()
        }),
        family: Some(pb::ImageFamily {
            flavor: flavor.into(),
            flavor_release: flavor_release.into(),
            variant: "core".into(),
            arch: "amd64".into(),
            model: "generic".into(),
            trusted_boot: false,
        }),
        state: pb::NodeState::Idle as i32,
        current_image_ref: image(family, release),
        boot_state: pb::BootState::Active as i32,
        ..Default::default()
    }
}

/// What the played nodes did, for the assertions.
#[derive(Default)]
struct Log {
    /// (node, generation, wave, image, rollback) in the order they were acted on.
    commanded: Vec<(String, u64, u32, String, bool)>,
    /// Most nodes between command and report at once.
    max_in_flight: usize,
}

/// The played fleet: nodes on `FROM`, online; nodes in `failing` report a
/// fallback boot instead of healthy.
struct Fleet {
    log: Arc<Mutex<Log>>,
    failing: Arc<Mutex<BTreeSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn seed_fleet(handle: &ReplicaHandle, count: usize) {
    let mut ops = Vec::new();
    for i in 0..count {
        ops.push(Op::put(nodes::node_key(&node_id(i)), record(i, FROM).encode()));
        let session = SessionRecord { replica_id: 1, session_id: 1, connected_at_ms: 1 };
        ops.push(Op::put(nodes::session_key(&node_id(i)), session.encode()));
    }
    handle.write(Request::batch(ops)).await.expect("seed fleet");
}

/// Plays `count` nodes: each desired state is acted on after `delay`.
fn play(handle: &ReplicaHandle, count: usize, delay: Duration) -> Fleet {
    let log = Arc::new(Mutex::new(Log::default()));
    let failing = Arc::new(Mutex::new(BTreeSet::new()));
    let client = handle.client().clone();
    let (log2, failing2) = (Arc::clone(&log), Arc::clone(&failing));
    let task = tokio::spawn(async move {
        let mut handled: HashMap<String, u64> = HashMap::new();
        let mut seq: HashMap<String, u64> = HashMap::new();
        loop {
            let mut acting = Vec::new();
            for i in 0..count {
                let id = node_id(i);
                let Ok(Some((desired, _))) = nodes::read_desired(client.reader(), &id) else { continue };
                if handled.get(&id) == Some(&desired.generation) {
                    continue;
                }
                handled.insert(id.clone(), desired.generation);
                let mut log = log2.lock().unwrap();
                log.commanded.push((
                    id.clone(),
                    desired.generation,
                    desired.wave,
                    desired.target_image_ref.clone(),
                    desired.rollback,
                ));
                acting.push((i, id, desired));
            }
            if !acting.is_empty() {
                {
                    let mut log = log2.lock().unwrap();
                    log.max_in_flight = log.max_in_flight.max(acting.len());
                }
                tokio::time::sleep(delay).await;
                let mut ops = Vec::new();
                for (i, id, desired) in acting {
                    let fail = failing2.lock().unwrap().contains(&id) && !desired.rollback;
                    let release = if fail { FROM.to_string() } else { desired.target_release.clone() };
                    let n = seq.entry(id.clone()).or_default();
                    *n += 1;
                    let mut r = record(i, &release);
                    r.state = if fail { pb::NodeState::Failed } else { pb::NodeState::Healthy } as i32;
                    r.last_status = Some(pb::StatusUpdate {
                        seq: *n,
                        state: r.state,
                        rollout_id: desired.rollout_id.clone(),
                        generation: desired.generation,
                        failure_reason: if fail { pb::FailureReason::FallbackBoot as i32 } else { 0 },
                        message: if fail { "fallback boot: /run/cos/upgrade_failure".into() } else { String::new() },
                        release: release.clone(),
                        image_ref: r.current_image_ref.clone(),
                        boot_state: if fail { pb::BootState::Passive } else { pb::BootState::Active } as i32,
                        ..Default::default()
                    });
                    ops.push(Op::put(nodes::node_key(&id), r.encode()));
                }
                if client.write(Request::batch(ops)).await.is_err() {
                    return;
                }
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    Fleet { log, failing, task }
}

async fn setup(dir: &std::path::Path, count: usize) -> (Arc<Pki>, Slot, ReplicaHandle) {
    let pki = Arc::new(Pki::new());
    let slot = Slot::new(1, dir);
    let handle = slot.start_with(&pki, true, tuning(), seeded_sessions()).await;
    leader_of(&handle).await;
    for family in 0..FAMILIES.len() {
        for release in [FROM, TO] {
            add_release(&pki, &slot.addr(), &image(family, release)).await.expect("add release");
        }
    }
    seed_fleet(&handle, count).await;
    (pki, slot, handle)
}

fn client(pki: &Pki, addr: &str) -> RolloutServiceClient<Channel> {
    RolloutServiceClient::new(channel(pki, addr))
}

fn spec(waves: &[&str], max_unavailable: u32) -> pb::RolloutSpec {
    pb::RolloutSpec {
        target_release: TO.into(),
        strategy: Some(pb::RolloutStrategy {
            waves: waves.iter().map(|w| w.to_string()).collect(),
            max_unavailable: Some(max_unavailable),
            bake: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates a rollout of `spec`; its id.
async fn create(client: &mut RolloutServiceClient<Channel>, spec: pb::RolloutSpec) -> String {
    let created = client.create(pb::CreateRolloutRequest { spec: Some(spec), ..Default::default() }).await;
    created.expect("create").into_inner().rollout.expect("rollout").rollout_id
}

async fn get(client: &mut RolloutServiceClient<Channel>, id: &str) -> pb::GetRolloutResponse {
    client
        .get(pb::GetRolloutRequest { rollout_id: id.into(), include_nodes: true, ..Default::default() })
        .await
        .expect("get rollout")
        .into_inner()
}

fn phase(r: &pb::GetRolloutResponse) -> pb::RolloutPhase {
    r.rollout.as_ref().and_then(|r| r.status.as_ref()).map_or(pb::RolloutPhase::Unspecified, |s| s.phase())
}

async fn wait_phase(
    client: &mut RolloutServiceClient<Channel>,
    id: &str,
    want: pb::RolloutPhase,
) -> pb::GetRolloutResponse {
    let mut c = client.clone();
    eventually(&format!("rollout {id} {want:?}"), Duration::from_secs(30), || {
        let mut c = c.clone();
        let id = id.to_string();
        async move {
            let r = get(&mut c, &id).await;
            (phase(&r) == want).then_some(r)
        }
    })
    .await;
    get(&mut c, id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_rollout_runs_wave_by_wave_with_a_canary_per_family_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 12;
    let (pki, slot, handle) = setup(dir.path(), count).await;
    let fleet = play(&handle, count, Duration::from_millis(30));
    let mut rollouts = client(&pki, &slot.addr());

    let plan = rollouts
        .plan(pb::PlanRolloutRequest { spec: Some(spec(&["1", "50%", "100%"], 3)) })
        .await
        .expect("plan")
        .into_inner();
    assert_eq!(plan.eligible_nodes, count as u32);
    assert_eq!(plan.change_class(), pb::ChangeClass::Patch);
    assert_eq!(plan.waves[0].nodes.len(), FAMILIES.len(), "one canary per image family: {:?}", plan.waves[0]);

    let created = rollouts
        .create(pb::CreateRolloutRequest { spec: Some(spec(&["1", "50%", "100%"], 3)), request_id: "req-1".into() })
        .await
        .expect("create")
        .into_inner();
    let id = created.rollout.expect("rollout").rollout_id;
    let again = rollouts
        .create(pb::CreateRolloutRequest { spec: Some(spec(&["1", "50%", "100%"], 3)), request_id: "req-1".into() })
        .await
        .expect("create again")
        .into_inner();
    assert_eq!(again.rollout.expect("rollout").rollout_id, id, "the same request id gives the same rollout");

    let done = wait_phase(&mut rollouts, &id, pb::RolloutPhase::Completed).await;
    let totals = done.rollout.and_then(|r| r.status).and_then(|s| s.totals).expect("totals");
    assert_eq!(totals.healthy, count as u32, "{totals:?}");

    {
        let log = fleet.log.lock().unwrap();
        assert_eq!(log.commanded.len(), count, "every node commanded once: {:?}", log.commanded);
        let waves: Vec<u32> = log.commanded.iter().map(|c| c.2).collect();
        assert!(waves.windows(2).all(|w| w[0] <= w[1]), "waves in order: {waves:?}");
        assert_eq!(waves.iter().filter(|w| **w == 0).count(), FAMILIES.len(), "canaries first: {waves:?}");
        assert!(log.max_in_flight <= 3, "at most max_unavailable at once: {}", log.max_in_flight);
    }
    let nodes_in_other = rollouts
        .plan(pb::PlanRolloutRequest { spec: Some(spec(&["100%"], 3)) })
        .await
        .expect("plan after")
        .into_inner();
    assert_eq!(nodes_in_other.up_to_date_node_ids.len(), count, "everyone is on {TO} now");
    drop(fleet);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_pauses_resume_retries_and_rollback_brings_nodes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 8;
    let (pki, slot, handle) = setup(dir.path(), count).await;
    let fleet = play(&handle, count, Duration::from_millis(20));
    let mut rollouts = client(&pki, &slot.addr());
    // Every node of family 1 fails until "fixed".
    fleet.failing.lock().unwrap().extend((0..count).filter(|i| i % 2 == 1).map(node_id));

    let id = create(&mut rollouts, spec(&["1", "100%"], 4)).await;
    let paused = wait_phase(&mut rollouts, &id, pb::RolloutPhase::Paused).await;
    let status = paused.rollout.as_ref().and_then(|r| r.status.clone()).expect("status");
    assert_eq!(status.pause_reason(), pb::PauseReason::FailureThreshold);
    assert!(status.reason_message.contains("failure threshold"), "{}", status.reason_message);
    assert_eq!(status.current_wave, 0, "paused before the next wave");
    let failed: Vec<&pb::RolloutNode> =
        paused.nodes.iter().filter(|n| n.state() == pb::RolloutNodeState::Failed).collect();
    assert_eq!(failed.len(), 1, "{:?}", paused.nodes);
    assert_eq!(failed[0].failure_reason(), pb::FailureReason::FallbackBoot);
    assert!(paused.nodes.iter().filter(|n| n.wave > 0).all(|n| n.state() == pb::RolloutNodeState::Pending));

    // A plain resume of a threshold pause is refused with the way out.
    let refused = rollouts
        .resume(pb::ResumeRolloutRequest { rollout_id: id.clone(), ..Default::default() })
        .await
        .expect_err("plain resume");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("retry_failed"), "{}", refused.message());

    fleet.failing.lock().unwrap().clear();
    rollouts
        .resume(pb::ResumeRolloutRequest { rollout_id: id.clone(), retry_failed: true, ..Default::default() })
        .await
        .expect("resume with retry");
    let done = wait_phase(&mut rollouts, &id, pb::RolloutPhase::Completed).await;
    assert!(done.nodes.iter().all(|n| n.state() == pb::RolloutNodeState::Healthy), "{:?}", done.nodes);
    let retried = done.nodes.iter().find(|n| n.attempt == 2).expect("the failed canary was retried");
    assert_eq!(retried.node_id, failed[0].node_id);

    // Rollback: every node goes back to its previous image.
    rollouts
        .rollback(pb::RollbackRolloutRequest { rollout_id: id.clone(), ..Default::default() })
        .await
        .expect("rollback");
    let back = wait_phase(&mut rollouts, &id, pb::RolloutPhase::RolledBack).await;
    assert!(back.nodes.iter().all(|n| n.state() == pb::RolloutNodeState::RolledBack), "{:?}", back.nodes);
    let log = std::mem::take(&mut *fleet.log.lock().unwrap());
    let reverts: Vec<_> = log.commanded.iter().filter(|c| c.4).collect();
    assert_eq!(reverts.len(), count, "{:?}", log.commanded);
    for (node, _, _, image_ref, _) in reverts {
        let i = (0..count).find(|i| &node_id(*i) == node).expect("known node");
        assert_eq!(image_ref, &image(i % 2, FROM), "node {node} goes back to its previous image");
    }
    // Every node was told one forward target by this rollout.
    let mut targets: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (node, _, _, image_ref, rollback) in &log.commanded {
        if !rollback {
            targets.entry(node).or_default().insert(image_ref);
        }
    }
    assert!(targets.values().all(|t| t.len() == 1), "{targets:?}");
    drop(fleet);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_failure_and_operator_calls_in_the_wrong_phase_name_the_way_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 6;
    let (pki, slot, handle) = setup(dir.path(), count).await;
    let fleet = play(&handle, count, Duration::from_millis(20));
    fleet.failing.lock().unwrap().extend((0..count).map(node_id));
    let mut rollouts = client(&pki, &slot.addr());
    let mut s = spec(&["1", "100%"], 2);
    if let Some(strategy) = s.strategy.as_mut() {
        strategy.on_failure = Some(pb::OnFailure::Abort as i32);
    }
    let id = create(&mut rollouts, s).await;
    let aborted = wait_phase(&mut rollouts, &id, pb::RolloutPhase::Aborted).await;
    assert!(aborted.nodes.iter().filter(|n| n.wave > 0).all(|n| n.state() == pb::RolloutNodeState::Pending));

    let pause = rollouts
        .pause(pb::PauseRolloutRequest { rollout_id: id.clone(), ..Default::default() })
        .await
        .expect_err("pause an aborted rollout");
    assert_eq!(pause.code(), Code::FailedPrecondition);
    assert!(pause.message().contains("aborted"), "{}", pause.message());
    let missing = rollouts
        .pause(pb::PauseRolloutRequest { rollout_id: "ro-999999".into(), ..Default::default() })
        .await
        .expect_err("unknown rollout");
    assert_eq!(missing.code(), Code::NotFound);
    let bad = rollouts
        .create(pb::CreateRolloutRequest {
            spec: Some(pb::RolloutSpec {
                target_release: TO.into(),
                strategy: Some(pb::RolloutStrategy { waves: vec!["50%".into(), "10%".into()], ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("shrinking waves");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("spec.strategy.waves"), "{}", bad.message());
    drop(fleet);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gates_hold_each_later_wave_and_offline_nodes_are_deferred_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let count = 6;
    let (pki, slot, handle) = setup(dir.path(), count).await;
    // Node 5 is offline: no session record.
    handle.write(Request::delete(nodes::session_key(&node_id(5)))).await.expect("take node 5 offline");
    let fleet = play(&handle, count, Duration::from_millis(10));
    let mut rollouts = client(&pki, &slot.addr());
    let mut s = spec(&["1", "100%"], 3);
    if let Some(strategy) = s.strategy.as_mut() {
        strategy.approve_waves = Some(true);
        strategy.offline_grace = Some(prost_types::Duration { seconds: 1, nanos: 0 });
    }
    let id = create(&mut rollouts, s).await;
    let waiting = wait_phase(&mut rollouts, &id, pb::RolloutPhase::AwaitingApproval).await;
    assert_eq!(waiting.rollout.and_then(|r| r.status).map(|s| s.current_wave), Some(1));
    let stale = rollouts
        .approve(pb::ApproveWaveRequest { rollout_id: id.clone(), wave: 0, ..Default::default() })
        .await
        .expect_err("approving the wrong wave");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let approved = rollouts
        .approve(pb::ApproveWaveRequest { rollout_id: id.clone(), wave: 1, comment: "ok".into() })
        .await
        .expect("approve wave 1")
        .into_inner();
    let wave1 = approved.rollout.and_then(|r| r.status).map(|s| s.waves[1].clone()).expect("wave 1");
    assert_eq!(wave1.approved_by, "cert:operator", "the approver is recorded");
    let done = wait_phase(&mut rollouts, &id, pb::RolloutPhase::Completed).await;
    let totals = done.rollout.and_then(|r| r.status).and_then(|s| s.totals).expect("totals");
    assert_eq!((totals.healthy, totals.deferred), (count as u32 - 1, 1), "{totals:?}");
    let offline = done.nodes.iter().find(|n| n.node_id == node_id(5)).expect("node 5");
    assert_eq!(offline.state(), pb::RolloutNodeState::Deferred);
    assert!(!offline.online);
    drop(fleet);
    handle.shutdown().await.expect("shutdown");
}
