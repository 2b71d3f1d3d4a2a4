//! One control-plane replica: the replicated store, its raft node, and the
//! gRPC port serving `RaftService`, `ClusterService`, `ReleaseService`,
//! `AdminService`, `FleetService` and gRPC health, with TLS supplied by the caller.
//!
//! ```text
//! Replica::start(config) ──► ReplicaHandle ──shutdown()──► port closed, raft stopped, sled flushed
//!                               │
//!                               └─ client(): ReplicaClient (write / read_linearizable / reader)
//! ```

mod client;
mod server;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;
use tonic_health::server::HealthReporter;

pub use client::{Committed, LeaderHint, ReadError, ReplicaClient, WriteError};
pub use server::{connection_limit, MAX_CALLS_PER_CONNECTION, MAX_CONCURRENT_STREAMS, MAX_CONNECTIONS};

use crate::api::node::Enroller;
use crate::api::release::RegistrySettings;
use crate::api::{AdminApi, ClusterApi, FleetApi, NodeApi, ReleaseApi, RolloutApi};
use crate::engine::{Engine, EngineSettings};
use crate::metrics::{MetricsSource, StreamGauges};
use crate::raft::{Network, PeerTls, Peers, RaftRpcService, SNAPSHOT_CHUNK_BYTES};
use crate::security::NodeIssuer;
use crate::sessions::{SessionSettings, Sessions};
use crate::store::{Access, KvReader, NodeId, Raft, ReplicaNode, Request, Response, Store, StoreError};

/// How long open calls may run on after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long shutdown waits for openraft's tasks to release the store.
const STORE_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Services reported SERVING by gRPC health once raft runs.
const HEALTH_SERVICES: &[&str] = &[
    "",
    "kairos.raft.v1.RaftService",
    "kairos.fleet.v1.ClusterService",
    "kairos.fleet.v1.ReleaseService",
    "kairos.fleet.v1.AdminService",
    "kairos.fleet.v1.NodeService",
    "kairos.fleet.v1.FleetService",
    "kairos.fleet.v1.RolloutService",
];

/// Log entries per AppendEntries RPC.
pub const MAX_PAYLOAD_ENTRIES: u64 = 24;

/// raft timing and log compaction of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTuning {
    /// Leader heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout in milliseconds.
    pub election_min_ms: u64,
    /// Upper bound of the randomized election timeout in milliseconds.
    pub election_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower
    /// catches up from the log instead of receiving a whole snapshot.
    pub snapshot_keep_logs: u64,
}

impl Default for RaftTuning {
    /// etcd's timing (heartbeat 100 ms, elections 0.5–1 s) rather than
    /// openraft's LAN defaults: replicas may sit on edge sites' WAN links.
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_min_ms: 500,
            election_max_ms: 1000,
            snapshot_logs: 5000,
            snapshot_keep_logs: 1000,
        }
    }
}

