//! `NodeService.Enroll` on an in-process replica with the TLS `init` gives
//! it (a cluster CA, the replica's certificate and its node CA): tokens
//! refused and spent, node records, audit entries, and the issued chain
//! authenticating to a replica's port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_controlplane::api::admin::{EnrollTokenRecord, ENROLL_TOKEN_PREFIX};
use kairos_controlplane::api::audit::{method, AuditRecord, Outcome, AUDIT_PREFIX};
use kairos_controlplane::api::node::enroll::Enroller;
use kairos_controlplane::fleet::identity::NodeIdentity;
use kairos_controlplane::nodes::{identity_to_pb, node_key, read_node, NodeRecord};
use kairos_controlplane::replica::{Replica, ReplicaConfig, ReplicaHandle};
use kairos_controlplane::security::{
    client_tls_for_operator, generate_token, hash_secret, install_crypto_provider, peer_identity, Ca, NodeIssuer,
    PeerIdentity, ReplicaCredentials,
};
use kairos_controlplane::sessions::SessionSettings;
use kairos_controlplane::store::Request as Write;
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::admin_service_client::AdminServiceClient;
use kairos_fleet_proto::fleet::v1::node_service_client::NodeServiceClient;
use kairos_fleet_proto::fleet::v1::node_service_server::{NodeService, NodeServiceServer};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::common::{free_port, leader_of, tuning};

const UBUNTU_RELEASE: &str = r#"KAIROS_FLAVOR="ubuntu"
KAIROS_FLAVOR_RELEASE="22.04"
KAIROS_VARIANT="standard"
KAIROS_MODEL="generic"
KAIROS_ARCH="amd64"
KAIROS_RELEASE="v2.4.2"
KAIROS_SOFTWARE_VERSION="v1.27.6+k3s1"
KAIROS_SOFTWARE_VERSION_PREFIX="k3s"
KAIROS_IMAGE_REPO="quay.io/kairos/ubuntu:22.04-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1"
"#;
/// An openssl-made CSR with a 1024-bit RSA key (no private key in it).
const RSA_1024_CSR: &str = include_str!("../../src/security/testdata/rsa1024.csr");
const HOUR_MS: u64 = 3_600_000;
/// Every network step of these tests is bounded by this.
const STEP: Duration = Duration::from_secs(10);

/// A single-replica cluster with the credentials `init` would give it.
struct Fleet {
    ca: Ca,
    issuer: Arc<NodeIssuer>,
    handle: ReplicaHandle,
    _dir: tempfile::TempDir,
}

impl Fleet {
    async fn start() -> Fleet {
        install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::generate("Kairos Fleet CA").expect("ca");
        let creds = Arc::new(ReplicaCredentials::issue(&ca, 1, &["127.0.0.1".into()]).expect("replica credentials"));
        let issuer = Arc::new(NodeIssuer::issue(&ca, 1).expect("node ca"));
        let port = free_port();
        let peer = Arc::clone(&creds);
        let config = ReplicaConfig {
            id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            advertise: format!("127.0.0.1:{port}"),
            data_dir: dir.path().join("replica-1"),
            server_tls: creds.server_tls(),
            peer_tls: Arc::new(move |host: &str| peer.client_tls(host)),
            bootstrap: true,
            raft: tuning(),
            sessions: SessionSettings::with_heartbeat(Duration::from_millis(500)),
            engine: Default::default(),
            node_ca: Some(Arc::clone(&issuer)),
            registry: Default::default(),
        };
        let handle = Replica::start(config).await.expect("replica starts");
        assert_eq!(leader_of(&handle).await, 1);
        Fleet { ca, issuer, handle, _dir: dir }
    }

    fn enroller(&self) -> Enroller {
        Enroller::new(self.handle.client().clone(), Some(Arc::clone(&self.issuer)))
    }

