//! Enrollment: a fresh ECDSA P-256 key pair (the private key never leaves
//! the node), a PKCS#10 CSR, and the Enroll call that exchanges a bootstrap
//! token for a node certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::node_service_client::NodeServiceClient;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use tonic::transport::Channel;
use tonic::Code;

use crate::session::{SessionError, MAX_MESSAGE_BYTES};
use crate::state::Enrollment;
use crate::tls::{connect, endpoint_host, enroll_endpoint, NodeCredentials};

/// Longest wait for the Enroll answer.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The server refused: bad token, malformed CSR or identity. Not worth retrying as is.
    #[error("enrollment refused ({code:?}): {message}")]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The call failed for another reason (server unavailable, ...).
    #[error("enrollment failed ({code:?}): {message}")]
    Failed {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached or its certificate was not trusted.
    #[error("{0}")]
    Connect(#[from] SessionError),
    /// The server did not answer in time.
    #[error("no answer to Enroll within {0:?}")]
    Timeout(Duration),
    /// The key pair or CSR could not be made.
    #[error("creating the key pair and CSR: {0}")]
    Key(String),
    /// The answer is unusable; names the field.
    #[error("Enroll answer: {field}: {reason}")]
    InvalidResponse {
        /// The EnrollResponse field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl EnrollError {
    /// True when the server refused this node or token (exit code 3).
    pub fn is_refusal(&self) -> bool {
        matches!(self, EnrollError::Refused { .. })
    }
}

/// What a node sends to enroll, besides its CSR.
#[derive(Debug, Clone)]
pub struct EnrollParams {
    /// Secret of an enroll token.
    pub token: String,
    /// The node's machine id.
    pub machine_id: String,
    /// The node's identity.
    pub identity: pb::NodeIdentity,
    /// Hostname, for display.
    pub hostname: String,
}

/// A new key pair and the CSR for it.
pub struct NodeKey {
    key: KeyPair,
    csr_pem: String,
}

impl NodeKey {
    /// Generates an ECDSA P-256 key pair and a CSR naming `machine_id`
    /// (the server sets the real subject).
    pub fn generate(machine_id: &str) -> Result<NodeKey, EnrollError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| EnrollError::Key(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("node-{machine_id}"));
        params.distinguished_name = name;
        let csr = params.serialize_request(&key).map_err(|e| EnrollError::Key(e.to_string()))?;
        let csr_pem = csr.pem().map_err(|e| EnrollError::Key(e.to_string()))?;
        Ok(NodeKey { key, csr_pem })
    }

    /// The CSR, PEM.
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The private key, PKCS#8 PEM. Never log it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The raw public key (uncompressed EC point).
    pub fn public_key_raw(&self) -> &[u8] {
        self.key.public_key_raw()
    }
}

/// A successful enrollment: what goes into the state dir.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// Key, certificate chain and CA bundle.
    pub credentials: NodeCredentials,
    /// Node id, endpoints, labels, certificate expiry.
    pub enrollment: Enrollment,
}

/// Enrolls at `server` (an `https://` URL), trusting only `ca_pem` for its
/// certificate.
pub async fn enroll(server: &str, ca_pem: &str, params: &EnrollParams) -> Result<Enrolled, EnrollError> {
    let endpoint = enroll_endpoint(server, ca_pem)
        .map_err(|e| SessionError::Connect { endpoint: server.to_string(), message: e.to_string() })?;
    let channel = connect(server, endpoint).await?;
    let key = NodeKey::generate(&params.machine_id)?;
    enroll_over(channel, server, key, params).await
}

/// Enrolls over an open `channel` with `key`; `server` is the URL to
/// remember when the answer lists no endpoints.
pub async fn enroll_over(
    channel: Channel,
    server: &str,
    key: NodeKey,
    params: &EnrollParams,
) -> Result<Enrolled, EnrollError> {
    let mut client = NodeServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let request = pb::EnrollRequest {
        bootstrap_token: params.token.clone(),
        machine_id: params.machine_id.clone(),
        identity: Some(params.identity.clone()),
        csr_pem: key.csr_pem().to_string(),
        hostname: params.hostname.clone(),
    };
    let response = match tokio::time::timeout(ENROLL_TIMEOUT, client.enroll(request)).await {
        Err(_) => return Err(EnrollError::Timeout(ENROLL_TIMEOUT)),
        Ok(Err(status)) => return Err(status_error(&status)),
        Ok(Ok(response)) => response.into_inner(),
    };
    check_response(response, server, &key)
}

