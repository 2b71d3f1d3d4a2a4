//! Scenario tests, one per rule of the rollout state machine.

use super::*;
use crate::fleet::model::{K3sMembership, K3sRole};
use crate::fleet::planner::PlannedWave;
use crate::fleet::strategy::{FailureThreshold, OnFailure, WaveSpec, HOUR, MINUTE};
use crate::fleet::window::MaintenanceWindow;

/// 2025-01-15T00:00:00Z, a Wednesday.
const T0: Millis = 1_736_899_200_000;
const TARGET: &str = "quay.io/kairos/opensuse:leap-15.6-standard-amd64-generic-v3.5.1-k3s-v1.33.2-k3s1";
const PREVIOUS: &str = "quay.io/kairos/opensuse:leap-15.6-standard-amd64-generic-v3.5.0-k3s-v1.33.2-k3s1";

fn id(s: &str) -> NodeId {
    NodeId::new(s)
}

fn strategy() -> Strategy {
    Strategy {
        waves: WaveSpec::parse("1,100%").unwrap(),
        max_unavailable: 2,
        health_timeout: 30 * MINUTE,
        failure_threshold: FailureThreshold::Count(0),
        min_sample: 1,
        on_failure: OnFailure::Pause,
        bake: 10 * MINUTE,
        windows: Vec::new(),
        approve_waves: false,
        urgent: false,
        offline_grace: 15 * MINUTE,
    }
}

fn plan(waves: &[&[&str]]) -> WavePlan {
    WavePlan { waves: waves.iter().map(|w| PlannedWave { nodes: w.iter().map(|n| id(n)).collect() }).collect() }
}

fn assignment(n: &str) -> NodeAssignment {
    NodeAssignment { id: id(n), target_image: TARGET.into(), previous_image: PREVIOUS.into(), k3s: None, online: true }
}

fn names(ids: &[NodeId]) -> Vec<&str> {
    ids.iter().map(NodeId::as_str).collect()
}

/// Drives one rollout with a clock that only moves forward.
struct Harness {
    r: Rollout,
    now: Millis,
}

impl Harness {
    fn new(strategy: Strategy, waves: &[&[&str]]) -> Self {
        let nodes = waves.iter().flat_map(|w| w.iter()).map(|n| assignment(n)).collect();
        Self::with(strategy, waves, nodes)
    }

    fn with(strategy: Strategy, waves: &[&[&str]], nodes: Vec<NodeAssignment>) -> Self {
        Self { r: Rollout::new("r1", strategy, &plan(waves), nodes, T0).unwrap(), now: T0 }
    }

    fn at(&mut self, t: Millis) -> &mut Self {
        self.now = t;
        self
    }

    fn after(&mut self, d: Millis) -> &mut Self {
        self.now += d;
        self
    }

    fn try_apply(&mut self, event: impl FnOnce(Millis) -> Event) -> Result<Vec<Action>, RolloutError> {
        self.r.apply(event(self.now))
    }

    fn apply(&mut self, event: impl FnOnce(Millis) -> Event) -> Vec<Action> {
        self.try_apply(event).unwrap()
    }

    fn start(&mut self) -> Vec<Action> {
        self.apply(|now| Event::Start { now })
    }

    fn tick(&mut self) -> Vec<Action> {
        self.apply(|now| Event::Tick { now })
    }

    fn report(&mut self, n: &str, status: NodeReport) -> Vec<Action> {
        self.apply(|now| Event::NodeStatus { node: id(n), status, now })
    }

    fn healthy(&mut self, n: &str) -> Vec<Action> {
        self.report(n, NodeReport::Healthy)
    }

    fn fail(&mut self, n: &str) -> Vec<Action> {
        self.report(n, NodeReport::Failed { reason: "fallback boot: /run/cos/upgrade_failure".into() })
    }

    fn online(&mut self, n: &str, online: bool) -> Vec<Action> {
        self.apply(|now| Event::NodeOnline { node: id(n), online, now })
    }

    fn state(&self, n: &str) -> &NodeState {
        &self.r.node(&id(n)).unwrap().state
    }
}

fn commanded(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Command { node, image, .. } => {
                assert_eq!(image, TARGET, "a command always names the node's target image");
                Some(node.to_string())
            }
            _ => None,
        })
        .collect()
}

fn reverted(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Revert { node, image } => {
                assert_eq!(image, PREVIOUS, "a revert always names the node's previous image");
                Some(node.to_string())
            }
            _ => None,
        })
        .collect()
}

fn emitted(actions: &[Action]) -> Vec<RolloutEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn wave_started(actions: &[Action]) -> Option<usize> {
    emitted(actions).into_iter().find_map(|e| match e {
        RolloutEvent::WaveStarted { wave, .. } => Some(wave),
        _ => None,
    })
}

/// Runs the canary wave of a `[["canary"], rest]` rollout to healthy and
/// through its bake; returns the actions of the tick that starts wave 1.
fn through_canary(h: &mut Harness) -> Vec<Action> {
    h.start();
    h.after(5 * MINUTE).healthy("canary");
    let bake = h.r.strategy().effective_bake();
    h.after(bake).tick()
}

