//! What the rollout does on its own once an event has been applied: health
//! timeouts, the failure threshold, offline deferral, wave completion, bake,
//! approval and window gates, and dispatch within the safety limits.

use std::collections::BTreeSet;

use super::{Action, Cx, NodeEntry, NodeState, Phase, Rollout, RolloutEvent};
use crate::fleet::model::NodeId;
use crate::fleet::planner::select_dispatch;
use crate::fleet::strategy::{FailureThreshold, Millis, OnFailure};
use crate::fleet::window;

fn threshold_reason(wave: usize, failed: &[NodeId], total: usize, threshold: FailureThreshold) -> String {
    const SHOWN: usize = 10;
    let mut names: Vec<&str> = failed.iter().take(SHOWN).map(NodeId::as_str).collect();
    let more = failed.len().saturating_sub(SHOWN);
    let more = format!("and {more} more");
    if failed.len() > SHOWN {
        names.push(&more);
    }
    format!(
        "wave {wave}: {} of {total} nodes failed ({}), exceeding the failure threshold {threshold}; \
         fix the cause and Resume (retry_failed re-commands them), or Abort or Rollback",
        failed.len(),
        names.join(", ")
    )
}

impl Rollout {
    /// Does whatever is due at `cx.now`.
    pub(super) fn progress(&mut self, cx: &mut Cx) {
        if cx.hold {
            return;
        }
        match self.phase {
            Phase::Pending | Phase::Completed | Phase::RolledBack => {}
            // Nodes still upgrading after an abort get their timeout, so the
            // record of what they did ends.
            Phase::Paused { .. } | Phase::Aborted { .. } => self.expire_timeouts(cx),
            Phase::RollingBack => {
                self.expire_timeouts(cx);
                self.dispatch_reverts(cx);
                self.finish_rollback_if_done(cx);
            }
            Phase::Running | Phase::Baking { .. } | Phase::WaitingWindow { .. } | Phase::AwaitingApproval { .. } => {
                self.expire_timeouts(cx);
                self.advance(cx);
            }
        }
    }

    /// Moves the forward rollout along: start, judge, complete, bake and
    /// dispatch. Each pass of the loop either returns or moves to the next
    /// wave, so it ends after at most one pass per wave.
    pub(super) fn advance(&mut self, cx: &mut Cx) {
        loop {
            let w = self.current_wave;
            let Some(wave) = self.waves.get(w) else {
                self.complete(cx);
                return;
            };
            if wave.started_at.is_none() {
                if w > 0 && self.strategy.approve_waves && !wave.approved {
                    if self.set_phase(Phase::AwaitingApproval { wave: w }, cx) {
                        cx.emit(RolloutEvent::AwaitingApproval { wave: w });
                    }
                    return;
                }
                if !window::any_open(&self.strategy.windows, cx.now) {
                    self.wait_for_window(cx);
                    return;
                }
                let nodes = wave.nodes.len();
                if let Some(wave) = self.waves.get_mut(w) {
                    wave.started_at = Some(cx.now);
                }
                self.set_phase(Phase::Running, cx);
                cx.emit(RolloutEvent::WaveStarted { wave: w, nodes });
            }
            let completed_at = match self.waves.get(w).and_then(|wave| wave.completed_at) {
                Some(at) => at,
                None => {
                    if let Some(failed) = self.tripped_threshold(w) {
                        self.trip(w, failed, cx);
                        return;
                    }
                    self.defer_offline(w, cx);
                    if !self.wave_finished(w) {
                        self.dispatch(w, cx);
                        return;
                    }
                    if let Some(wave) = self.waves.get_mut(w) {
                        wave.completed_at = Some(cx.now);
                    }
                    let c = self.counts_for_wave(w);
                    cx.emit(RolloutEvent::WaveCompleted {
                        wave: w,
                        healthy: c.healthy,
                        failed: c.failed,
                        deferred: c.deferred,
                    });
                    // A wave whose nodes were all deferred proved nothing
                    // about the image: the next, bigger wave must not start
                    // on no evidence. (Failures went through the threshold
                    // and an operator already accepted them.)
                    if c.healthy == 0 && c.failed == 0 && c.deferred > 0 {
                        let reason = format!(
                            "wave {w} finished with no healthy node ({} deferred offline): nothing shows the image \
                             works; bring its nodes online, or Resume to continue without evidence",
                            c.deferred
                        );
                        self.set_phase(Phase::Paused { reason: reason.clone() }, cx);
                        cx.emit(RolloutEvent::Paused { reason });
                        return;
                    }
                    cx.now
                }
            };
            if w + 1 >= self.waves.len() {
                self.complete(cx);
                return;
            }
            let until = completed_at.saturating_add(self.strategy.effective_bake());
            if cx.now < until {
                if self.set_phase(Phase::Baking { until }, cx) {
                    cx.emit(RolloutEvent::Baking { wave: w, until });
                }
                return;
            }
            self.current_wave = w + 1;
            cx.changed = true;
        }
    }