    /// Stores an enroll token and returns its record and bootstrap token.
    async fn token(&self, max_uses: u32, labels: &[(&str, &str)], shape: impl FnOnce(&mut EnrollTokenRecord)) -> Token {
        let secret = generate_token().expect("random");
        let now = jiff::Timestamp::now().as_millisecond() as u64;
        let mut record = EnrollTokenRecord {
            id: secret.id().clone(),
            description: "test".into(),
            hash: hash_secret(secret.secret_part()),
            created_at_ms: now,
            expires_at_ms: now + HOUR_MS,
            max_uses,
            uses: 0,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created_by: "test".into(),
            revoked: false,
            revoked_at_ms: None,
        };
        shape(&mut record);
        let value = serde_json::to_vec(&record).expect("encode");
        self.handle.write(Write::put(record.key(), value)).await.expect("token stored");
        let bootstrap = format!("{ENROLL_TOKEN_PREFIX}{}_{}", record.id, secret.secret_part());
        Token { record, bootstrap }
    }

    fn stored_token(&self, token: &Token) -> EnrollTokenRecord {
        let kv = self.handle.reader().get(token.record.key().as_bytes()).expect("read").expect("token exists");
        serde_json::from_slice(&kv.value).expect("decode")
    }

    fn node(&self, machine_id: &str) -> Option<NodeRecord> {
        read_node(self.handle.reader(), machine_id).expect("read").map(|stored| stored.record)
    }

    fn audit(&self) -> Vec<AuditRecord> {
        let entries = self.handle.reader().range(AUDIT_PREFIX.as_bytes(), None, 10_000).expect("read");
        entries.iter().map(|(_, kv)| serde_json::from_slice(&kv.value).expect("audit entry")).collect()
    }

    fn enroll_entries(&self) -> Vec<AuditRecord> {
        self.audit().into_iter().filter(|e| e.method == method::ENROLL).collect()
    }

    /// Shuts the replica down; every [`Enroller`] of it must be dropped
    /// first (each holds the store open).
    async fn stop(self) {
        self.handle.shutdown().await.expect("clean shutdown");
    }
}

struct Token {
    record: EnrollTokenRecord,
    bootstrap: String,
}

fn machine(n: u32) -> String {
    format!("{n:032x}").replace('0', "a")
}

fn identity() -> pb::NodeIdentity {
    identity_to_pb(&NodeIdentity::parse(UBUNTU_RELEASE).expect("release file"), "/etc/kairos-release")
}

/// A request of machine `machine_id` with a fresh P-256 key, and that key.
fn enroll_request(bootstrap: &str, machine_id: &str) -> (pb::EnrollRequest, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("csr pem");
    let request = pb::EnrollRequest {
        bootstrap_token: bootstrap.to_owned(),
        machine_id: machine_id.to_owned(),
        identity: Some(identity()),
        csr_pem: csr,
        hostname: format!("edge-{}", &machine_id[..6]),
    };
    (request, key)
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| CertificateDer::from(p.expect("PEM").contents))
        .collect()
}

/// Verifies a client chain (leaf first) as the replicas' TLS does.
fn verify_chain(root_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for der in ders(root_pem) {
        roots.add(der).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().expect("verifier");
    let chain = ders(chain_pem);
    verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()).map(|_| ())
}

fn assert_refused(result: Result<Response<pb::EnrollResponse>, Status>, code: Code, says: &str) -> Status {
    let status = result.expect_err(says);
    assert_eq!(status.code(), code, "{says}: {status:?}");
    assert!(status.message().contains(says), "expected {says:?} in {:?}", status.message());
    status
}