#[test]
fn canary_wave_goes_first() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a", "b", "c"]]);
    let acts = h.start();
    assert_eq!(commanded(&acts), ["canary"]);
    assert!(emitted(&acts).contains(&RolloutEvent::WaveStarted { wave: 0, nodes: 1 }));
    assert_eq!(h.r.phase(), &Phase::Running);
    assert_eq!(h.r.counts_for_wave(1).pending, 3);
    let acts = h.after(MINUTE).healthy("canary");
    assert!(commanded(&acts).is_empty(), "wave 1 waits for the canary's bake");
    assert!(emitted(&acts).contains(&RolloutEvent::WaveCompleted { wave: 0, healthy: 1, failed: 0, deferred: 0 }));
    assert_eq!(h.r.phase(), &Phase::Baking { until: T0 + MINUTE + 10 * MINUTE });
}

#[test]
fn failed_canary_pauses_before_next_wave() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a", "b", "c"]]);
    h.start();
    let acts = h.after(MINUTE).fail("canary");
    let events = emitted(&acts);
    assert!(events.contains(&RolloutEvent::ThresholdTripped {
        wave: 0,
        failed: vec![id("canary")],
        threshold: FailureThreshold::Count(0)
    }));
    let Phase::Paused { reason } = h.r.phase() else { panic!("expected paused, got {:?}", h.r.phase()) };
    assert!(reason.contains("canary") && reason.contains("failure threshold 0"), "{reason}");
    assert!(reason.contains("Resume"), "the reason names the way out: {reason}");
    // Time passing changes nothing: no bake, no next wave.
    let acts = h.after(2 * HOUR).tick();
    assert!(acts.is_empty());
    assert_eq!(h.r.counts_for_wave(1).pending, 3);
    assert_eq!(h.r.next_wakeup(), None);
}

#[test]
fn resume_after_fixing_continues() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a", "b", "c"]]);
    h.start();
    h.after(MINUTE).fail("canary");
    let acts = h.after(HOUR).apply(|now| Event::Resume { accept_failures: true, retry_failed: true, now });
    assert_eq!(commanded(&acts), ["canary"], "the failed canary is re-commanded");
    assert!(emitted(&acts).contains(&RolloutEvent::Resumed { retried: vec![id("canary")] }));
    assert_eq!(h.r.node(&id("canary")).unwrap().attempt, 2);
    let acts = h.after(5 * MINUTE).healthy("canary");
    assert!(emitted(&acts).contains(&RolloutEvent::WaveCompleted { wave: 0, healthy: 1, failed: 0, deferred: 0 }));
    let acts = h.after(10 * MINUTE).tick();
    assert_eq!(wave_started(&acts), Some(1));
    assert_eq!(commanded(&acts), ["a", "b"]);
}

#[test]
fn resume_without_retry_acknowledges_failures_so_they_do_not_trip_again() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a", "b"]]);
    h.start();
    h.after(MINUTE).fail("canary");
    let acts = h.after(MINUTE).apply(|now| Event::Resume { accept_failures: true, retry_failed: false, now });
    assert!(commanded(&acts).is_empty());
    assert!(emitted(&acts).contains(&RolloutEvent::WaveCompleted { wave: 0, healthy: 0, failed: 1, deferred: 0 }));
    assert!(matches!(h.r.phase(), Phase::Baking { .. }));
    assert!(h.r.node(&id("canary")).unwrap().failure_acknowledged);
    let acts = h.after(10 * MINUTE).tick();
    assert_eq!(commanded(&acts), ["a", "b"]);
    // A new failure in the next wave trips again: only the old one is forgiven.
    let acts = h.after(MINUTE).fail("a");
    assert!(emitted(&acts)
        .iter()
        .any(|e| matches!(e, RolloutEvent::ThresholdTripped { wave: 1, failed, .. } if names(failed) == ["a"])));
}

#[test]
fn on_failure_abort_aborts() {
    let s = Strategy { on_failure: OnFailure::Abort, max_unavailable: 3, ..strategy() };
    let mut h = Harness::new(s, &[&["a", "b", "c"], &["d"]]);
    assert_eq!(commanded(&h.start()), ["a", "b", "c"]);
    h.after(MINUTE).report("a", NodeReport::Downloading);
    let acts = h.after(MINUTE).fail("b");
    assert!(acts.contains(&Action::Cancel { node: id("c") }), "the untouched command is withdrawn");
    assert!(!acts.contains(&Action::Cancel { node: id("a") }), "a started node is left to finish");
    assert!(matches!(h.r.phase(), Phase::Aborted { reason } if reason.contains('b')));
    assert!(h.r.is_terminal());
    assert_eq!(h.state("c"), &NodeState::Cancelled { at: T0 + 2 * MINUTE });
    // The node left running still reports; nothing new is sent.
    assert!(h.after(MINUTE).healthy("a").is_empty());
    assert_eq!(h.state("a"), &NodeState::Healthy { at: T0 + 3 * MINUTE });
    assert!(h.after(HOUR).tick().is_empty());
    assert_eq!(h.state("d"), &NodeState::Pending);
}

