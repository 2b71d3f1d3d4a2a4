//! Property tests: the safety invariants hold after every step of any event
//! sequence, and a rollout whose nodes all turn healthy always completes.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig};
use proptest::strategy::Strategy as _;
use proptest::test_runner::TestCaseError;

use super::{Action, Event, NodeAssignment, NodeReport, NodeState, Phase, Rollout, RolloutEvent};
use crate::fleet::model::{K3sMembership, K3sRole, NodeId};
use crate::fleet::planner::{PlannedWave, WavePlan};
use crate::fleet::strategy::{FailureThreshold, Millis, OnFailure, Strategy, WaveSpec, HOUR, MINUTE};
use crate::fleet::window::{self, MaintenanceWindow};

/// 2025-01-15T00:00:00Z, a Wednesday.
const T0: Millis = 1_736_899_200_000;

/// One generated node: its planned wave, k3s membership and initial connectivity.
#[derive(Debug, Clone)]
struct NodeSpec {
    wave: usize,
    k3s: Option<(u8, bool)>,
    online: bool,
}

#[derive(Debug, Clone)]
struct Spec {
    nodes: Vec<NodeSpec>,
    strategy: Strategy,
}

fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("n{i}"))
}

impl Spec {
    fn build(&self) -> Rollout {
        let mut waves = vec![PlannedWave { nodes: Vec::new() }; 4];
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            waves[n.wave].nodes.push(node_id(i));
            nodes.push(NodeAssignment {
                id: node_id(i),
                // Per-node images, so a command for the wrong node's image shows.
                target_image: format!("registry.local/kairos/core:v3.5.1-n{i}"),
                previous_image: format!("registry.local/kairos/core:v3.5.0-n{i}"),
                k3s: n.k3s.map(|(c, server)| K3sMembership {
                    cluster: format!("c{c}"),
                    role: if server { K3sRole::Server } else { K3sRole::Agent },
                }),
                online: n.online,
            });
        }
        Rollout::new("prop", self.strategy.clone(), &WavePlan { waves }, nodes, T0).expect("generated plans are valid")
    }
}

fn node_spec() -> impl proptest::strategy::Strategy<Value = NodeSpec> {
    (0..4usize, prop::option::of((0..2u8, any::<bool>())), prop::bool::weighted(0.8))
        .prop_map(|(wave, k3s, online)| NodeSpec { wave, k3s, online })
}

fn strategy_gen() -> impl proptest::strategy::Strategy<Value = Strategy> {
    let threshold =
        prop_oneof![(0..3u32).prop_map(FailureThreshold::Count), (0..50u8).prop_map(FailureThreshold::Percent)];
    let windows = prop_oneof![
        2 => Just(Vec::new()),
        1 => Just(vec!["daily 00:00+6h"]),
        1 => Just(vec!["Mon-Fri 08:00+2h Europe/Berlin", "Sat 22:00+4h"]),
    ];
    (
        1..4u32,
        threshold,
        0..4u32,
        prop_oneof![3 => Just(OnFailure::Pause), 1 => Just(OnFailure::Abort)],
        prop_oneof![Just(0), Just(10 * MINUTE), Just(HOUR)],
        windows,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(0), Just(15 * MINUTE)],
    )
        .prop_map(
            |(max_unavailable, failure_threshold, min_sample, on_failure, bake, windows, approve, urgent, grace)| {
                Strategy {
                    waves: WaveSpec::parse("1,100%").expect("literal"),
                    max_unavailable,
                    health_timeout: 30 * MINUTE,
                    failure_threshold,
                    min_sample,
                    on_failure,
                    bake,
                    windows: windows.into_iter().map(|w| MaintenanceWindow::parse(w).expect("literal")).collect(),
                    approve_waves: approve,
                    urgent,
                    offline_grace: grace,
                }
            },
        )
}

fn spec() -> impl proptest::strategy::Strategy<Value = Spec> {
    (prop::collection::vec(node_spec(), 1..10), strategy_gen()).prop_map(|(nodes, strategy)| Spec { nodes, strategy })
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    Tick(Millis),
    /// A report from the k-th node in flight (most reports that matter).
    ReportInFlight(usize, u8),
    /// A report from any node (mostly stale ones).
    Report(usize, u8),
    Online(usize, bool),
    Pause,
    Resume(bool),
    Abort,
    Approve(usize),
    Rollback,
    /// A tick from a clock that lags behind.
    LateTick(Millis),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    let step = prop_oneof![Just(MINUTE), Just(10 * MINUTE), Just(31 * MINUTE), Just(3 * HOUR), Just(24 * HOUR)];
    // Abort and Rollback end the forward path, so they are rare enough that
    // most sequences also explore waves, bakes, pauses and retries.
    prop_oneof![
        10 => Just(Op::Start),
        60 => step.clone().prop_map(Op::Tick),
        120 => (any::<usize>(), 0..8u8).prop_map(|(k, s)| Op::ReportInFlight(k, s)),
        30 => (0..10usize, 0..8u8).prop_map(|(n, s)| Op::Report(n, s)),
        30 => (0..10usize, any::<bool>()).prop_map(|(n, o)| Op::Online(n, o)),
        8 => Just(Op::Pause),
        25 => any::<bool>().prop_map(Op::Resume),
        1 => Just(Op::Abort),
        25 => (0..4usize).prop_map(Op::Approve),
        2 => Just(Op::Rollback),
        10 => step.prop_map(Op::LateTick),
    ]
}