#[tokio::test]
async fn enrollment_creates_the_node_with_the_token_labels_and_a_chain_to_the_root() {
    let fleet = Fleet::start().await;
    let token = fleet.token(5, &[("site", "berlin"), ("fleet.kairos.io/wave", "2")], |_| {}).await;
    let id = machine(1);
    let (request, _key) = enroll_request(&token.bootstrap, &id);
    let before_ms = jiff::Timestamp::now().as_millisecond() as u64;
    let answer = fleet.enroller().enroll(Request::new(request)).await.expect("enrolled").into_inner();

    assert_eq!(answer.node_id, id);
    assert_eq!(ders(&answer.certificate_chain_pem).len(), 2, "leaf and the replica's intermediate");
    assert_eq!(answer.ca_bundle_pem, fleet.ca.cert_pem());
    verify_chain(&answer.ca_bundle_pem, &answer.certificate_chain_pem).expect("the chain verifies up to the root");
    let port = fleet.handle.local_addr().port();
    assert_eq!(answer.server_endpoints, [format!("https://127.0.0.1:{port}")]);
    let labels: BTreeMap<String, String> = answer.labels.into_iter().collect();
    assert_eq!(labels, token.record.labels);
    let not_after_ms = answer.certificate_not_after.as_ref().map_or(0, |t| t.seconds as u64 * 1000);
    let days = (not_after_ms - before_ms) / (24 * HOUR_MS);
    assert!((364..=365).contains(&days), "valid for a year, got {days} days");

    let record = fleet.node(&id).expect("node record created");
    assert_eq!((record.node_id.as_str(), record.machine_id.as_str()), (id.as_str(), id.as_str()));
    assert_eq!(record.hostname, format!("edge-{}", &id[..6]));
    assert_eq!(record.enrollment_labels, token.record.labels);
    assert_eq!(record.enrolled_with, token.record.id.to_string());
    assert_eq!(record.state, pb::NodeState::Idle as i32);
    assert_eq!(record.boot_state, pb::BootState::Unknown as i32);
    assert_eq!(record.identity, Some(identity()));
    assert_eq!(record.family.as_ref().map(|f| f.flavor.as_str()), Some("ubuntu"));
    assert_eq!(record.certificate_not_after_ms, not_after_ms);
    assert!(record.enrolled_at_ms >= before_ms);
    assert_eq!(fleet.stored_token(&token).uses, 1, "one use spent");

    let entries = fleet.enroll_entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry.outcome, Outcome::Succeeded);
    assert_eq!(entry.actor, format!("enroll-token:{}", token.record.id));
    assert_eq!(entry.target, format!("node/{id}"));
    assert_eq!(entry.status_code, "OK");
    assert!(entry.summary.contains(&format!("machine_id={id}")), "{}", entry.summary);
    let secret = token.bootstrap.rsplit('_').next().expect("secret part");
    assert!(!serde_json::to_string(&fleet.audit()).expect("json").contains(secret), "the secret is never audited");
    fleet.stop().await;
}

#[tokio::test]
async fn re_enrolling_a_known_machine_keeps_its_node_id_and_state_and_refreshes_the_rest() {
    let fleet = Fleet::start().await;
    let first = fleet.token(1, &[("site", "berlin")], |_| {}).await;
    let id = machine(2);
    let (request, _) = enroll_request(&first.bootstrap, &id);
    let before = fleet.enroller().enroll(Request::new(request)).await.expect("enrolled").into_inner();
    let enrolled = fleet.node(&id).expect("record");

    // The node reported progress since; enrollment must not erase it.
    let mut reported = enrolled.clone();
    reported.state = pb::NodeState::Downloading as i32;
    reported.current_image_ref = "quay.io/kairos/ubuntu:22.04-standard-amd64-generic-v2.4.2".into();
    reported.node_labels.insert("rack".into(), "7".into());
    fleet.handle.write(Write::put(node_key(&id), reported.encode())).await.expect("status stored");

    let second = fleet.token(1, &[("site", "hamburg")], |_| {}).await;
    let (mut request, _) = enroll_request(&second.bootstrap, &id);
    request.hostname = "renamed".into();
    let after = fleet.enroller().enroll(Request::new(request)).await.expect("re-enrolled").into_inner();
    assert_eq!(after.node_id, before.node_id, "same machine, same node id");
    assert_ne!(after.certificate_chain_pem, before.certificate_chain_pem, "a new certificate");
    verify_chain(fleet.ca.cert_pem(), &after.certificate_chain_pem).expect("chain");
    assert_eq!(after.labels.get("site").map(String::as_str), Some("hamburg"));

    let record = fleet.node(&id).expect("record");
    assert_eq!(record.state, pb::NodeState::Downloading as i32, "state kept");
    assert_eq!(record.current_image_ref, reported.current_image_ref, "status kept");
    assert_eq!(record.node_labels, reported.node_labels, "the node's own labels kept");
    assert_eq!(record.enrolled_at_ms, enrolled.enrolled_at_ms, "first enrollment time kept");
    assert_eq!(record.hostname, "renamed");
    assert_eq!(record.enrollment_labels.get("site").map(String::as_str), Some("hamburg"));
    assert_eq!(record.enrolled_with, second.record.id.to_string());
    assert_eq!(fleet.stored_token(&second).uses, 1, "re-enrolling spends a use of the new token");
    fleet.stop().await;
}

