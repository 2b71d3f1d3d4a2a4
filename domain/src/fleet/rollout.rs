//! The rollout state machine: a pure function (state, event) → (state, actions).
//!
//! [`Rollout::apply`] takes one [`Event`] (operator command, node report,
//! connectivity change or clock tick, each carrying `now`) and returns the
//! [`Action`]s the engine must perform: write a node's desired state
//! ([`Action::Command`], [`Action::Revert`]), withdraw it ([`Action::Cancel`]),
//! or tell watchers ([`Action::Emit`]). Nothing here does IO or reads a clock,
//! so a new leader that replays the replicated state takes the same decisions.
//!
//! The decisions are level-triggered: after every event the machine looks at
//! the whole current wave (timeouts, failure threshold, offline nodes, free
//! slots, window, bake, approval) and does what is due, so a missed tick or a
//! duplicated report cannot lose or repeat work.
//!
//! Safety promises, for any sequence of events: never more than
//! `max_unavailable` nodes in flight; never two k3s servers of one cluster in
//! flight; a node is only ever commanded to its own `target_image` (a rollback
//! is a separate [`Action::Revert`] to its `previous_image`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{NodeId, Target};
use super::planner::WavePlan;
use super::strategy::{Millis, Strategy};

mod commands;
mod messages;
mod progress;
mod state;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use messages::{Action, Event, NodeReport, RolloutError, RolloutEvent};
pub use state::{NodeAssignment, NodeEntry, NodeState, Phase, Stage, WaveCounts, WaveState};

/// A rollout: its plan, every node's state and the phase it is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    id: String,
    target: Option<Target>,
    strategy: Strategy,
    phase: Phase,
    waves: Vec<WaveState>,
    nodes: BTreeMap<NodeId, NodeEntry>,
    current_wave: usize,
    /// Dispatch order of the reverts: last wave first.
    rollback_order: Vec<NodeId>,
    created_at: Millis,
    started_at: Option<Millis>,
    updated_at: Millis,
    finished_at: Option<Millis>,
}

/// A rollout taken apart, for storing it in pieces (the header, the wave
/// lists and one record per node) and putting it back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutParts {
    /// The rollout id.
    pub id: String,
    /// The release it moves to.
    pub target: Option<Target>,
    /// The resolved strategy.
    pub strategy: Strategy,
    /// The phase.
    pub phase: Phase,
    /// Every wave, with its nodes in dispatch order.
    pub waves: Vec<WaveState>,
    /// Every node's entry.
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    /// The wave being worked on.
    pub current_wave: usize,
    /// Dispatch order of the reverts.
    pub rollback_order: Vec<NodeId>,
    /// When it was created.
    pub created_at: Millis,
    /// When it started.
    pub started_at: Option<Millis>,
    /// Time of the last change.
    pub updated_at: Millis,
    /// When it finished.
    pub finished_at: Option<Millis>,
}

/// The effects of one event, collected while it is applied.
struct Cx {
    now: Millis,
    actions: Vec<Action>,
    changed: bool,
    /// Record node reports only; decide nothing (see [`Rollout::record`]).
    hold: bool,
}

impl Cx {
    fn act(&mut self, action: Action) {
        self.actions.push(action);
        self.changed = true;
    }

    fn emit(&mut self, event: RolloutEvent) {
        self.act(Action::Emit(event));
    }
}

