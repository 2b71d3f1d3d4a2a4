//! `kairos.fleet.v1.ClusterService`: replication status and membership
//! changes of the control-plane replicas.
//!
//! Status is answered by whichever replica receives it (`from_leader` says
//! whether the progress of the others is the leader's view). AddReplica and
//! RemoveReplica run on the leader; a follower forwards them (see the
//! module docs of [`crate::api`] for the leader hint convention); the
//! leader appends their audit entry once the change is committed.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::audit::{method, Call};
use super::auth::authorize;
use crate::security::Role;
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::cluster_service_client::ClusterServiceClient;
use kairos_fleet_proto::fleet::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::{unavailable, FORWARDED_BY_METADATA, LEADER_METADATA};
use crate::raft::MAX_MESSAGE_BYTES;
use crate::replica::ReplicaClient;
use crate::store::{NodeId, ReplicaNode};

/// How long AddReplica waits for a new learner to catch up with the log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long AddReplica waits for the new replica to say who it is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of a call forwarded to the leader: covers a catch-up.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest accepted replica address (a DNS name plus port).
const MAX_ADDRESS_LEN: usize = 253;

type Metrics = RaftMetrics<NodeId, ReplicaNode>;
type MembershipError = RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>;

/// `ClusterService` of one replica.
#[derive(Clone)]
pub struct ClusterApi {
    client: ReplicaClient,
}

/// Where a leader-only call runs.
enum Route {
    Here,
    Leader(String),
}

impl ClusterApi {
    /// The service answering through `client`'s replica.
    pub fn new(client: ReplicaClient) -> Self {
        ClusterApi { client }
    }

    /// The tonic server wrapper with the replica's message limits.
    pub fn into_server(self) -> ClusterServiceServer<Self> {
        ClusterServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn metrics(&self) -> Metrics {
        self.client.raft().metrics().borrow().clone()
    }

    fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        if self.client.is_leader() {
            return Ok(Route::Here);
        }
        let leader = self.client.leader_hint();
        if request.metadata().contains_key(FORWARDED_BY_METADATA) {
            return Err(unavailable(format!("replica {} is not the leader", self.client.id()), &leader));
        }
        match (leader.id, &leader.addr) {
            (Some(id), Some(addr)) if id != self.client.id() => Ok(Route::Leader(addr.clone())),
            _ => Err(unavailable("no leader to run the membership change", &leader)),
        }
    }