#[test]
fn rollback_brings_commanded_nodes_back_to_their_previous_images() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a", "b", "d", "e"]]);
    assert_eq!(commanded(&through_canary(&mut h)), ["a", "b"]);
    assert_eq!(commanded(&h.after(MINUTE).healthy("a")), ["d"]);
    // b and d are in flight, e was never commanded.
    let acts = h.after(MINUTE).apply(|now| Event::Rollback { now });
    assert_eq!(reverted(&acts), ["d", "b"], "nodes in flight are redirected at once, last dispatched first");
    assert!(emitted(&acts).contains(&RolloutEvent::RollbackStarted { nodes: 4 }));
    assert_eq!(h.r.phase(), &Phase::RollingBack);
    assert_eq!(h.r.in_flight(), 2);
    assert_eq!(h.r.desired_image(&id("b")), Some(PREVIOUS));
    assert_eq!(h.r.desired_image(&id("a")), Some(TARGET), "not reverted yet");
    // Reverse wave order, within max_unavailable.
    assert_eq!(reverted(&h.after(MINUTE).healthy("d")), ["a"]);
    assert_eq!(reverted(&h.after(MINUTE).healthy("b")), ["canary"]);
    h.after(MINUTE).healthy("a");
    let acts = h.after(MINUTE).healthy("canary");
    assert!(emitted(&acts).contains(&RolloutEvent::RolledBack { reverted: 4, failed: 0 }));
    assert_eq!(h.r.phase(), &Phase::RolledBack);
    assert_eq!(h.state("e"), &NodeState::Pending, "a node never commanded is left alone");
    assert_eq!(h.r.desired_image(&id("e")), None);
}

#[test]
fn rollback_from_aborted_reverts_nodes_left_running_and_cancelled_ones() {
    let s = Strategy { max_unavailable: 3, ..strategy() };
    let mut h = Harness::new(s, &[&["a", "b", "c"]]);
    h.start();
    h.after(MINUTE).report("a", NodeReport::Installing);
    h.after(MINUTE).apply(|now| Event::Abort { reason: "wrong target".into(), now });
    let acts = h.after(MINUTE).apply(|now| Event::Rollback { now });
    // a is still installing: redirected at once. b and c had their commands
    // withdrawn, but may have seen them: they get a revert too.
    assert_eq!(reverted(&acts), ["a", "c", "b"]);
    h.after(MINUTE).healthy("a");
    h.healthy("b");
    let acts = h.healthy("c");
    assert!(emitted(&acts).contains(&RolloutEvent::RolledBack { reverted: 3, failed: 0 }));
}

#[test]
fn revert_without_healthy_report_times_out_and_rollback_still_ends() {
    let s = Strategy { max_unavailable: 1, ..strategy() };
    let mut h = Harness::new(s, &[&["a"], &["b"]]);
    h.start();
    h.after(MINUTE).healthy("a");
    h.after(MINUTE).apply(|now| Event::Rollback { now });
    assert_eq!(h.r.next_wakeup(), Some(T0 + 2 * MINUTE + 30 * MINUTE));
    let acts = h.after(30 * MINUTE).tick();
    assert!(emitted(&acts).contains(&RolloutEvent::RevertTimedOut { node: id("a") }));
    assert!(emitted(&acts).contains(&RolloutEvent::RolledBack { reverted: 0, failed: 1 }));
}

#[test]
fn health_timeout_counts_as_failure() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a"]]);
    h.start();
    h.after(MINUTE).report("canary", NodeReport::Rebooting);
    assert_eq!(h.r.next_wakeup(), Some(T0 + 30 * MINUTE), "the timeout runs from the command");
    assert!(h.at(T0 + 30 * MINUTE - 1).tick().is_empty());
    let acts = h.at(T0 + 30 * MINUTE).tick();
    let events = emitted(&acts);
    assert!(events.contains(&RolloutEvent::NodeTimedOut { node: id("canary"), wave: 0 }));
    assert!(events.iter().any(|e| matches!(e, RolloutEvent::ThresholdTripped { .. })));
    assert!(matches!(h.r.phase(), Phase::Paused { .. }));
    assert_eq!(h.r.counts_for_wave(0).failed, 1);
    assert_eq!(h.r.in_flight(), 0, "the slot is released");
    // A late report does not resurrect the node: retry_failed does.
    assert!(h.after(MINUTE).healthy("canary").is_empty());
    assert_eq!(h.state("canary"), &NodeState::TimedOut { at: T0 + 30 * MINUTE });
}

#[test]
fn threshold_judged_only_after_min_sample() {
    let s = Strategy { min_sample: 3, max_unavailable: 4, ..strategy() };
    let mut h = Harness::new(s, &[&["a", "b", "c", "d"], &["e"]]);
    h.start();
    h.after(MINUTE).fail("a");
    assert_eq!(h.r.phase(), &Phase::Running, "1 finished < min_sample 3");
    h.after(MINUTE).healthy("b");
    assert_eq!(h.r.phase(), &Phase::Running, "2 finished < min_sample 3");
    let acts = h.after(MINUTE).healthy("c");
    assert!(emitted(&acts)
        .iter()
        .any(|e| matches!(e, RolloutEvent::ThresholdTripped { failed, .. } if names(failed) == ["a"])));
    assert!(matches!(h.r.phase(), Phase::Paused { .. }));
}

#[test]
fn percentage_threshold_tolerates_failures_up_to_the_share() {
    let s =
        Strategy { failure_threshold: FailureThreshold::Percent(25), min_sample: 4, max_unavailable: 4, ..strategy() };
    let mut h = Harness::new(s, &[&["a", "b", "c", "d"], &["e"]]);
    h.start();
    h.fail("a");
    h.healthy("b");
    h.healthy("c");
    let acts = h.healthy("d");
    assert!(emitted(&acts).contains(&RolloutEvent::WaveCompleted { wave: 0, healthy: 3, failed: 1, deferred: 0 }));
}