impl RaftTuning {
    /// The openraft configuration for this tuning.
    pub fn config(&self) -> Result<Config, Box<openraft::ConfigError>> {
        Config {
            cluster_name: "kairos-fleet".to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            // Per-chunk deadline: 1 MiB of JSON over a slow link, not a LAN ping.
            install_snapshot_timeout: self.election_max_ms.max(2_000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            max_in_snapshot_log_to_keep: self.snapshot_keep_logs,
            // openraft bounds AppendEntries by entry count only, and its
            // deadline is one heartbeat interval: a few batch entries
            // (hundreds of KiB each) per RPC keep it far below the message
            // limit and quick to append on a loaded follower.
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Config::default()
        }
        .validate()
        .map_err(Box::new)
    }
}

/// Everything a replica needs to start.
#[derive(Clone)]
pub struct ReplicaConfig {
    /// raft id, at least 1, unique in the cluster and stable for the data dir.
    pub id: NodeId,
    /// Address to bind the gRPC port to.
    pub listen: SocketAddr,
    /// `host:port` other replicas and clients use to reach this one; the
    /// host must be a name in the replica's server certificate.
    pub advertise: String,
    /// Directory of the replica's store.
    pub data_dir: PathBuf,
    /// TLS of the gRPC port.
    pub server_tls: ServerTlsConfig,
    /// Client TLS towards a peer host.
    pub peer_tls: PeerTls,
    /// Initialize a new single-voter cluster if the store has no membership yet.
    pub bootstrap: bool,
    /// raft timing and compaction.
    pub raft: RaftTuning,
    /// Node session timing and batching.
    pub sessions: SessionSettings,
    /// How the rollout engine paces itself.
    pub engine: EngineSettings,
    /// This replica's node-issuing intermediate CA (`node-ca.pem`); without
    /// it the replica enrolls no node (Enroll answers FAILED_PRECONDITION).
    pub node_ca: Option<Arc<NodeIssuer>>,
    /// How SyncReleases reaches registries (plain HTTP only for those listed).
    pub registry: RegistrySettings,
}

impl fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("id", &self.id)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("data_dir", &self.data_dir)
            .field("bootstrap", &self.bootstrap)
            .field("raft", &self.raft)
            .field("node_ca", &self.node_ca.is_some())
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Why a replica could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// A configuration value breaks a rule.
    #[error("invalid replica configuration: {field}: {rule}")]
    Config {
        /// The field.
        field: &'static str,
        /// The rule it broke.
        rule: String,
    },
    /// The raft tuning is inconsistent (e.g. election timeout below heartbeat).
    #[error("invalid raft tuning: {0}")]
    Tuning(#[from] Box<openraft::ConfigError>),
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// tonic refused the TLS configuration or the server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// openraft could not start, or stopped while starting.
    #[error("raft stopped: {0}")]
    Raft(#[from] Box<openraft::error::Fatal<NodeId>>),
    /// openraft refused to initialize the one-voter cluster.
    #[error("cannot initialize a one-voter cluster: {0}")]
    Bootstrap(#[from] Box<RaftError<NodeId, InitializeError<NodeId, ReplicaNode>>>),
    /// openraft's core task ended abnormally during shutdown.
    #[error("raft did not stop cleanly: {0}")]
    RaftStop(#[from] tokio::task::JoinError),
    /// The store stayed open after raft stopped.
    #[error("the store in {} was not released within {STORE_RELEASE_TIMEOUT:?}", .0.display())]
    StoreNotReleased(PathBuf),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(std::io::Error),
}

/// Starts replicas.
pub struct Replica;

impl Replica {
    /// Opens the store, starts raft, serves the gRPC port, and bootstraps a
    /// single-voter cluster when asked to and the store has no membership.
    pub async fn start(config: ReplicaConfig) -> Result<ReplicaHandle, ReplicaError> {
        // Another part of the process may have installed it already; either way ring is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if config.id == 0 {
            return Err(ReplicaError::Config { field: "id", rule: "must be at least 1".into() });
        }
        if config.advertise.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            let rule = format!("must be host:port, got {:?}", config.advertise);
            return Err(ReplicaError::Config { field: "advertise", rule });
        }
        let raft_config = Arc::new(config.raft.config()?);
        // TLS is checked before anything starts, so a bad certificate leaves nothing running.
        let mut builder = server::builder(config.server_tls.clone())?;
        let (log, sm) = Store::open(&config.data_dir)?;
        let reader = sm.reader();
        // Bind before raft starts, so a taken port fails the start, not a later RPC.
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ReplicaError::Bind { addr: config.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| ReplicaError::Bind { addr: config.listen, source })?;

        let peers = Peers::new(config.id, Arc::clone(&config.peer_tls));
        let raft =
            Raft::new(config.id, raft_config, Network::new(Arc::clone(&peers)), log, sm).await.map_err(Box::new)?;
        // Writes wait out about three elections before giving up.
        let retry_budget = Duration::from_millis(config.raft.election_max_ms * 3).max(Duration::from_secs(3));
        let client = ReplicaClient::new(config.id, raft.clone(), reader, peers, retry_budget);

        let sessions = Sessions::start(client.clone(), config.sessions.clone());
        let engine = Engine::start(client.clone(), config.engine.clone());
        // Tells long-lived streams (WatchNodes) to end when shutdown begins.
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let streams = Arc::new(StreamGauges::default());
        let (health, health_service) = tonic_health::server::health_reporter();
        // Server reflection of the public API only (the raft service stays
        // unlisted), in both protocol versions tools speak.
        let reflection_error =
            |e: tonic_reflection::server::Error| ReplicaError::Config { field: "reflection", rule: e.to_string() };
        let described = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(kairos_fleet_proto::FILE_DESCRIPTOR_SET)
        };
        let reflection = described().build_v1().map_err(reflection_error)?;
        let reflection_alpha = described().build_v1alpha().map_err(reflection_error)?;
        // Until raft runs, probes must not send traffic here.
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
        let router = builder
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(RaftRpcService::new(config.id, raft.clone()).into_server())
            .add_service(ClusterApi::new(client.clone()).into_server())
            .add_service(ReleaseApi::new(client.clone()).with_registry(config.registry.clone()).into_server())
            .add_service(AdminApi::new(client.clone()).into_server())
            .add_service(
                NodeApi::new(Enroller::new(client.clone(), config.node_ca.clone()), sessions.clone()).into_server(),
            )
            .add_service(
                FleetApi::new(client.clone())
                    .with_sessions(sessions.clone())
                    .with_shutdown(stopping_rx.clone())
                    .with_stream_gauges(Arc::clone(&streams))
                    .into_server(),
            )
            .add_service(
                RolloutApi::new(client.clone())
                    .with_shutdown(stopping_rx)
                    .with_stream_gauges(Arc::clone(&streams))
                    .into_server(),
            );
        let server = server::ServerTask::spawn(router, listener);
        let handle = ReplicaHandle {
            client,
            sessions,
            engine,
            server,
            health,
            stopping,
            local_addr,
            data_dir: config.data_dir,
            streams,
        };

        if config.bootstrap {
            if let Err(e) = bootstrap(&raft, config.id, &config.advertise).await {
                // Leave nothing running (and the data dir unlocked) behind a failed start.
                if let Err(stop) = handle.shutdown().await {
                    tracing::warn!(error = %stop, "stopping after a failed bootstrap");
                }
                return Err(e);
            }
        }
        set_health(&handle.health, tonic_health::ServingStatus::Serving).await;
        tracing::info!(id = config.id, %local_addr, advertise = %config.advertise, "replica started");
        Ok(handle)
    }
}

/// Initializes a one-voter cluster unless raft already has state.
async fn bootstrap(raft: &Raft, id: NodeId, advertise: &str) -> Result<(), ReplicaError> {
    let initialized = raft.is_initialized().await.map_err(Box::new)?;
    if initialized {
        return Ok(());
    }
    match raft.initialize(BTreeMap::from([(id, ReplicaNode::new(advertise))])).await {
        // NotAllowed: a vote or log appeared meanwhile (e.g. another replica
        // added us); the cluster exists, which is what bootstrap wants.
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(Box::new(e).into()),
    }
}

async fn set_health(health: &HealthReporter, status: tonic_health::ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(*service, status).await;
    }
}

