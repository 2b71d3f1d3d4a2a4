//! Writing to and reading from the replicated store from any replica:
//! writes go to the leader (locally or through `ForwardWrite`), reads are
//! local, and linearizable reads confirm freshness first.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::ClientWriteResponse;

use crate::raft::{ForwardError, Peers};
use crate::store::{KvReader, NodeId, Raft, ReplicaNode, Request, Response, TypeConfig};

/// Pause between attempts while a leader is being elected.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Upper bound of one write's wait for commit, locally or on the leader.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who this replica believes leads the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's raft id, if one is known.
    pub id: Option<NodeId>,
    /// The leader's advertised `host:port`, if known.
    pub addr: Option<String>,
}

impl LeaderHint {
    fn from_forward(f: &ForwardToLeader<NodeId, ReplicaNode>) -> Self {
        LeaderHint { id: f.leader_id, addr: f.leader_node.as_ref().map(|n| n.addr.clone()) }
    }
}

impl fmt::Display for LeaderHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.id, &self.addr) {
            (Some(id), Some(addr)) => write!(f, "replica {id} at {addr}"),
            (Some(id), None) => write!(f, "replica {id} (address unknown)"),
            (None, _) => f.write_str("no leader known"),
        }
    }
}

/// A write that the leader committed and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Raft log index of the entry; wait for this index to read the write locally.
    pub log_index: u64,
    /// The state machine's answer.
    pub response: Response,
}

/// Why a write did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// No leader accepted the write within the retry budget (election in
    /// progress, leader unreachable, or no quorum).
    #[error("no leader accepted the write within {waited:?}; last known leader: {last_known}")]
    NoLeader {
        /// The last leader this replica heard of.
        last_known: LeaderHint,
        /// How long the write kept retrying.
        waited: Duration,
    },
    /// The write reached a leader, but its outcome is unknown: it may or
    /// may not be applied. Retry only if the write is idempotent.
    #[error("outcome of the write is unknown ({reason}); leader: {leader}")]
    Indeterminate {
        /// The leader it was sent to.
        leader: LeaderHint,
        /// What went wrong after sending.
        reason: String,
    },
    /// raft refused the change (e.g. a membership change is in progress).
    #[error("raft refused the write: {reason}")]
    Rejected {
        /// raft's reason.
        reason: String,
    },
    /// The local raft node has stopped (shutdown or a storage failure).
    #[error("this replica's raft node has stopped: {reason}")]
    Stopped {
        /// openraft's fatal error.
        reason: String,
    },
}

impl WriteError {
    /// The leader hint the error carries, for the caller's UNAVAILABLE answer.
    pub fn leader(&self) -> Option<&LeaderHint> {
        match self {
            WriteError::NoLeader { last_known, .. } => Some(last_known),
            WriteError::Indeterminate { leader, .. } => Some(leader),
            WriteError::Rejected { .. } | WriteError::Stopped { .. } => None,
        }
    }
}

/// Why a linearizable read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Freshness could not be confirmed: no leader, or no quorum.
    #[error("cannot confirm a linearizable read: {reason}; last known leader: {leader}")]
    NoLeader {
        /// The last leader this replica heard of.
        leader: LeaderHint,
        /// What failed.
        reason: String,
    },
    /// The local state machine did not reach the read index in time.
    #[error("this replica did not apply up to log index {index} within {waited:?}")]
    Lagging {
        /// The index the read must see.
        index: u64,
        /// How long it waited.
        waited: Duration,
    },
    /// The local raft node has stopped.
    #[error("this replica's raft node has stopped: {reason}")]
    Stopped {
        /// openraft's fatal error.
        reason: String,
    },
}

/// Access to the replicated store through one replica; cheap to clone.
#[derive(Clone)]
pub struct ReplicaClient {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    reader: KvReader,
    peers: Arc<Peers>,
    retry_budget: Duration,
}

impl ReplicaClient {
    /// A client of replica `id`; writes keep retrying for `retry_budget`
    /// while no leader can take them.
    pub fn new(id: NodeId, raft: Raft, reader: KvReader, peers: Arc<Peers>, retry_budget: Duration) -> Self {
        ReplicaClient { inner: Arc::new(Inner { id, raft, reader, peers, retry_budget }) }
    }

    /// This replica's raft id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The local raft node.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Local (possibly stale) reads of the applied state.
    pub fn reader(&self) -> &KvReader {
        &self.inner.reader
    }

