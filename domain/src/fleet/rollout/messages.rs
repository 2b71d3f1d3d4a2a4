//! What goes into the rollout state machine (events, node reports) and what
//! comes out of it (actions, watcher events, errors).

use serde::{Deserialize, Serialize};

use super::state::Stage;
use crate::fleet::model::NodeId;
use crate::fleet::strategy::{FailureThreshold, Millis};

/// A status report from a node.
///
/// `Healthy` means the caller has checked that the node booted the image
/// [`Rollout::desired_image`](super::Rollout::desired_image) names from its active partition (COS_ACTIVE):
/// the new release during the rollout, the previous image during a rollback.
/// A fallback boot (COS_PASSIVE, `/run/cos/upgrade_failure`) must be reported
/// as `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeReport {
    /// Pulling the image.
    Downloading,
    /// Checking digests.
    Verifying,
    /// Installing.
    Installing,
    /// Rebooting.
    Rebooting,
    /// Healthy on the desired image, booted from the active partition.
    Healthy,
    /// The upgrade failed on the node.
    Failed {
        /// What the node says went wrong.
        reason: String,
    },
}

impl NodeReport {
    /// The in-progress stage this report names, if it is one.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            NodeReport::Downloading => Some(Stage::Downloading),
            NodeReport::Verifying => Some(Stage::Verifying),
            NodeReport::Installing => Some(Stage::Installing),
            NodeReport::Rebooting => Some(Stage::Rebooting),
            NodeReport::Healthy | NodeReport::Failed { .. } => None,
        }
    }
}

/// An input to the state machine; every event carries the time it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Start the first wave.
    Start {
        /// Time of the event.
        now: Millis,
    },
    /// Time passed; do whatever became due (see [`Rollout::next_wakeup`](super::Rollout::next_wakeup)).
    Tick {
        /// Time of the event.
        now: Millis,
    },
    /// A node reported its status.
    NodeStatus {
        /// The node.
        node: NodeId,
        /// What it reported.
        status: NodeReport,
        /// Time of the event.
        now: Millis,
    },
    /// A node connected or disconnected.
    NodeOnline {
        /// The node.
        node: NodeId,
        /// Connected now.
        online: bool,
        /// Time of the event.
        now: Millis,
    },
    /// Operator: stop sending new commands.
    Pause {
        /// Why, for the record.
        reason: String,
        /// Time of the event.
        now: Millis,
    },
    /// Operator: continue a paused rollout.
    Resume {
        /// Count the failures so far as seen and accepted: they no longer
        /// trip the failure threshold. Without it the threshold is judged
        /// again on resume (so resuming an operator's pause cannot slip
        /// past failures nobody looked at).
        accept_failures: bool,
        /// Re-command the failed and timed-out nodes of the latest wave.
        retry_failed: bool,
        /// Time of the event.
        now: Millis,
    },
    /// Operator: end the rollout; nodes already upgraded stay.
    Abort {
        /// Why, for the record.
        reason: String,
        /// Time of the event.
        now: Millis,
    },
    /// Operator: approve the wave that is awaiting approval.
    Approve {
        /// The wave being approved; must be the one waiting.
        wave: usize,
        /// Time of the event.
        now: Millis,
    },
    /// Operator: send every commanded node back to its previous image.
    Rollback {
        /// Time of the event.
        now: Millis,
    },
}

impl Event {
    /// The time the event carries.
    pub fn now(&self) -> Millis {
        match self {
            Event::Start { now }
            | Event::Tick { now }
            | Event::NodeStatus { now, .. }
            | Event::NodeOnline { now, .. }
            | Event::Pause { now, .. }
            | Event::Resume { now, .. }
            | Event::Abort { now, .. }
            | Event::Approve { now, .. }
            | Event::Rollback { now } => *now,
        }
    }

    /// The event's name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Start { .. } => "start",
            Event::Tick { .. } => "tick",
            Event::NodeStatus { .. } => "report node status",
            Event::NodeOnline { .. } => "report node connectivity",
            Event::Pause { .. } => "pause",
            Event::Resume { .. } => "resume",
            Event::Abort { .. } => "abort",
            Event::Approve { .. } => "approve",
            Event::Rollback { .. } => "roll back",
        }
    }
}