    pub(super) fn complete(&mut self, cx: &mut Cx) {
        if self.set_phase(Phase::Completed, cx) {
            self.finished_at = Some(cx.now);
            cx.emit(RolloutEvent::Completed);
        }
    }

    pub(super) fn wait_for_window(&mut self, cx: &mut Cx) {
        let next_open = window::next_opening(&self.strategy.windows, cx.now);
        if self.set_phase(Phase::WaitingWindow { next_open }, cx) {
            cx.emit(RolloutEvent::WaitingForWindow { next_open });
        }
    }

    /// The wave a deferred or retried node joins: the current wave while it
    /// is unfinished, else the next one; None once the last wave finished.
    pub(super) fn rejoin_wave(&self) -> Option<usize> {
        let c = self.current_wave;
        match self.waves.get(c) {
            Some(w) if w.completed_at.is_none() => Some(c),
            Some(_) if c + 1 < self.waves.len() => Some(c + 1),
            _ => None,
        }
    }

    pub(super) fn move_to_wave(&mut self, id: &NodeId, to: usize) {
        let Some(from) = self.nodes.get(id).map(|e| e.wave) else { return };
        if from == to || to >= self.waves.len() {
            return;
        }
        if let Some(w) = self.waves.get_mut(from) {
            w.nodes.retain(|n| n != id);
        }
        if let Some(w) = self.waves.get_mut(to) {
            w.nodes.push(id.clone());
        }
        if let Some(e) = self.nodes.get_mut(id) {
            e.wave = to;
        }
    }

    pub(super) fn wave_entries(&self, w: usize) -> impl Iterator<Item = (&NodeId, &NodeEntry)> {
        self.waves
            .get(w)
            .into_iter()
            .flat_map(|wave| wave.nodes.iter())
            .filter_map(|id| self.nodes.get(id).map(|e| (id, e)))
    }

    pub(super) fn expire_timeouts(&mut self, cx: &mut Cx) {
        let timeout = self.strategy.health_timeout;
        let mut forward = Vec::new();
        let mut reverts = Vec::new();
        for (id, e) in &self.nodes {
            match e.state {
                NodeState::Commanded { at } if cx.now >= e.commanded_at.unwrap_or(at).saturating_add(timeout) => {
                    forward.push((id.clone(), e.wave))
                }
                NodeState::Progressing { since, .. }
                    if cx.now >= e.commanded_at.unwrap_or(since).saturating_add(timeout) =>
                {
                    forward.push((id.clone(), e.wave))
                }
                NodeState::Reverting { at } if cx.now >= at.saturating_add(timeout) => reverts.push(id.clone()),
                _ => {}
            }
        }
        for (id, wave) in forward {
            self.set_state(&id, NodeState::TimedOut { at: cx.now }, cx);
            cx.emit(RolloutEvent::NodeTimedOut { node: id, wave });
        }
        for id in reverts {
            let reason = "no healthy report on the previous image within the health timeout".to_string();
            self.set_state(&id, NodeState::RevertFailed { reason, at: cx.now }, cx);
            cx.emit(RolloutEvent::RevertTimedOut { node: id });
        }
    }