impl Rollout {
    /// Creates a rollout in phase Pending from a wave plan and one assignment
    /// per planned node. Empty waves of the plan are dropped, so wave numbers
    /// count non-empty waves only.
    pub fn new(
        id: impl Into<String>,
        strategy: Strategy,
        plan: &WavePlan,
        nodes: Vec<NodeAssignment>,
        now: Millis,
    ) -> Result<Self, RolloutError> {
        if strategy.max_unavailable == 0 {
            return Err(RolloutError::InvalidStrategy {
                field: "max_unavailable",
                rule: "must be at least 1, or no node could ever be commanded",
            });
        }
        if strategy.health_timeout == 0 {
            return Err(RolloutError::InvalidStrategy {
                field: "health_timeout",
                rule: "must be longer than zero, or every node would time out as soon as it is commanded",
            });
        }
        let mut assignments = BTreeMap::new();
        for a in nodes {
            if a.target_image.trim().is_empty() {
                return Err(RolloutError::InvalidNode {
                    node: a.id,
                    rule: "target_image is empty; resolve the node's target image before creating the rollout",
                });
            }
            if a.previous_image.trim().is_empty() {
                return Err(RolloutError::InvalidNode {
                    node: a.id,
                    rule: "previous_image is empty; a rollback needs the image the node runs now",
                });
            }
            if let Some(dup) = assignments.insert(a.id.clone(), a) {
                return Err(RolloutError::InvalidNode {
                    node: dup.id,
                    rule: "has two assignments; pass one assignment per node",
                });
            }
        }
        let mut waves = Vec::new();
        let mut entries = BTreeMap::new();
        for planned in plan.waves.iter().filter(|w| !w.nodes.is_empty()) {
            let wave = waves.len();
            for id in &planned.nodes {
                if entries.contains_key(id) {
                    return Err(RolloutError::InvalidNode {
                        node: id.clone(),
                        rule: "appears twice in the wave plan; plan every node into exactly one wave",
                    });
                }
                let a = assignments.remove(id).ok_or_else(|| RolloutError::InvalidNode {
                    node: id.clone(),
                    rule: "is in the wave plan but has no assignment; pass its target and previous image",
                })?;
                entries.insert(
                    id.clone(),
                    NodeEntry {
                        wave,
                        planned_wave: wave,
                        target_image: a.target_image,
                        previous_image: a.previous_image,
                        k3s: a.k3s,
                        online: a.online,
                        state: NodeState::Pending,
                        attempt: 0,
                        commanded_at: None,
                        failure_acknowledged: false,
                    },
                );
            }
            waves.push(WaveState {
                nodes: planned.nodes.clone(),
                started_at: None,
                completed_at: None,
                approved: false,
            });
        }
        if let Some(id) = assignments.into_keys().next() {
            return Err(RolloutError::InvalidNode {
                node: id,
                rule: "has an assignment but is in no wave of the plan; plan it or leave it out",
            });
        }
        Ok(Self {
            id: id.into(),
            target: None,
            strategy,
            phase: Phase::Pending,
            waves,
            nodes: entries,
            current_wave: 0,
            rollback_order: Vec::new(),
            created_at: now,
            started_at: None,
            updated_at: now,
            finished_at: None,
        })
    }

    /// Takes the rollout apart for storage.
    pub fn into_parts(self) -> RolloutParts {
        RolloutParts {
            id: self.id,
            target: self.target,
            strategy: self.strategy,
            phase: self.phase,
            waves: self.waves,
            nodes: self.nodes,
            current_wave: self.current_wave,
            rollback_order: self.rollback_order,
            created_at: self.created_at,
            started_at: self.started_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        }
    }

    /// Puts a stored rollout back together. Refuses parts that do not fit:
    /// a wave naming a node without an entry, an entry whose wave does not
    /// list it, or a current wave past the end.
    pub fn from_parts(parts: RolloutParts) -> Result<Self, RolloutError> {
        for (index, wave) in parts.waves.iter().enumerate() {
            for id in &wave.nodes {
                match parts.nodes.get(id) {
                    Some(e) if e.wave == index => {}
                    Some(_) => {
                        return Err(RolloutError::InvalidNode {
                            node: id.clone(),
                            rule: "is listed in a wave other than the one its entry names",
                        })
                    }
                    None => {
                        return Err(RolloutError::InvalidNode {
                            node: id.clone(),
                            rule: "is listed in a wave but has no entry",
                        })
                    }
                }
            }
        }
        let listed: usize = parts.waves.iter().map(|w| w.nodes.len()).sum();
        if listed != parts.nodes.len() {
            let missing =
                parts.nodes.iter().find(|(id, e)| parts.waves.get(e.wave).is_none_or(|w| !w.nodes.contains(id)));
            if let Some((id, _)) = missing {
                return Err(RolloutError::InvalidNode { node: id.clone(), rule: "has an entry but no wave lists it" });
            }
        }
        if parts.current_wave > parts.waves.len() {
            return Err(RolloutError::InvalidStrategy { field: "current_wave", rule: "is past the last wave" });
        }
        Ok(Self {
            id: parts.id,
            target: parts.target,
            strategy: parts.strategy,
            phase: parts.phase,
            waves: parts.waves,
            nodes: parts.nodes,
            current_wave: parts.current_wave,
            rollback_order: parts.rollback_order,
            created_at: parts.created_at,
            started_at: parts.started_at,
            updated_at: parts.updated_at,
            finished_at: parts.finished_at,
        })
    }

