//! Security: the cluster CA and the certificates it issues, the TLS
//! configurations replicas and clients use, peer identity from the client
//! certificate, operator tokens and roles, and the files `init` writes.
//!
//! ```text
//! <init dir>/ca.pem, ca.key            the cluster CA (key 0600, keep it offline)
//! <init dir>/admin.token               the first admin bearer token (0600)
//! <init dir>/kairosctl.toml            kairosctl config, context `default`
//! <init dir>/replica-<id>/             one replica's data dir:
//!   ca.pem, replica.pem, replica.key   its ReplicaCredentials
//!   node-ca.pem, node-ca.key           its NodeIssuer: the intermediate CA that
//!                                      signs node certificates at Enroll
//!   replica.toml                       its ReplicaConfig (id, listen, bootstrap)
//!   bootstrap-tokens.toml              first replica only: token records to seed
//! ```
//!
//! Identity rules: a certificate's subject CN is `replica-<id>` for a
//! replica, `node-<machine id>` for a node; the CA, not the requester,
//! decides it. Node certificates are signed by a replica's intermediate
//! ([`node_ca`]) and verified against the root like every other. Operators authenticate with bearer tokens (`kft_<id>_<secret>`)
//! and need no certificate.

pub mod bootstrap;
pub mod credentials;
mod error;
pub(crate) mod fs;
pub mod node_ca;
pub mod peer;
pub mod pki;
pub mod token;

pub use bootstrap::{BootstrapTokens, InitOptions, InitReport, ReplicaConfig, ReplicaSpec};
pub use credentials::{client_tls_for_operator, ReplicaCredentials};
pub use error::SecurityError;
pub use node_ca::{NodeCertificate, NodeCsr, NodeIssuer};
pub use peer::{peer_identity, PeerIdentity};
pub use pki::{Ca, CertifiedKey};
pub use token::{generate_token, hash_secret, parse_token, verify, AuthError, Role, Secret, TokenId, TokenRecord};

pub use kairos_fleet_domain::install_crypto_provider;