#[test]
fn bake_time_respected() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a"]]);
    h.start();
    h.at(T0 + 5 * MINUTE).healthy("canary");
    let until = T0 + 15 * MINUTE;
    assert_eq!(h.r.phase(), &Phase::Baking { until });
    assert_eq!(h.r.next_wakeup(), Some(until));
    assert_eq!(wave_started(&h.at(until - 1).tick()), None);
    assert_eq!(h.r.counts_for_wave(1).pending, 1);
    let acts = h.at(until).tick();
    assert_eq!(wave_started(&acts), Some(1));
    assert_eq!(commanded(&acts), ["a"]);
}

#[test]
fn closed_window_holds_the_next_wave() {
    let s = Strategy { windows: vec![MaintenanceWindow::parse("Wed 02:00+1h UTC").unwrap()], ..strategy() };
    let mut h = Harness::new(s, &[&["canary"], &["a"]]);
    // T0 is Wednesday 00:00Z: the window opens at 02:00.
    let acts = h.start();
    assert!(commanded(&acts).is_empty());
    assert!(emitted(&acts).contains(&RolloutEvent::WaitingForWindow { next_open: Some(T0 + 2 * HOUR) }));
    assert_eq!(h.r.next_wakeup(), Some(T0 + 2 * HOUR));
    let acts = h.at(T0 + 2 * HOUR).tick();
    assert_eq!(commanded(&acts), ["canary"]);
    // Healthy at 02:50, baked at 03:00: the window has closed.
    h.at(T0 + 2 * HOUR + 50 * MINUTE).healthy("canary");
    let acts = h.at(T0 + 3 * HOUR).tick();
    assert_eq!(wave_started(&acts), None);
    let next_week = T0 + 7 * 24 * HOUR + 2 * HOUR;
    assert_eq!(h.r.phase(), &Phase::WaitingWindow { next_open: Some(next_week) });
    assert!(h.at(T0 + 24 * HOUR).tick().is_empty());
    assert_eq!(wave_started(&h.at(next_week).tick()), Some(1));
}

#[test]
fn window_closing_mid_wave_holds_new_commands_but_in_flight_nodes_finish() {
    let s = Strategy {
        windows: vec![MaintenanceWindow::parse("daily 00:00+1h").unwrap()],
        max_unavailable: 1,
        ..strategy()
    };
    let mut h = Harness::new(s, &[&["a", "b"]]);
    assert_eq!(commanded(&h.start()), ["a"]);
    h.at(T0 + HOUR + 10 * MINUTE).healthy("a");
    assert_eq!(h.r.phase(), &Phase::WaitingWindow { next_open: Some(T0 + 24 * HOUR) });
    assert_eq!(h.state("b"), &NodeState::Pending);
    assert_eq!(commanded(&h.at(T0 + 24 * HOUR).tick()), ["b"]);
    // b is in flight when the window closes and still completes the rollout.
    let acts = h.at(T0 + 24 * HOUR + 2 * HOUR).healthy("b");
    assert!(emitted(&acts).contains(&RolloutEvent::Completed));
}

#[test]
fn approval_gate() {
    let s = Strategy { approve_waves: true, ..strategy() };
    let mut h = Harness::new(s, &[&["canary"], &["a"], &["b"]]);
    let acts = through_canary(&mut h);
    assert_eq!(wave_started(&acts), None);
    assert!(emitted(&acts).contains(&RolloutEvent::AwaitingApproval { wave: 1 }));
    assert_eq!(h.r.phase(), &Phase::AwaitingApproval { wave: 1 });
    assert!(h.after(HOUR).tick().is_empty(), "time alone never passes the gate");
    let before = h.r.clone();
    let err = h.try_apply(|now| Event::Approve { wave: 2, now }).unwrap_err();
    assert_eq!(err, RolloutError::WrongWave { expected: 1, got: 2 });
    assert!(err.to_string().contains("approve wave 1"));
    assert_eq!(h.r, before);
    let acts = h.apply(|now| Event::Approve { wave: 1, now });
    assert_eq!(wave_started(&acts), Some(1));
    assert_eq!(commanded(&acts), ["a"]);
    let err = h.try_apply(|now| Event::Approve { wave: 1, now }).unwrap_err();
    assert!(matches!(err, RolloutError::InvalidTransition { phase: "running", .. }));
    h.after(MINUTE).healthy("a");
    let acts = h.after(10 * MINUTE).tick();
    assert!(emitted(&acts).contains(&RolloutEvent::AwaitingApproval { wave: 2 }), "every wave after the first");
}

#[test]
fn urgent_shortens_bake_but_keeps_canary() {
    let s = Strategy { bake: HOUR, urgent: true, ..strategy() };
    let mut h = Harness::new(s.clone(), &[&["canary"], &["a", "b"]]);
    assert_eq!(commanded(&h.start()), ["canary"], "the canary still goes alone");
    h.at(T0 + MINUTE).healthy("canary");
    assert_eq!(h.r.phase(), &Phase::Baking { until: T0 + MINUTE + 15 * MINUTE });
    assert_eq!(wave_started(&h.at(T0 + 16 * MINUTE).tick()), Some(1));
    // ... and the failure threshold still guards it.
    let mut h = Harness::new(s, &[&["canary"], &["a", "b"]]);
    h.start();
    h.fail("canary");
    assert!(matches!(h.r.phase(), Phase::Paused { .. }));
}