    /// The unacknowledged failed nodes of wave `w` if they exceed the failure
    /// threshold and enough nodes finished to judge.
    pub(super) fn tripped_threshold(&self, w: usize) -> Option<Vec<NodeId>> {
        let mut total = 0;
        let mut finished = 0;
        let mut failed = Vec::new();
        for (id, e) in self.wave_entries(w) {
            total += 1;
            if e.state.is_finished() {
                finished += 1;
            }
            if e.state.is_failed() && !e.failure_acknowledged {
                failed.push(id.clone());
            }
        }
        let sample = (self.strategy.min_sample as usize).min(total);
        let judged = finished >= sample && !failed.is_empty();
        (judged && self.strategy.failure_threshold.exceeded(failed.len(), total)).then_some(failed)
    }

    pub(super) fn trip(&mut self, w: usize, failed: Vec<NodeId>, cx: &mut Cx) {
        let threshold = self.strategy.failure_threshold;
        let total = self.waves.get(w).map_or(0, |wave| wave.nodes.len());
        let reason = threshold_reason(w, &failed, total, threshold);
        cx.emit(RolloutEvent::ThresholdTripped { wave: w, failed, threshold });
        match self.strategy.on_failure {
            OnFailure::Pause => {
                self.set_phase(Phase::Paused { reason: reason.clone() }, cx);
                cx.emit(RolloutEvent::Paused { reason });
            }
            OnFailure::Abort => self.abort_now(reason, cx),
        }
    }

    /// Defers the offline pending nodes of wave `w` once everything else in
    /// the wave has finished and the grace period since the wave started is
    /// over: offline nodes must not hold a wave forever.
    pub(super) fn defer_offline(&mut self, w: usize, cx: &mut Cx) {
        let Some(deadline) = self.offline_grace_deadline_of(w) else { return };
        if cx.now < deadline {
            return;
        }
        let offline: Vec<NodeId> = self
            .wave_entries(w)
            .filter(|(_, e)| e.state == NodeState::Pending && !e.online)
            .map(|(id, _)| id.clone())
            .collect();
        for id in offline {
            self.set_state(&id, NodeState::Deferred { at: cx.now }, cx);
            cx.emit(RolloutEvent::NodeDeferred { node: id, wave: w });
        }
    }

    /// When the offline pending nodes of wave `w` will be deferred, if only
    /// they are left in the started wave.
    pub(super) fn offline_grace_deadline_of(&self, w: usize) -> Option<Millis> {
        let wave = self.waves.get(w)?;
        let started = wave.started_at?;
        if wave.completed_at.is_some() {
            return None;
        }
        let mut offline_pending = false;
        for (_, e) in self.wave_entries(w) {
            if e.state.is_in_flight() || (e.state == NodeState::Pending && e.online) {
                return None;
            }
            offline_pending |= e.state == NodeState::Pending;
        }
        offline_pending.then(|| started.saturating_add(self.strategy.offline_grace))
    }

    pub(super) fn offline_grace_deadline(&self) -> Option<Millis> {
        self.offline_grace_deadline_of(self.current_wave)
    }

    pub(super) fn wave_finished(&self, w: usize) -> bool {
        self.wave_entries(w).all(|(_, e)| {
            e.state.is_finished() || matches!(e.state, NodeState::Deferred { .. } | NodeState::Cancelled { .. })
        })
    }

