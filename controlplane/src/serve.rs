//! `kairos-controlplane serve`: find (or create) a replica's folder, start
//! the replica, seed the first admin token, join an existing cluster when
//! asked, and run until SIGTERM.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kairos_fleet_proto::fleet::v1::cluster_service_client::ClusterServiceClient;
use kairos_fleet_proto::fleet::v1::AddReplicaRequest;

use tokio::task::JoinHandle;

use crate::api::release::RegistrySettings;
use crate::raft::host_of;
use crate::replica::{self, RaftTuning, Replica, ReplicaConfig, ReplicaError, ReplicaHandle};
use crate::security::bootstrap::{self, InitOptions, ReplicaSpec};
use crate::security::node_ca::NODE_CA_CERT_FILE;
use crate::security::pki::CA_KEY_FILE;
use crate::security::{BootstrapTokens, NodeIssuer, ReplicaConfig as ReplicaFile, ReplicaCredentials, SecurityError};
use crate::sessions::SessionSettings;
use crate::side_port::SidePort;
use crate::store::{Compare, Op, Request};
use crate::{health_port, metrics};

/// Key prefix of operator token records in the replicated state.
pub const TOKENS_PREFIX: &str = "tokens/";

/// Where the embedded default keeps its data when no `--data-dir` is given.
pub const DEFAULT_DATA_DIR: &str = "kairos-data";

/// Why `serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Credentials or replica files are missing or invalid.
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The replica failed to start or stop.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// A flag or file value is not usable.
    #[error("{0}")]
    Invalid(String),
}

/// Options of `serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A replica folder (with `replica.toml`), a folder `init` wrote, or an
    /// empty/new folder to initialise as a single-replica cluster.
    pub data_dir: PathBuf,
    /// Address to bind; defaults to the replica's advertised address.
    pub listen: Option<SocketAddr>,
    /// Which replica of an `init` folder to run.
    pub replica_id: Option<u64>,
    /// Ask this replica (host:port) to add us as a voter once we are up.
    pub join: Option<String>,
    /// raft timing.
    pub raft: RaftTuning,
    /// Node session timing.
    pub sessions: SessionSettings,
    /// Registries (`host[:port]`) SyncReleases may reach over plain HTTP.
    pub registry_plain_http: Vec<String>,
    /// Serve Prometheus metrics over plain HTTP here (`/metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `grpc.health.v1` in plain text here, for probes without TLS.
    pub health_listen: Option<SocketAddr>,
}

/// A started replica and, when asked for, its metrics server.
pub struct Started {
    /// The replica.
    pub replica: ReplicaHandle,
    /// The `/metrics` port; it stops when dropped.
    pub metrics: Option<SidePort>,
    /// The plain-text health port; it stops when dropped.
    pub health: Option<SidePort>,
    /// Seeding the bootstrap tokens and joining the cluster; they hold the
    /// replica's client until done.
    background: Vec<JoinHandle<()>>,
}

impl Started {
    /// Stops the background tasks and the metrics port, then the replica
    /// (see [`ReplicaHandle::shutdown`]), then the health port: it answers
    /// `NOT_SERVING` while the replica stops.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let Started { replica, metrics, health, background } = self;
        for task in &background {
            task.abort();
        }
        // An aborted task drops its client only once it has ended.
        for task in background {
            let _ = task.await;
        }
        drop(metrics);
        let stopped = replica.shutdown().await;
        drop(health);
        Ok(stopped?)
    }
}

/// Finds the replica folder `opts` points at; initialises a single-replica
/// cluster when the folder holds nothing yet (the embedded default).
pub fn resolve_replica_dir(opts: &ServeOptions) -> Result<PathBuf, ServeError> {
    let dir = &opts.data_dir;
    if dir.join(bootstrap::REPLICA_CONFIG_FILE).exists() {
        return Ok(dir.clone());
    }
    if dir.join(CA_KEY_FILE).exists() {
        let id = opts.replica_id.unwrap_or(1);
        let replica = bootstrap::replica_dir(dir, id);
        if replica.join(bootstrap::REPLICA_CONFIG_FILE).exists() {
            return Ok(replica);
        }
        return Err(ServeError::Invalid(format!(
            "{} has no replica {id}: pass --replica-id with one of the replica-<id> folders, or --data-dir of a replica folder",
            dir.display()
        )));
    }
    let listen = opts.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7001)));
    let id = opts.replica_id.unwrap_or(1);
    let spec: ReplicaSpec = format!("{id}={listen}").parse().map_err(ServeError::Security)?;
    let report = bootstrap::init_cluster(&InitOptions { data_dir: dir.clone(), replicas: vec![spec], force: false })?;
    tracing::info!(
        dir = %dir.display(),
        admin_token = %dir.join(bootstrap::ADMIN_TOKEN_FILE).display(),
        kairosctl = %dir.join(bootstrap::KAIROSCTL_CONFIG_FILE).display(),
        token_id = %report.admin_token_id,
        "initialised a single-replica cluster"
    );
    Ok(bootstrap::replica_dir(dir, id))
}