#[test]
fn offline_nodes_deferred_and_reported_wave_not_stalled() {
    let nodes = vec![assignment("a"), NodeAssignment { online: false, ..assignment("off") }, assignment("z")];
    let mut h = Harness::with(strategy(), &[&["a", "off"], &["z"]], nodes);
    assert_eq!(commanded(&h.start()), ["a"], "offline nodes are skipped");
    h.at(T0 + 5 * MINUTE).healthy("a");
    assert_eq!(h.r.phase(), &Phase::Running);
    assert_eq!(h.r.next_wakeup(), Some(T0 + 15 * MINUTE), "offline grace runs from the wave start");
    assert!(h.at(T0 + 15 * MINUTE - 1).tick().is_empty());
    let acts = h.at(T0 + 15 * MINUTE).tick();
    let events = emitted(&acts);
    assert!(events.contains(&RolloutEvent::NodeDeferred { node: id("off"), wave: 0 }));
    assert!(events.contains(&RolloutEvent::WaveCompleted { wave: 0, healthy: 1, failed: 0, deferred: 1 }));
    assert_eq!(h.r.counts_for_wave(0).deferred, 1);
    assert!(matches!(h.r.phase(), Phase::Baking { .. }));
}

#[test]
fn wave_with_only_deferred_nodes_pauses_for_lack_of_evidence() {
    let nodes = vec![NodeAssignment { online: false, ..assignment("off") }, assignment("z")];
    let mut h = Harness::with(strategy(), &[&["off"], &["z"]], nodes);
    assert!(commanded(&h.start()).is_empty());
    let acts = h.at(T0 + 15 * MINUTE).tick();
    assert!(emitted(&acts).contains(&RolloutEvent::WaveCompleted { wave: 0, healthy: 0, failed: 0, deferred: 1 }));
    let Phase::Paused { reason } = h.r.phase() else { panic!("expected a pause, got {:?}", h.r.phase()) };
    assert!(reason.contains("no healthy node"), "{reason}");
    assert!(h.at(T0 + 2 * HOUR).tick().is_empty(), "the next wave waits for the operator");
    let acts = h.at(T0 + 2 * HOUR).apply(|now| Event::Resume { accept_failures: true, retry_failed: false, now });
    assert_eq!(commanded(&acts), ["z"], "after resume the rollout continues once the bake is over");
}

#[test]
fn offline_node_waits_while_others_are_still_in_flight() {
    let nodes = vec![assignment("a"), NodeAssignment { online: false, ..assignment("off") }];
    let mut h = Harness::with(strategy(), &[&["a", "off"]], nodes);
    h.start();
    // Grace has passed, but a has not finished: nothing is deferred yet.
    assert!(h.at(T0 + 20 * MINUTE).tick().is_empty());
    let acts = h.at(T0 + 21 * MINUTE).healthy("a");
    assert!(emitted(&acts).contains(&RolloutEvent::NodeDeferred { node: id("off"), wave: 0 }));
    assert!(emitted(&acts).contains(&RolloutEvent::Completed));
}

#[test]
fn deferred_node_dispatched_when_back_online() {
    let nodes = vec![
        assignment("canary"),
        NodeAssignment { online: false, ..assignment("off") },
        assignment("a"),
        assignment("b"),
    ];
    let s = Strategy { max_unavailable: 1, ..strategy() };
    let mut h = Harness::with(s, &[&["canary", "off"], &["a", "b"]], nodes);
    h.start();
    h.at(T0 + MINUTE).healthy("canary");
    h.at(T0 + 15 * MINUTE).tick();
    assert!(matches!(h.state("off"), NodeState::Deferred { .. }));
    let acts = h.at(T0 + 25 * MINUTE).tick();
    assert_eq!(commanded(&acts), ["a"]);
    // Back online during wave 1: it joins wave 1 and gets the next free slot.
    let acts = h.at(T0 + 26 * MINUTE).online("off", true);
    assert!(emitted(&acts).contains(&RolloutEvent::NodeRejoined { node: id("off"), wave: 1 }));
    assert!(commanded(&acts).is_empty(), "max_unavailable is full");
    let acts = h.at(T0 + 27 * MINUTE).healthy("a");
    assert_eq!(commanded(&acts), ["b"], "plan order first");
    let acts = h.at(T0 + 28 * MINUTE).healthy("b");
    assert!(acts.contains(&Action::Command { node: id("off"), image: TARGET.into(), wave: 1 }));
    let acts = h.at(T0 + 29 * MINUTE).healthy("off");
    assert!(emitted(&acts).contains(&RolloutEvent::WaveCompleted { wave: 1, healthy: 3, failed: 0, deferred: 0 }));
    assert_eq!(h.r.node(&id("off")).unwrap().planned_wave, 0);
}

#[test]
fn pause_stops_new_commands_while_in_flight_nodes_keep_reporting() {
    let s = Strategy { max_unavailable: 1, ..strategy() };
    let mut h = Harness::new(s, &[&["a", "b", "c"]]);
    assert_eq!(commanded(&h.start()), ["a"]);
    let acts = h.after(MINUTE).apply(|now| Event::Pause { reason: "change freeze".into(), now });
    assert!(emitted(&acts).contains(&RolloutEvent::Paused { reason: "change freeze".into() }));
    let acts = h.after(MINUTE).healthy("a");
    assert!(acts.is_empty());
    assert!(matches!(h.state("a"), NodeState::Healthy { .. }), "the report is recorded");
    assert!(h.after(HOUR).tick().is_empty());
    let acts = h.after(MINUTE).apply(|now| Event::Resume { accept_failures: true, retry_failed: false, now });
    assert_eq!(commanded(&acts), ["b"]);
    assert_eq!(h.r.phase(), &Phase::Running);
}

