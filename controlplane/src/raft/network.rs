//! openraft's `RaftNetworkFactory` and `RaftNetwork` over tonic, plus the
//! client side of `ForwardWrite`.
//!
//! [`Peers`] owns one lazily connected TLS [`Channel`] per peer address
//! (one HTTP/2 connection, shared by replication, votes, snapshots and
//! forwarded writes) and remembers when each peer last answered, for
//! `ClusterService.Status`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use kairos_fleet_proto::raft::v1 as pb;
use kairos_fleet_proto::raft::v1::raft_service_client::RaftServiceClient;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RPCTypes, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::{decode, encode, host_of, CodecError, MAX_MESSAGE_BYTES, SEND_ENCODING};
use crate::store::{NodeId, ReplicaNode, Request, TypeConfig};

/// Builds the client TLS configuration for a peer host (the name its
/// certificate must carry); supplied by whoever owns the credentials.
pub type PeerTls = Arc<dyn Fn(&str) -> ClientTlsConfig + Send + Sync>;

/// What `ForwardWrite` answers: the leader's own `client_write` result.
pub type ForwardResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>>;

/// A dead peer must fail fast: replication retries on its own schedule.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings notice a peer that vanished without closing its socket.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What this replica last saw of a peer it sends RPCs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerContact {
    /// Whether the last RPC got an answer (any answer, errors included).
    pub reachable: bool,
    /// When the peer last answered; None if it never did.
    pub last_ok: Option<SystemTime>,
}

/// Channels to the other replicas and what was last seen of them.
pub struct Peers {
    id: NodeId,
    tls: PeerTls,
    channels: Mutex<HashMap<String, Channel>>,
    contacts: Mutex<HashMap<NodeId, PeerContact>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both maps are caches; a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Peers {
    /// Peers of replica `id`, connecting with the TLS configuration `tls` builds.
    pub fn new(id: NodeId, tls: PeerTls) -> Arc<Self> {
        Arc::new(Peers { id, tls, channels: Mutex::default(), contacts: Mutex::default() })
    }

    /// The raft id of this replica.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The channel to `addr` (`host:port`), created on first use. It does
    /// not connect until a call is made, and reconnects by itself.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        if let Some(channel) = lock(&self.channels).get(addr) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config((self.tls)(host_of(addr)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            // Snapshot chunks are megabytes; hyper's default windows are small.
            .http2_adaptive_window(true)
            .connect_lazy();
        // Two callers racing here both build a channel; the first one stored wins.
        Ok(lock(&self.channels).entry(addr.to_owned()).or_insert(channel).clone())
    }

