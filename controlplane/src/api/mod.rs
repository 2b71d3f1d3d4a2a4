//! The public gRPC services (`kairos.fleet.v1`) served by every replica.
//! Thin: validate, translate, and call the replicated store through a
//! [`ReplicaClient`](crate::replica::ReplicaClient).
//!
//! # Leader hint convention
//!
//! A call that must run on the leader is taken to the leader by the
//! replica that received it: writes through raft's `ForwardWrite`,
//! membership changes by calling the same `ClusterService` method on the
//! leader. Only when that is impossible (no leader known, the leader is
//! unreachable, or a forwarded call reached a replica that is no longer the
//! leader) the answer is UNAVAILABLE; its message names the last known
//! leader, and the `kairos-leader` response metadata carries its
//! `host:port`, so a client can retry there directly.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod fleet;
pub mod node;
pub mod release;
pub mod rollout;

use tonic::metadata::MetadataValue;
use tonic::Status;

pub use admin::AdminApi;
pub use cluster::ClusterApi;
pub use fleet::FleetApi;
pub use node::NodeApi;
pub use release::ReleaseApi;
pub use rollout::RolloutApi;

use crate::replica::{LeaderHint, ReadError, WriteError};

/// Response metadata key holding the leader's `host:port` on UNAVAILABLE.
pub const LEADER_METADATA: &str = "kairos-leader";
/// Request metadata key choosing read consistency for list calls without a
/// `consistency` field: `linearizable` or `local` (the default).
pub const READ_CONSISTENCY_METADATA: &str = "kairos-read-consistency";
/// Request metadata key a replica sets on a call it forwards to the leader;
/// a replica receiving it never forwards again, so calls cannot loop.
pub const FORWARDED_BY_METADATA: &str = "kairos-forwarded-by";

/// UNAVAILABLE with the leader hint in the message and the metadata.
pub fn unavailable(message: impl Into<String>, leader: &LeaderHint) -> Status {
    let mut status = Status::unavailable(format!("{}; leader: {leader}", message.into()));
    if let Some(value) = leader.addr.as_deref().and_then(|addr| MetadataValue::try_from(addr).ok()) {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

/// The gRPC status of a failed write.
pub fn write_status(error: WriteError) -> Status {
    match &error {
        WriteError::NoLeader { last_known, .. } => unavailable(error.to_string(), last_known),
        WriteError::Indeterminate { leader, .. } => unavailable(error.to_string(), leader),
        WriteError::Rejected { .. } => Status::failed_precondition(error.to_string()),
        WriteError::Stopped { .. } => Status::unavailable(error.to_string()),
    }
}

/// The gRPC status of a failed linearizable read.
pub fn read_status(error: ReadError) -> Status {
    match &error {
        ReadError::NoLeader { leader, .. } => unavailable(error.to_string(), leader),
        ReadError::Lagging { .. } | ReadError::Stopped { .. } => Status::unavailable(error.to_string()),
    }
}

/// Whether a read call asks for a linearizable read: its `consistency`
/// field, else the [`READ_CONSISTENCY_METADATA`] metadata.
pub fn wants_linearizable_read<T>(request: &tonic::Request<T>, consistency: i32) -> Result<bool, Status> {
    use kairos_fleet_proto::fleet::v1 as pb;
    match pb::ReadConsistency::try_from(consistency) {
        Ok(pb::ReadConsistency::Linearizable) => Ok(true),
        Ok(pb::ReadConsistency::Local | pb::ReadConsistency::Unspecified) => wants_linearizable(request),
        Err(_) => Err(Status::invalid_argument(format!(
            "consistency: must be READ_CONSISTENCY_LOCAL or READ_CONSISTENCY_LINEARIZABLE, got {consistency}"
        ))),
    }
}

/// Whether a request asks for a linearizable read through
/// [`READ_CONSISTENCY_METADATA`]; an unknown value is INVALID_ARGUMENT.
pub fn wants_linearizable<T>(request: &tonic::Request<T>) -> Result<bool, Status> {
    let Some(value) = request.metadata().get(READ_CONSISTENCY_METADATA) else {
        return Ok(false);
    };
    match value.to_str().map(|v| v.trim().to_ascii_lowercase()) {
        Ok(v) if v == "linearizable" => Ok(true),
        Ok(v) if v == "local" || v.is_empty() => Ok(false),
        _ => Err(Status::invalid_argument(format!(
            "{READ_CONSISTENCY_METADATA} metadata: must be `linearizable` or `local`, got {value:?}"
        ))),
    }
}