#[test]
fn paused_in_flight_node_still_times_out() {
    let mut h = Harness::new(strategy(), &[&["a"]]);
    h.start();
    h.apply(|now| Event::Pause { reason: "look".into(), now });
    assert_eq!(h.r.next_wakeup(), Some(T0 + 30 * MINUTE));
    let acts = h.at(T0 + 30 * MINUTE).tick();
    assert!(emitted(&acts).contains(&RolloutEvent::NodeTimedOut { node: id("a"), wave: 0 }));
    assert!(matches!(h.r.phase(), Phase::Paused { reason } if reason == "look"));
}

#[test]
fn pause_during_bake_resumes_into_the_rest_of_the_bake() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a"]]);
    h.start();
    h.at(T0 + MINUTE).healthy("canary");
    h.at(T0 + 2 * MINUTE).apply(|now| Event::Pause { reason: "x".into(), now });
    let acts = h.at(T0 + 3 * MINUTE).apply(|now| Event::Resume { accept_failures: true, retry_failed: false, now });
    assert_eq!(h.r.phase(), &Phase::Baking { until: T0 + 11 * MINUTE });
    assert_eq!(wave_started(&acts), None);
    assert_eq!(wave_started(&h.at(T0 + 11 * MINUTE).tick()), Some(1));
}

#[test]
fn invalid_transitions_name_the_phase_and_the_way_out() {
    let mut h = Harness::new(strategy(), &[&["a"]]);
    let before = h.r.clone();
    for (event, phase, hint) in [
        (Event::Pause { reason: String::new(), now: T0 }, "pending", "not started yet"),
        (Event::Resume { accept_failures: true, retry_failed: false, now: T0 }, "pending", "not started yet"),
        (Event::Rollback { now: T0 }, "pending", "Abort it instead"),
        (Event::Approve { wave: 1, now: T0 }, "pending", "awaiting approval"),
    ] {
        let err = h.r.apply(event).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(phase) && msg.contains(hint), "{msg}");
    }
    assert_eq!(h.r, before, "refused events leave the state unchanged");
    h.start();
    let err = h.try_apply(|now| Event::Start { now }).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot start a rollout that is running: it has already started; Pause, Abort or Rollback change its course"
    );
    let err = h.try_apply(|now| Event::Resume { accept_failures: true, retry_failed: true, now }).unwrap_err();
    assert!(err.to_string().contains("not paused; Pause it first"), "{err}");
    h.apply(|now| Event::Pause { reason: String::new(), now });
    let err = h.try_apply(|now| Event::Pause { reason: String::new(), now }).unwrap_err();
    assert!(err.to_string().contains("paused: it is already paused; Resume continues it"), "{err}");
    h.apply(|now| Event::Resume { accept_failures: true, retry_failed: false, now });
    h.healthy("a");
    assert_eq!(h.r.phase(), &Phase::Completed);
    let err = h.try_apply(|now| Event::Abort { reason: String::new(), now }).unwrap_err();
    assert!(err.to_string().contains("completed: it has finished; Rollback"), "{err}");
    h.apply(|now| Event::Rollback { now });
    let err = h.try_apply(|now| Event::Abort { reason: String::new(), now }).unwrap_err();
    assert!(err.to_string().contains("rolling back: a rollback runs until"), "{err}");
    h.healthy("a");
    assert_eq!(h.r.phase(), &Phase::RolledBack);
    let err = h.try_apply(|now| Event::Rollback { now }).unwrap_err();
    assert!(err.to_string().contains("rolled back: a rollback is already") || err.to_string().contains("new rollout"));
}

#[test]
fn k3s_servers_of_one_cluster_are_never_in_flight_together() {
    let server = |n: &str, c: &str| NodeAssignment {
        k3s: Some(K3sMembership { cluster: c.into(), role: K3sRole::Server }),
        ..assignment(n)
    };
    let agent = |n: &str, c: &str| NodeAssignment {
        k3s: Some(K3sMembership { cluster: c.into(), role: K3sRole::Agent }),
        ..assignment(n)
    };
    let nodes = vec![server("s1", "x"), server("s2", "x"), server("s3", "y"), agent("a1", "x"), agent("a2", "x")];
    let s = Strategy { max_unavailable: 4, ..strategy() };
    let mut h = Harness::with(s, &[&["s1", "s2", "s3", "a1", "a2"]], nodes);
    assert_eq!(commanded(&h.start()), ["s1", "s3", "a1", "a2"], "s2 waits for s1; agents are free");
    assert_eq!(commanded(&h.healthy("s3")), Vec::<String>::new(), "s2 still waits for s1");
    assert_eq!(commanded(&h.healthy("s1")), ["s2"]);
}

#[test]
fn max_unavailable_limits_nodes_in_flight() {
    let mut h = Harness::new(strategy(), &[&["a", "b", "c", "d", "e"]]);
    assert_eq!(commanded(&h.start()), ["a", "b"]);
    assert_eq!(h.r.in_flight(), 2);
    assert_eq!(commanded(&h.fail("a")), Vec::<String>::new(), "threshold 0 tripped: paused");
    let mut h =
        Harness::new(Strategy { failure_threshold: FailureThreshold::Count(5), ..strategy() }, &[&["a", "b", "c"]]);
    h.start();
    assert_eq!(commanded(&h.report("a", NodeReport::Installing)), Vec::<String>::new());
    assert_eq!(commanded(&h.fail("a")), ["c"]);
    assert_eq!(h.r.counts_for_wave(0), WaveCounts { total: 3, in_flight: 2, failed: 1, ..WaveCounts::default() });
}