#[tokio::test]
async fn refused_tokens_are_unauthenticated_say_why_create_no_node_and_are_audited() {
    let fleet = Fleet::start().await;
    let enroller = fleet.enroller();
    let now = jiff::Timestamp::now().as_millisecond() as u64;

    let good = fleet.token(1, &[], |_| {}).await;
    let wrong = format!("{ENROLL_TOKEN_PREFIX}{}_{}", good.record.id, "0".repeat(64));
    let unknown = format!("{ENROLL_TOKEN_PREFIX}0badc0de_{}", "1".repeat(64));
    let expired = fleet.token(5, &[], |r| r.expires_at_ms = now - 1).await;
    let revoked = fleet
        .token(5, &[], |r| {
            r.revoked = true;
            r.revoked_at_ms = Some(now);
        })
        .await;
    let used_up = fleet.token(1, &[], |_| {}).await;
    let (spend, _) = enroll_request(&used_up.bootstrap, &machine(9));
    enroller.enroll(Request::new(spend)).await.expect("the one use");

    let cases = [
        (wrong.as_str(), "wrong secret", Some(&good.record)),
        (unknown.as_str(), "does not exist", None),
        (expired.bootstrap.as_str(), "expired at", Some(&expired.record)),
        (revoked.bootstrap.as_str(), "was revoked", Some(&revoked.record)),
        (used_up.bootstrap.as_str(), "used up (1 of 1 enrollments)", Some(&used_up.record)),
    ];
    for (n, (bootstrap, says, _)) in cases.iter().enumerate() {
        let id = machine(100 + n as u32);
        let (request, _) = enroll_request(bootstrap, &id);
        let status = assert_refused(enroller.enroll(Request::new(request)).await, Code::Unauthenticated, says);
        let secret = bootstrap.rsplit('_').next().expect("secret part");
        assert!(!status.message().contains(secret), "the secret is not echoed: {}", status.message());
        assert!(fleet.node(&id).is_none(), "{says}: no node record");
    }
    assert_eq!(fleet.stored_token(&good).uses, 0, "a wrong secret spends nothing");
    assert_eq!(fleet.stored_token(&expired).uses, 0);
    assert_eq!(fleet.stored_token(&revoked).uses, 0);

    // Refusals of real token ids are audited, with the id and machine id;
    // a made-up id is not (anyone could fill the log with those).
    let denied: Vec<AuditRecord> =
        fleet.enroll_entries().into_iter().filter(|e| e.outcome == Outcome::Denied).collect();
    let audited: Vec<(String, String)> = denied.iter().map(|e| (e.actor.clone(), e.target.clone())).collect();
    let expected: Vec<(String, String)> = cases
        .iter()
        .enumerate()
        .filter_map(|(n, (_, _, record))| {
            record.map(|r| (format!("enroll-token:{}", r.id), format!("node/{}", machine(100 + n as u32))))
        })
        .collect();
    assert_eq!(audited, expected);
    assert!(denied.iter().all(|e| e.status_code == "UNAUTHENTICATED" && !e.error_message.is_empty()), "{denied:?}");
    let log = serde_json::to_string(&fleet.audit()).expect("json");
    for (bootstrap, ..) in &cases {
        assert!(!log.contains(bootstrap.rsplit('_').next().expect("secret")), "no secret in the audit log");
    }
    drop(enroller);
    fleet.stop().await;
}