    /// A raft client for `addr` with the message limits every replica uses.
    pub fn raft_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, tonic::transport::Error> {
        Ok(RaftServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// What was last seen of replica `id`; None if no RPC was ever sent to it.
    pub fn contact(&self, id: NodeId) -> Option<PeerContact> {
        lock(&self.contacts).get(&id).copied()
    }

    fn record(&self, id: NodeId, answered: bool) {
        let mut contacts = lock(&self.contacts);
        let contact = contacts.entry(id).or_insert(PeerContact { reachable: false, last_ok: None });
        contact.reachable = answered;
        if answered {
            contact.last_ok = Some(SystemTime::now());
        }
    }

    /// Sends a client write to the leader at `leader_addr` through
    /// `ForwardWrite` and returns the leader's `client_write` result.
    pub async fn forward_write(
        &self,
        leader_addr: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<ForwardResult, ForwardError> {
        let addr = leader_addr.to_owned();
        let mut client =
            self.raft_client(leader_addr).map_err(|source| ForwardError::Channel { addr: addr.clone(), source })?;
        let payload = encode(request, SEND_ENCODING).map_err(|source| ForwardError::Encode { source })?;
        let encoding = SEND_ENCODING as i32;
        let mut call = tonic::Request::new(pb::ForwardWriteRequest { payload, from_replica_id: self.id, encoding });
        call.set_timeout(timeout);
        match client.forward_write(call).await {
            Ok(response) => {
                let response = response.into_inner();
                decode(&response.payload, response.encoding).map_err(|source| ForwardError::Decode { addr, source })
            }
            Err(status) if not_delivered(&status) => Err(ForwardError::NotDelivered { addr, status }),
            Err(status) => Err(ForwardError::Indeterminate { addr, status }),
        }
    }
}

/// Whether a failed call certainly never reached the server's handler.
///
/// tonic reports "could not connect" and HTTP/2 REFUSED_STREAM as
/// UNAVAILABLE, and RaftService itself never answers UNAVAILABLE. The one
/// UNAVAILABLE that may follow a delivered request is an expired HTTP/2
/// keep-alive ping, which hyper words as a keep-alive timeout.
fn not_delivered(status: &Status) -> bool {
    status.code() == Code::Unavailable && !status.message().to_ascii_lowercase().contains("keep-alive")
}

/// Why a forwarded write got no answer from the leader.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request never reached the leader; sending it again is safe.
    #[error("cannot reach the leader at {addr}: {status}")]
    NotDelivered {
        /// The leader's address.
        addr: String,
        /// The transport error.
        status: Status,
    },
    /// The request may or may not have been applied by the leader.
    #[error("forwarding to the leader at {addr} failed after sending the write: {status}")]
    Indeterminate {
        /// The leader's address.
        addr: String,
        /// The transport error.
        status: Status,
    },
    /// The leader's address does not make a usable endpoint.
    #[error("cannot open a channel to {addr}: {source}")]
    Channel {
        /// The leader's address.
        addr: String,
        /// tonic's error.
        source: tonic::transport::Error,
    },
    /// The write could not be encoded (a bug, not a network problem).
    #[error("cannot encode the write: {source}")]
    Encode {
        /// The codec's error.
        source: CodecError,
    },
    /// The leader answered bytes that are not a `ForwardWrite` result.
    #[error("the leader at {addr} answered an undecodable payload: {source}")]
    Decode {
        /// The leader's address.
        addr: String,
        /// The codec's error.
        source: CodecError,
    },
}

/// openraft's network factory: one [`PeerClient`] per replication target.
#[derive(Clone)]
pub struct Network {
    peers: Arc<Peers>,
}

impl Network {
    /// A factory whose clients share the channels of `peers`.
    pub fn new(peers: Arc<Peers>) -> Self {
        Network { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ReplicaNode) -> PeerClient {
        PeerClient { peers: Arc::clone(&self.peers), target, node: node.clone() }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    peers: Arc<Peers>,
    target: NodeId,
    node: ReplicaNode,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, ReplicaNode, RaftError<NodeId, E>>>;

// These helpers build openraft's `RPCError`, the error type `RaftNetwork`
// prescribes; boxing it here would only add an allocation openraft undoes.
#[allow(clippy::result_large_err)]
impl PeerClient {
    fn client<E: std::error::Error>(&self) -> RpcResult<RaftServiceClient<Channel>, E> {
        self.peers.raft_client(&self.node.addr).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    /// A request carrying openraft's deadline, so the peer stops working on
    /// an RPC its sender has given up on.
    fn request<T>(message: T, option: &RPCOption) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(option.hard_ttl());
        request
    }

    fn encode<T: serde::Serialize, E: std::error::Error>(value: &T) -> RpcResult<Vec<u8>, E> {
        encode(value, SEND_ENCODING).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    /// Maps a transport failure; connection failures become `Unreachable`,
    /// which makes openraft back off instead of logging every retry.
    fn failed<T, E: std::error::Error>(&self, status: Status, action: RPCTypes, option: &RPCOption) -> RpcResult<T, E> {
        self.peers.record(self.target, false);
        Err(match status.code() {
            Code::Unavailable => {
                tracing::debug!(target_id = self.target, addr = %self.node.addr, %status, "peer unreachable");
                RPCError::Unreachable(Unreachable::new(&status))
            }
            Code::DeadlineExceeded | Code::Cancelled => RPCError::Timeout(Timeout {
                action,
                id: self.peers.id,
                target: self.target,
                timeout: option.hard_ttl(),
            }),
            _ => {
                tracing::warn!(target_id = self.target, addr = %self.node.addr, %status, ?action, "raft RPC failed");
                RPCError::Network(NetworkError::new(&status))
            }
        })
    }

    /// Decodes the peer's `Result`; its error side is the peer's raft answer.
    fn answered<T, E>(&self, payload: &[u8], encoding: i32) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.peers.record(self.target, true);
        let result: Result<T, RaftError<NodeId, E>> = decode(payload, encoding).map_err(|e| {
            tracing::warn!(target_id = self.target, error = %e, "undecodable raft payload from peer");
            RPCError::Network(NetworkError::new(&e))
        })?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let payload = Self::encode(&rpc)?;
        let call = Self::request(pb::AppendEntriesRequest { payload, encoding: SEND_ENCODING as i32 }, &option);
        match self.client()?.append_entries(call).await {
            Ok(response) => {
                let response = response.into_inner();
                self.answered(&response.payload, response.encoding)
            }
            Err(status) => self.failed(status, RPCTypes::AppendEntries, &option),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let payload = Self::encode(&rpc)?;
        let call = Self::request(pb::InstallSnapshotRequest { payload, encoding: SEND_ENCODING as i32 }, &option);
        match self.client()?.install_snapshot(call).await {
            Ok(response) => {
                let response = response.into_inner();
                self.answered(&response.payload, response.encoding)
            }
            Err(status) => self.failed(status, RPCTypes::InstallSnapshot, &option),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        let payload = Self::encode(&rpc)?;
        let call = Self::request(pb::VoteRequest { payload, encoding: SEND_ENCODING as i32 }, &option);
        match self.client()?.vote(call).await {
            Ok(response) => {
                let response = response.into_inner();
                self.answered(&response.payload, response.encoding)
            }
            Err(status) => self.failed(status, RPCTypes::Vote, &option),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_failures_count_as_not_delivered() {
        assert!(not_delivered(&Status::unavailable("tcp connect error")));
        assert!(!not_delivered(&Status::unavailable("keep-alive timed out")));
        assert!(!not_delivered(&Status::deadline_exceeded("timeout expired")));
        assert!(!not_delivered(&Status::internal("h2 protocol error")));
    }
}
