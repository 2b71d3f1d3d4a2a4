//! The handlers of outside events: operator commands and node reports.
//! Each checks first and mutates after, so a refused event changes nothing.

use super::{Action, Cx, NodeReport, NodeState, Phase, Rollout, RolloutError, RolloutEvent};
use crate::fleet::model::NodeId;
use crate::fleet::strategy::Millis;

/// The state a report moves a node to, or None when the report is stale or
/// repeated (which keeps duplicate deliveries free of effects).
fn reported_state(state: &NodeState, report: &NodeReport, now: Millis) -> Option<NodeState> {
    use NodeState as S;
    match (state, report) {
        (S::Commanded { .. } | S::Progressing { .. }, NodeReport::Healthy) => Some(S::Healthy { at: now }),
        (S::Commanded { .. } | S::Progressing { .. }, NodeReport::Failed { reason }) => {
            Some(S::Failed { reason: reason.clone(), at: now })
        }
        (S::Progressing { stage, .. }, r) if r.stage() == Some(*stage) => None,
        (S::Commanded { .. } | S::Progressing { .. }, r) => r.stage().map(|stage| S::Progressing { stage, since: now }),
        (S::Reverting { .. }, NodeReport::Healthy) => Some(S::Reverted { at: now }),
        (S::Reverting { .. }, NodeReport::Failed { reason }) => {
            Some(S::RevertFailed { reason: reason.clone(), at: now })
        }
        // Late reports after a timeout, cancel or result are ignored: the slot
        // was released and the threshold judged; `Resume { retry_failed }`
        // re-commands the node, and a node already on the target then reports
        // healthy at once.
        _ => None,
    }
}

impl Rollout {
    pub(super) fn start(&mut self, cx: &mut Cx) -> Result<(), RolloutError> {
        if self.phase != Phase::Pending {
            let way_out = match self.phase {
                Phase::Aborted { .. } | Phase::Completed | Phase::RolledBack | Phase::RollingBack => {
                    self.finished_way_out()
                }
                _ => "it has already started; Pause, Abort or Rollback change its course",
            };
            return Err(self.refuse("start", way_out));
        }
        self.started_at = Some(cx.now);
        self.set_phase(Phase::Running, cx);
        cx.emit(RolloutEvent::Started);
        self.progress(cx);
        Ok(())
    }

    pub(super) fn node_status(&mut self, node: NodeId, status: NodeReport, cx: &mut Cx) -> Result<(), RolloutError> {
        let entry = self.nodes.get(&node).ok_or_else(|| RolloutError::UnknownNode { node: node.clone() })?;
        let Some(next) = reported_state(&entry.state, &status, cx.now) else { return Ok(()) };
        self.set_state(&node, next, cx);
        // In terminal phases this only records what the node did; progress
        // does nothing there.
        self.progress(cx);
        Ok(())
    }

    pub(super) fn node_online(&mut self, node: NodeId, online: bool, cx: &mut Cx) -> Result<(), RolloutError> {
        let entry = self.nodes.get(&node).ok_or_else(|| RolloutError::UnknownNode { node: node.clone() })?;
        if entry.online == online {
            return Ok(());
        }
        let may_rejoin = self.phase.is_active() || matches!(self.phase, Phase::Paused { .. });
        let rejoin = (online && may_rejoin && matches!(entry.state, NodeState::Deferred { .. }))
            .then(|| self.rejoin_wave())
            .flatten();
        if let Some(e) = self.nodes.get_mut(&node) {
            e.online = online;
            cx.changed = true;
        }
        if let Some(wave) = rejoin {
            self.move_to_wave(&node, wave);
            self.set_state(&node, NodeState::Pending, cx);
            cx.emit(RolloutEvent::NodeRejoined { node, wave });
        }
        self.progress(cx);
        Ok(())
    }

    pub(super) fn pause(&mut self, reason: String, cx: &mut Cx) -> Result<(), RolloutError> {
        match self.phase {
            _ if self.phase.is_active() => {}
            Phase::Pending => {
                return Err(self.refuse("pause", "it has not started yet; pause it once it runs, or Abort it"))
            }
            Phase::Paused { .. } => return Err(self.refuse("pause", "it is already paused; Resume continues it")),
            _ => return Err(self.refuse("pause", self.finished_way_out())),
        }
        self.set_phase(Phase::Paused { reason: reason.clone() }, cx);
        cx.emit(RolloutEvent::Paused { reason });
        self.progress(cx);
        Ok(())
    }