    /// Commands pending online nodes of wave `w`, as far as slots, the k3s
    /// server rule and the maintenance windows allow.
    pub(super) fn dispatch(&mut self, w: usize, cx: &mut Cx) {
        let pending: Vec<NodeId> = self
            .wave_entries(w)
            .filter(|(_, e)| e.state == NodeState::Pending && e.online)
            .map(|(id, _)| id.clone())
            .collect();
        if pending.is_empty() {
            self.set_phase(Phase::Running, cx);
            return;
        }
        if !window::any_open(&self.strategy.windows, cx.now) {
            // Nodes already in flight carry on; only new commands wait.
            self.wait_for_window(cx);
            return;
        }
        self.set_phase(Phase::Running, cx);
        for id in self.select(&pending) {
            let Some(e) = self.nodes.get_mut(&id) else { continue };
            e.state = NodeState::Commanded { at: cx.now };
            e.commanded_at = Some(cx.now);
            e.attempt = e.attempt.saturating_add(1);
            e.failure_acknowledged = false;
            let (image, wave) = (e.target_image.clone(), e.wave);
            cx.act(Action::Command { node: id, image, wave });
        }
    }

    /// Sends reverts to RevertPending nodes in rollback order; online nodes
    /// first, since an offline one holds its slot until it times out.
    pub(super) fn dispatch_reverts(&mut self, cx: &mut Cx) {
        let (order, nodes) = (&self.rollback_order, &self.nodes);
        let waiting = |online: bool| {
            order
                .iter()
                .filter(move |id| {
                    nodes.get(*id).is_some_and(|e| e.state == NodeState::RevertPending && e.online == online)
                })
                .cloned()
        };
        let pending: Vec<NodeId> = waiting(true).chain(waiting(false)).collect();
        if pending.is_empty() {
            return;
        }
        for id in self.select(&pending) {
            let Some(image) = self.nodes.get(&id).map(|e| e.previous_image.clone()) else { continue };
            self.set_state(&id, NodeState::Reverting { at: cx.now }, cx);
            cx.act(Action::Revert { node: id, image });
        }
    }

    pub(super) fn finish_rollback_if_done(&mut self, cx: &mut Cx) {
        let (mut reverted, mut failed) = (0, 0);
        for e in self.nodes.values() {
            match e.state {
                NodeState::RevertPending | NodeState::Reverting { .. } => return,
                NodeState::Reverted { .. } => reverted += 1,
                NodeState::RevertFailed { .. } => failed += 1,
                _ => {}
            }
        }
        self.finished_at = Some(cx.now);
        self.set_phase(Phase::RolledBack, cx);
        cx.emit(RolloutEvent::RolledBack { reverted, failed });
    }

    /// Which of `pending` may be sent now. The planner's `select_dispatch`
    /// decides; its picks are re-checked here because "never more than
    /// max_unavailable in flight, never two servers of one cluster" are the
    /// rollout's own safety promises and must not depend on another module.
    pub(super) fn select(&self, pending: &[NodeId]) -> Vec<NodeId> {
        let max = self.strategy.max_unavailable as usize;
        let in_flight: Vec<NodeId> =
            self.nodes.iter().filter(|(_, e)| e.state.is_in_flight()).map(|(id, _)| id.clone()).collect();
        let nodes = &self.nodes;
        let lookup = move |id: &NodeId| nodes.get(id).and_then(|e| e.k3s.as_ref());
        let proposed = select_dispatch(pending, &in_flight, &lookup, max);

        let server_cluster = |id: &NodeId| lookup(id).filter(|m| m.is_server()).map(|m| m.cluster.as_str());
        let mut busy: BTreeSet<&str> = in_flight.iter().filter_map(server_cluster).collect();
        let mut allowed: BTreeSet<&NodeId> = pending.iter().collect();
        let mut slots = max.saturating_sub(in_flight.len());
        let mut chosen = Vec::new();
        for id in proposed {
            if slots == 0 {
                break;
            }
            if !allowed.remove(&id) {
                continue;
            }
            if let Some(cluster) = server_cluster(&id) {
                if !busy.insert(cluster) {
                    continue;
                }
            }
            chosen.push(id);
            slots -= 1;
        }
        chosen
    }
}
