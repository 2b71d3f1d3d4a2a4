//! Enrollment against a fake control plane.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use kairos_node_client::enroll::{enroll, EnrollError, EnrollParams};
use kairos_node_client::hello::{node_path, pb_identity, read_hostname};
use kairos_node_client::local::read_local_facts;
use kairos_node_client::state::{StateDir, CA_FILE, CERT_FILE, KEY_FILE};
use support::{Behaviour, FakeServer, Fleet, TOKEN};

const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

fn params(root: &Path, token: &str) -> EnrollParams {
    let facts = read_local_facts(root).expect("facts");
    EnrollParams {
        token: token.to_string(),
        machine_id: facts.machine_id.to_string(),
        identity: pb_identity(&facts.identity, &node_path(root, &facts.identity_source)),
        hostname: read_hostname(root),
    }
}

#[tokio::test]
async fn enroll_stores_a_private_key_whose_public_half_is_in_the_certificate() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    *fleet.endpoints.lock().expect("lock") = vec![server.url.clone()];
    let dir = tempfile::tempdir().expect("tempdir");
    support::node_root(&dir.path().join("root"), MACHINE_ID);

    let enrolled = enroll(&server.url, &fleet.ca_pem, &params(&dir.path().join("root"), TOKEN)).await.expect("enroll");
    let state = StateDir::new(dir.path().join("state"));
    state.store(&enrolled.credentials, &enrolled.enrollment).expect("store");

    let key_path = state.file(KEY_FILE);
    let mode = std::fs::metadata(&key_path).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key must be readable by the owner only");
    let enrollment = state.load_enrollment().expect("enrollment.toml");
    assert_eq!(enrollment.node_id, MACHINE_ID);
    assert_eq!(enrollment.server_endpoints, vec![server.url.clone()]);
    assert_eq!(enrollment.labels.get("site").map(String::as_str), Some("lab"));
    assert!(enrollment.cert_not_after.parse::<jiff::Timestamp>().expect("RFC 3339") > jiff::Timestamp::now());
    assert_eq!(std::fs::read_to_string(state.file(CA_FILE)).expect("ca"), fleet.ca_pem);

    // The stored key is the one the certificate certifies, and the CA signed it for this node.
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path).expect("key")).expect("PEM key");
    let cert_pem = std::fs::read_to_string(state.file(CERT_FILE)).expect("cert");
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("PEM cert");
    let cert = pem.parse_x509().expect("X.509");
    assert_eq!(cert.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
    assert_eq!(cn, Some(format!("node-{MACHINE_ID}").as_str()));
    assert!(state.load_credentials().is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_token_is_a_refusal_with_the_servers_message() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    support::node_root(dir.path(), MACHINE_ID);
    let err = enroll(&server.url, &fleet.ca_pem, &params(dir.path(), "kft_wrong")).await.expect_err("refused");
    assert!(err.is_refusal(), "{err}");
    assert!(err.to_string().contains("unknown enroll token"), "{err}");
    server.shutdown().await;
}

#[tokio::test]
async fn enroll_refuses_a_server_the_given_ca_did_not_certify() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    support::node_root(dir.path(), MACHINE_ID);
    let other_ca = kairos_controlplane::security::Ca::generate("someone else").expect("ca");
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        enroll(&server.url, other_ca.cert_pem(), &params(dir.path(), TOKEN)),
    )
    .await
    .expect("no hang");
    match result {
        Err(EnrollError::Connect(e)) => assert!(e.to_string().contains("cannot connect"), "{e}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    server.shutdown().await;
}
