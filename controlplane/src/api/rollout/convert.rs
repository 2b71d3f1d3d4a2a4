//! Stored rollouts as the API shows them.

use kairos_fleet_proto::fleet::v1 as pb;

use super::plan::strategy_to_pb;
use crate::engine::records::{Header, NodeRecord};
use crate::fleet::model::NodeId;
use crate::fleet::rollout::{NodeState, Phase, WaveCounts};
use crate::nodes::timestamp_ms;

/// The API's phase of a rollout phase.
pub fn phase_to_pb(phase: &Phase) -> pb::RolloutPhase {
    match phase {
        Phase::Pending => pb::RolloutPhase::Pending,
        Phase::Running => pb::RolloutPhase::Running,
        Phase::Baking { .. } => pb::RolloutPhase::Baking,
        Phase::WaitingWindow { .. } => pb::RolloutPhase::WaitingWindow,
        Phase::AwaitingApproval { .. } => pb::RolloutPhase::AwaitingApproval,
        Phase::Paused { .. } => pb::RolloutPhase::Paused,
        Phase::Aborted { .. } => pb::RolloutPhase::Aborted,
        Phase::RollingBack => pb::RolloutPhase::RollingBack,
        Phase::Completed => pb::RolloutPhase::Completed,
        Phase::RolledBack => pb::RolloutPhase::RolledBack,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The API's counts of a wave.
pub fn counts_to_pb(c: &WaveCounts) -> pb::WaveCounts {
    pb::WaveCounts {
        total: count(c.total),
        pending: count(c.pending),
        in_flight: count(c.in_flight),
        healthy: count(c.healthy),
        failed: count(c.failed),
        deferred: count(c.deferred),
        skipped: 0,
        rolled_back: count(c.reverted),
        cancelled: count(c.cancelled),
    }
}

fn add(total: &mut pb::WaveCounts, c: &pb::WaveCounts) {
    total.total += c.total;
    total.pending += c.pending;
    total.in_flight += c.in_flight;
    total.healthy += c.healthy;
    total.failed += c.failed;
    total.deferred += c.deferred;
    total.skipped += c.skipped;
    total.rolled_back += c.rolled_back;
    total.cancelled += c.cancelled;
}

/// A stored rollout as the API shows it; `revision` is its header's mod revision.
pub fn rollout_to_pb(h: &Header, revision: u64) -> pb::Rollout {
    let spec = h.spec();
    let strategy_asked = spec.strategy.clone().unwrap_or_default();
    let threshold_pause = matches!(h.phase, Phase::Paused { .. }) && !h.paused_by_operator;
    let waves: Vec<pb::WaveStatus> = h
        .waves
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let counts = h.counts.get(i).map(counts_to_pb).unwrap_or_default();
            let phase = match (w.started_at, w.completed_at) {
                (None, _) => pb::WavePhase::Pending,
                (Some(_), None) if threshold_pause && i == h.current_wave => pb::WavePhase::Failed,
                (Some(_), None) => pb::WavePhase::Running,
                (Some(_), Some(_)) if i == h.current_wave && matches!(h.phase, Phase::Baking { .. }) => {
                    pb::WavePhase::Baking
                }
                (Some(_), Some(_)) => pb::WavePhase::Completed,
            };
            pb::WaveStatus {
                index: count(i),
                phase: phase as i32,
                counts: Some(counts),
                started_at: w.started_at.and_then(timestamp_ms),
                finished_at: w.completed_at.and_then(timestamp_ms),
                approved_by: w.approved_by.clone(),
                approved_at: w.approved_at.and_then(timestamp_ms),
            }
        })
        .collect();
    let mut totals = pb::WaveCounts::default();
    for w in &waves {
        if let Some(c) = &w.counts {
            add(&mut totals, c);
        }
    }
    let (pause_reason, reason_message) = match &h.phase {
        Phase::Paused { reason } if h.paused_by_operator => (pb::PauseReason::Operator, reason.clone()),
        Phase::Paused { reason } => (pb::PauseReason::FailureThreshold, reason.clone()),
        Phase::Aborted { reason } => (pb::PauseReason::Unspecified, reason.clone()),
        _ => (pb::PauseReason::Unspecified, String::new()),
    };
    let status = pb::RolloutStatus {
        phase: phase_to_pb(&h.phase) as i32,
        current_wave: count(h.current_wave),
        waves,
        totals: Some(totals),
        change_class: h.change_class,
        resolved_strategy: Some(strategy_to_pb(
            &h.strategy,
            strategy_asked.allow_major.unwrap_or(false),
            strategy_asked.allow_downgrade.unwrap_or(false),
        )),
        pause_reason: pause_reason as i32,
        reason_message,
        created_at: timestamp_ms(h.created_at),
        started_at: h.started_at.and_then(timestamp_ms),
        phase_changed_at: timestamp_ms(h.phase_changed_at),
        bake_until: match h.phase {
            Phase::Baking { until } => timestamp_ms(until),
            _ => None,
        },
        next_window_at: match h.phase {
            Phase::WaitingWindow { next_open: Some(t) } => timestamp_ms(t),
            _ => None,
        },
        finished_at: h.finished_at.and_then(timestamp_ms),
        refused_nodes: h.refused,
    };
    pb::Rollout {
        rollout_id: h.id.clone(),
        spec: Some(spec),
        status: Some(status),
        created_by: h.created_by.clone(),
        revision,
    }
}

/// One node of a rollout as the API shows it.
pub fn node_to_pb(id: &NodeId, r: &NodeRecord) -> pb::RolloutNode {
    let e = &r.entry;
    let (state, finished) = match &e.state {
        NodeState::Pending => (pb::RolloutNodeState::Pending, None),
        NodeState::Commanded { .. } | NodeState::Progressing { .. } => (pb::RolloutNodeState::InFlight, None),
        NodeState::Healthy { at } => (pb::RolloutNodeState::Healthy, Some(*at)),
        NodeState::Failed { at, .. } | NodeState::TimedOut { at } | NodeState::RevertFailed { at, .. } => {
            (pb::RolloutNodeState::Failed, Some(*at))
        }
        NodeState::Deferred { .. } => (pb::RolloutNodeState::Deferred, None),
        NodeState::Cancelled { at } => (pb::RolloutNodeState::Cancelled, Some(*at)),
        NodeState::RevertPending | NodeState::Reverting { .. } => (pb::RolloutNodeState::RollingBack, None),
        NodeState::Reverted { at } => (pb::RolloutNodeState::RolledBack, Some(*at)),
    };
    let message = match &e.state {
        NodeState::Failed { reason, .. } | NodeState::RevertFailed { reason, .. } if r.meta.message.is_empty() => {
            reason.clone()
        }
        _ => r.meta.message.clone(),
    };
    pb::RolloutNode {
        node_id: id.to_string(),
        wave: count(e.wave),
        state: state as i32,
        target_image_ref: e.target_image.clone(),
        previous_image_ref: e.previous_image.clone(),
        generation: r.meta.generation,
        failure_reason: if state == pb::RolloutNodeState::Failed { r.meta.failure_reason } else { 0 },
        message,
        commanded_at: e.commanded_at.and_then(timestamp_ms),
        finished_at: finished.and_then(timestamp_ms),
        online: e.online,
        attempt: e.attempt,
    }
}