    /// Channels to the other replicas.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.inner.peers
    }

    /// Whether this replica currently believes it is the leader.
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.current_leader == Some(self.inner.id) && m.state == openraft::ServerState::Leader
    }

    /// The leader as this replica's raft metrics know it.
    pub fn leader_hint(&self) -> LeaderHint {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let addr = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).map(|n: &ReplicaNode| n.addr.clone()));
        LeaderHint { id: m.current_leader, addr }
    }

    /// Proposes `request` and returns the state machine's answer.
    pub async fn write(&self, request: Request) -> Result<Response, WriteError> {
        self.write_entry(request).await.map(|c| c.response)
    }

    /// Proposes `request` through the leader and returns its log index and answer.
    ///
    /// On a follower the write is forwarded with `ForwardWrite`. While an
    /// election is in progress, or the leader cannot be connected to, it
    /// retries every 100 ms for the retry budget. It is never re-sent after
    /// it may have reached a leader, so a non-idempotent write is not
    /// applied twice; that case is [`WriteError::Indeterminate`].
    pub async fn write_entry(&self, request: Request) -> Result<Committed, WriteError> {
        let started = Instant::now();
        let mut last_known = self.leader_hint();
        loop {
            let local = tokio::time::timeout(WRITE_TIMEOUT, self.inner.raft.client_write(request.clone())).await;
            let forward = match local {
                Ok(Ok(written)) => return Ok(committed(written)),
                Ok(Err(e)) => classify(e)?,
                Err(_elapsed) => {
                    return Err(WriteError::Indeterminate {
                        leader: self.leader_hint(),
                        reason: format!("not committed within {WRITE_TIMEOUT:?}"),
                    })
                }
            };
            last_known = LeaderHint::from_forward(&forward).or(last_known);
            if let (Some(leader), Some(node)) = (forward.leader_id, &forward.leader_node) {
                if leader != self.inner.id {
                    match self.inner.peers.forward_write(&node.addr, &request, WRITE_TIMEOUT).await {
                        Ok(Ok(written)) => return Ok(committed(written)),
                        Ok(Err(e)) => {
                            let moved = classify(e).map_err(|e| indeterminate_on_leader(e, &last_known))?;
                            last_known = LeaderHint::from_forward(&moved).or(last_known);
                        }
                        Err(ForwardError::NotDelivered { addr, status }) => {
                            tracing::debug!(%addr, %status, "leader not reachable; retrying the write");
                        }
                        Err(e) => return Err(WriteError::Indeterminate { leader: last_known, reason: e.to_string() }),
                    }
                }
            }
            if started.elapsed() >= self.inner.retry_budget {
                return Err(WriteError::NoLeader { last_known, waited: started.elapsed() });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Confirms that local reads now see every write acknowledged before
    /// this call, and returns the log index they are at least at.
    ///
    /// On the leader this is openraft's `ensure_linearizable` (a heartbeat
    /// round to a quorum). On a follower or learner it proposes an empty
    /// transaction through the leader (a read barrier: it changes no key and
    /// no revision) and waits until this replica has applied it. That costs
    /// one log entry, but serves the read here instead of sending the
    /// client away; raft.proto has no read-index RPC to do it cheaper.
    pub async fn read_linearizable(&self) -> Result<u64, ReadError> {
        let confirm = tokio::time::timeout(WRITE_TIMEOUT, self.inner.raft.ensure_linearizable()).await;
        let reason = match confirm {
            Ok(Ok(read_log_id)) => return Ok(read_log_id.map_or(0, |id| id.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => return self.read_barrier().await,
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => e.to_string(),
            Ok(Err(RaftError::Fatal(e))) => return Err(ReadError::Stopped { reason: e.to_string() }),
            Err(_elapsed) => format!("no quorum answered within {WRITE_TIMEOUT:?}"),
        };
        Err(ReadError::NoLeader { leader: self.leader_hint(), reason })
    }

    async fn read_barrier(&self) -> Result<u64, ReadError> {
        let barrier = self.write_entry(Request::batch(Vec::new())).await.map_err(|e| match e {
            WriteError::Stopped { reason } => ReadError::Stopped { reason },
            other => ReadError::NoLeader {
                leader: other.leader().cloned().unwrap_or_else(|| self.leader_hint()),
                reason: other.to_string(),
            },
        })?;
        self.wait_applied(barrier.log_index, WRITE_TIMEOUT).await?;
        Ok(barrier.log_index)
    }

    /// Waits until this replica has applied log index `index`, so local
    /// reads see the write committed there.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ReadError> {
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read waits for the local state machine")
            .await
            .map(drop)
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => ReadError::Lagging { index, waited: timeout },
                openraft::metrics::WaitError::ShuttingDown => {
                    ReadError::Stopped { reason: "raft is shutting down".to_owned() }
                }
            })
    }
}

impl LeaderHint {
    /// This hint if it names a leader, otherwise `fallback`.
    fn or(self, fallback: LeaderHint) -> LeaderHint {
        if self.id.is_some() {
            self
        } else {
            fallback
        }
    }
}

fn committed(written: ClientWriteResponse<TypeConfig>) -> Committed {
    Committed { log_index: written.log_id.index, response: written.data }
}

/// Splits a `client_write` error into "ask the leader" (`Ok`) and final errors.
fn classify(
    e: RaftError<NodeId, ClientWriteError<NodeId, ReplicaNode>>,
) -> Result<ForwardToLeader<NodeId, ReplicaNode>, WriteError> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => Ok(forward),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Err(WriteError::Rejected { reason: e.to_string() })
        }
        RaftError::Fatal(e) => Err(WriteError::Stopped { reason: e.to_string() }),
    }
}

/// A leader whose raft stopped while handling the write may have
/// appended it already, so its outcome is unknown.
fn indeterminate_on_leader(e: WriteError, leader: &LeaderHint) -> WriteError {
    match e {
        WriteError::Stopped { reason } => {
            WriteError::Indeterminate { leader: leader.clone(), reason: format!("the leader stopped: {reason}") }
        }
        other => other,
    }
}
