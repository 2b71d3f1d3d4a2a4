//! The rollout's state vocabulary: nodes, waves and phases.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fleet::model::{K3sMembership, NodeId};
use crate::fleet::strategy::Millis;

/// What a rollout needs to know about one node it moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAssignment {
    /// The node.
    pub id: NodeId,
    /// The image reference this node must move to.
    pub target_image: String,
    /// The image reference the node runs now; a rollback returns it here.
    pub previous_image: String,
    /// Kubernetes cluster membership (for the one-server-at-a-time rule).
    pub k3s: Option<K3sMembership>,
    /// Whether the node is connected when the rollout is created.
    pub online: bool,
}

/// Upgrade stages a node reports between command and result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Pulling the image.
    Downloading,
    /// Checking digests.
    Verifying,
    /// Writing the new image to the passive partition.
    Installing,
    /// Rebooting into the new image.
    Rebooting,
}

/// Where one node stands in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Not commanded yet (or re-queued for another attempt).
    Pending,
    /// Desired state written; the node has not reported progress yet.
    Commanded {
        /// When the command was written.
        at: Millis,
    },
    /// The node reported an upgrade stage.
    Progressing {
        /// The stage reported last.
        stage: Stage,
        /// When the node entered that stage.
        since: Millis,
    },
    /// Healthy on the target image.
    Healthy {
        /// When the healthy report arrived.
        at: Millis,
    },
    /// The node reported a failed upgrade.
    Failed {
        /// The node's reason.
        reason: String,
        /// When the failure was reported.
        at: Millis,
    },
    /// No healthy report within the health timeout; counts as failed.
    TimedOut {
        /// When the timeout was noticed.
        at: Millis,
    },
    /// Offline past the grace period when the rest of its wave had finished.
    Deferred {
        /// When the node was deferred.
        at: Millis,
    },
    /// The command was withdrawn by an abort before the node started on it.
    Cancelled {
        /// When the command was withdrawn.
        at: Millis,
    },
    /// Rollback: waiting for a slot to be sent back to its previous image.
    RevertPending,
    /// Rollback: desired state set back to the previous image.
    Reverting {
        /// When the revert was written.
        at: Millis,
    },
    /// Rollback: healthy on the previous image again.
    Reverted {
        /// When the healthy report arrived.
        at: Millis,
    },
    /// Rollback: the revert failed or timed out.
    RevertFailed {
        /// What went wrong.
        reason: String,
        /// When it was noticed.
        at: Millis,
    },
}

impl NodeState {
    /// True while the node may be down because of this rollout (it counts
    /// against `max_unavailable`).
    pub fn is_in_flight(&self) -> bool {
        matches!(self, NodeState::Commanded { .. } | NodeState::Progressing { .. } | NodeState::Reverting { .. })
    }

    /// True once the node's forward upgrade has a result (healthy or failed).
    pub fn is_finished(&self) -> bool {
        matches!(self, NodeState::Healthy { .. } | NodeState::Failed { .. } | NodeState::TimedOut { .. })
    }

    /// True for a failed or timed-out forward upgrade.
    pub fn is_failed(&self) -> bool {
        matches!(self, NodeState::Failed { .. } | NodeState::TimedOut { .. })
    }

    /// True for the states that are part of a rollback.
    pub fn is_rollback(&self) -> bool {
        matches!(
            self,
            NodeState::RevertPending
                | NodeState::Reverting { .. }
                | NodeState::Reverted { .. }
                | NodeState::RevertFailed { .. }
        )
    }
}

/// One node of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The wave the node belongs to now (a deferred or retried node may move
    /// to a later wave).
    pub wave: usize,
    /// The wave the plan put it in.
    pub planned_wave: usize,
    /// The image this rollout moves it to.
    pub target_image: String,
    /// The image a rollback returns it to.
    pub previous_image: String,
    /// Kubernetes cluster membership.
    pub k3s: Option<K3sMembership>,
    /// Whether the node is connected to a replica.
    pub online: bool,
    /// Where it stands.
    pub state: NodeState,
    /// How many times it has been commanded (0 = never).
    pub attempt: u32,
    /// When the latest command was written (the health timeout runs from here).
    pub commanded_at: Option<Millis>,
    /// An operator resumed past this node's failure: it no longer counts
    /// against the failure threshold.
    pub failure_acknowledged: bool,
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveState {
    /// Nodes of the wave in dispatch order.
    pub nodes: Vec<NodeId>,
    /// When the wave started (WaveStarted was emitted).
    pub started_at: Option<Millis>,
    /// When every node of the wave had a result or was deferred.
    pub completed_at: Option<Millis>,
    /// An operator approved the wave (only asked with `approve_waves`).
    pub approved: bool,
}

/// Node counts of one wave by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WaveCounts {
    /// Nodes in the wave.
    pub total: usize,
    /// Waiting to be commanded (forward or, during a rollback, revert).
    pub pending: usize,
    /// Commanded, progressing or reverting.
    pub in_flight: usize,
    /// Healthy on the target.
    pub healthy: usize,
    /// Failed, timed out or failed to revert.
    pub failed: usize,
    /// Deferred because they were offline.
    pub deferred: usize,
    /// Commands withdrawn by an abort.
    pub cancelled: usize,
    /// Back on their previous image.
    pub reverted: usize,
}

/// The phase of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Created, not started.
    Pending,
    /// Working on the current wave.
    Running,
    /// The current wave is done; the next starts at `until`.
    Baking {
        /// End of the bake time.
        until: Millis,
    },
    /// Work is due but no maintenance window is open.
    WaitingWindow {
        /// The next window opening, if one could be computed.
        next_open: Option<Millis>,
    },
    /// Wave `wave` waits for an operator's Approve.
    AwaitingApproval {
        /// The wave to approve.
        wave: usize,
    },
    /// Stopped by an operator or the failure threshold; no new commands.
    Paused {
        /// Why.
        reason: String,
    },
    /// Ended early (terminal, but may still be rolled back).
    Aborted {
        /// Why.
        reason: String,
    },
    /// Nodes are being sent back to their previous images.
    RollingBack,
    /// Every wave finished (terminal, but may still be rolled back).
    Completed,
    /// Every commanded node was reverted or failed to revert (terminal).
    RolledBack,
}

impl Phase {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Baking { .. } => "baking",
            Phase::WaitingWindow { .. } => "waiting for a maintenance window",
            Phase::AwaitingApproval { .. } => "awaiting approval",
            Phase::Paused { .. } => "paused",
            Phase::Aborted { .. } => "aborted",
            Phase::RollingBack => "rolling back",
            Phase::Completed => "completed",
            Phase::RolledBack => "rolled back",
        }
    }

    /// True for Aborted, Completed and RolledBack.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Phase::Aborted { .. } | Phase::Completed | Phase::RolledBack)
    }

    /// True for the phases in which the rollout moves forward on its own.
    pub(super) fn is_active(&self) -> bool {
        matches!(
            self,
            Phase::Running | Phase::Baking { .. } | Phase::WaitingWindow { .. } | Phase::AwaitingApproval { .. }
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
