//! Who is calling: the identity in the verified client certificate.

use tonic::Request;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity a verified client certificate carries in its subject CN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Another replica: CN `replica-<id>`.
    Replica(u64),
    /// An enrolled node: CN `node-<machine id>`.
    Node(String),
    /// Any other CA-issued certificate (operator tooling): the CN as is.
    Other(String),
}

impl PeerIdentity {
    /// Classifies a subject common name.
    pub fn from_common_name(cn: &str) -> PeerIdentity {
        if let Some(id) = cn.strip_prefix("replica-") {
            // Digits only: `u64::from_str` would also take a leading `+`.
            if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
                // The CA never issues `replica-0`: ids start at 1.
                if let Ok(id @ 1..) = id.parse::<u64>() {
                    return PeerIdentity::Replica(id);
                }
            }
        }
        if let Some(node) = cn.strip_prefix("node-") {
            if super::pki::check_node_id(node).is_ok() {
                return PeerIdentity::Node(node.to_string());
            }
        }
        PeerIdentity::Other(cn.to_string())
    }

    /// Reads the first subject CN of a DER certificate; `None` when the
    /// bytes do not parse or the subject has no UTF-8 CN.
    pub fn from_cert_der(der: &[u8]) -> Option<PeerIdentity> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        Some(PeerIdentity::from_common_name(cn))
    }
}

/// The identity of the client that sent `req`, from the first certificate
/// of its TLS chain. `None` without TLS, without a client certificate, or
/// when the certificate has no usable CN. The TLS layer has already
/// verified the certificate against the cluster CA
/// ([`ReplicaCredentials::server_tls`](super::ReplicaCredentials::server_tls)).
pub fn peer_identity<T>(req: &Request<T>) -> Option<PeerIdentity> {
    let certs = req.peer_certs()?;
    PeerIdentity::from_cert_der(certs.first()?.as_ref())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::security::Ca;

    fn der(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("test PEM");
        pem.contents
    }

    #[test]
    fn replica_certificate_names_its_replica_id() {
        let ca = Ca::generate("test ca").expect("ca");
        let cert = ca.issue_replica(42, &[]).expect("replica cert");
        assert_eq!(PeerIdentity::from_cert_der(&der(&cert.cert_pem)), Some(PeerIdentity::Replica(42)));
    }

    #[test]
    fn node_certificate_names_the_node_not_what_the_csr_asked() {
        let ca = Ca::generate("test ca").expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, "replica-1");
        let csr = params.serialize_request(&key).expect("csr").pem().expect("csr pem");
        let cert = ca.sign_node_csr(&csr, "0123abcd", Duration::from_secs(3600)).expect("signed");
        assert_eq!(PeerIdentity::from_cert_der(&der(&cert)), Some(PeerIdentity::Node("0123abcd".into())));
    }

    #[test]
    fn operator_certificate_is_other() {
        let ca = Ca::generate("test ca").expect("ca");
        let cert = ca.issue_client("alice").expect("client cert");
        assert_eq!(PeerIdentity::from_cert_der(&der(&cert.cert_pem)), Some(PeerIdentity::Other("alice".into())));
    }

    #[test]
    fn common_names_that_only_look_like_identities_are_other() {
        for cn in
            ["replica-", "replica-0", "replica-x", "replica-+1", "replica-99999999999999999999", "node-", "node-a/b"]
        {
            assert_eq!(PeerIdentity::from_common_name(cn), PeerIdentity::Other(cn.into()), "{cn}");
        }
        assert_eq!(PeerIdentity::from_common_name("replica-7"), PeerIdentity::Replica(7));
        assert_eq!(PeerIdentity::from_common_name("node-m1"), PeerIdentity::Node("m1".into()));
    }

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(PeerIdentity::from_cert_der(b"not a certificate"), None);
    }
}
