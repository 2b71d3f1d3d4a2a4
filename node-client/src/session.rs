//! The node's session with the control plane: connect, say Hello, resend
//! unacknowledged status updates, take NodeConfig, heartbeat, hand desired
//! state to the upgrader, and reconnect when anything goes wrong.
//!
//! One stream at a time. A stream ends when the server ends it, on any
//! transport error, when no HeartbeatAck arrived within the server's
//! liveness timeout (a half-open connection), or when the upgrader asks
//! for a new one (a reboot). Then the session waits an exponential backoff
//! with full jitter ([`Backoff`]) and tries the next endpoint. Every await
//! that crosses the network has a timeout.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::node_service_client::NodeServiceClient;
use pb::node_message::Body as Out;
use pb::server_message::Body as In;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{interval_at, sleep, sleep_until, timeout, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::hello::HelloSource;
use crate::state::SharedStatusLog;
use crate::upgrader::{Reporter, Upgrader};

mod error;
mod handle;
mod metrics;
mod observer;
mod timing;

pub use error::SessionError;
use handle::Events;
pub use handle::NodeHandle;
pub use metrics::{SessionMetrics, SessionStats};
pub use observer::SessionObserver;
pub use timing::{Backoff, StreamTiming};

/// Largest message either side may send.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Messages queued towards the server before a send waits.
pub const OUTBOUND_QUEUE: usize = 64;
/// Heartbeats remembered while waiting for their acks.
const MAX_OUTSTANDING_HEARTBEATS: usize = 64;
/// How long the server gets to end its side of the stream when the client stops.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a running upgrader may take to stop when the client stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Opens channels to endpoints; the seam that lets tests point the session
/// anywhere. The session bounds the call with its own timeout.
pub trait Transport: Send + Sync + 'static {
    /// A connected channel to `endpoint`.
    fn channel(&self, endpoint: &str) -> impl Future<Output = Result<Channel, SessionError>> + Send;
}

/// Settings of one session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Name in log lines (the node id).
    pub name: String,
    /// Server endpoints, tried in turn.
    pub endpoints: Vec<String>,
    /// Index of the endpoint to try first.
    pub first_endpoint: usize,
    /// Delay between failed attempts.
    pub backoff: Backoff,
    /// A stream that stayed up this long resets the backoff.
    pub stable_after: Duration,
    /// Longest wait for connecting plus the Connect call's response headers.
    pub open_timeout: Duration,
    /// Longest wait for NodeConfig after Hello.
    pub config_timeout: Duration,
    /// Longest wait to queue one message towards the server.
    pub send_timeout: Duration,
}