    fn cluster_client(&self, addr: &str) -> Result<ClusterServiceClient<Channel>, Status> {
        let channel = self
            .client
            .peers()
            .channel(addr)
            .map_err(|e| Status::invalid_argument(format!("address: {addr} is not a usable endpoint: {e}")))?;
        Ok(ClusterServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// The call to send to the leader: same message and credentials, marked
    /// as forwarded.
    fn forwarded<T: Clone>(&self, original: &Request<T>) -> Request<T> {
        let mut request = Request::new(original.get_ref().clone());
        if let Some(auth) = original.metadata().get("authorization") {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        request.metadata_mut().insert(FORWARDED_BY_METADATA, MetadataValue::from(self.client.id()));
        request.set_timeout(FORWARD_TIMEOUT);
        request
    }

    /// The leader's answer; a transport failure becomes UNAVAILABLE with the hint.
    fn leader_answer<T>(&self, answer: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        answer.map_err(|status| {
            if status.code() == Code::Unavailable && !status.metadata().contains_key(LEADER_METADATA) {
                unavailable(
                    format!("forwarding to the leader failed: {}", status.message()),
                    &self.client.leader_hint(),
                )
            } else {
                status
            }
        })
    }

    /// Every member as this replica's metrics see it.
    fn replicas(&self, m: &Metrics) -> Vec<pb::Replica> {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let from_leader = m.state == ServerState::Leader;
        let leader_last = m.last_log_index.unwrap_or(0);
        let mut replicas = Vec::new();
        for (&id, node) in membership.nodes() {
            let role = if Some(id) == m.current_leader {
                pb::ReplicaRole::Leader
            } else if !voters.contains(&id) {
                pb::ReplicaRole::Learner
            } else if id == m.id && m.state == ServerState::Candidate {
                pb::ReplicaRole::Candidate
            } else {
                pb::ReplicaRole::Follower
            };
            let (last_log_index, applied_index, reachable, last_contact) = if id == m.id {
                let applied = m.last_applied.map_or(0, |l| l.index);
                (m.last_log_index.unwrap_or(0), applied, true, Some(SystemTime::now()))
            } else {
                let matched = m.replication.as_ref().and_then(|r| r.get(&id)).and_then(|l| l.as_ref());
                let matched = matched.map_or(0, |l| l.index);
                let contact = self.client.peers().contact(id);
                // A follower sends the leader nothing, but hears its heartbeats.
                let reachable = contact.is_some_and(|c| c.reachable) || (!from_leader && Some(id) == m.current_leader);
                (matched, matched, reachable, contact.and_then(|c| c.last_ok))
            };
            replicas.push(pb::Replica {
                replica_id: id,
                address: node.addr.clone(),
                api_address: format!("https://{}", node.addr),
                role: role as i32,
                last_log_index,
                applied_index,
                lag: if from_leader { leader_last.saturating_sub(last_log_index) } else { 0 },
                reachable,
                last_contact: last_contact.map(prost_types::Timestamp::from),
            });
        }
        replicas
    }

    /// Checks that `addr` answers as replica `id` and belongs to no other cluster.
    async fn probe(&self, id: NodeId, addr: &str) -> Result<(), Status> {
        let mut target = self.cluster_client(addr)?;
        let mut call = Request::new(pb::ClusterStatusRequest {});
        call.set_timeout(PROBE_TIMEOUT);
        let status = match tokio::time::timeout(PROBE_TIMEOUT, target.status(call)).await {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!(
                    "cannot reach replica {id} at {addr}: {}; start it (without bootstrap) first, and check the \
                     address and its certificate",
                    e.message()
                )))
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "replica {id} at {addr} did not answer within {PROBE_TIMEOUT:?}"
                )))
            }
        };
        if status.answered_by != id {
            return Err(Status::failed_precondition(format!(
                "address {addr} is replica {}, not replica {id}: check replica_id and address",
                status.answered_by
            )));
        }
        let ours = self.client.id();
        if !status.replicas.is_empty() && !status.replicas.iter().any(|r| r.replica_id == ours) {
            let members: Vec<String> = status.replicas.iter().map(|r| r.replica_id.to_string()).collect();
            return Err(Status::failed_precondition(format!(
                "replica {id} at {addr} belongs to another cluster (members {}); empty its data dir and start it \
                 without bootstrap",
                members.join(", ")
            )));
        }
        Ok(())
    }

    async fn add_here(&self, req: pb::AddReplicaRequest) -> Result<pb::AddReplicaResponse, Status> {
        let (id, addr) = (req.replica_id, req.address.trim().to_owned());
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if let Some(node) = membership.get_node(&id) {
            if node.addr != addr {
                return Err(Status::already_exists(format!(
                    "replica {id} is already a member at {}; remove it first to change its address",
                    node.addr
                )));
            }
            if membership.voter_ids().any(|v| v == id) || req.learner_only {
                let log_index = m.membership_config.log_id().map_or(0, |l| l.index);
                return Ok(pb::AddReplicaResponse { replicas: self.replicas(&m), log_index });
            }
        }
        if let Some((other, _)) = membership.nodes().find(|(other, node)| **other != id && node.addr == addr) {
            return Err(Status::already_exists(format!("address {addr} already belongs to replica {other}")));
        }
        self.probe(id, &addr).await?;
        let raft = self.client.raft();
        let learner = tokio::time::timeout(CATCH_UP_TIMEOUT, raft.add_learner(id, ReplicaNode::new(&addr), true))
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "replica {id} at {addr} did not catch up with the log within {CATCH_UP_TIMEOUT:?}; it stays a \
                     learner: check that it runs and is reachable, then call AddReplica again"
                ))
            })?
            .map_err(|e| self.membership_status(e))?;
        let mut log_index = learner.log_id.index;
        if !req.learner_only {
            let voters = BTreeSet::from([id]);
            let changed = raft
                .change_membership(ChangeMembers::AddVoterIds(voters), false)
                .await
                .map_err(|e| self.membership_status(e))?;
            log_index = changed.log_id.index;
        }
        tracing::info!(id, %addr, learner_only = req.learner_only, log_index, "replica added");
        Ok(pb::AddReplicaResponse { replicas: self.replicas(&self.metrics()), log_index })
    }

    async fn remove_here(&self, req: pb::RemoveReplicaRequest) -> Result<pb::RemoveReplicaResponse, Status> {
        let id = req.replica_id;
        let m = self.metrics();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            let members: Vec<String> = membership.nodes().map(|(id, _)| id.to_string()).collect();
            return Err(Status::not_found(format!("replica {id} is not a member (members: {})", members.join(", "))));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(format!(
                    "replica {id} is the last voter: without it no leader could be elected; add another replica first"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let changed =
            self.client.raft().change_membership(change, false).await.map_err(|e| self.membership_status(e))?;
        tracing::info!(id, log_index = changed.log_id.index, "replica removed");
        Ok(pb::RemoveReplicaResponse { replicas: self.replicas(&self.metrics()), log_index: changed.log_id.index })
    }

    fn membership_status(&self, e: MembershipError) -> Status {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                unavailable("leadership moved during the membership change; retry", &self.client.leader_hint())
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(e))) => {
                Status::aborted(format!("another membership change is in progress ({e}); retry when it completes"))
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                Status::failed_precondition(e.to_string())
            }
            RaftError::Fatal(e) => Status::unavailable(format!("this replica's raft node has stopped: {e}")),
        }
    }
}

