//! The receiving side of the raft transport: `kairos.raft.v1.RaftService`
//! handing each RPC to the local [`Raft`].

use std::time::Instant;

use kairos_fleet_proto::raft::v1 as pb;
use kairos_fleet_proto::raft::v1::raft_service_server::{RaftService, RaftServiceServer};
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use super::network::ForwardResult;
use super::{answer_encoding, decode, encode, MAX_MESSAGE_BYTES};
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
fn payload<T: serde::de::DeserializeOwned>(rpc: &str, bytes: &[u8], encoding: i32) -> Result<T, Status> {
    decode(bytes, encoding)
        .map_err(|e| Status::invalid_argument(format!("{rpc}: payload is not an openraft message: {e}")))
}

/// Encodes an answer in the request's encoding; returns it with the encoding field.
fn reply<T: Serialize>(rpc: &str, result: &T, encoding: i32) -> Result<(Vec<u8>, i32), Status> {
    let encoding = answer_encoding(encoding);
    let bytes =
        encode(result, encoding).map_err(|e| Status::internal(format!("{rpc}: cannot encode the answer: {e}")))?;
    Ok((bytes, encoding as i32))
}

#[tonic::async_trait]
impl RaftService for RaftRpcService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        authorize_peer(&request)?;
        let encoding = request.get_ref().encoding;
        let rpc = payload("AppendEntries", &request.get_ref().payload, encoding)?;
        let result = self.raft.append_entries(rpc).await;
        let (payload, encoding) = reply("AppendEntries", &result, encoding)?;
        Ok(Response::new(pb::AppendEntriesResponse { payload, encoding }))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        authorize_peer(&request)?;
        let encoding = request.get_ref().encoding;
        let rpc = payload("Vote", &request.get_ref().payload, encoding)?;
        let result = self.raft.vote(rpc).await;
        let (payload, encoding) = reply("Vote", &result, encoding)?;
        Ok(Response::new(pb::VoteResponse { payload, encoding }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::InstallSnapshotRequest>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        authorize_peer(&request)?;
        let encoding = request.get_ref().encoding;
        let rpc = payload("InstallSnapshot", &request.get_ref().payload, encoding)?;
        let result = self.raft.install_snapshot(rpc).await;
        let (payload, encoding) = reply("InstallSnapshot", &result, encoding)?;
        Ok(Response::new(pb::InstallSnapshotResponse { payload, encoding }))
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
        let encoding = request.get_ref().encoding;
        let write = payload("ForwardWrite", &request.get_ref().payload, encoding)?;
        let started = Instant::now();
        let result: ForwardResult = self.raft.client_write(write).await;
        tracing::debug!(replica = self.id, from, ok = result.is_ok(), elapsed = ?started.elapsed(), "forwarded write");
        let (payload, encoding) = reply("ForwardWrite", &result, encoding)?;
        Ok(Response::new(pb::ForwardWriteResponse { payload, encoding }))
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
