//! Node certificates and who signs them.
//!
//! The root CA key stays where `init` ran. Each replica instead holds its
//! own intermediate CA, issued by the root (`node-ca.pem` + `node-ca.key`
//! in its data dir), and signs the certificates of the nodes that enroll
//! through it. A node presents its certificate with that intermediate
//! behind it; replicas trust the root only, so a node enrolled through one
//! replica is accepted by every other.
//!
//! ```text
//! root CA (ca.pem, pathlen 1)
//! └── Kairos Fleet node CA (replica <id>)   node-ca.pem, pathlen 0
//!     └── node-<machine id>                 client auth, NODE_CERT_VALIDITY
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{Issuer, KeyPair, SubjectPublicKeyInfo};
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::fs::{create_dir, read_text, write_private, write_public};
use super::pki::{sign_node, validity_until, Ca, CA_CERT_FILE, MAX_CSR_BYTES};
use super::SecurityError;

/// File name of a replica's node-issuing intermediate CA certificate.
pub const NODE_CA_CERT_FILE: &str = "node-ca.pem";
/// File name of that intermediate's private key (mode 0600).
pub const NODE_CA_KEY_FILE: &str = "node-ca.key";
/// How long a node certificate is valid: a year, or until the replica's
/// intermediate expires if that comes first. Nodes enroll again (same
/// node id, new certificate) before it runs out.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Smallest RSA key accepted in a CSR, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA key accepted (what ring verifies).
const MAX_RSA_BITS: usize = 8192;

/// A node's certificate signing request that passed every check: PEM of at
/// most [`MAX_CSR_BYTES`], PKCS#10, self-signature valid, key ECDSA P-256,
/// ECDSA P-384, Ed25519 or RSA of 2048 to 8192 bits.
pub struct NodeCsr {
    key: SubjectPublicKeyInfo,
    spki_der: Vec<u8>,
    key_type: String,
}

impl fmt::Debug for NodeCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCsr").field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

impl NodeCsr {
    /// Parses and checks a CSR. The subject and any requested extensions
    /// are ignored: only the public key is certified.
    pub fn parse(csr_pem: &str) -> Result<NodeCsr, SecurityError> {
        let invalid = |reason: String| SecurityError::InvalidCsr { reason };
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(invalid(format!("{} bytes, at most {MAX_CSR_BYTES}", csr_pem.len())));
        }
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes())
            .map_err(|_| invalid("not PEM: expected a `-----BEGIN CERTIFICATE REQUEST-----` block".into()))?;
        if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
            return Err(invalid(format!("the PEM block is `{}`, expected `CERTIFICATE REQUEST`", pem.label)));
        }
        let (rest, csr) = X509CertificationRequest::from_der(&pem.contents)
            .map_err(|e| invalid(format!("not a PKCS#10 certificate signing request: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(format!("{} bytes of garbage after the request", rest.len())));
        }
        let spki = &csr.certification_request_info.subject_pki;
        // The key type first: ring refuses to verify small RSA keys, and
        // "too small" is the more useful answer.
        let key_type = accepted_key_type(spki)?;
        // The requester holds the private key of the public key it sends.
        csr.verify_signature().map_err(|e| {
            invalid(format!("its signature does not verify ({e}): sign it with the private key of the key it holds"))
        })?;
        let key = SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| invalid(format!("the {key_type} public key cannot be certified: {e}")))?;
        Ok(NodeCsr { key, spki_der: spki.raw.to_vec(), key_type })
    }

    /// The key's type, e.g. `ECDSA P-256` or `RSA 3072`.
    pub fn key_type(&self) -> &str {
        &self.key_type
    }

    pub(crate) fn public_key(&self) -> &SubjectPublicKeyInfo {
        &self.key
    }

    /// Checks that a certificate issued for this CSR certifies exactly the
    /// key the CSR holds, byte for byte.
    pub(crate) fn check_certified(&self, cert_der: &[u8]) -> Result<(), SecurityError> {
        let same = X509Certificate::from_der(cert_der).is_ok_and(|(_, cert)| cert.public_key().raw == self.spki_der);
        if !same {
            return Err(SecurityError::InvalidCsr {
                reason: format!("its {} key cannot be encoded in a certificate as given", self.key_type),
            });
        }
        Ok(())
    }
}

fn accepted_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<String, SecurityError> {
    let invalid = |reason: String| SecurityError::InvalidCsr { reason };
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok("ECDSA P-256".into()),
            Some(c) if c == OID_NIST_EC_P384 => Ok("ECDSA P-384".into()),
            Some(c) => Err(invalid(format!("ECDSA curve {c} is not accepted: use P-256 or P-384"))),
            None => Err(invalid("the ECDSA key names no curve: use P-256 or P-384".into())),
        };
    }
    if *algorithm == OID_SIG_ED25519 {
        return Ok("Ed25519".into());
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => bit_length(rsa.modulus),
            _ => return Err(invalid("the RSA public key does not parse".into())),
        };
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(invalid(format!(
                "RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, this one has {bits}; \
                 ECDSA P-256 is preferred"
            )));
        }
        return Ok(format!("RSA {bits}"));
    }
    Err(invalid(format!(
        "key type {algorithm} is not accepted: use ECDSA P-256 or P-384, Ed25519, or RSA of 2048+ bits"
    )))
}

