//! The wave planner: which node goes in which wave, and which pending nodes
//! may be dispatched now.

use super::model::{K3sMembership, NodeFacts, NodeId};
use super::strategy::WaveSpec;

/// One wave of a plan: its nodes in dispatch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedWave {
    /// Nodes of the wave, in the order they are dispatched.
    pub nodes: Vec<NodeId>,
}

/// The waves of a rollout; wave 0 is the canary wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavePlan {
    /// The waves in order.
    pub waves: Vec<PlannedWave>,
}

/// Splits `nodes` (all eligible) into waves for rollout `rollout_id`.
pub fn plan_waves(_rollout_id: &str, _nodes: &[NodeFacts], _spec: &WaveSpec) -> WavePlan {
    WavePlan { waves: Vec::new() }
}

/// Picks which of `pending` (in dispatch order) may be commanded now, given
/// the nodes already in flight: never more than `max_unavailable` in flight,
/// never two k3s servers of one cluster.
pub fn select_dispatch<'a>(
    pending: &[NodeId],
    in_flight: &[NodeId],
    k3s: &dyn Fn(&NodeId) -> Option<&'a K3sMembership>,
    max_unavailable: usize,
) -> Vec<NodeId> {
    // Temporary implementation of the documented contract so the rollout state
    // machine can be tested; the planner's own implementation replaces it.
    let mut busy: Vec<&str> =
        in_flight.iter().filter_map(k3s).filter(|m| m.is_server()).map(|m| m.cluster.as_str()).collect();
    let mut slots = max_unavailable.saturating_sub(in_flight.len());
    let mut chosen = Vec::new();
    for node in pending {
        if slots == 0 {
            break;
        }
        if chosen.contains(node) || in_flight.contains(node) {
            continue;
        }
        if let Some(m) = k3s(node).filter(|m| m.is_server()) {
            if busy.contains(&m.cluster.as_str()) {
                continue;
            }
            busy.push(m.cluster.as_str());
        }
        chosen.push(node.clone());
        slots -= 1;
    }
    chosen
}