fn status_error(status: &tonic::Status) -> EnrollError {
    let (code, message) = (status.code(), status.message().to_string());
    match code {
        Code::Unauthenticated
        | Code::InvalidArgument
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::AlreadyExists => EnrollError::Refused { code, message },
        _ => EnrollError::Failed { code, message },
    }
}

/// Checks the answer against the request: the certificate must carry our
/// public key and name the node id; endpoints must be https URLs.
fn check_response(response: pb::EnrollResponse, server: &str, key: &NodeKey) -> Result<Enrolled, EnrollError> {
    let bad = |field, reason: String| EnrollError::InvalidResponse { field, reason };
    let node_id = response.node_id;
    let id_ok = !node_id.is_empty()
        && node_id.len() <= 64
        && node_id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        return Err(bad("node_id", format!("{node_id:?} is not 1 to 64 of [A-Za-z0-9._-]")));
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(response.certificate_chain_pem.as_bytes())
        .map_err(|e| bad("certificate_chain_pem", format!("not a PEM certificate: {e}")))?;
    let leaf = pem.parse_x509().map_err(|e| bad("certificate_chain_pem", format!("not an X.509 certificate: {e}")))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad("certificate_chain_pem", "the certificate is not for this node's key".into()));
    }
    let expected_cn = format!("node-{node_id}");
    let cn = leaf.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default();
    if cn != expected_cn {
        return Err(bad("certificate_chain_pem", format!("subject CN is {cn:?}, expected {expected_cn:?}")));
    }
    if !response.ca_bundle_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad("ca_bundle_pem", "holds no PEM certificate".into()));
    }
    let not_after = match response.certificate_not_after {
        Some(t) => t,
        None => prost_types::Timestamp { seconds: leaf.validity().not_after.timestamp(), nanos: 0 },
    };
    let cert_not_after = crate::state::rfc3339_of(&not_after)
        .ok_or_else(|| bad("certificate_not_after", format!("{not_after:?} is out of range")))?;
    let server_endpoints =
        if response.server_endpoints.is_empty() { vec![server.to_string()] } else { response.server_endpoints };
    for url in &server_endpoints {
        endpoint_host(url).map_err(|e| bad("server_endpoints", e.to_string()))?;
    }
    Ok(Enrolled {
        credentials: NodeCredentials {
            cert_chain_pem: response.certificate_chain_pem,
            key_pem: key.key_pem(),
            ca_pem: response.ca_bundle_pem,
        },
        enrollment: Enrollment {
            node_id,
            server_endpoints,
            labels: response.labels.into_iter().collect::<BTreeMap<_, _>>(),
            cert_not_after,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_from_outages() {
        assert!(status_error(&tonic::Status::unauthenticated("token used up")).is_refusal());
        assert!(status_error(&tonic::Status::invalid_argument("bad csr")).is_refusal());
        assert!(!status_error(&tonic::Status::unavailable("no leader")).is_refusal());
    }

    #[test]
    fn an_answer_for_another_key_is_rejected() {
        let ca = kairos_controlplane::security::Ca::generate("test ca").expect("ca");
        let ours = NodeKey::generate("aa").expect("key");
        let theirs = NodeKey::generate("aa").expect("key");
        let cert = ca.sign_node_csr(theirs.csr_pem(), "aa", Duration::from_secs(3600)).expect("sign");
        let response = pb::EnrollResponse {
            node_id: "aa".into(),
            certificate_chain_pem: cert,
            ca_bundle_pem: ca.cert_pem().into(),
            ..Default::default()
        };
        let err = check_response(response, "https://a:1", &ours).expect_err("wrong key");
        assert!(err.to_string().contains("not for this node's key"), "{err}");
    }
}
