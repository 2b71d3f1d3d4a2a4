use std::sync::Arc;

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use x509_parser::extensions::ParsedExtension;

use super::*;

/// Fixtures made with `openssl req -new -newkey ...`; they hold no private key.
const RSA_1024_CSR: &str = include_str!("testdata/rsa1024.csr");
const RSA_2048_CSR: &str = include_str!("testdata/rsa2048.csr");
const SECP256K1_CSR: &str = include_str!("testdata/secp256k1.csr");

const NODE: &str = "0123456789abcdef0123456789abcdef";

fn csr_for(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, "replica-1");
    params.serialize_request(key).expect("csr").pem().expect("csr pem")
}

fn csr() -> String {
    csr_for(&KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key"))
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| CertificateDer::from(p.expect("PEM").contents))
        .collect()
}

/// Verifies `chain` (leaf first) as a TLS client certificate the way the
/// replicas' server TLS does: rustls' webpki verifier, the root as anchor.
fn verify_client_chain(root_pem: &str, chain_pem: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for der in ders(root_pem) {
        roots.add(der).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().expect("verifier");
    let chain = ders(chain_pem);
    verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()).map(|_| ())
}

#[test]
fn node_ca_is_a_pathlen_0_intermediate_of_the_root_named_after_its_replica() {
    let ca = Ca::generate("Test CA").expect("ca");
    let issuer = NodeIssuer::issue(&ca, 3).expect("node ca");
    let (_, pem) = x509_parser::pem::parse_x509_pem(issuer.cert_pem().as_bytes()).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    let cn = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
    assert_eq!(cn, Some("Kairos Fleet node CA (replica 3)"));
    let constraints = cert.basic_constraints().expect("ext").expect("present").value;
    assert!(constraints.ca);
    assert_eq!(constraints.path_len_constraint, Some(0));
    let usage = cert.key_usage().expect("ext").expect("present").value;
    assert!(usage.key_cert_sign());
    assert_eq!(issuer.ca_bundle_pem(), ca.cert_pem());

    // The root allows exactly this one level below it.
    let (_, root) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).expect("PEM");
    let root = root.parse_x509().expect("X.509");
    let root_constraints = root.basic_constraints().expect("ext").expect("present").value;
    assert_eq!(root_constraints.path_len_constraint, Some(1));
    cert.verify_signature(Some(root.public_key())).expect("signed by the root");
}

#[test]
fn node_certificate_chain_verifies_up_to_the_root_as_a_client_certificate() {
    let ca = Ca::generate("Test CA").expect("ca");
    let issuer = NodeIssuer::issue(&ca, 1).expect("node ca");
    let csr = NodeCsr::parse(&csr()).expect("csr");
    let issued = issuer.sign(&csr, NODE).expect("signed");
    let chain = ders(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf then intermediate");
    assert_eq!(chain[1], ders(issuer.cert_pem())[0]);
    verify_client_chain(ca.cert_pem(), &issued.chain_pem).expect("chain verifies");

    let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("leaf");
    let cn = leaf.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok());
    assert_eq!(cn, Some(format!("node-{NODE}").as_str()), "the CSR's subject is ignored");
    assert!(leaf.subject_alternative_name().expect("ext").is_none(), "requested SANs are dropped");
    let eku = leaf.extended_key_usage().expect("ext").expect("EKU").value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!leaf.is_ca());
    assert_eq!(leaf.validity().not_after.timestamp(), issued.not_after.unix_timestamp());
    let days = (issued.not_after - OffsetDateTime::now_utc()).whole_days();
    assert!((364..=365).contains(&days), "{days} days");

    // Without the intermediate the leaf alone does not chain to the root.
    let leaf_only = issued.chain_pem.split_inclusive("-----END CERTIFICATE-----\n").next().expect("leaf");
    assert!(verify_client_chain(ca.cert_pem(), leaf_only).is_err());
    // A root of another cluster does not accept it.
    let other = Ca::generate("Other CA").expect("ca");
    assert!(verify_client_chain(other.cert_pem(), &issued.chain_pem).is_err());
}

#[test]
fn node_certificates_do_not_outlive_the_intermediate() {
    let ca = Ca::generate("Test CA").expect("ca");
    let issuer = NodeIssuer::issue(&ca, 1).expect("node ca");
    let issued = issuer.sign(&NodeCsr::parse(&csr()).expect("csr"), NODE).expect("signed");
    assert!(issued.not_after <= issuer.not_after());
    let err = validity_until(OffsetDateTime::now_utc(), NODE_CERT_VALIDITY, "node-ca.pem").expect_err("expired");
    assert!(err.to_string().contains("node-ca.pem expires at"), "{err}");
    let short = validity_until(OffsetDateTime::now_utc() + time::Duration::hours(2), NODE_CERT_VALIDITY, "x");
    assert!(short.expect("two hours left") <= Duration::from_secs(2 * 3600));
}