#[tokio::test]
async fn concurrent_enrollments_never_spend_more_uses_than_a_token_has() {
    let fleet = Fleet::start().await;
    for (uses, callers) in [(1u32, 6u32), (3, 8)] {
        let token = fleet.token(uses, &[], |_| {}).await;
        let base = 1000 * uses;
        let tasks: Vec<_> = (0..callers)
            .map(|n| {
                let enroller = fleet.enroller();
                let (request, _) = enroll_request(&token.bootstrap, &machine(base + n));
                tokio::spawn(async move { enroller.enroll(Request::new(request)).await })
            })
            .collect();
        let mut enrolled = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(_) => enrolled += 1,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                    assert!(status.message().contains("used up"), "{status:?}");
                }
            }
        }
        assert_eq!(enrolled, uses, "{callers} callers on a {uses}-use token");
        assert_eq!(fleet.stored_token(&token).uses, uses);
        let nodes = (0..callers).filter(|n| fleet.node(&machine(base + n)).is_some()).count();
        assert_eq!(nodes, uses as usize, "one node record per enrollment that succeeded");
    }
    fleet.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_naming_the_field() {
    let fleet = Fleet::start().await;
    let enroller = fleet.enroller();
    let token = fleet.token(1, &[], |_| {}).await;
    let id = machine(7);
    let (good, _) = enroll_request(&token.bootstrap, &id);
    type Breaks = fn(&mut pb::EnrollRequest);
    let cases: [(&str, Breaks); 11] = [
        ("machine_id: must be a machine id", |r| r.machine_id = "../../etc/passwd".into()),
        ("machine_id: must be a machine id", |r| r.machine_id = r.machine_id.to_uppercase()),
        ("machine_id: must not be all zeros", |r| r.machine_id = "0".repeat(32)),
        ("identity: required", |r| r.identity = None),
        ("identity.release: KAIROS_RELEASE: release: must be", |r| {
            if let Some(i) = r.identity.as_mut() {
                i.release = "two".into();
            }
        }),
        ("identity.model", |r| {
            if let Some(i) = r.identity.as_mut() {
                i.model = "generic\"\nKAIROS_ARCH=\"arm64".into();
            }
        }),
        ("csr_pem: ", |r| {
            r.csr_pem = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into()
        }),
        ("csr_pem: certificate signing request rejected: RSA keys must have 2048", |r| r.csr_pem = RSA_1024_CSR.into()),
        ("csr_pem: certificate signing request rejected: 16385 bytes, at most 16384", |r| {
            r.csr_pem = "x".repeat(16_385)
        }),
        ("hostname: at most 253 characters", |r| r.hostname = "h".repeat(254)),
        ("bootstrap_token: at most 256 characters", |r| r.bootstrap_token.push_str(&"f".repeat(200))),
    ];
    for (says, breaks) in cases {
        let mut request = good.clone();
        breaks(&mut request);
        assert_refused(enroller.enroll(Request::new(request)).await, Code::InvalidArgument, says);
    }
    assert!(fleet.node(&id).is_none(), "no record from a refused request");
    assert_eq!(fleet.stored_token(&token).uses, 0, "no use spent");
    assert!(fleet.enroll_entries().is_empty(), "input errors are the node's own business");
    enroller.enroll(Request::new(good)).await.expect("the unbroken request enrolls");
    drop(enroller);
    fleet.stop().await;
}