/// Bits of a big-endian unsigned integer (leading zero bytes ignored).
fn bit_length(be: &[u8]) -> usize {
    let digits: &[u8] = match be.iter().position(|&b| b != 0) {
        Some(first) => &be[first..],
        None => &[],
    };
    match digits.first() {
        Some(&top) => digits.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

/// A node certificate as Enroll hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertificate {
    /// The node certificate, then the replica's intermediate, PEM.
    pub chain_pem: String,
    /// When the node certificate expires.
    pub not_after: OffsetDateTime,
}

/// A replica's node-issuing intermediate CA: signs node certificates.
pub struct NodeIssuer {
    ca_pem: String,
    cert_pem: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for NodeIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIssuer").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl NodeIssuer {
    /// Issues replica `replica_id`'s intermediate with `ca` (see [`Ca::issue_node_ca`]).
    pub fn issue(ca: &Ca, replica_id: u64) -> Result<NodeIssuer, SecurityError> {
        let issued = ca.issue_node_ca(replica_id)?;
        let (cert, key) = (Path::new(NODE_CA_CERT_FILE), Path::new(NODE_CA_KEY_FILE));
        NodeIssuer::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem, (cert, key))
    }

    /// Loads `dir/node-ca.pem` and `dir/node-ca.key`, checking that the
    /// certificate is a CA issued by the one in `dir/ca.pem` and that the
    /// key belongs to it.
    pub fn load(dir: &Path) -> Result<NodeIssuer, SecurityError> {
        let (cert_path, key_path) = (dir.join(NODE_CA_CERT_FILE), dir.join(NODE_CA_KEY_FILE));
        let ca_pem = read_text(&dir.join(CA_CERT_FILE))?;
        let cert_pem = read_text(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        NodeIssuer::from_pem(&ca_pem, &cert_pem, &key_pem, (&cert_path, &key_path))
    }

    /// [`NodeIssuer::load`], or `None` when `dir/node-ca.pem` does not exist.
    pub fn load_if_present(dir: &Path) -> Result<Option<NodeIssuer>, SecurityError> {
        if !dir.join(NODE_CA_CERT_FILE).exists() {
            return Ok(None);
        }
        NodeIssuer::load(dir).map(Some)
    }

    fn from_pem(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        paths: (&Path, &Path),
    ) -> Result<NodeIssuer, SecurityError> {
        let (cert_path, key_path) = paths;
        let invalid = |path: &Path, reason: String| SecurityError::InvalidFile { path: path.to_path_buf(), reason };
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(key_path, format!("not a PEM private key: {e}")))?;
        let (_, ca) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .map_err(|e| invalid(Path::new(CA_CERT_FILE), format!("not a PEM certificate: {e}")))?;
        let ca = ca.parse_x509().map_err(|e| invalid(Path::new(CA_CERT_FILE), format!("not X.509: {e}")))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| invalid(cert_path, format!("not a PEM certificate: {e}")))?;
        let cert = pem.parse_x509().map_err(|e| invalid(cert_path, format!("not an X.509 certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(invalid(cert_path, "the certificate is not a CA (basic constraints CA:FALSE)".into()));
        }
        if cert.verify_signature(Some(ca.public_key())).is_err() {
            return Err(invalid(cert_path, format!("it was not issued by the cluster CA in {CA_CERT_FILE}")));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid(key_path, format!("this key does not belong to {}", cert_path.display())));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| invalid(cert_path, format!("cannot be used to sign: {e}")))?;
        Ok(NodeIssuer { ca_pem: ca_pem.to_string(), cert_pem: cert_pem.to_string(), not_after, issuer })
    }

    /// Writes `dir/node-ca.pem` and `dir/node-ca.key` (0600), creating
    /// `dir`; `dir/ca.pem` is the replica's and is not written here.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>, SecurityError> {
        create_dir(dir)?;
        let (cert, key) = (dir.join(NODE_CA_CERT_FILE), dir.join(NODE_CA_KEY_FILE));
        write_private(&key, self.issuer.key().serialize_pem().as_bytes())?;
        write_public(&cert, self.cert_pem.as_bytes())?;
        Ok(vec![cert, key])
    }

    /// The intermediate's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root CA certificate, PEM: what nodes trust for the replicas' TLS.
    pub fn ca_bundle_pem(&self) -> &str {
        &self.ca_pem
    }

    /// When the intermediate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Signs node `node_id`'s certificate for `csr`'s key: subject CN
    /// `node-<node_id>`, client auth only, valid for [`NODE_CERT_VALIDITY`]
    /// or until the intermediate expires. Returns it with the intermediate
    /// behind it.
    pub fn sign(&self, csr: &NodeCsr, node_id: &str) -> Result<NodeCertificate, SecurityError> {
        super::pki::check_node_id(node_id)?;
        let what = format!("this replica's node CA ({NODE_CA_CERT_FILE})");
        let validity = validity_until(self.not_after, NODE_CERT_VALIDITY, &what)?;
        let (leaf, not_after) = sign_node(&self.issuer, csr, node_id, validity)?;
        let mut chain_pem = leaf;
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&self.cert_pem);
        Ok(NodeCertificate { chain_pem, not_after })
    }
}

#[cfg(test)]
#[path = "node_ca_tests.rs"]
mod tests;