fn report(s: u8) -> NodeReport {
    match s {
        0 => NodeReport::Downloading,
        1 => NodeReport::Verifying,
        2 => NodeReport::Installing,
        3 => NodeReport::Rebooting,
        4..=6 => NodeReport::Healthy,
        _ => NodeReport::Failed { reason: "fallback boot".into() },
    }
}

fn in_flight_ids(r: &Rollout) -> Vec<NodeId> {
    r.nodes().filter(|(_, e)| e.state.is_in_flight()).map(|(id, _)| id.clone()).collect()
}

fn event_for(op: &Op, r: &Rollout, n_nodes: usize, now: &mut Millis) -> Event {
    let node = |i: usize| node_id(i % n_nodes);
    let now_v = *now;
    match *op {
        Op::Start => Event::Start { now: now_v },
        Op::Tick(d) => {
            *now += d;
            Event::Tick { now: *now }
        }
        Op::LateTick(d) => Event::Tick { now: now_v.saturating_sub(d) },
        Op::ReportInFlight(k, s) => {
            let flying = in_flight_ids(r);
            let node = if flying.is_empty() { node(k) } else { flying[k % flying.len()].clone() };
            Event::NodeStatus { node, status: report(s), now: now_v }
        }
        Op::Report(i, s) => Event::NodeStatus { node: node(i), status: report(s), now: now_v },
        Op::Online(i, online) => Event::NodeOnline { node: node(i), online, now: now_v },
        Op::Pause => Event::Pause { reason: "operator".into(), now: now_v },
        Op::Resume(retry_failed) => Event::Resume { accept_failures: true, retry_failed, now: now_v },
        Op::Abort => Event::Abort { reason: "operator".into(), now: now_v },
        Op::Approve(wave) => Event::Approve { wave, now: now_v },
        Op::Rollback => Event::Rollback { now: now_v },
    }
}

/// Invariants of a state on its own.
fn check_state(r: &Rollout) -> Result<(), TestCaseError> {
    let max = r.strategy().max_unavailable as usize;
    prop_assert!(r.in_flight() <= max, "{} in flight > max_unavailable {max}", r.in_flight());
    let mut servers = BTreeSet::new();
    for (id, e) in r.nodes() {
        if let Some(m) = e.k3s.as_ref().filter(|m| m.is_server() && e.state.is_in_flight()) {
            prop_assert!(servers.insert(m.cluster.clone()), "second server of {} in flight: {id}", m.cluster);
        }
    }
    // Waves partition the nodes, and every entry knows its wave.
    let mut seen = BTreeSet::new();
    for (w, wave) in r.waves().iter().enumerate() {
        for id in &wave.nodes {
            prop_assert!(seen.insert(id.clone()), "{id} in two waves");
            prop_assert_eq!(r.node(id).map(|e| e.wave), Some(w));
        }
        let c = r.counts_for_wave(w);
        let sum = c.pending + c.in_flight + c.healthy + c.failed + c.deferred + c.cancelled + c.reverted;
        prop_assert_eq!(sum, c.total);
        prop_assert_eq!(c.total, wave.nodes.len());
    }
    prop_assert_eq!(seen.len(), r.nodes().count());
    let rolling_back = matches!(r.phase(), Phase::RollingBack | Phase::RolledBack);
    for (id, e) in r.nodes() {
        if rolling_back {
            prop_assert!(!matches!(e.state, NodeState::Commanded { .. } | NodeState::Progressing { .. }), "{id}");
        } else {
            prop_assert!(!e.state.is_rollback(), "{id} in {:?} outside a rollback", e.state);
            if e.state.is_in_flight() {
                prop_assert_eq!(e.wave, r.current_wave(), "{} in flight outside the current wave", id);
            }
        }
        if *r.phase() == Phase::RolledBack {
            prop_assert!(!matches!(e.state, NodeState::RevertPending | NodeState::Reverting { .. }), "{id}");
        }
        if *r.phase() == Phase::Completed {
            prop_assert!(e.state.is_finished() || matches!(e.state, NodeState::Deferred { .. }), "{id}: {:?}", e.state);
        }
    }
    let json = serde_json::to_string(r).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Rollout = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, r);
    Ok(())
}

