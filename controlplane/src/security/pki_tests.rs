use std::time::Duration;

use x509_parser::prelude::{GeneralName, X509Certificate};

use super::*;

fn with_cert<R>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    f(&cert)
}

fn common_name(pem: &str) -> String {
    with_cert(pem, |c| c.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or("").to_string())
}

fn csr(requested_cn: &str) -> String {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, requested_cn);
    params.serialize_request(&key).expect("csr").pem().expect("csr pem")
}

#[test]
fn ca_round_trips_through_its_files_with_a_private_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::generate("Test CA").expect("ca");
    ca.save(dir.path()).expect("save");
    let loaded = Ca::load(dir.path()).expect("load");
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert!(with_cert(loaded.cert_pem(), |c| c.is_ca()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE)).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // A loaded CA still issues certificates that chain to the saved one.
    let issued = loaded.issue_replica(1, &[]).expect("issue");
    let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).expect("PEM");
    let ca_cert = ca_pem.parse_x509().expect("X.509");
    with_cert(&issued.cert_pem, |c| c.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA"));
}

#[test]
fn ca_load_refuses_a_key_of_another_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    Ca::generate("one").expect("ca").save(dir.path()).expect("save");
    let other = tempfile::tempdir().expect("tempdir");
    Ca::generate("two").expect("ca").save(other.path()).expect("save");
    std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).expect("copy");
    let err = Ca::load(dir.path()).expect_err("mismatched key").to_string();
    assert!(err.contains("ca.key") && err.contains("does not belong"), "{err}");
}

#[test]
fn ca_load_names_the_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Ca::load(dir.path()).expect_err("nothing there").to_string();
    assert!(err.contains("ca.pem"), "{err}");
}

#[test]
fn replica_certificate_has_its_id_every_host_and_localhost() {
    let ca = Ca::generate("Test CA").expect("ca");
    let hosts = ["10.0.0.5".to_string(), "cp-1.example.com".to_string(), "127.0.0.1".to_string(), "[::1]".to_string()];
    let issued = ca.issue_replica(7, &hosts).expect("issue");
    assert_eq!(common_name(&issued.cert_pem), "replica-7");
    with_cert(&issued.cert_pem, |c| {
        let sans = c.subject_alternative_name().expect("ext").expect("has SANs");
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("dns:{d}"),
                GeneralName::IPAddress(ip) => {
                    format!("ip:{}", ip.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("."))
                }
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "ip:10.0.0.5",
                "dns:cp-1.example.com",
                "ip:127.0.0.1",
                "ip:0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1",
                "dns:localhost"
            ]
        );
        let eku = c.extended_key_usage().expect("ext").expect("has EKU").value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!c.is_ca());
        let years = (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / (365 * 24 * 3600);
        assert_eq!(years, 5);
    });
    assert!(issued.key_pem.contains("PRIVATE KEY"));
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"), "Debug must not show the key");
}

#[test]
fn replica_certificate_refuses_id_zero_and_bad_hosts() {
    let ca = Ca::generate("Test CA").expect("ca");
    assert!(matches!(ca.issue_replica(0, &[]), Err(SecurityError::InvalidName { what: "replica id", .. })));
    for host in ["", "-bad.example", "under_score", "a..b", "space host"] {
        let err = ca.issue_replica(1, &[host.to_string()]).expect_err(host);
        assert!(matches!(err, SecurityError::InvalidName { what: "host", .. }), "{host}: {err}");
    }
}

#[test]
fn node_csr_gets_the_identity_the_control_plane_chose() {
    let ca = Ca::generate("Test CA").expect("ca");
    let cert = ca.sign_node_csr(&csr("replica-1"), "4c4c4544004d", Duration::from_secs(86_400)).expect("sign");
    assert_eq!(common_name(&cert), "node-4c4c4544004d");
    with_cert(&cert, |c| {
        let eku = c.extended_key_usage().expect("ext").expect("has EKU").value;
        assert!(eku.client_auth && !eku.server_auth, "client auth only");
        assert!(c.subject_alternative_name().expect("ext").is_none(), "requested SANs are dropped");
        let secs = c.validity().not_after.timestamp() - c.validity().not_before.timestamp();
        assert_eq!(secs, 86_400 + 300, "ttl plus the clock-skew allowance");
    });
}

#[test]
fn node_csr_with_a_broken_signature_or_bad_input_is_refused() {
    let ca = Ca::generate("Test CA").expect("ca");
    let day = Duration::from_secs(86_400);
    assert!(matches!(ca.sign_node_csr("garbage", "n1", day), Err(SecurityError::InvalidCsr { .. })));
    // Flip one base64 character inside the signature (near the end of the body).
    let good = csr("x");
    let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
    let last_body = lines.len() - 2;
    let line = &mut lines[last_body];
    let pos = line.len() / 2;
    let flipped = if &line[pos..=pos] == "A" { "B" } else { "A" };
    line.replace_range(pos..=pos, flipped);
    let tampered = lines.join("\n");
    assert!(matches!(ca.sign_node_csr(&tampered, "n1", day), Err(SecurityError::InvalidCsr { .. })));
    assert!(matches!(ca.sign_node_csr(&good, "a/b", day), Err(SecurityError::InvalidName { what: "node id", .. })));
    assert!(matches!(ca.sign_node_csr(&good, "n1", Duration::from_secs(1)), Err(SecurityError::InvalidTtl { .. })));
    let huge = "x".repeat(MAX_CSR_BYTES + 1);
    assert!(matches!(ca.sign_node_csr(&huge, "n1", day), Err(SecurityError::InvalidCsr { .. })));
}

#[test]
fn client_certificate_cannot_claim_a_replica_or_node_name() {
    let ca = Ca::generate("Test CA").expect("ca");
    for cn in ["replica-1", "node-abc", ""] {
        assert!(ca.issue_client(cn).is_err(), "{cn}");
    }
    let alice = ca.issue_client("alice").expect("client");
    assert_eq!(common_name(&alice.cert_pem), "alice");
}