/// Checks the fields of an AddReplica call; errors name the field.
fn validate_add(req: &pb::AddReplicaRequest) -> Result<(), Status> {
    if req.replica_id == 0 {
        return Err(Status::invalid_argument("replica_id: must be at least 1 (got 0)"));
    }
    let addr = req.address.trim();
    let port_ok = addr.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if addr.len() > MAX_ADDRESS_LEN || !port_ok {
        return Err(Status::invalid_argument(format!(
            "address: must be host:port of at most {MAX_ADDRESS_LEN} characters (got {:?})",
            req.address
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        authorize(self.client.reader(), &request, Role::Viewer)?;
        let m = self.metrics();
        let committed = self.client.raft().with_raft_state(|st| st.committed.map_or(0, |l| l.index)).await;
        let commit_index = committed.map_err(|e| Status::unavailable(format!("raft has stopped: {e}")))?;
        let leader = self.client.leader_hint();
        Ok(Response::new(pb::ClusterStatusResponse {
            term: m.current_term,
            leader_id: leader.id.unwrap_or(0),
            leader_address: leader.addr.map(|a| format!("https://{a}")).unwrap_or_default(),
            commit_index,
            replicas: self.replicas(&m),
            answered_by: self.client.id(),
            from_leader: m.state == ServerState::Leader,
        }))
    }

    async fn add_replica(
        &self,
        request: Request<pb::AddReplicaRequest>,
    ) -> Result<Response<pb::AddReplicaResponse>, Status> {
        let caller = authorize(self.client.reader(), &request, Role::Admin)?;
        validate_add(request.get_ref())?;
        let r = request.get_ref();
        let summary = format!("replica_id={} address={} learner_only={}", r.replica_id, r.address, r.learner_only);
        let call =
            Call::new(&request, method::ADD_REPLICA, &caller).about(format!("replica/{}", r.replica_id), summary);
        match self.route(&request)? {
            Route::Here => {
                let response = self.add_here(request.into_inner()).await?;
                call.succeeded(&self.client).await;
                Ok(Response::new(response))
            }
            Route::Leader(addr) => {
                let forwarded = self.forwarded(&request);
                self.leader_answer(self.cluster_client(&addr)?.add_replica(forwarded).await)
            }
        }
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::RemoveReplicaResponse>, Status> {
        let caller = authorize(self.client.reader(), &request, Role::Admin)?;
        let id = request.get_ref().replica_id;
        if id == 0 {
            return Err(Status::invalid_argument("replica_id: must be at least 1 (got 0)"));
        }
        let call = Call::new(&request, method::REMOVE_REPLICA, &caller)
            .about(format!("replica/{id}"), format!("replica_id={id}"));
        match self.route(&request)? {
            Route::Here => {
                let response = self.remove_here(request.into_inner()).await?;
                call.succeeded(&self.client).await;
                Ok(Response::new(response))
            }
            Route::Leader(addr) => {
                let forwarded = self.forwarded(&request);
                self.leader_answer(self.cluster_client(&addr)?.remove_replica(forwarded).await)
            }
        }
    }
}