#[test]
fn repeated_node_status_yields_no_new_actions() {
    let mut h = Harness::new(strategy(), &[&["a", "b", "c"]]);
    h.start();
    assert!(h.report("a", NodeReport::Downloading).is_empty());
    let before = h.r.clone();
    assert!(h.after(MINUTE).report("a", NodeReport::Downloading).is_empty());
    assert_eq!(h.r, before, "a repeated stage keeps its `since`");
    assert_eq!(commanded(&h.healthy("a")), ["c"]);
    let before = h.r.clone();
    assert!(h.after(MINUTE).healthy("a").is_empty());
    assert_eq!(h.r, before);
    assert!(h.online("b", true).is_empty(), "already online");
}

#[test]
fn unknown_nodes_are_rejected_and_stale_reports_ignored() {
    let mut h = Harness::new(Strategy { max_unavailable: 1, ..strategy() }, &[&["a", "b"]]);
    h.start();
    let before = h.r.clone();
    let err = h.try_apply(|now| Event::NodeStatus { node: id("ghost"), status: NodeReport::Healthy, now }).unwrap_err();
    assert_eq!(err, RolloutError::UnknownNode { node: id("ghost") });
    assert!(h.try_apply(|now| Event::NodeOnline { node: id("ghost"), online: true, now }).is_err());
    assert!(h.healthy("b").is_empty(), "Healthy for a node never commanded is stale");
    assert!(h.fail("b").is_empty());
    assert_eq!(h.r, before);
}

#[test]
fn terminal_phases_absorb_events_except_rollback() {
    let mut h = Harness::new(strategy(), &[&["a"]]);
    h.start();
    h.healthy("a");
    assert_eq!(h.r.phase(), &Phase::Completed);
    assert_eq!(h.r.finished_at(), Some(T0));
    assert_eq!(h.r.next_wakeup(), None);
    assert!(h.after(HOUR).tick().is_empty());
    assert!(h.fail("a").is_empty());
    assert!(h.online("a", false).is_empty());
    assert!(h.try_apply(|now| Event::Pause { reason: String::new(), now }).is_err());
    assert!(h.try_apply(|now| Event::Start { now }).is_err());
    assert_eq!(h.r.phase(), &Phase::Completed);
    // Even an offline node gets its revert written: it applies it when it reconnects.
    assert_eq!(reverted(&h.apply(|now| Event::Rollback { now })), ["a"]);
    assert_eq!(h.r.phase(), &Phase::RollingBack);
}

#[test]
fn empty_plan_completes_on_start() {
    let mut h = Harness::new(strategy(), &[]);
    let acts = h.start();
    assert_eq!(emitted(&acts), [RolloutEvent::Started, RolloutEvent::Completed]);
}

#[test]
fn new_rejects_inconsistent_plans_naming_the_node() {
    let err = |waves: &[&[&str]], nodes: Vec<NodeAssignment>, s: Strategy| {
        Rollout::new("r", s, &plan(waves), nodes, T0).unwrap_err().to_string()
    };
    assert!(err(&[&["a"]], vec![], strategy()).contains("node a: is in the wave plan but has no assignment"));
    assert!(err(&[&["a"], &["a"]], vec![assignment("a")], strategy()).contains("node a: appears twice"));
    assert!(err(&[&["a"]], vec![assignment("a"), assignment("b")], strategy()).contains("node b: has an assignment"));
    assert!(err(&[&["a"]], vec![assignment("a"), assignment("a")], strategy()).contains("node a: has two assignments"));
    let no_image = NodeAssignment { target_image: " ".into(), ..assignment("a") };
    assert!(err(&[&["a"]], vec![no_image], strategy()).contains("target_image"));
    let s = Strategy { max_unavailable: 0, ..strategy() };
    assert!(err(&[&["a"]], vec![assignment("a")], s).starts_with("strategy.max_unavailable"));
    // Empty waves are dropped, so wave numbers stay dense.
    let r = Rollout::new("r", strategy(), &plan(&[&["a"], &[], &["b"]]), vec![assignment("a"), assignment("b")], T0)
        .unwrap();
    assert_eq!(r.waves().len(), 2);
    assert_eq!(r.node(&id("b")).unwrap().wave, 1);
}

#[test]
fn events_from_a_lagging_clock_apply_at_the_last_time_seen() {
    let mut h = Harness::new(strategy(), &[&["canary"], &["a"]]);
    h.start();
    h.at(T0 + 10 * MINUTE).healthy("canary");
    // A new leader whose clock is an hour behind cannot shorten the bake.
    let acts = h.at(T0 + 10 * MINUTE - HOUR).tick();
    assert!(acts.is_empty());
    assert_eq!(h.r.phase(), &Phase::Baking { until: T0 + 20 * MINUTE });
    assert_eq!(h.state("canary"), &NodeState::Healthy { at: T0 + 10 * MINUTE });
}

