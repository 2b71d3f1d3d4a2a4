//! A window on what a session sees: streams going up and down and the
//! server's desired state and cancels, for whoever must record them (the
//! simulator's history). The session behaves the same with or without one.

use kairos_fleet_proto::fleet::v1 as pb;

/// Hears about a session's streams and the server's instructions.
///
/// ### Contract
/// Methods are called from the session's loop, so they must return
/// quickly and never block: hand the event to a queue, do not write a file.
pub trait SessionObserver: Send + Sync {
    /// A stream is up: NodeConfig arrived from replica `replica_id`.
    fn connected(&self, _endpoint: &str, _replica_id: u64) {}

    /// The stream that was up on `endpoint` ended, for `reason`.
    fn disconnected(&self, _endpoint: &str, _reason: &str) {}

    /// A DesiredState arrived; `new` is false for a generation already
    /// handled (the server offers it again on every stream).
    fn desired_state(&self, _desired: &pb::DesiredState, _new: bool) {}

    /// A Cancel arrived, whether or not it names the running generation.
    fn cancel(&self, _cancel: &pb::Cancel) {}
}