/// Invariants of one accepted step from `before` to `after`.
fn check_step(
    before: &Rollout,
    after: &Rollout,
    event: &Event,
    actions: &[Action],
    targets: &mut BTreeMap<NodeId, String>,
) -> Result<(), TestCaseError> {
    let now = event.now().max(before.updated_at());
    let rollback_allowed = matches!(event, Event::Rollback { .. }) && *before.phase() != Phase::RolledBack;
    if before.is_terminal() && !rollback_allowed {
        // A finished rollout commands nothing; an aborted one only records
        // the health timeouts of nodes still upgrading.
        let only_timeouts = actions.iter().all(|a| {
            matches!(a, Action::Emit(RolloutEvent::NodeTimedOut { .. }))
                && matches!(before.phase(), Phase::Aborted { .. })
        });
        prop_assert!(only_timeouts, "terminal phase {:?} acted: {actions:?}", before.phase());
        prop_assert_eq!(before.phase(), after.phase());
    }
    for a in actions {
        match a {
            Action::Command { node, image, wave } => {
                let e = after.node(node).ok_or_else(|| TestCaseError::fail(format!("command for unknown {node}")))?;
                prop_assert_eq!(image, &e.target_image);
                prop_assert_eq!(*wave, e.wave);
                let first = targets.entry(node.clone()).or_insert_with(|| image.clone());
                prop_assert_eq!(&*first, image, "{} told two targets", node);
                prop_assert_eq!(after.phase(), &Phase::Running);
                prop_assert!(window::any_open(&after.strategy().windows, now), "command outside every window");
            }
            Action::Revert { node, image } => {
                let e = after.node(node).ok_or_else(|| TestCaseError::fail(format!("revert for unknown {node}")))?;
                prop_assert_eq!(image, &e.previous_image);
            }
            Action::Cancel { node } => {
                let cancelled = matches!(after.node(node).map(|e| &e.state), Some(NodeState::Cancelled { .. }));
                prop_assert!(cancelled, "cancel for {} left it {:?}", node, after.node(node));
            }
            Action::Emit(RolloutEvent::WaveStarted { wave, .. }) if *wave > 0 => {
                let prev = &after.waves()[wave - 1];
                let baked = prev.completed_at.map(|c| c + after.strategy().effective_bake());
                prop_assert!(baked.is_some_and(|t| t <= now), "wave {wave} started before the bake ended");
                prop_assert!(!after.strategy().approve_waves || after.waves()[*wave].approved);
                prop_assert!(window::any_open(&after.strategy().windows, now));
            }
            Action::Emit(_) => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_for_any_event_sequence(
        spec in spec(),
        start_first in prop::bool::weighted(0.9),
        ops in prop::collection::vec(op(), 0..100),
    ) {
        let mut r = spec.build();
        let mut now = T0;
        let mut targets = BTreeMap::new();
        check_state(&r)?;
        let ops = start_first.then_some(Op::Start).into_iter().chain(ops);
        for op in &ops.collect::<Vec<_>>() {
            let event = event_for(op, &r, spec.nodes.len(), &mut now);
            let before = r.clone();
            match r.apply(event.clone()) {
                Err(_) => prop_assert_eq!(&r, &before, "an error changed the state"),
                Ok(actions) => {
                    check_step(&before, &r, &event, &actions, &mut targets)?;
                    if matches!(event, Event::NodeStatus { .. } | Event::NodeOnline { .. }) {
                        let once = r.clone();
                        let again = r.apply(event.clone());
                        prop_assert!(again.is_ok_and(|a| a.is_empty()), "a repeated report acted");
                        prop_assert_eq!(&r, &once, "a repeated report changed the state");
                    }
                }
            }
            check_state(&r)?;
        }
    }

    #[test]
    fn rollout_completes_when_every_commanded_node_turns_healthy(
        spec in spec(),
        // For each node: the driver step after which it comes online (None = never).
        comes_online in prop::collection::vec(prop::option::of(0..40usize), 10),
    ) {
        let mut r = spec.build();
        let mut now = T0;
        r.apply(Event::Start { now }).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for step in 0..2_000 {
            if r.is_terminal() {
                break;
            }
            for (i, n) in spec.nodes.iter().enumerate() {
                if !n.online && comes_online[i] == Some(step) {
                    r.apply(Event::NodeOnline { node: node_id(i), online: true, now }).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            let flying = in_flight_ids(&r);
            if !flying.is_empty() {
                for node in flying {
                    r.apply(Event::NodeStatus { node, status: NodeReport::Healthy, now }).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                continue;
            }
            if let Phase::AwaitingApproval { wave } = *r.phase() {
                r.apply(Event::Approve { wave, now }).map_err(|e| TestCaseError::fail(e.to_string()))?;
                continue;
            }
            // A wave of only offline nodes pauses for lack of evidence; the
            // operator here chooses to go on.
            if let Phase::Paused { reason } = r.phase() {
                prop_assert!(reason.contains("no healthy node"), "unexpected pause: {reason}");
                r.apply(Event::Resume { accept_failures: true, retry_failed: false, now }).map_err(|e| TestCaseError::fail(e.to_string()))?;
                continue;
            }
            // Let a little time pass on steps where nothing is due, so nodes
            // scheduled to come back get their turn.
            now = r.next_wakeup().unwrap_or(now + MINUTE).max(now + 1);
            r.apply(Event::Tick { now }).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(r.phase(), &Phase::Completed);
        for (id, e) in r.nodes() {
            prop_assert!(matches!(e.state, NodeState::Healthy { .. } | NodeState::Deferred { .. }), "{id}: {:?}", e.state);
        }
    }
}
