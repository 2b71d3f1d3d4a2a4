//! The receiving side of the raft transport: `kairos.raft.v1.RaftService`
//! handing each RPC to the local [`Raft`].

use std::time::Instant;

use kairos_fleet_proto::raft::v1 as pb;
use kairos_fleet_proto::raft::v1::raft_service_server::{RaftService, RaftServiceServer};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::network::ForwardResult;
use super::{decode, encode, MAX_MESSAGE_BYTES};
use crate::security::{peer_identity, PeerIdentity};
use crate::store::{NodeId, Raft};

/// Decides whether the caller may use the replica-only raft RPCs: only a
/// peer presenting a replica certificate of our CA (the TLS layer already
/// checked the chain) may append entries, vote, install snapshots or
/// forward writes. Operators and nodes are answered PERMISSION_DENIED.
pub fn authorize_peer<T>(request: &Request<T>) -> Result<(), Status> {
    match peer_identity(request) {
        Some(PeerIdentity::Replica(_)) => Ok(()),
        Some(other) => Err(Status::permission_denied(format!(
            "the raft service is for replicas only; the caller's certificate is {other:?}"
        ))),
        None => Err(Status::permission_denied(
            "the raft service is for replicas only: present a replica certificate issued by this cluster's CA",
        )),
    }
}

/// `RaftService` of one replica.
#[derive(Clone)]
pub struct RaftRpcService {
    id: NodeId,
    raft: Raft,
}

impl RaftRpcService {
    /// The service of replica `id`, delivering to `raft`.
    pub fn new(id: NodeId, raft: Raft) -> Self {
        RaftRpcService { id, raft }
    }

    /// The tonic server wrapper with the replica's message limits.
    pub fn into_server(self) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Decodes a request payload; a payload that does not decode is the
/// caller's fault (a foreign or incompatible build), hence INVALID_ARGUMENT.
fn payload<T: serde::de::DeserializeOwned>(rpc: &str, bytes: &[u8]) -> Result<T, Status> {
    decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("{rpc}: payload is not a serde_json openraft message: {e}")))
}

fn reply<T: Serialize>(rpc: &str, result: &T) -> Result<Vec<u8>, Status> {
    encode(result).map_err(|e| Status::internal(format!("{rpc}: cannot encode the answer: {e}")))
}

#[tonic::async_trait]
impl RaftService for RaftRpcService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        authorize_peer(&request)?;
        let rpc = payload("AppendEntries", &request.get_ref().payload)?;
        let result = self.raft.append_entries(rpc).await;
        Ok(Response::new(pb::AppendEntriesResponse { payload: reply("AppendEntries", &result)? }))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        authorize_peer(&request)?;
        let rpc = payload("Vote", &request.get_ref().payload)?;
        let result = self.raft.vote(rpc).await;
        Ok(Response::new(pb::VoteResponse { payload: reply("Vote", &result)? }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        authorize_peer(&request)?;
        let rpc = payload("InstallSnapshot", &request.get_ref().payload)?;
        let result = self.raft.install_snapshot(rpc).await;
        Ok(Response::new(pb::InstallSnapshotResponse { payload: reply("InstallSnapshot", &result)? }))
    }

    /// Runs a follower's client write here. A replica that is not the
    /// leader (any more) answers ForwardToLeader inside the payload and
    /// never forwards again, so a write cannot loop between replicas.
    async fn forward_write(
        &self,
        request: Request<pb::ForwardWriteRequest>,
    ) -> Result<Response<pb::ForwardWriteResponse>, Status> {
        authorize_peer(&request)?;
        let from = request.get_ref().from_replica_id;
        let write = payload("ForwardWrite", &request.get_ref().payload)?;
        let started = Instant::now();
        let result: ForwardResult = self.raft.client_write(write).await;
        tracing::debug!(replica = self.id, from, ok = result.is_ok(), elapsed = ?started.elapsed(), "forwarded write");
        Ok(Response::new(pb::ForwardWriteResponse { payload: reply("ForwardWrite", &result)? }))
    }

    /// Not implemented: openraft 0.9's chunked InstallSnapshot carries
    /// snapshots, and the proto tells senders to fall back to it.
    async fn stream_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::StreamSnapshotResponse>, Status> {
        authorize_peer(&request)?;
        Err(Status::unimplemented("StreamSnapshot is not implemented; send snapshots with InstallSnapshot chunks"))
    }
}