impl SessionSettings {
    /// Defaults for `endpoints`: start at the first, 0.5 s to 30 s backoff.
    pub fn new(name: impl Into<String>, endpoints: Vec<String>) -> Self {
        SessionSettings {
            name: name.into(),
            endpoints,
            first_endpoint: 0,
            backoff: Backoff::default(),
            stable_after: Duration::from_secs(10),
            open_timeout: Duration::from_secs(15),
            config_timeout: Duration::from_secs(15),
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// The upgrader's run for one generation.
struct Job {
    generation: u64,
    cancel: watch::Sender<Option<String>>,
    done: JoinHandle<()>,
}

/// How a stream ended.
enum StreamEnd {
    Shutdown,
    Restart(Duration),
    Failed { error: SessionError, up_for: Option<Duration> },
}

/// What woke the stream loop.
// One lives on the stack for one turn of the loop; boxing would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Event {
    Shutdown,
    Inbound(Result<Option<pb::ServerMessage>, tonic::Status>),
    Heartbeat,
    Silent,
    Wake,
    ProgressDue,
}

/// One node's session. Build it, then [`run`](Session::run) it.
pub struct Session<T> {
    transport: T,
    settings: SessionSettings,
    hello: Arc<dyn HelloSource>,
    upgrader: Arc<dyn Upgrader>,
    node: NodeHandle,
    metrics: Arc<SessionMetrics>,
    connect_gate: Option<Arc<Semaphore>>,
    observer: Option<Arc<dyn SessionObserver>>,
    job: Option<Job>,
    server_executors: Vec<String>,
    rng: fastrand::Rng,
}

/// A connected stream, before its loop runs.
struct Opened {
    tx: mpsc::Sender<pb::NodeMessage>,
    inbound: Streaming<pb::ServerMessage>,
    config: pb::NodeConfig,
    last_sent_seq: u64,
}

impl<T: Transport> Session<T> {
    /// A session over `transport` reporting through `log`.
    pub fn new(
        transport: T,
        settings: SessionSettings,
        hello: Arc<dyn HelloSource>,
        log: SharedStatusLog,
        upgrader: Arc<dyn Upgrader>,
    ) -> Self {
        let (epoch, _) = watch::channel(0);
        let events =
            Arc::new(Events { wake: Notify::new(), progress: Mutex::new(None), restart: Mutex::new(None), epoch });
        Session {
            transport,
            settings,
            hello,
            upgrader,
            node: NodeHandle { log, events },
            metrics: Arc::new(SessionMetrics::default()),
            connect_gate: None,
            observer: None,
            job: None,
            server_executors: Vec::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// Counts into `metrics` (shared by every virtual node in `simulate`).
    pub fn with_metrics(mut self, metrics: Arc<SessionMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Holds a permit of `gate` while connecting, bounding handshakes in flight.
    pub fn with_connect_gate(mut self, gate: Arc<Semaphore>) -> Self {
        self.connect_gate = Some(gate);
        self
    }

    /// Tells `observer` about streams, desired states and cancels.
    pub fn with_observer(mut self, observer: Arc<dyn SessionObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// A handle for reporting through this session.
    pub fn handle(&self) -> NodeHandle {
        self.node.clone()
    }

    /// Keeps a stream up until `shutdown` turns true (or its sender is dropped).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let count = self.settings.endpoints.len();
        if count == 0 {
            tracing::error!(node = %self.settings.name, "no server endpoints: nothing to connect to");
            return;
        }
        let mut index = self.settings.first_endpoint % count;
        let mut attempt: u32 = 0;
        let mut delay = Duration::ZERO;
        loop {
            if !delay.is_zero() {
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    _ = sleep(delay) => {}
                }
            }
            let endpoint = self.settings.endpoints[index].clone();
            match self.stream(&endpoint, &mut shutdown).await {
                StreamEnd::Shutdown => break,
                StreamEnd::Restart(downtime) => {
                    tracing::info!(node = %self.settings.name, %endpoint, ?downtime, "restarting the stream");
                    attempt = 0;
                    delay = downtime;
                }
                StreamEnd::Failed { error, up_for } => {
                    if up_for.is_some_and(|d| d >= self.settings.stable_after) {
                        attempt = 0;
                    }
                    delay = self.settings.backoff.delay(attempt, &mut self.rng);
                    attempt = attempt.saturating_add(1);
                    index = (index + 1) % count;
                    tracing::warn!(
                        node = %self.settings.name, %error, ?up_for, next = %self.settings.endpoints[index],
                        retry_in = ?delay, "stream failed; reconnecting"
                    );
                }
            }
            self.metrics.count_reconnect();
        }
        self.stop_job().await;
    }

    /// Opens one stream and runs it to its end.
    async fn stream(&mut self, endpoint: &str, shutdown: &mut watch::Receiver<bool>) -> StreamEnd {
        let gate = self.connect_gate.clone();
        let opened = tokio::select! {
            biased;
            _ = stopped(shutdown) => return StreamEnd::Shutdown,
            opened = async {
                let _permit: Option<OwnedSemaphorePermit> = match gate {
                    Some(gate) => gate.acquire_owned().await.ok(),
                    None => None,
                };
                timeout(self.settings.open_timeout + self.settings.config_timeout, self.open(endpoint)).await
            } => opened,
        };
        match opened {
            Ok(Ok(opened)) => {
                let end = self.run_stream(endpoint, opened, shutdown).await;
                if let Some(observer) = &self.observer {
                    let reason = match &end {
                        StreamEnd::Shutdown => "shutdown".to_string(),
                        StreamEnd::Restart(_) => "restart".to_string(),
                        StreamEnd::Failed { error, .. } => error.to_string(),
                    };
                    observer.disconnected(endpoint, &reason);
                }
                end
            }
            Ok(Err(error)) => StreamEnd::Failed { error, up_for: None },
            Err(_) => StreamEnd::Failed {
                error: SessionError::Timeout { endpoint: endpoint.into(), what: "opening the stream" },
                up_for: None,
            },
        }
    }

    /// Connects, sends Hello and the unacknowledged updates, awaits NodeConfig.
    async fn open(&self, endpoint: &str) -> Result<Opened, SessionError> {
        let timed_out = |what| SessionError::Timeout { endpoint: endpoint.to_string(), what };
        let channel = timeout(self.settings.open_timeout, self.transport.channel(endpoint))
            .await
            .map_err(|_| timed_out("connecting"))??;
        let mut client = NodeServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let snapshot = self.node.log.snapshot();
        let mut hello = self.hello.hello()?;
        hello.last_status = snapshot.last_status.clone();
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        // The queue is empty, so Hello is the stream's first message.
        tx.try_send(message(Out::Hello(hello))).map_err(|_| SessionError::Closed { endpoint: endpoint.into() })?;
        let response = timeout(self.settings.open_timeout, client.connect(ReceiverStream::new(rx)))
            .await
            .map_err(|_| timed_out("waiting for the Connect response"))?
            .map_err(|status| rpc_error(endpoint, &status))?;
        let mut inbound = response.into_inner();
        // Everything recorded so far is acknowledged or resent right here.
        let last_sent_seq = snapshot.next_seq.saturating_sub(1);
        for update in snapshot.unacked {
            self.send(endpoint, &tx, Out::Status(update)).await?;
            self.metrics.count_status_sent();
        }
        let first = timeout(self.settings.config_timeout, inbound.message())
            .await
            .map_err(|_| timed_out("waiting for NodeConfig"))?
            .map_err(|status| rpc_error(endpoint, &status))?;
        let config = match first.and_then(|m| m.body) {
            Some(In::Config(config)) => config,
            Some(other) => {
                let rule = format!("the first server message must be NodeConfig, got {}", body_name(&other));
                return Err(SessionError::Protocol { endpoint: endpoint.into(), rule });
            }
            None => return Err(SessionError::Closed { endpoint: endpoint.into() }),
        };
        Ok(Opened { tx, inbound, config, last_sent_seq })
    }

    /// The loop of an open stream.
    async fn run_stream(&mut self, endpoint: &str, opened: Opened, shutdown: &mut watch::Receiver<bool>) -> StreamEnd {
        let Opened { tx, mut inbound, config, mut last_sent_seq } = opened;
        let mut timing = StreamTiming::from_config(&config);
        self.server_executors = config.allowed_executors;
        let _connected = self.metrics.connected();
        if let Some(observer) = &self.observer {
            observer.connected(endpoint, config.replica_id);
        }
        self.node.events.epoch.send_modify(|e| *e += 1);
        tracing::info!(node = %self.settings.name, %endpoint, replica = config.replica_id, ?timing, "stream up");

        let events = Arc::clone(&self.node.events);
        let up_since = Instant::now();
        let mut last_ack = up_since;
        let mut ticker = heartbeat_ticker(timing.heartbeat_interval);
        let mut sequence = 0u64;
        let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::new();
        let mut last_rtt: Option<Duration> = None;
        let mut progress_sent: Option<Instant> = None;
        let failed = |error| StreamEnd::Failed { error, up_for: Some(up_since.elapsed()) };
        loop {
            let liveness_deadline = last_ack + timing.liveness_timeout;
            let progress_pending = events.progress.lock().unwrap_or_else(PoisonError::into_inner).is_some();
            let progress_at = progress_sent.map_or(up_since, |t| t + timing.progress_interval);
            // Checked here as well as through `wake`, so an update recorded
            // while another event was handled is never left unsent.
            let restart_requested = events.restart.lock().unwrap_or_else(PoisonError::into_inner).is_some();
            let event = if self.node.log.last_seq() > last_sent_seq || restart_requested {
                Event::Wake
            } else {
                tokio::select! {
                biased;
                _ = stopped(shutdown) => Event::Shutdown,
                inbound = inbound.message() => Event::Inbound(inbound),
                _ = ticker.tick() => Event::Heartbeat,
                _ = sleep_until(liveness_deadline.into()) => Event::Silent,
                _ = events.wake.notified() => Event::Wake,
                _ = sleep_until(progress_at.into()), if progress_pending => Event::ProgressDue,
                }
            };
            let outcome = match event {
                Event::Shutdown => {
                    self.close(tx, inbound).await;
                    return StreamEnd::Shutdown;
                }
                Event::Silent => {
                    Err(SessionError::Timeout { endpoint: endpoint.into(), what: "waiting for a HeartbeatAck" })
                }
                Event::Inbound(Ok(None)) => Err(SessionError::Closed { endpoint: endpoint.into() }),
                Event::Inbound(Err(status)) => Err(rpc_error(endpoint, &status)),
                Event::Inbound(Ok(Some(message))) => match message.body {
                    Some(In::HeartbeatAck(ack)) => {
                        let now = Instant::now();
                        last_ack = now;
                        if let Some(&(_, sent)) = outstanding.iter().find(|(seq, _)| *seq == ack.sequence) {
                            let rtt = now.saturating_duration_since(sent);
                            last_rtt = Some(rtt);
                            self.metrics.record_heartbeat_ack(rtt);
                        }
                        outstanding.retain(|(seq, _)| *seq > ack.sequence);
                        Ok(())
                    }
                    Some(In::StatusAck(ack)) => self.on_status_ack(ack.seq),
                    Some(In::DesiredState(desired)) => self.on_desired_state(desired),
                    Some(In::Cancel(cancel)) => {
                        self.on_cancel(cancel);
                        Ok(())
                    }
                    Some(In::Config(config)) => {
                        let next = StreamTiming::from_config(&config);
                        if next.heartbeat_interval != timing.heartbeat_interval {
                            ticker = heartbeat_ticker(next.heartbeat_interval);
                        }
                        timing = next;
                        self.server_executors = config.allowed_executors;
                        tracing::info!(node = %self.settings.name, ?timing, "new session settings");
                        Ok(())
                    }
                    None => Ok(()),
                },
                Event::Heartbeat => {
                    sequence += 1;
                    let now = Instant::now();
                    outstanding.push_back((sequence, now));
                    if outstanding.len() > MAX_OUTSTANDING_HEARTBEATS {
                        outstanding.pop_front();
                    }
                    let heartbeat = pb::Heartbeat {
                        sequence,
                        sent_at: Some(prost_types::Timestamp::from(SystemTime::now())),
                        last_round_trip: last_rtt.and_then(|d| prost_types::Duration::try_from(d).ok()),
                    };
                    self.metrics.count_heartbeat_sent();
                    self.send(endpoint, &tx, Out::Heartbeat(heartbeat)).await
                }
                Event::Wake | Event::ProgressDue => {
                    let mut result = Ok(());
                    let (pending, last_seq) = self.node.log.unacked_after(last_sent_seq);
                    // Updates dropped from a full log are never sent; skip past them too.
                    last_sent_seq = last_seq;
                    for update in pending {
                        self.metrics.count_status_sent();
                        result = self.send(endpoint, &tx, Out::Status(update)).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    let due = progress_sent.is_none_or(|t| t.elapsed() >= timing.progress_interval);
                    let progress =
                        if due { events.progress.lock().unwrap_or_else(PoisonError::into_inner).take() } else { None };
                    if let (Ok(()), Some(progress)) = (&result, progress) {
                        progress_sent = Some(Instant::now());
                        result = self.send(endpoint, &tx, Out::Progress(progress)).await;
                    }
                    if result.is_ok() {
                        if let Some(downtime) = events.restart.lock().unwrap_or_else(PoisonError::into_inner).take() {
                            return StreamEnd::Restart(downtime);
                        }
                    }
                    result
                }
            };
            if let Err(error) = outcome {
                return failed(error);
            }
        }
    }

    /// Ends the stream from our side (END_STREAM) and reads what the server
    /// still sends until it ends its side too, within [`CLOSE_GRACE`]; late
    /// StatusAcks still drop their updates.
    async fn close(&self, tx: mpsc::Sender<pb::NodeMessage>, mut inbound: Streaming<pb::ServerMessage>) {
        drop(tx);
        let drain = async {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(In::StatusAck(ack)) = message.body {
                    if let Err(e) = self.on_status_ack(ack.seq) {
                        tracing::warn!(node = %self.settings.name, error = %e, "cannot record a StatusAck");
                    }
                }
            }
        };
        let _ = timeout(CLOSE_GRACE, drain).await;
    }

    /// Queues one message within the send timeout.
    async fn send(&self, endpoint: &str, tx: &mpsc::Sender<pb::NodeMessage>, body: Out) -> Result<(), SessionError> {
        match timeout(self.settings.send_timeout, tx.send(message(body))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SessionError::Closed { endpoint: endpoint.into() }),
            Err(_) => Err(SessionError::Timeout { endpoint: endpoint.into(), what: "sending to the server" }),
        }
    }

    fn on_status_ack(&self, seq: u64) -> Result<(), SessionError> {
        let dropped = self.node.log.acknowledge(seq)?;
        self.metrics.count_statuses_acked(dropped);
        Ok(())
    }

    /// Persists a new generation before acting, so it is acted on at most once.
    fn on_desired_state(&mut self, desired: pb::DesiredState) -> Result<(), SessionError> {
        let generation = desired.generation;
        let new = self.node.log.accept_generation(generation)?;
        if let Some(observer) = &self.observer {
            observer.desired_state(&desired, new);
        }
        if !new {
            tracing::debug!(node = %self.settings.name, generation, "desired state already handled");
            return Ok(());
        }
        tracing::info!(node = %self.settings.name, generation, target = %desired.target_image_ref, "new desired state");
        let (cancel, cancelled) = watch::channel(None);
        let previous = self.job.take();
        if let Some(job) = &previous {
            job.cancel.send_replace(Some(format!("superseded by generation {generation}")));
        }
        let reporter = Reporter::new(self.node.clone(), &desired, self.server_executors.clone(), cancelled);
        let upgrader = Arc::clone(&self.upgrader);
        let done = tokio::spawn(async move {
            if let Some(job) = previous {
                // Keep the old job's cancel sender alive until it has stopped.
                let _ = job.done.await;
            }
            upgrader.apply(desired, reporter).await;
        });
        self.job = Some(Job { generation, cancel, done });
        Ok(())
    }

    fn on_cancel(&self, cancel: pb::Cancel) {
        if let Some(observer) = &self.observer {
            observer.cancel(&cancel);
        }
        match &self.job {
            Some(job) if job.generation == cancel.generation => {
                tracing::info!(node = %self.settings.name, generation = cancel.generation, reason = %cancel.reason, "cancel");
                job.cancel.send_replace(Some(cancel.reason));
            }
            _ => {
                tracing::debug!(node = %self.settings.name, generation = cancel.generation, "cancel of a generation not running")
            }
        }
    }

    /// Tells a running upgrader to stop and gives it [`SHUTDOWN_GRACE`].
    async fn stop_job(&mut self) {
        if let Some(mut job) = self.job.take() {
            job.cancel.send_replace(Some("the node client is stopping".into()));
            if timeout(SHUTDOWN_GRACE, &mut job.done).await.is_err() {
                job.done.abort();
            }
        }
    }
}

fn message(body: Out) -> pb::NodeMessage {
    pb::NodeMessage { body: Some(body) }
}

fn rpc_error(endpoint: &str, status: &tonic::Status) -> SessionError {
    SessionError::Rpc { endpoint: endpoint.into(), code: status.code(), message: status.message().to_string() }
}

fn body_name(body: &In) -> &'static str {
    match body {
        In::DesiredState(_) => "DesiredState",
        In::Cancel(_) => "Cancel",
        In::Config(_) => "NodeConfig",
        In::HeartbeatAck(_) => "HeartbeatAck",
        In::StatusAck(_) => "StatusAck",
    }
}

/// First tick one interval from now; late ticks are not bunched up.
fn heartbeat_ticker(every: Duration) -> tokio::time::Interval {
    let mut ticker = interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// Resolves once shutdown is requested or nobody can request it any more.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
