//! Test fixtures: a CA with replica and client certificates, replicas on
//! loopback ports, TLS clients of the public services, polling helpers.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_controlplane::api::release::RegistrySettings;
use kairos_controlplane::replica::{RaftTuning, Replica, ReplicaConfig, ReplicaHandle};
use kairos_controlplane::sessions::SessionSettings;
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::cluster_service_client::ClusterServiceClient;
use kairos_fleet_proto::fleet::v1::release_service_client::ReleaseServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// A throwaway CA that signs replica and client certificates.
pub struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA (ECDSA P-256).
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "kairos-test-ca");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Pki { ca_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A certificate for `cn`, valid for 127.0.0.1 and localhost, as server and client.
    pub fn identity(&self, cn: &str) -> Identity {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Identity::from_pem(cert.pem(), key.serialize_pem())
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn ca(&self) -> Certificate {
        Certificate::from_pem(&self.ca_pem)
    }

    /// Server TLS of replica `id`: its certificate, client certificates required.
    pub fn server_tls(&self, id: u64) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity(&format!("replica-{id}"))).client_ca_root(self.ca())
    }

    /// Client TLS towards `host` presenting `identity`.
    pub fn client_tls(&self, host: &str, identity: Identity) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.ca()).domain_name(host).identity(identity)
    }
}

/// Timing for tests: production defaults, except snapshots.
pub fn tuning() -> RaftTuning {
    RaftTuning::default()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// One replica's fixed identity: id, port and data dir survive restarts.
#[derive(Clone)]
pub struct Slot {
    pub id: u64,
    pub port: u16,
    pub dir: PathBuf,
}

impl Slot {
    pub fn new(id: u64, root: &Path) -> Self {
        Slot { id, port: free_port(), dir: root.join(format!("replica-{id}")) }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the replica of this slot.
    pub async fn start(&self, pki: &Arc<Pki>, bootstrap: bool, raft: RaftTuning) -> ReplicaHandle {
        self.start_with(pki, bootstrap, raft, SessionSettings::with_heartbeat(Duration::from_millis(500))).await
    }

    /// Starts the replica with these node session settings.
    pub async fn start_with(
        &self,
        pki: &Arc<Pki>,
        bootstrap: bool,
        raft: RaftTuning,
        sessions: SessionSettings,
    ) -> ReplicaHandle {
        self.start_config(self.config(pki, bootstrap, raft, sessions)).await
    }

    /// The configuration `start_with` uses.
    pub fn config(
        &self,
        pki: &Arc<Pki>,
        bootstrap: bool,
        raft: RaftTuning,
        sessions: SessionSettings,
    ) -> ReplicaConfig {
        let peer_identity = pki.identity(&format!("replica-{}", self.id));
        let pki_for_peers = Arc::clone(pki);
        ReplicaConfig {
            id: self.id,
            listen: SocketAddr::from(([127, 0, 0, 1], self.port)),
            advertise: self.addr(),
            data_dir: self.dir.clone(),
            server_tls: pki.server_tls(self.id),
            peer_tls: Arc::new(move |host: &str| pki_for_peers.client_tls(host, peer_identity.clone())),
            bootstrap,
            raft,
            sessions,
            engine: Default::default(),
            node_ca: None,
            registry: RegistrySettings::default(),
        }
    }

    /// Starts the replica of this slot with `config`.
    pub async fn start_config(&self, config: ReplicaConfig) -> ReplicaHandle {
        match Replica::start(config).await {
            Ok(handle) => handle,
            Err(e) => panic!("replica {} did not start: {e}", self.id),
        }
    }
}

/// Session settings for tests that write session records themselves: the
/// reconciler (which removes records of streams nobody holds) stays idle.
pub fn seeded_sessions() -> SessionSettings {
    SessionSettings { reconcile_every: Duration::from_secs(3600), ..SessionSettings::default() }
}

/// A TLS channel of an operator client to `addr`.
pub fn channel(pki: &Pki, addr: &str) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(pki.client_tls("127.0.0.1", pki.identity("operator")))
        .expect("client tls")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

pub fn cluster_client(pki: &Pki, addr: &str) -> ClusterServiceClient<Channel> {
    ClusterServiceClient::new(channel(pki, addr))
}

pub fn release_client(pki: &Pki, addr: &str) -> ReleaseServiceClient<Channel> {
    ReleaseServiceClient::new(channel(pki, addr))
}

/// Polls `check` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `handle` knows a leader and returns its id.
pub async fn leader_of(handle: &ReplicaHandle) -> u64 {
    let raft = handle.raft().clone();
    eventually("a leader", Duration::from_secs(10), || {
        let leader = raft.metrics().borrow().current_leader;
        async move { leader }
    })
    .await
}

/// A v2-grammar core image reference of release v2.4.`patch`.
pub fn image(patch: u32) -> String {
    format!("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.{patch}")
}

/// Lists every release `addr` holds, following pages; `linearizable` sets the metadata.
pub async fn list_all(pki: &Pki, addr: &str, linearizable: bool) -> Result<Vec<pb::Release>, tonic::Status> {
    let mut client = release_client(pki, addr);
    let mut releases = Vec::new();
    let mut page_token = String::new();
    loop {
        let mut request =
            tonic::Request::new(pb::ListReleasesRequest { page_size: 1000, page_token, ..Default::default() });
        if linearizable {
            request.metadata_mut().insert("kairos-read-consistency", "linearizable".parse().expect("ascii"));
        }
        let page = client.list_releases(request).await?.into_inner();
        releases.extend(page.releases);
        if page.next_page_token.is_empty() {
            return Ok(releases);
        }
        page_token = page.next_page_token;
    }
}

/// Adds the release `image_ref` through `addr`.
pub async fn add_release(pki: &Pki, addr: &str, image_ref: &str) -> Result<pb::AddReleaseResponse, tonic::Status> {
    let request = pb::AddReleaseRequest { image_ref: image_ref.to_owned(), ..Default::default() };
    release_client(pki, addr).add_release(request).await.map(tonic::Response::into_inner)
}