/// The replica's node-issuing intermediate CA. A replica folder inside an
/// `init` folder (the embedded default among them) that predates node CAs
/// gets one from the cluster CA next to it; anywhere else a missing one
/// only disables Enroll on this replica, with a warning saying how to fix it.
pub fn load_node_ca(data_dir: &Path, replica_dir: &Path, id: u64) -> Result<Option<Arc<NodeIssuer>>, ServeError> {
    if let Some(issuer) = NodeIssuer::load_if_present(replica_dir)? {
        return Ok(Some(Arc::new(issuer)));
    }
    if data_dir.join(CA_KEY_FILE).exists() && bootstrap::replica_dir(data_dir, id) == replica_dir {
        bootstrap::issue_node_ca(data_dir, id, replica_dir)?;
        let ca = data_dir.display();
        tracing::info!(dir = %replica_dir.display(), "issued this replica's node CA with the cluster CA in {ca}");
        return Ok(Some(Arc::new(NodeIssuer::load(replica_dir)?)));
    }
    tracing::warn!(
        missing = %replica_dir.join(NODE_CA_CERT_FILE).display(),
        "this replica cannot enroll nodes: run `kairos-controlplane issue-node-ca --data-dir <init dir> \
         --replica-id {id}` where the cluster CA key is, copy node-ca.pem and node-ca.key into this folder \
         and restart"
    );
    Ok(None)
}

fn resolve_listen(advertise: &str) -> Result<SocketAddr, ServeError> {
    advertise
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ServeError::Invalid(format!("listen address {advertise:?} does not resolve; pass --listen")))
}

/// Runs a replica until SIGTERM or SIGINT.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let started = start(&opts).await?;
    let signal = replica::wait_for_signal().await;
    started.shutdown().await?;
    Ok(signal?)
}

/// Starts the replica `opts` describe (initialising the embedded default
/// when the folder is new), seeds the bootstrap tokens and joins the
/// cluster when asked, and serves `/metrics` when asked; the caller runs
/// the replica and shuts it down.
pub async fn start(opts: &ServeOptions) -> Result<Started, ServeError> {
    crate::security::install_crypto_provider();
    let dir = resolve_replica_dir(opts)?;
    let file = ReplicaFile::load(&dir)?;
    let creds = Arc::new(ReplicaCredentials::load(&dir)?);
    let listen = match opts.listen {
        Some(addr) => addr,
        None => resolve_listen(&file.listen)?,
    };
    let node_ca = load_node_ca(&opts.data_dir, &dir, file.id)?;
    let peer_creds = Arc::clone(&creds);
    let config = ReplicaConfig {
        id: file.id,
        listen,
        advertise: file.listen.clone(),
        data_dir: dir.clone(),
        server_tls: creds.server_tls(),
        peer_tls: Arc::new(move |host: &str| peer_creds.client_tls(host)),
        bootstrap: file.bootstrap,
        raft: opts.raft,
        sessions: opts.sessions.clone(),
        engine: Default::default(),
        node_ca,
        registry: RegistrySettings::with_plain_http(opts.registry_plain_http.clone()),
    };
    let metrics_listener =
        SidePort::bind("--metrics-listen", opts.metrics_listen).await.map_err(ServeError::Invalid)?;
    let health_listener = SidePort::bind("--health-listen", opts.health_listen).await.map_err(ServeError::Invalid)?;
    let tokens = BootstrapTokens::load(&dir)?;
    tracing::info!(id = file.id, %listen, advertise = %file.listen, dir = %dir.display(), "starting replica");
    let handle = Replica::start(config).await?;
    let servers = (|| {
        let metrics = metrics_listener.map(|l| metrics::serve(l, handle.metrics_source())).transpose();
        let metrics = metrics.map_err(|e| format!("--metrics-listen: {e}"))?;
        let health = health_listener.map(|l| health_port::serve(l, handle.health_reporter())).transpose();
        let health = health.map_err(|e| format!("--health-listen: {e}"))?;
        Ok::<_, String>((metrics, health))
    })();
    let (metrics, health) = match servers {
        Ok(servers) => servers,
        Err(e) => {
            if let Err(stop) = handle.shutdown().await {
                tracing::warn!(error = %stop, "stopping after a side port failed");
            }
            return Err(ServeError::Invalid(e));
        }
    };
    let mut background = Vec::new();
    if let Some(tokens) = tokens {
        background.push(tokio::spawn(seed_tokens(handle.client().clone(), tokens)));
    }
    if let Some(join) = opts.join.clone() {
        let raft = handle.raft().clone();
        background.push(tokio::spawn(join_cluster(Arc::clone(&creds), file.id, file.listen.clone(), join, raft)));
    }
    Ok(Started { replica: handle, metrics, health, background })
}

