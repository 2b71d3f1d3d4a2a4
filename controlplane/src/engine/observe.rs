//! What the replicated node state says to a rollout: a node's record
//! (`nodes/<id>`, its last status transition) and session (`node-sessions/<id>`,
//! present while a replica holds its stream) turned into state-machine
//! events.
//!
//! Observation is level-triggered: it looks at the node's current state,
//! not at a stream of changes, so looking twice, or late, gives the same
//! events, and the state machine ignores reports it has already taken.

use kairos_fleet_proto::fleet::v1 as pb;
use semver::Version;

use super::records::{Loaded, NodeMeta};
use super::transition::{self, Pending};
use crate::fleet::image::ImageRef;
use crate::fleet::model::NodeId;
use crate::fleet::rollout::{Event, NodeReport, Rollout};
use crate::fleet::strategy::Millis;
use crate::nodes::{read_node, read_session, NodeRecord as FleetNode, ReadNodeError};
use crate::store::{KvReader, StoreError};

fn release_of(text: &str) -> Option<Version> {
    Version::parse(text.trim().trim_start_matches('v')).ok()
}

/// Whether `status` shows the node healthy on `image`: the same Kairos
/// release (and Kubernetes version, when the image has one), booted from
/// the active partition. The reference itself may differ (a mirror).
fn healthy_on(status: &pb::StatusUpdate, image: &str) -> Result<(), (pb::FailureReason, String)> {
    let boot = status.boot_state();
    if matches!(boot, pb::BootState::Passive | pb::BootState::Recovery) {
        return Err((
            pb::FailureReason::FallbackBoot,
            format!("reported healthy but booted from the {} partition", boot.as_str_name()),
        ));
    }
    let Ok(want) = ImageRef::parse(image) else { return Ok(()) };
    let got = release_of(&status.release);
    if got.as_ref() != Some(want.release()) {
        return Err((
            pb::FailureReason::WrongRelease,
            format!("reported healthy on release {:?}, expected v{}", status.release, want.release()),
        ));
    }
    if let Some(software) = want.software() {
        let reported = status.software_version.trim();
        if !reported.is_empty() && reported != software.upstream() {
            return Err((
                pb::FailureReason::WrongRelease,
                format!("reported healthy on Kubernetes {reported}, expected {}", software.upstream()),
            ));
        }
    }
    Ok(())
}

/// The events node `id` of `rollout` calls for, given its record and
/// whether it is online; updates `meta` with what the node said.
pub fn observe(
    rollout: &Rollout,
    id: &NodeId,
    meta: &mut NodeMeta,
    record: Option<&FleetNode>,
    online: bool,
    now: Millis,
) -> Vec<Event> {
    let Some(entry) = rollout.node(id) else { return Vec::new() };
    let mut events = Vec::new();
    if entry.online != online {
        events.push(Event::NodeOnline { node: id.clone(), online, now });
    }
    let Some(status) = record.and_then(|r| r.last_status.as_ref()) else { return events };
    if meta.generation == 0 || status.rollout_id != rollout.id() || status.generation != meta.generation {
        return events;
    }
    let report = match status.state() {
        pb::NodeState::Downloading => NodeReport::Downloading,
        pb::NodeState::Verifying => NodeReport::Verifying,
        pb::NodeState::Installing => NodeReport::Installing,
        pb::NodeState::Rebooting => NodeReport::Rebooting,
        pb::NodeState::Healthy => {
            let image = rollout.desired_image(id).unwrap_or(&entry.target_image);
            match healthy_on(status, image) {
                Ok(()) => NodeReport::Healthy,
                Err((reason, message)) => {
                    meta.failure_reason = reason as i32;
                    meta.message.clone_from(&message);
                    NodeReport::Failed { reason: message }
                }
            }
        }
        pb::NodeState::Failed | pb::NodeState::RolledBack => {
            let reason = match status.failure_reason() {
                pb::FailureReason::Unspecified if status.state() == pb::NodeState::RolledBack => {
                    pb::FailureReason::FallbackBoot
                }
                pb::FailureReason::Unspecified => pb::FailureReason::Other,
                other => other,
            };
            let message = if status.message.is_empty() {
                format!("the node reported {}", reason.as_str_name())
            } else {
                status.message.clone()
            };
            meta.failure_reason = reason as i32;
            meta.message.clone_from(&message);
            NodeReport::Failed { reason: message }
        }
        pb::NodeState::Idle | pb::NodeState::Unspecified => return events,
    };
    if !matches!(report, NodeReport::Failed { .. }) && !status.message.is_empty() {
        meta.message.clone_from(&status.message);
    }
    events.push(Event::NodeStatus { node: id.clone(), status: report, now });
    events
}

/// Reads the record and session of each of `nodes` and records what they
/// say in the rollout (no decision yet: the caller applies one event or
/// tick after). A node record that does not decode leaves that node where
/// it is.
pub fn record_nodes<'a>(
    loaded: &mut Loaded,
    reader: &KvReader,
    nodes: impl IntoIterator<Item = &'a NodeId>,
    now: Millis,
    pending: &mut Pending,
) -> Result<(), StoreError> {
    for node in nodes {
        let record = match read_node(reader, node.as_str()) {
            Ok(stored) => stored.map(|s| s.record),
            Err(ReadNodeError::Store(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "cannot read a node record");
                None
            }
        };
        let online = match read_session(reader, node.as_str()) {
            Ok(session) => session.is_some(),
            Err(ReadNodeError::Store(e)) => return Err(e),
            Err(_) => false,
        };
        let meta = loaded.meta.entry(node.clone()).or_default();
        for event in observe(&loaded.rollout, node, meta, record.as_ref(), online, now) {
            if let Err(e) = transition::record(loaded, event, pending) {
                tracing::debug!(rollout = %loaded.id(), node = %node, error = %e, "node event refused");
            }
        }
    }
    Ok(())
}