/// A running replica.
pub struct ReplicaHandle {
    client: ReplicaClient,
    sessions: Sessions,
    engine: Engine,
    server: server::ServerTask,
    health: HealthReporter,
    stopping: tokio::sync::watch::Sender<bool>,
    local_addr: SocketAddr,
    data_dir: PathBuf,
    streams: Arc<StreamGauges>,
}

impl ReplicaHandle {
    /// The local raft node.
    pub fn raft(&self) -> &Raft {
        self.client.raft()
    }

    /// Local (possibly stale) reads of the applied state.
    pub fn reader(&self) -> &KvReader {
        self.client.reader()
    }

    /// The address the gRPC port is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node sessions this replica holds.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The statuses of this replica's `grpc.health.v1` service, for a
    /// second port serving them (see [`crate::health_port`]).
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// What `/metrics` reads: this replica's raft, state, sessions and streams.
    pub fn metrics_source(&self) -> MetricsSource {
        MetricsSource::new(self.client.clone(), self.sessions.clone(), Arc::clone(&self.streams))
    }

    /// Writes and linearizable reads through this replica.
    pub fn client(&self) -> &ReplicaClient {
        &self.client
    }

    /// Proposes `request` through the leader; see [`ReplicaClient::write_entry`].
    pub async fn write(&self, request: Request) -> Result<Response, WriteError> {
        self.client.write(request).await
    }

    /// Confirms local reads are linearizable; see [`ReplicaClient::read_linearizable`].
    pub async fn read_linearizable(&self) -> Result<u64, ReadError> {
        self.client.read_linearizable().await
    }

    /// Stops the replica: health turns NOT_SERVING, the port stops accepting
    /// and open calls get a few seconds to finish, raft shuts down, and the
    /// call returns once sled has flushed and released the data dir (so the
    /// same dir can be reopened at once, in this process or another).
    pub async fn shutdown(self) -> Result<(), ReplicaError> {
        let ReplicaHandle { client, sessions, engine, server, health, stopping, local_addr, data_dir, streams: _ } =
            self;
        let started = Instant::now();
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
        // Streams end now rather than hold the port open for the grace period.
        stopping.send_replace(true);
        sessions.stop();
        engine.stop();
        let served = server.stop(SHUTDOWN_GRACE).await;
        let raft = client.raft().clone();
        let stopped = raft.shutdown().await.map_err(ReplicaError::from);
        // Our reader and raft handles keep sled open; openraft's tasks drop
        // theirs as they finish.
        drop((client, raft, sessions, engine));
        wait_store_released(&data_dir).await?;
        tracing::info!(%local_addr, elapsed = ?started.elapsed(), "replica stopped");
        served?;
        stopped
    }
}

/// Waits until sled's lock on `data_dir` is free. Dropping the last handle
/// of a sled database flushes it; proving the lock free (by opening and
/// closing the store) is the only way to see that from outside.
async fn wait_store_released(data_dir: &std::path::Path) -> Result<(), ReplicaError> {
    let deadline = Instant::now() + STORE_RELEASE_TIMEOUT;
    loop {
        match Store::open(data_dir) {
            Ok(pair) => {
                drop(pair);
                return Ok(());
            }
            Err(StoreError::Sled { access: Access::Open, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(StoreError::Sled { access: Access::Open, .. }) => {
                return Err(ReplicaError::StoreNotReleased(data_dir.to_path_buf()))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for SIGTERM or SIGINT; an error when the handlers cannot be
/// installed (then nothing could stop the caller cleanly later: stop now).
pub async fn wait_for_signal() -> Result<(), ReplicaError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ReplicaError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ReplicaError::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    Ok(())
}