    /// Records the release the rollout moves to (for display and audit).
    pub fn with_target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// The rollout id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The release the rollout moves to, if recorded.
    pub fn target(&self) -> Option<&Target> {
        self.target.as_ref()
    }

    /// The resolved strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The order reverts are sent in (empty until a rollback starts).
    pub fn rollback_order(&self) -> &[NodeId] {
        &self.rollback_order
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The wave being worked on, or the next one to start.
    pub fn current_wave(&self) -> usize {
        self.current_wave
    }

    /// All waves.
    pub fn waves(&self) -> &[WaveState] {
        &self.waves
    }

    /// One node's entry.
    pub fn node(&self, id: &NodeId) -> Option<&NodeEntry> {
        self.nodes.get(id)
    }

    /// All nodes, ordered by id.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeId, &NodeEntry)> {
        self.nodes.iter()
    }

    /// When the rollout was created.
    pub fn created_at(&self) -> Millis {
        self.created_at
    }

    /// When it was started.
    pub fn started_at(&self) -> Option<Millis> {
        self.started_at
    }

    /// Time of the last event that changed the state.
    pub fn updated_at(&self) -> Millis {
        self.updated_at
    }

    /// When it reached a terminal phase (cleared again by a rollback).
    pub fn finished_at(&self) -> Option<Millis> {
        self.finished_at
    }

    /// True in Aborted, Completed and RolledBack.
    pub fn is_terminal(&self) -> bool {
        self.phase.is_terminal()
    }

    /// Nodes in flight (commanded, progressing or reverting).
    pub fn in_flight(&self) -> usize {
        self.nodes.values().filter(|e| e.state.is_in_flight()).count()
    }

    /// The image this rollout's latest Command or Revert told the node to run,
    /// None if none is in force. A `Healthy` report must be checked against it.
    pub fn desired_image(&self, id: &NodeId) -> Option<&str> {
        let e = self.nodes.get(id)?;
        match e.state {
            NodeState::Reverting { .. } | NodeState::Reverted { .. } | NodeState::RevertFailed { .. } => {
                Some(&e.previous_image)
            }
            NodeState::Cancelled { .. } => None,
            _ if e.attempt > 0 => Some(&e.target_image),
            _ => None,
        }
    }

    /// Node counts of wave `wave` (all zero for a wave that does not exist).
    pub fn counts_for_wave(&self, wave: usize) -> WaveCounts {
        let mut c = WaveCounts::default();
        let Some(w) = self.waves.get(wave) else { return c };
        for e in w.nodes.iter().filter_map(|id| self.nodes.get(id)) {
            c.total += 1;
            match e.state {
                NodeState::Pending | NodeState::RevertPending => c.pending += 1,
                NodeState::Commanded { .. } | NodeState::Progressing { .. } | NodeState::Reverting { .. } => {
                    c.in_flight += 1
                }
                NodeState::Healthy { .. } => c.healthy += 1,
                NodeState::Failed { .. } | NodeState::TimedOut { .. } | NodeState::RevertFailed { .. } => c.failed += 1,
                NodeState::Deferred { .. } => c.deferred += 1,
                NodeState::Cancelled { .. } => c.cancelled += 1,
                NodeState::Reverted { .. } => c.reverted += 1,
            }
        }
        c
    }