#[test]
fn node_ca_round_trips_through_its_files_with_a_private_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("Test CA").expect("ca");
    std::fs::write(dir.path().join(CA_CERT_FILE), ca.cert_pem()).expect("ca.pem");
    assert!(NodeIssuer::load_if_present(dir.path()).expect("nothing there").is_none());
    let issuer = NodeIssuer::issue(&ca, 2).expect("node ca");
    let files = issuer.save(dir.path()).expect("save");
    assert_eq!(files, [dir.path().join(NODE_CA_CERT_FILE), dir.path().join(NODE_CA_KEY_FILE)]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(NODE_CA_KEY_FILE)).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let loaded = NodeIssuer::load_if_present(dir.path()).expect("load").expect("present");
    assert_eq!(loaded.cert_pem(), issuer.cert_pem());
    let issued = loaded.sign(&NodeCsr::parse(&csr()).expect("csr"), NODE).expect("signed");
    verify_client_chain(ca.cert_pem(), &issued.chain_pem).expect("a loaded node CA still chains to the root");
}

#[test]
fn node_ca_load_refuses_an_intermediate_of_another_ca_and_a_foreign_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("Test CA").expect("ca");
    let other = Ca::generate("Other CA").expect("ca");
    std::fs::write(dir.path().join(CA_CERT_FILE), ca.cert_pem()).expect("ca.pem");
    NodeIssuer::issue(&other, 1).expect("node ca").save(dir.path()).expect("save");
    let err = NodeIssuer::load(dir.path()).expect_err("issued by another CA").to_string();
    assert!(err.contains("node-ca.pem") && err.contains("not issued by the cluster CA"), "{err}");

    NodeIssuer::issue(&ca, 1).expect("node ca").save(dir.path()).expect("save");
    let foreign = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    std::fs::write(dir.path().join(NODE_CA_KEY_FILE), foreign.serialize_pem()).expect("key");
    let err = NodeIssuer::load(dir.path()).expect_err("foreign key").to_string();
    assert!(err.contains("node-ca.key") && err.contains("does not belong"), "{err}");
}

#[test]
fn csr_keys_of_the_accepted_types_are_certified_as_they_are() {
    for alg in [&PKCS_ECDSA_P256_SHA256, &PKCS_ECDSA_P384_SHA384, &PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).expect("key");
        let csr = NodeCsr::parse(&csr_for(&key)).expect("accepted");
        let ca = Ca::generate("Test CA").expect("ca");
        let issuer = NodeIssuer::issue(&ca, 1).expect("node ca");
        let issued = issuer.sign(&csr, NODE).expect("signed");
        let chain = ders(&issued.chain_pem);
        let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("leaf");
        assert_eq!(leaf.public_key().subject_public_key.data.as_ref(), key.public_key_raw(), "{}", csr.key_type());
        verify_client_chain(ca.cert_pem(), &issued.chain_pem).expect("chain verifies");
    }
    let rsa = NodeCsr::parse(RSA_2048_CSR).expect("RSA 2048 is accepted");
    assert_eq!(rsa.key_type(), "RSA 2048");
}

#[test]
fn csrs_with_weak_or_unknown_keys_or_broken_signatures_are_refused_with_the_reason() {
    let refused = |pem: &str| match NodeCsr::parse(pem) {
        Err(SecurityError::InvalidCsr { reason }) => reason,
        other => panic!("expected InvalidCsr, got {other:?}"),
    };
    assert!(refused(RSA_1024_CSR).contains("RSA keys must have 2048 to 8192 bits, this one has 1024"));
    assert!(refused(SECP256K1_CSR).contains("ECDSA curve 1.3.132.0.10 is not accepted"));
    assert!(refused("garbage").contains("not PEM"));
    let ca = Ca::generate("Test CA").expect("ca");
    assert!(refused(ca.cert_pem()).contains("`CERTIFICATE`, expected `CERTIFICATE REQUEST`"));
    assert!(refused(&"x".repeat(MAX_CSR_BYTES + 1)).contains("at most 16384"));

    // One base64 character flipped inside the signature (near the end of the body).
    let good = csr();
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let last_body = lines.len() - 2;
    let line = &mut lines[last_body];
    let pos = line.len() / 2;
    let flipped = if &line[pos..=pos] == "A" { "B" } else { "A" };
    line.replace_range(pos..=pos, flipped);
    assert!(refused(&lines.join("\n")).contains("signature does not verify"));
}

#[test]
fn requested_extensions_are_ignored_not_honoured() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.serialize_request(&key).expect("csr").pem().expect("pem");
    let ca = Ca::generate("Test CA").expect("ca");
    let issued = NodeIssuer::issue(&ca, 1).expect("node ca").sign(&NodeCsr::parse(&pem).expect("csr"), NODE);
    let chain = ders(&issued.expect("signed").chain_pem);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).expect("leaf");
    assert!(!leaf.is_ca(), "a CSR cannot ask to be a CA");
    assert!(!leaf
        .extensions()
        .iter()
        .any(|e| matches!(e.parsed_extension(), ParsedExtension::SubjectAlternativeName(_))));
}

#[test]
fn bit_length_ignores_leading_zero_bytes() {
    assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
    assert_eq!(bit_length(&[0x01, 0xff]), 9);
    assert_eq!(bit_length(&[0, 0]), 0);
    assert_eq!(bit_length(&[]), 0);
}
