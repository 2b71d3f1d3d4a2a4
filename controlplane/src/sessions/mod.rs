//! Node sessions: the `Connect` streams a replica holds, kept in memory,
//! and what of them reaches the replicated state.
//!
//! - Heartbeats and download progress stay in this replica's memory.
//! - Connects, disconnects, Hellos and status transitions go to the
//!   [`writer`], which replicates them in batches (many nodes per raft
//!   entry) and acknowledges status updates once they are committed.
//! - The [`watch`] task follows the state machine's change feed and pushes
//!   every new desired state to the node, whichever replica wrote it.
//! - The [`watch`] reconciler repairs session records (a stream that
//!   outlived a race, a record of a replica that stopped answering) and
//!   sends nodes away from a replica that has lost the leader.

pub mod apply;
mod watch;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use pb::node_message::Body as NodeBody;
use pb::server_message::Body as ServerBody;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::auth::now_ms;
use crate::nodes::{check_node_id, read_desired, read_node, timestamp_ms, SessionRecord};
use crate::replica::ReplicaClient;
use crate::security::{peer_identity, PeerIdentity};
use writer::WriteItem;

/// How a replica runs node sessions.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Heartbeat interval told to nodes.
    pub heartbeat_interval: Duration,
    /// A stream with no message for this long is closed (and the node,
    /// without an acknowledgement for this long, reconnects).
    pub liveness_timeout: Duration,
    /// Minimum time between two Progress messages of a node.
    pub progress_interval: Duration,
    /// How long the writer gathers changes before one raft write.
    pub batch_window: Duration,
    /// Most nodes in one raft write.
    pub max_batch_nodes: usize,
    /// The leader forgets the sessions of a replica that has not answered
    /// it for this long.
    pub sweep_after: Duration,
    /// How often session records are reconciled with the streams held.
    pub reconcile_every: Duration,
    /// Time a new stream has to send its Hello.
    pub hello_timeout: Duration,
    /// Messages queued towards one node before it counts as stuck.
    pub outbound_queue: usize,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            heartbeat_interval: Duration::from_secs(10),
            liveness_timeout: Duration::from_secs(30),
            progress_interval: Duration::from_secs(1),
            batch_window: Duration::from_millis(20),
            max_batch_nodes: 500,
            sweep_after: Duration::from_secs(15),
            reconcile_every: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            outbound_queue: 64,
        }
    }
}

impl SessionSettings {
    /// Settings scaled to one heartbeat interval: liveness three intervals,
    /// sweep and reconcile proportional (what `serve --heartbeat-interval`
    /// and the tests use).
    pub fn with_heartbeat(interval: Duration) -> Self {
        let interval = interval.clamp(Duration::from_millis(200), Duration::from_secs(600));
        SessionSettings {
            heartbeat_interval: interval,
            liveness_timeout: interval * 3,
            sweep_after: (interval * 3).max(Duration::from_secs(2)),
            reconcile_every: (interval / 2).max(Duration::from_millis(250)),
            ..SessionSettings::default()
        }
    }
}

/// The outbound half of a node's stream.
type Outbound = mpsc::Sender<Result<pb::ServerMessage, Status>>;

/// A stream this replica holds.
struct Local {
    session: SessionRecord,
    tx: Outbound,
    /// Ends the stream with this status (superseded, replica isolated).
    close: Option<oneshot::Sender<Status>>,
    last_seen_ms: Arc<AtomicU64>,
    progress: Option<pb::Progress>,
    /// Highest desired-state generation sent on this stream.
    pushed_generation: u64,
    /// Store revision of the newest desired-state change offered, so an
    /// older change read later (a lagging feed) never undoes a newer one.
    offered_revision: u64,
}

/// What the replica holding a node's stream knows beyond the replicated state.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveNode {
    /// Replica-local id of the stream.
    pub session_id: u64,
    /// Last message from the node, Unix milliseconds.
    pub last_seen_ms: u64,
    /// Latest download progress, while downloading or verifying.
    pub progress: Option<pb::Progress>,
}

/// The node sessions of one replica; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    client: ReplicaClient,
    stopped: std::sync::atomic::AtomicBool,
    settings: SessionSettings,
    registry: Mutex<HashMap<String, Local>>,
    writes: mpsc::Sender<WriteItem>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long a closing stream waits to queue its final status.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Queue of changes waiting for the writer; a full queue slows new streams