    /// The earliest time at which a Tick would change something (bake end,
    /// health timeout, window opening, offline grace), so the engine knows
    /// when to tick; None when only an outside event can move the rollout.
    pub fn next_wakeup(&self) -> Option<Millis> {
        let mut times = Vec::new();
        match &self.phase {
            Phase::Pending | Phase::Completed | Phase::RolledBack => return None,
            Phase::Baking { until } => times.push(*until),
            Phase::WaitingWindow { next_open: Some(t) } => times.push(*t),
            Phase::Running => times.extend(self.offline_grace_deadline()),
            _ => {}
        }
        let timeout = self.strategy.health_timeout;
        times.extend(self.nodes.values().filter_map(|e| match e.state {
            NodeState::Commanded { at } => Some(e.commanded_at.unwrap_or(at).saturating_add(timeout)),
            NodeState::Progressing { since, .. } => Some(e.commanded_at.unwrap_or(since).saturating_add(timeout)),
            NodeState::Reverting { at } => Some(at.saturating_add(timeout)),
            _ => None,
        }));
        times.into_iter().min()
    }

    /// Applies one event. Returns the actions to perform; on error the state
    /// is unchanged.
    ///
    /// Time never runs backwards inside a rollout: an event older than the
    /// last applied one is treated as happening at that time, so a new leader
    /// with a lagging clock cannot undo a timeout or a bake.
    pub fn apply(&mut self, event: Event) -> Result<Vec<Action>, RolloutError> {
        self.apply_with(event, false)
    }

    /// Records a node report ([`Event::NodeStatus`] or [`Event::NodeOnline`])
    /// without deciding anything: no command, no judgement. An engine that
    /// takes in a batch of reports records them all, then applies one
    /// [`Event::Tick`], so no command goes out on a state the next report of
    /// the same batch would have stopped (a failure tripping the threshold,
    /// a node gone offline). Other events are refused.
    pub fn record(&mut self, event: Event) -> Result<Vec<Action>, RolloutError> {
        match event {
            Event::NodeStatus { .. } | Event::NodeOnline { .. } => self.apply_with(event, true),
            other => Err(RolloutError::InvalidTransition {
                event: other.name(),
                phase: self.phase.name(),
                way_out: "only node reports are recorded without a decision; apply the event instead",
            }),
        }
    }

    fn apply_with(&mut self, event: Event, hold: bool) -> Result<Vec<Action>, RolloutError> {
        let mut cx = Cx { now: event.now().max(self.updated_at), actions: Vec::new(), changed: false, hold };
        // Every handler checks first and mutates after, so an error leaves
        // the state untouched without cloning it.
        match event {
            Event::Start { .. } => self.start(&mut cx)?,
            Event::Tick { .. } => self.progress(&mut cx),
            Event::NodeStatus { node, status, .. } => self.node_status(node, status, &mut cx)?,
            Event::NodeOnline { node, online, .. } => self.node_online(node, online, &mut cx)?,
            Event::Pause { reason, .. } => self.pause(reason, &mut cx)?,
            Event::Resume { accept_failures, retry_failed, .. } => {
                self.resume(accept_failures, retry_failed, &mut cx)?
            }
            Event::Abort { reason, .. } => self.abort(reason, &mut cx)?,
            Event::Approve { wave, .. } => self.approve(wave, &mut cx)?,
            Event::Rollback { .. } => self.rollback(&mut cx)?,
        }
        if cx.changed {
            self.updated_at = cx.now;
        }
        Ok(cx.actions)
    }

    fn refuse(&self, event: &'static str, way_out: &'static str) -> RolloutError {
        RolloutError::InvalidTransition { event, phase: self.phase.name(), way_out }
    }

    /// The way out offered when an operator command meets a finished rollout.
    fn finished_way_out(&self) -> &'static str {
        match self.phase {
            Phase::RollingBack => "a rollback runs until every node is reverted or failed; wait for it",
            Phase::RolledBack => "it is rolled back; create a new rollout to move forward again",
            _ => "it has finished; Rollback returns its nodes to their previous images",
        }
    }

    fn set_phase(&mut self, phase: Phase, cx: &mut Cx) -> bool {
        if self.phase == phase {
            return false;
        }
        self.phase = phase;
        cx.changed = true;
        true
    }

    fn set_state(&mut self, id: &NodeId, state: NodeState, cx: &mut Cx) {
        if let Some(e) = self.nodes.get_mut(id) {
            e.state = state;
            cx.changed = true;
        }
    }
}
