//! What a replica needs for TLS: the CA it trusts and its own certificate
//! and key, as files in its data dir and as tonic TLS configurations.

use std::fmt;
use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::fs::{create_dir, read_text, write_private, write_public};
use super::pki::{Ca, CA_CERT_FILE};
use super::SecurityError;

/// File name of a replica's certificate in its data dir.
pub const REPLICA_CERT_FILE: &str = "replica.pem";
/// File name of a replica's private key in its data dir (mode 0600).
pub const REPLICA_KEY_FILE: &str = "replica.key";

/// A replica's TLS material, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicaCredentials {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// The replica's certificate (CN `replica-<id>`).
    pub cert_pem: String,
    /// The replica's private key. Never log it.
    pub key_pem: String,
}

impl fmt::Debug for ReplicaCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaCredentials")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl ReplicaCredentials {
    /// Issues replica `id`'s certificate from `ca` (see [`Ca::issue_replica`]).
    pub fn issue(ca: &Ca, id: u64, hosts: &[String]) -> Result<ReplicaCredentials, SecurityError> {
        let issued = ca.issue_replica(id, hosts)?;
        Ok(ReplicaCredentials { ca_pem: ca.cert_pem().to_string(), cert_pem: issued.cert_pem, key_pem: issued.key_pem })
    }

    /// Loads `dir/ca.pem`, `dir/replica.pem` and `dir/replica.key`,
    /// checking that each holds the PEM block it should.
    pub fn load(dir: &Path) -> Result<ReplicaCredentials, SecurityError> {
        let ca_pem = read_pem(&dir.join(CA_CERT_FILE), "CERTIFICATE")?;
        let cert_pem = read_pem(&dir.join(REPLICA_CERT_FILE), "CERTIFICATE")?;
        let key_pem = read_pem(&dir.join(REPLICA_KEY_FILE), "PRIVATE KEY")?;
        Ok(ReplicaCredentials { ca_pem, cert_pem, key_pem })
    }

    /// Writes the three files into `dir` (created if missing); the key is 0600.
    pub fn save(&self, dir: &Path) -> Result<(), SecurityError> {
        create_dir(dir)?;
        write_private(&dir.join(REPLICA_KEY_FILE), self.key_pem.as_bytes())?;
        write_public(&dir.join(REPLICA_CERT_FILE), self.cert_pem.as_bytes())?;
        write_public(&dir.join(CA_CERT_FILE), self.ca_pem.as_bytes())
    }

    /// TLS for this replica's gRPC server: presents the replica
    /// certificate; a client certificate is verified against the CA when
    /// presented but not required (nodes and replicas present one,
    /// operators with bearer tokens may not). Use
    /// [`peer_identity`](super::peer_identity) to see who called.
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// TLS for calling another replica at `server_host` (the host part of
    /// its address, which must be one of its certificate's SANs): trusts
    /// only the cluster CA and presents this replica's certificate.
    pub fn client_tls(&self, server_host: &str) -> ClientTlsConfig {
        client_tls_for_operator(&self.ca_pem, server_host).identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// TLS for an operator client (kairosctl) calling `host`: trusts only the
/// cluster CA and presents no certificate; the caller authenticates with a
/// bearer token instead.
pub fn client_tls_for_operator(ca_pem: &str, host: &str) -> ClientTlsConfig {
    // rustls wants an IPv6 address without the URI brackets.
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host)
}

/// Reads a file that must contain a PEM block whose label ends with `label`
/// (`PRIVATE KEY` also matches `EC PRIVATE KEY`).
fn read_pem(path: &Path, label: &str) -> Result<String, SecurityError> {
    let text = read_text(path)?;
    let found = text.lines().any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !found {
        return Err(SecurityError::InvalidFile {
            path: path.to_path_buf(),
            reason: format!("expected a PEM `{label}` block"),
        });
    }
    Ok(text)
}