    pub(super) fn resume(
        &mut self,
        accept_failures: bool,
        retry_failed: bool,
        cx: &mut Cx,
    ) -> Result<(), RolloutError> {
        match self.phase {
            Phase::Paused { .. } => {}
            Phase::Pending => return Err(self.refuse("resume", "it has not started yet, so it is not paused")),
            _ if self.phase.is_active() => return Err(self.refuse("resume", "it is not paused; Pause it first")),
            _ => return Err(self.refuse("resume", self.finished_way_out())),
        }
        // Retries stay in their wave while it runs; a finished wave is not
        // reopened, so they join the next one.
        let latest_started = self.waves.iter().rposition(|w| w.started_at.is_some());
        let rejoin = self.rejoin_wave();
        let mut retried = Vec::new();
        let failed: Vec<NodeId> =
            self.nodes.iter().filter(|(_, e)| e.state.is_failed()).map(|(id, _)| id.clone()).collect();
        for id in failed {
            let retry = retry_failed && self.nodes.get(&id).map(|e| e.wave) == latest_started;
            match (retry, rejoin) {
                (true, Some(wave)) => {
                    self.move_to_wave(&id, wave);
                    self.set_state(&id, NodeState::Pending, cx);
                    if let Some(e) = self.nodes.get_mut(&id) {
                        e.failure_acknowledged = false;
                    }
                    retried.push(id);
                }
                // Failures the operator accepted do not trip the threshold
                // again; others are judged afresh.
                _ if accept_failures => {
                    if let Some(e) = self.nodes.get_mut(&id) {
                        e.failure_acknowledged = true;
                    }
                }
                _ => {}
            }
        }
        // Running is provisional: progress works out the real phase.
        self.set_phase(Phase::Running, cx);
        cx.emit(RolloutEvent::Resumed { retried });
        self.progress(cx);
        Ok(())
    }

    pub(super) fn abort(&mut self, reason: String, cx: &mut Cx) -> Result<(), RolloutError> {
        match self.phase {
            Phase::Pending | Phase::Paused { .. } => {}
            _ if self.phase.is_active() => {}
            _ => return Err(self.refuse("abort", self.finished_way_out())),
        }
        self.abort_now(reason, cx);
        Ok(())
    }

    pub(super) fn abort_now(&mut self, reason: String, cx: &mut Cx) {
        // Nodes that already started keep going (interrupting an install is
        // worse than finishing it); only untouched commands are withdrawn.
        let untouched: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, e)| matches!(e.state, NodeState::Commanded { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in untouched {
            self.set_state(&id, NodeState::Cancelled { at: cx.now }, cx);
            cx.act(Action::Cancel { node: id });
        }
        self.finished_at = Some(cx.now);
        self.set_phase(Phase::Aborted { reason: reason.clone() }, cx);
        cx.emit(RolloutEvent::Aborted { reason });
    }

    pub(super) fn approve(&mut self, wave: usize, cx: &mut Cx) -> Result<(), RolloutError> {
        match self.phase {
            Phase::AwaitingApproval { wave: expected } if expected != wave => {
                return Err(RolloutError::WrongWave { expected, got: wave })
            }
            Phase::AwaitingApproval { .. } => {}
            _ => {
                return Err(self
                    .refuse("approve", "no wave is awaiting approval; approve when the phase is `awaiting approval`"))
            }
        }
        if let Some(w) = self.waves.get_mut(wave) {
            w.approved = true;
        }
        cx.emit(RolloutEvent::Approved { wave });
        self.set_phase(Phase::Running, cx);
        self.progress(cx);
        Ok(())
    }

    pub(super) fn rollback(&mut self, cx: &mut Cx) -> Result<(), RolloutError> {
        match self.phase {
            Phase::Pending => return Err(self.refuse("roll back", "nothing was commanded yet; Abort it instead")),
            Phase::RollingBack => return Err(self.refuse("roll back", "a rollback is already under way")),
            Phase::RolledBack => return Err(self.refuse("roll back", self.finished_way_out())),
            _ => {}
        }
        // Last wave first, and within a wave the reverse of dispatch order:
        // the nodes that spent the least time on the new image go back first
        // (plan order, which is the order they were commanded in).
        let mut order: Vec<NodeId> = self
            .waves
            .iter()
            .flat_map(|wave| wave.nodes.iter())
            .filter(|id| self.nodes.get(*id).is_some_and(|e| e.attempt > 0))
            .cloned()
            .collect();
        order.reverse();
        self.rollback_order = order;
        for id in self.rollback_order.clone() {
            let Some(e) = self.nodes.get(&id) else { continue };
            if e.state.is_in_flight() {
                // Already down and holding a slot: redirect it at once, so the
                // slot count is unchanged.
                let image = e.previous_image.clone();
                self.set_state(&id, NodeState::Reverting { at: cx.now }, cx);
                cx.act(Action::Revert { node: id, image });
            } else {
                self.set_state(&id, NodeState::RevertPending, cx);
            }
        }
        self.finished_at = None;
        self.set_phase(Phase::RollingBack, cx);
        cx.emit(RolloutEvent::RollbackStarted { nodes: self.rollback_order.len() });
        self.progress(cx);
        Ok(())
    }
}