/// Something watchers are told about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutEvent {
    /// The rollout started.
    Started,
    /// A wave started; its pending online nodes are being commanded.
    WaveStarted {
        /// The wave.
        wave: usize,
        /// Nodes in the wave.
        nodes: usize,
    },
    /// Every node of a wave has a result or was deferred.
    WaveCompleted {
        /// The wave.
        wave: usize,
        /// Healthy nodes.
        healthy: usize,
        /// Failed or timed-out nodes.
        failed: usize,
        /// Deferred (offline) nodes.
        deferred: usize,
    },
    /// Baking after a wave until `until`.
    Baking {
        /// The wave that completed.
        wave: usize,
        /// When the next wave may start.
        until: Millis,
    },
    /// Work is due but no maintenance window is open.
    WaitingForWindow {
        /// Next opening.
        next_open: Option<Millis>,
    },
    /// A wave waits for an operator's approval.
    AwaitingApproval {
        /// The wave.
        wave: usize,
    },
    /// An operator approved a wave.
    Approved {
        /// The wave.
        wave: usize,
    },
    /// A node did not report healthy within the health timeout.
    NodeTimedOut {
        /// The node.
        node: NodeId,
        /// Its wave.
        wave: usize,
    },
    /// An offline node was deferred so its wave can finish.
    NodeDeferred {
        /// The node.
        node: NodeId,
        /// Its wave.
        wave: usize,
    },
    /// A deferred node came back online and was queued in `wave`.
    NodeRejoined {
        /// The node.
        node: NodeId,
        /// The wave it now belongs to.
        wave: usize,
    },
    /// The failure threshold of a wave was exceeded.
    ThresholdTripped {
        /// The wave.
        wave: usize,
        /// The failed nodes that count against the threshold.
        failed: Vec<NodeId>,
        /// The threshold.
        threshold: FailureThreshold,
    },
    /// The rollout paused.
    Paused {
        /// Why.
        reason: String,
    },
    /// The rollout resumed.
    Resumed {
        /// Nodes re-queued for another attempt.
        retried: Vec<NodeId>,
    },
    /// The rollout was aborted.
    Aborted {
        /// Why.
        reason: String,
    },
    /// Every wave finished.
    Completed,
    /// A rollback started.
    RollbackStarted {
        /// Nodes to be reverted.
        nodes: usize,
    },
    /// A node did not report healthy on its previous image in time.
    RevertTimedOut {
        /// The node.
        node: NodeId,
    },
    /// The rollback finished.
    RolledBack {
        /// Nodes back on their previous image.
        reverted: usize,
        /// Nodes whose revert failed.
        failed: usize,
    },
}

/// What the engine must do after an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Write desired state: `node` should run `image` (always its target image).
    Command {
        /// The node.
        node: NodeId,
        /// Its target image.
        image: String,
        /// The wave it is commanded in.
        wave: usize,
    },
    /// Write desired state back to the node's previous image.
    Revert {
        /// The node.
        node: NodeId,
        /// Its previous image.
        image: String,
    },
    /// Withdraw a command the node has not started on.
    Cancel {
        /// The node.
        node: NodeId,
    },
    /// Tell watchers.
    Emit(RolloutEvent),
}

/// Why an event or a new rollout was refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// The event is not allowed in the current phase.
    #[error("cannot {event} a rollout that is {phase}: {way_out}")]
    InvalidTransition {
        /// The refused event.
        event: &'static str,
        /// The phase it arrived in.
        phase: &'static str,
        /// What the operator can do instead.
        way_out: &'static str,
    },
    /// Approve named a wave other than the one waiting.
    #[error("approve: wave {got} is not awaiting approval, wave {expected} is; approve wave {expected}")]
    WrongWave {
        /// The wave awaiting approval.
        expected: usize,
        /// The wave named in the event.
        got: usize,
    },
    /// A report for a node that is not part of this rollout.
    #[error("node {node}: not part of this rollout; check the rollout id or the node id")]
    UnknownNode {
        /// The node.
        node: NodeId,
    },
    /// The plan and the node assignments do not fit together.
    #[error("node {node}: {rule}")]
    InvalidNode {
        /// The node.
        node: NodeId,
        /// The rule and the way out.
        rule: &'static str,
    },
    /// A strategy value the state machine cannot work with.
    #[error("strategy.{field}: {rule}")]
    InvalidStrategy {
        /// The field.
        field: &'static str,
        /// The rule and the way out.
        rule: &'static str,
    },
}