#[tokio::test]
async fn without_a_node_ca_enroll_is_a_failed_precondition_saying_how_to_fix_it() {
    let fleet = Fleet::start().await;
    let token = fleet.token(1, &[], |_| {}).await;
    let id = machine(8);
    let (request, _) = enroll_request(&token.bootstrap, &id);
    let enroller = Enroller::new(fleet.handle.client().clone(), None);
    let status = assert_refused(enroller.enroll(Request::new(request)).await, Code::FailedPrecondition, "node-ca.pem");
    assert!(status.message().contains("kairos-controlplane issue-node-ca"), "{}", status.message());
    assert!(fleet.node(&id).is_none());
    assert_eq!(fleet.stored_token(&token).uses, 0);
    drop(enroller);
    fleet.stop().await;
}

type Seen = Arc<Mutex<Vec<Option<PeerIdentity>>>>;

/// A node service that only records who calls Connect, on a port with the
/// replicas' server TLS.
struct TestNodeService {
    enroller: Enroller,
    seen: Seen,
}

type ConnectStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for TestNodeService {
    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        self.enroller.enroll(request).await
    }

    type ConnectStream = ConnectStream;

    async fn connect(&self, request: Request<Streaming<pb::NodeMessage>>) -> Result<Response<ConnectStream>, Status> {
        self.seen.lock().expect("lock").push(peer_identity(&request));
        Err(Status::unimplemented("test service: Connect only records the caller"))
    }
}

async fn channel(addr: SocketAddr, tls: ClientTlsConfig) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(STEP)
        .timeout(STEP)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn an_enrolled_node_authenticates_to_replica_ports_with_its_chain_as_that_node() {
    let fleet = Fleet::start().await;
    let token = fleet.token(1, &[], |_| {}).await;

    // The node service on a port with the replica's server TLS.
    let creds = ReplicaCredentials::issue(&fleet.ca, 1, &["127.0.0.1".into()]).expect("credentials");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node_port = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let service = TestNodeService { enroller: fleet.enroller(), seen: Arc::clone(&seen) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = Server::builder().tls_config(creds.server_tls()).expect("server tls");
    let task = tokio::spawn(server.add_service(NodeServiceServer::new(service)).serve_with_incoming_shutdown(
        TcpIncoming::from(listener),
        async {
            let _ = stopped.await;
        },
    ));

    // Enroll as a new node does, through the replica's own port: trusting
    // the CA, presenting no certificate.
    let id = machine(42);
    let (request, key) = enroll_request(&token.bootstrap, &id);
    let anonymous = client_tls_for_operator(fleet.ca.cert_pem(), "127.0.0.1");
    let mut nodes = NodeServiceClient::new(channel(fleet.handle.local_addr(), anonymous).await);
    let answer = nodes.enroll(request).await.expect("enrolled over TLS").into_inner();
    assert_eq!(answer.node_id, id);

    // Then connect with the chain it got: leaf and the replica's intermediate.
    let identity = Identity::from_pem(&answer.certificate_chain_pem, key.serialize_pem());
    let as_node = client_tls_for_operator(&answer.ca_bundle_pem, "127.0.0.1").identity(identity);
    let mut nodes = NodeServiceClient::new(channel(node_port, as_node.clone()).await);
    let status = nodes.connect(tokio_stream::iter(Vec::<pb::NodeMessage>::new())).await.expect_err("test service");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(*seen.lock().expect("lock"), [Some(PeerIdentity::Node(id.clone()))]);

    // The replica's own port verifies the chain the same way and knows the
    // caller is that node, which operator services turn away.
    let mut admin = AdminServiceClient::new(channel(fleet.handle.local_addr(), as_node).await);
    let status = admin.list_tokens(pb::ListTokensRequest::default()).await.expect_err("a node is no operator");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(&format!("node-{id}: node certificates may only use the node service")));

    let _ = stop.send(());
    tokio::time::timeout(STEP, task).await.expect("server stops").expect("task").expect("server ran");
    fleet.stop().await;
}