/// Writes the bootstrap tokens into the replicated state once this replica
/// leads. Each record is written only if its key is absent, so a token
/// revoked later is never brought back by a restart.
async fn seed_tokens(client: replica::ReplicaClient, tokens: BootstrapTokens) {
    loop {
        if client.is_leader() {
            let mut ok = true;
            for record in &tokens.tokens {
                let key = format!("{TOKENS_PREFIX}{}", record.id);
                let value = match serde_json::to_vec(record) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(%e, "encoding a bootstrap token");
                        return;
                    }
                };
                let put = Request::txn(vec![Compare::missing(key.clone())], vec![Op::put(key, value)], vec![]);
                if let Err(e) = client.write(put).await {
                    tracing::warn!(%e, "seeding the bootstrap admin token; will retry");
                    ok = false;
                    break;
                }
            }
            if ok {
                tracing::info!(tokens = tokens.tokens.len(), "bootstrap tokens are in the replicated state");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Asks `join` to add this replica as a voter, retrying with backoff until
/// this replica sees itself in the membership.
async fn join_cluster(
    creds: Arc<ReplicaCredentials>,
    id: u64,
    advertise: String,
    join: String,
    raft: crate::store::Raft,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let is_member = raft.metrics().borrow().membership_config.membership().voter_ids().any(|v| v == id);
        if is_member {
            tracing::info!(%join, "joined the cluster");
            return;
        }
        match add_self(&creds, id, &advertise, &join).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(%join, %e, "joining the cluster; will retry"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn add_self(creds: &ReplicaCredentials, id: u64, advertise: &str, join: &str) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{join}"))
        .map_err(|e| e.to_string())?
        .tls_config(creds.client_tls(host_of(join)))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(60));
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let mut client = ClusterServiceClient::new(channel);
    client
        .add_replica(AddReplicaRequest { replica_id: id, address: advertise.to_string(), ..Default::default() })
        .await
        .map(|_| ())
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::node_ca::NODE_CA_KEY_FILE;

    fn init_one(dir: &Path) {
        let spec: ReplicaSpec = "1=127.0.0.1:7001".parse().expect("spec");
        let opts = InitOptions { data_dir: dir.to_path_buf(), replicas: vec![spec], force: false };
        bootstrap::init_cluster(&opts).expect("init");
    }

    fn remove_node_ca(replica: &Path) {
        for file in [NODE_CA_CERT_FILE, NODE_CA_KEY_FILE] {
            std::fs::remove_file(replica.join(file)).expect("remove");
        }
    }

    #[test]
    fn a_replica_folder_inside_an_init_folder_gets_its_missing_node_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init_one(tmp.path());
        let replica = bootstrap::replica_dir(tmp.path(), 1);
        let loaded = load_node_ca(tmp.path(), &replica, 1).expect("load").expect("from init");
        remove_node_ca(&replica);
        let issued = load_node_ca(tmp.path(), &replica, 1).expect("issue").expect("issued");
        assert_ne!(issued.cert_pem(), loaded.cert_pem(), "a new intermediate");
        assert!(replica.join(NODE_CA_KEY_FILE).exists());
    }

    #[test]
    fn a_lone_replica_folder_without_a_node_ca_serves_without_enrollment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init_one(tmp.path());
        let replica = bootstrap::replica_dir(tmp.path(), 1);
        remove_node_ca(&replica);
        assert!(load_node_ca(&replica, &replica, 1).expect("no error").is_none());
        assert!(!replica.join(NODE_CA_CERT_FILE).exists(), "nothing issued without the CA key");
    }
}