#[test]
fn rollout_state_round_trips_through_serde() {
    let s =
        Strategy { windows: vec![MaintenanceWindow::parse("Mon-Fri 02:00+3h Europe/Berlin").unwrap()], ..strategy() };
    let mut h = Harness::new(s, &[&["a"], &["b"]]);
    h.start();
    h.at(T0 + 2 * HOUR).tick();
    h.report("a", NodeReport::Verifying);
    let r =
        h.r.clone().with_target(crate::fleet::model::Target { release: semver::Version::new(3, 5, 1), software: None });
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("Mon-Fri 02:00+3h Europe/Berlin"), "windows are stored as text");
    let back: Rollout = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}

#[test]
fn retried_node_of_a_finished_wave_joins_the_next_wave() {
    let s = Strategy { failure_threshold: FailureThreshold::Count(1), ..strategy() };
    let mut h = Harness::new(s, &[&["a", "b"], &["c"]]);
    h.start();
    h.fail("a");
    let acts = h.healthy("b");
    assert!(emitted(&acts).contains(&RolloutEvent::WaveCompleted { wave: 0, healthy: 1, failed: 1, deferred: 0 }));
    h.after(MINUTE).apply(|now| Event::Pause { reason: "retry a".into(), now });
    let acts = h.apply(|now| Event::Resume { accept_failures: true, retry_failed: true, now });
    assert!(commanded(&acts).is_empty(), "wave 0 is finished and wave 1 still bakes");
    assert_eq!(h.r.node(&id("a")).unwrap().wave, 1);
    let acts = h.after(10 * MINUTE).tick();
    assert_eq!(commanded(&acts), ["c", "a"]);
    assert_eq!(h.r.counts_for_wave(0), WaveCounts { total: 1, healthy: 1, ..WaveCounts::default() });
}

#[test]
fn a_rollout_taken_apart_and_put_back_together_is_the_same() {
    let mut h = Harness::new(strategy(), &[&["a"], &["b", "c"]]);
    h.r.apply(Event::Start { now: T0 }).unwrap();
    let again = Rollout::from_parts(h.r.clone().into_parts()).unwrap();
    assert_eq!(again, h.r);

    let mut broken = h.r.clone().into_parts();
    broken.waves[1].nodes.push(id("ghost"));
    assert!(matches!(Rollout::from_parts(broken), Err(RolloutError::InvalidNode { node, .. }) if node == id("ghost")));
    let mut unlisted = h.r.clone().into_parts();
    unlisted.waves[1].nodes.retain(|n| n != &id("c"));
    assert!(matches!(Rollout::from_parts(unlisted), Err(RolloutError::InvalidNode { node, .. }) if node == id("c")));
}

#[test]
fn recorded_reports_decide_nothing_until_the_tick_which_sees_the_whole_batch() {
    // Wave 0: a healthy canary frees a slot at the same time as another
    // canary fails; the batch must pause before anything new is sent.
    let mut s = strategy();
    s.max_unavailable = 2;
    let mut h = Harness::new(s, &[&["a", "b", "c"], &["d"]]);
    let started = h.start();
    assert_eq!(commanded(&started), ["a", "b"]);
    h.after(MINUTE);
    let now = h.now;
    let first = h.r.record(Event::NodeStatus { node: id("a"), status: NodeReport::Healthy, now }).unwrap();
    assert!(commanded(&first).is_empty(), "recording commands nothing: {first:?}");
    let failed = NodeReport::Failed { reason: "fallback boot".into() };
    h.r.record(Event::NodeStatus { node: id("b"), status: failed, now }).unwrap();
    let tick = h.tick();
    assert!(commanded(&tick).is_empty(), "the tripped threshold stops dispatch: {tick:?}");
    assert!(matches!(h.r.phase(), Phase::Paused { .. }), "{:?}", h.r.phase());
    assert_eq!(h.state("c"), &NodeState::Pending);
    assert!(h.r.record(Event::Tick { now }).is_err(), "only node reports are recorded");
}

#[test]
fn resuming_without_accepting_failures_judges_the_threshold_again() {
    let mut h = Harness::new(strategy(), &[&["a", "b"], &["c"]]);
    h.start();
    h.apply(|now| Event::Pause { reason: "look first".into(), now });
    // Both canaries fail while the rollout is paused by an operator.
    h.after(MINUTE).fail("a");
    h.fail("b");
    let acts = h.apply(|now| Event::Resume { accept_failures: false, retry_failed: false, now });
    assert!(commanded(&acts).is_empty(), "{acts:?}");
    assert!(matches!(h.r.phase(), Phase::Paused { reason } if reason.contains("threshold")), "{:?}", h.r.phase());
    // Accepting them lets the rollout go on.
    h.apply(|now| Event::Resume { accept_failures: true, retry_failed: false, now });
    let after_bake = h.after(10 * MINUTE).tick();
    assert_eq!(commanded(&after_bake), ["c"], "{:?}", h.r.phase());
}

#[test]
fn nodes_in_flight_after_an_abort_still_time_out() {
    let mut h = Harness::new(strategy(), &[&["a"], &["b"]]);
    h.start();
    h.after(MINUTE).report("a", NodeReport::Installing);
    h.apply(|now| Event::Abort { reason: "stop".into(), now });
    assert_eq!(h.r.in_flight(), 1, "the installing node keeps going");
    let wake = h.r.next_wakeup().expect("its health timeout is still due");
    h.at(wake).tick();
    assert!(matches!(h.state("a"), NodeState::TimedOut { .. }), "{:?}", h.state("a"));
    assert_eq!(h.r.in_flight(), 0);
}
