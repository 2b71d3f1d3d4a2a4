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
    _pending: &[NodeId],
    _in_flight: &[NodeId],
    _k3s: &dyn Fn(&NodeId) -> Option<&'a K3sMembership>,
    _max_unavailable: usize,
) -> Vec<NodeId> {
    Vec::new()
}
