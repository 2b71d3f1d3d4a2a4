//! mTLS between replicas, nodes and operators over a real tonic server on
//! loopback, with the configurations `security::ReplicaCredentials` builds.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_controlplane::security::{
    client_tls_for_operator, install_crypto_provider, peer_identity, Ca, PeerIdentity, ReplicaCredentials,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, ClientTlsConfig, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};

/// Every network step of these tests is bounded by this.
const STEP: Duration = Duration::from_secs(10);

type Seen = Arc<Mutex<Vec<Option<PeerIdentity>>>>;

/// A health server with `creds.server_tls()` on 127.0.0.1:0 that records
/// the peer identity of every request it receives.
struct TestServer {
    addr: SocketAddr,
    seen: Seen,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(creds: &ReplicaCredentials) -> TestServer {
        install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let health = HealthServer::with_interceptor(
            HealthService::from_health_reporter(HealthReporter::new()),
            move |req: tonic::Request<()>| {
                record.lock().expect("lock").push(peer_identity(&req));
                Ok(req)
            },
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::builder().tls_config(creds.server_tls()).expect("server tls").add_service(health);
        let task = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener);
            server
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .expect("server ran");
        });
        TestServer { addr, seen, stop: Some(stop), task }
    }

    async fn check(&self, tls: ClientTlsConfig) -> Result<ServingStatus, String> {
        let uri = format!("https://127.0.0.1:{}", self.addr.port());
        let call = async {
            let channel = Channel::from_shared(uri)
                .map_err(|e| e.to_string())?
                .tls_config(tls)
                .map_err(|e| e.to_string())?
                .connect_timeout(STEP)
                .connect()
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
            let response = HealthClient::new(channel)
                .check(HealthCheckRequest { service: String::new() })
                .await
                .map_err(|e| format!("check: {e}"))?;
            Ok(response.into_inner().status())
        };
        tokio::time::timeout(STEP, call).await.map_err(|_| "timed out".to_string())?
    }

    fn seen(&self) -> Vec<Option<PeerIdentity>> {
        self.seen.lock().expect("lock").clone()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(STEP, self.task).await.expect("server stops").expect("server task");
    }
}

fn replica(ca: &Ca, id: u64) -> ReplicaCredentials {
    ReplicaCredentials::issue(ca, id, &[]).expect("replica credentials")
}

#[tokio::test]
async fn replica_calls_replica_over_mtls_and_is_identified() {
    let ca = Ca::generate("cluster").expect("ca");
    let server = TestServer::start(&replica(&ca, 1)).await;
    let status = server.check(replica(&ca, 2).client_tls("127.0.0.1")).await;
    assert_eq!(status, Ok(ServingStatus::Serving));
    assert_eq!(server.seen(), [Some(PeerIdentity::Replica(2))]);
    server.stop().await;
}

#[tokio::test]
async fn replica_certificate_names_localhost_for_local_clients() {
    let ca = Ca::generate("cluster").expect("ca");
    let server = TestServer::start(&replica(&ca, 1)).await;
    assert_eq!(server.check(replica(&ca, 2).client_tls("localhost")).await, Ok(ServingStatus::Serving));
    server.stop().await;
}

#[tokio::test]
async fn operator_without_client_certificate_is_served_anonymously() {
    let ca = Ca::generate("cluster").expect("ca");
    let server = TestServer::start(&replica(&ca, 1)).await;
    let status = server.check(client_tls_for_operator(ca.cert_pem(), "127.0.0.1")).await;
    assert_eq!(status, Ok(ServingStatus::Serving));
    assert_eq!(server.seen(), [None], "no certificate, no identity: the token decides");
    server.stop().await;
}

#[tokio::test]
async fn node_certificate_from_a_csr_is_identified_as_that_node() {
    let ca = Ca::generate("cluster").expect("ca");
    let server = TestServer::start(&replica(&ca, 1)).await;
    let key = rcgen::KeyPair::generate().expect("node key");
    let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr").pem().expect("csr pem");
    let cert = ca.sign_node_csr(&csr, "9f8e7d6c", Duration::from_secs(3600)).expect("signed");
    let tls = client_tls_for_operator(ca.cert_pem(), "127.0.0.1")
        .identity(tonic::transport::Identity::from_pem(cert, key.serialize_pem()));
    assert_eq!(server.check(tls).await, Ok(ServingStatus::Serving));
    assert_eq!(server.seen(), [Some(PeerIdentity::Node("9f8e7d6c".into()))]);
    server.stop().await;
}

#[tokio::test]
async fn client_certificate_from_a_different_ca_is_refused() {
    let ca = Ca::generate("cluster").expect("ca");
    let rogue_ca = Ca::generate("rogue").expect("rogue ca");
    let server = TestServer::start(&replica(&ca, 1)).await;
    // Trusts the real CA, but presents a replica-2 certificate the rogue CA issued.
    let rogue = ReplicaCredentials { ca_pem: ca.cert_pem().to_string(), ..replica(&rogue_ca, 2) };
    let result = server.check(rogue.client_tls("127.0.0.1")).await;
    let err = result.expect_err("a foreign client certificate must fail the handshake");
    assert!(err.contains("UnknownCA"), "the server names the reason: {err}");
    assert!(server.seen().is_empty(), "no request reached the service");
    server.stop().await;
}

#[tokio::test]
async fn server_certificate_from_a_different_ca_is_refused() {
    let ca = Ca::generate("cluster").expect("ca");
    let other_ca = Ca::generate("other").expect("other ca");
    let server = TestServer::start(&replica(&ca, 1)).await;
    let result = server.check(replica(&other_ca, 2).client_tls("127.0.0.1")).await;
    let err = result.expect_err("the client must not trust a server of another CA");
    assert!(err.contains("UnknownIssuer"), "{err}");
    let result = server.check(client_tls_for_operator(other_ca.cert_pem(), "127.0.0.1")).await;
    assert!(result.is_err(), "nor must an operator: {result:?}");
    server.stop().await;
}

#[tokio::test]
async fn server_name_not_in_the_certificate_is_refused() {
    let ca = Ca::generate("cluster").expect("ca");
    let server = TestServer::start(&replica(&ca, 1)).await;
    let result = server.check(replica(&ca, 2).client_tls("cp-9.example.com")).await;
    let err = result.expect_err("the certificate has no SAN cp-9.example.com");
    assert!(err.contains("NotValidForName"), "{err}");
    server.stop().await;
}