/// down (backpressure) rather than dropping changes.
const WRITE_QUEUE: usize = 100_000;

impl Sessions {
    /// Starts the writer, the desired-state watcher and the reconciler.
    pub fn start(client: ReplicaClient, settings: SessionSettings) -> Sessions {
        let (writes, rx) = mpsc::channel(WRITE_QUEUE);
        let inner = Arc::new(Inner {
            client,
            stopped: std::sync::atomic::AtomicBool::new(false),
            settings,
            registry: Mutex::new(HashMap::new()),
            writes,
            tasks: Mutex::new(Vec::new()),
        });
        let sessions = Sessions { inner };
        let tasks = vec![
            tokio::spawn(writer::run(sessions.clone(), rx)),
            tokio::spawn(watch::push_desired(sessions.clone())),
            tokio::spawn(watch::reconcile(sessions.clone())),
        ];
        *lock(&sessions.inner.tasks) = tasks;
        sessions
    }

    /// Ends every stream and stops the background tasks.
    pub fn stop(&self) {
        // Under the registry lock, so no stream registers after the drain below.
        {
            let _registry = lock(&self.inner.registry);
            self.inner.stopped.store(true, Ordering::SeqCst);
        }
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        let locals: Vec<Local> = lock(&self.inner.registry).drain().map(|(_, l)| l).collect();
        for mut local in locals {
            if let Some(close) = local.close.take() {
                let _ = close.send(Status::unavailable("the replica is shutting down; reconnect to another replica"));
            }
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &SessionSettings {
        &self.inner.settings
    }

    pub(crate) fn client(&self) -> &ReplicaClient {
        &self.inner.client
    }

    /// Number of streams this replica holds.
    pub fn connected(&self) -> usize {
        lock(&self.inner.registry).len()
    }

    /// What this replica knows live about a node whose stream it holds.
    pub fn live(&self, node_id: &str) -> Option<LiveNode> {
        lock(&self.inner.registry).get(node_id).map(|l| LiveNode {
            session_id: l.session.session_id,
            last_seen_ms: l.last_seen_ms.load(Ordering::Relaxed),
            progress: l.progress.clone(),
        })
    }

    /// The session records this replica holds, by node id.
    pub(crate) fn held(&self) -> HashMap<String, SessionRecord> {
        lock(&self.inner.registry).iter().map(|(id, l)| (id.clone(), l.session.clone())).collect()
    }

    /// Ends the stream of `node_id` if it is still `session_id`.
    pub(crate) fn close(&self, node_id: &str, session_id: u64, status: Status) {
        let mut registry = lock(&self.inner.registry);
        if let Some(local) = registry.get_mut(node_id).filter(|l| l.session.session_id == session_id) {
            if let Some(close) = local.close.take() {
                let _ = close.send(status);
            }
        }
    }

    /// Ends the current stream of `node_id`, whichever it is.
    pub(crate) fn close_node(&self, node_id: &str, status: Status) {
        let mut registry = lock(&self.inner.registry);
        if let Some(close) = registry.get_mut(node_id).and_then(|l| l.close.take()) {
            let _ = close.send(status);
        }
    }

    /// Ends every stream with `status`.
    pub(crate) fn close_all(&self, status: &Status) {
        let mut registry = lock(&self.inner.registry);
        for local in registry.values_mut() {
            if let Some(close) = local.close.take() {
                let _ = close.send(status.clone());
            }
        }
    }

    /// Sends `message` to the node's current stream, if this replica holds it.
    pub(crate) fn send(&self, node_id: &str, message: ServerBody) {
        let registry = lock(&self.inner.registry);
        if let Some(local) = registry.get(node_id) {
            // A node that does not read its stream is closed by its own
            // liveness timeout; a full queue drops the acknowledgement,
            // which the node recovers from by resending.
            let _ = local.tx.try_send(Ok(pb::ServerMessage { body: Some(message) }));
        }
    }

    /// Offers the desired state as of store revision `revision` (`None`:
    /// withdrawn) to the node's stream: sent if it is newer than what the
    /// stream has seen. A message that does not fit the node's queue ends
    /// the stream, so the node reconnects and reads it afresh.
    pub(crate) fn offer_desired(&self, node_id: &str, desired: Option<pb::DesiredState>, revision: u64) {
        let mut registry = lock(&self.inner.registry);
        let Some(local) = registry.get_mut(node_id) else { return };
        if revision != 0 && revision <= local.offered_revision {
            return;
        }
        local.offered_revision = local.offered_revision.max(revision);
        let (body, pushed) = match desired {
            Some(d) if d.generation > local.pushed_generation => {
                let generation = d.generation;
                (ServerBody::DesiredState(d), generation)
            }
            // A withdrawn desired state: cancel what was pushed.
            None if local.pushed_generation > 0 => (
                ServerBody::Cancel(pb::Cancel {
                    generation: local.pushed_generation,
                    reason: "the desired state was withdrawn".into(),
                }),
                0,
            ),
            _ => return,
        };
        if local.tx.try_send(Ok(pb::ServerMessage { body: Some(body) })).is_ok() {
            local.pushed_generation = pushed;
        } else if let Some(close) = local.close.take() {
            let _ = close.send(Status::resource_exhausted(
                "the node does not read its stream; reconnect to receive the desired state",
            ));
        }
    }

    /// The node ids whose streams this replica holds.
    pub(crate) fn node_ids(&self) -> Vec<String> {
        lock(&self.inner.registry).keys().cloned().collect()
    }

    async fn queue(&self, item: WriteItem) -> Result<(), Status> {
        self.inner.writes.send(item).await.map_err(|_| Status::unavailable("the replica is shutting down"))
    }

    /// Serves one `Connect` call.
    pub async fn connect(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<ReceiverStream<Result<pb::ServerMessage, Status>>>, Status> {
        let node_id = match peer_identity(&request) {
            Some(PeerIdentity::Node(id)) => id,
            Some(_) => {
                return Err(Status::permission_denied(
                    "Connect needs a node certificate (from Enroll); replica and operator certificates cannot open node sessions",
                ))
            }
            None => {
                return Err(Status::unauthenticated(
                    "Connect needs the node certificate issued by Enroll (mutual TLS); none was presented",
                ))
            }
        };
        check_node_id("node certificate common name", &node_id).map_err(Status::unauthenticated)?;
        let settings = self.inner.settings.clone();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(settings.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no Hello within {:?}", settings.hello_timeout)))??;
        let hello = match first.and_then(|m| m.body) {
            Some(NodeBody::Hello(hello)) => hello,
            _ => return Err(Status::failed_precondition("the first message of a Connect stream must be Hello")),
        };
        let reader = self.inner.client.reader();
        let mut stored = read_node(reader, &node_id).map_err(|e| Status::internal(e.to_string()))?;
        if stored.is_none() {
            // Enrolled through the leader a moment ago: catch up, then look again.
            if self.inner.client.read_linearizable().await.is_ok() {
                stored = read_node(reader, &node_id).map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        let Some(stored) = stored else {
            return Err(Status::failed_precondition(format!(
                "node {node_id} is not enrolled in this fleet (it was removed): enroll it again"
            )));
        };
        // Check the Hello now, so a bad one is refused to the node, not dropped by the writer.
        let mut probe = stored.record.clone();
        apply::apply_hello(&mut probe, &hello, now_ms()).map_err(|e| Status::invalid_argument(e.to_string()))?;

        let session =
            SessionRecord { replica_id: self.inner.client.id(), session_id: random_u64(), connected_at_ms: now_ms() };
        let (tx, rx) = mpsc::channel(settings.outbound_queue);
        let (close_tx, close_rx) = oneshot::channel();
        let last_seen = Arc::new(AtomicU64::new(now_ms()));
        let config = pb::ServerMessage {
            body: Some(ServerBody::Config(pb::NodeConfig {
                heartbeat_interval: prost_types::Duration::try_from(settings.heartbeat_interval).ok(),
                liveness_timeout: prost_types::Duration::try_from(settings.liveness_timeout).ok(),
                progress_interval: prost_types::Duration::try_from(settings.progress_interval).ok(),
                allowed_executors: Vec::new(),
                mirrors: Vec::new(),
                replica_id: self.inner.client.id(),
                server_version: env!("CARGO_PKG_VERSION").to_string(),
            })),
        };
        // The queue is empty: the config always fits.
        let _ = tx.try_send(Ok(config));
        let replaced = {
            let mut registry = lock(&self.inner.registry);
            if self.inner.stopped.load(Ordering::SeqCst) {
                return Err(Status::unavailable("the replica is shutting down; reconnect to another replica"));
            }
            let local = Local {
                session: session.clone(),
                tx: tx.clone(),
                close: Some(close_tx),
                last_seen_ms: Arc::clone(&last_seen),
                progress: None,
                pushed_generation: 0,
                offered_revision: 0,
            };
            registry.insert(node_id.clone(), local)
        };
        if let Some(mut old) = replaced {
            if let Some(close) = old.close.take() {
                let _ = close.send(Status::aborted("superseded by a newer stream of the same node"));
            }
        }
        let queued = self
            .queue(WriteItem::Connect { node_id: node_id.clone(), session: session.clone(), hello: Box::new(hello) })
            .await;
        if let Err(status) = queued {
            let mut registry = lock(&self.inner.registry);
            if registry.get(&node_id).is_some_and(|l| l.session.session_id == session.session_id) {
                registry.remove(&node_id);
            }
            return Err(status);
        }
        // Registered before this read: a desired state written after it is
        // pushed by the watcher, one written before it is found here.
        match read_desired(reader, &node_id) {
            Ok(Some((desired, revision))) => self.offer_desired(&node_id, Some(desired), revision),
            Ok(None) => {}
            Err(e) => tracing::warn!(node = %node_id, error = %e, "reading the desired state"),
        }
        tracing::debug!(node = %node_id, session = session.session_id, "node connected");
        tokio::spawn(self.clone().serve_stream(node_id, session, inbound, tx, close_rx, last_seen));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn serve_stream(
        self,
        node_id: String,
        session: SessionRecord,
        mut inbound: Streaming<pb::NodeMessage>,
        tx: Outbound,
        mut close: oneshot::Receiver<Status>,
        last_seen: Arc<AtomicU64>,
    ) {
        let liveness = self.inner.settings.liveness_timeout;
        let ended: Option<Status> = loop {
            let next = tokio::select! {
                next = tokio::time::timeout(liveness, inbound.message()) => next,
                reason = &mut close => break Some(reason.unwrap_or_else(|_| Status::unavailable("stream closed"))),
                _ = tx.closed() => break None,
            };
            let message = match next {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => break None,
                Ok(Err(status)) => {
                    tracing::debug!(node = %node_id, %status, "node stream failed");
                    break None;
                }
                Err(_) => break Some(Status::deadline_exceeded(format!("no message from the node for {liveness:?}"))),
            };
            last_seen.store(now_ms(), Ordering::Relaxed);
            match message.body {
                Some(NodeBody::Heartbeat(hb)) => {
                    let ack = pb::ServerMessage {
                        body: Some(ServerBody::HeartbeatAck(pb::HeartbeatAck {
                            sequence: hb.sequence,
                            server_time: timestamp_ms(now_ms()),
                        })),
                    };
                    if tx.try_send(Ok(ack)).is_err() {
                        break Some(Status::resource_exhausted("the node does not read its stream"));
                    }
                }
                Some(NodeBody::Progress(progress)) => {
                    let mut registry = lock(&self.inner.registry);
                    if let Some(local) =
                        registry.get_mut(&node_id).filter(|l| l.session.session_id == session.session_id)
                    {
                        local.progress = Some(progress);
                    }
                }
                Some(NodeBody::Status(update)) => {
                    if let Err(e) = apply::check_status(&update) {
                        break Some(Status::invalid_argument(e.to_string()));
                    }
                    if let Err(status) = self.queue(WriteItem::Status { node_id: node_id.clone(), update }).await {
                        break Some(status);
                    }
                }
                Some(NodeBody::Hello(_)) => {
                    break Some(Status::failed_precondition("Hello is sent once, as the first message of a stream"))
                }
                None => break Some(Status::invalid_argument("NodeMessage.body: exactly one message kind is required")),
            }
        };
        if let Some(status) = ended {
            // Wait a moment for room: the reason matters most when the queue is full.
            let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, tx.send(Err(status))).await;
        }
        let ours = {
            let mut registry = lock(&self.inner.registry);
            match registry.get(&node_id) {
                Some(l) if l.session.session_id == session.session_id => registry.remove(&node_id).is_some(),
                _ => false,
            }
        };
        tracing::debug!(node = %node_id, session = session.session_id, superseded = !ours, "node stream ended");
        // The record is removed only if it is still this stream's (guarded
        // by its exact value), so a newer stream elsewhere is never undone.
        let _ = self.queue(WriteItem::Disconnect { node_id, session }).await;
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS random source does not fail on Linux; a zero id would still be unique enough per node.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}
