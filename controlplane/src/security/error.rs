//! The security module's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong creating, loading or using keys,
/// certificates, tokens and the files `init` writes.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why the filesystem refused.
        source: io::Error,
    },
    /// A file or folder could not be written or created.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why the filesystem refused.
        source: io::Error,
    },
    /// A file exists that would be overwritten.
    #[error("refusing to overwrite {}: {why}; pass --force to replace it", path.display())]
    WouldOverwrite {
        /// The existing file.
        path: PathBuf,
        /// What would be lost.
        why: &'static str,
    },
    /// A replica folder already holds the raft data of a cluster.
    #[error("{} holds the raft data of an existing cluster; init makes a new one: move that folder away first (--force keeps data)", path.display())]
    ExistingReplicaData {
        /// The replica's store folder.
        path: PathBuf,
    },
    /// A file's content is not what it must be (PEM, key, certificate, TOML).
    #[error("{} is not valid: {reason}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen refused to build a key or certificate.
    #[error("cannot {action}: {source}")]
    Certificate {
        /// What was being built, e.g. `issue the certificate of replica-2`.
        action: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A certificate signing request was rejected.
    #[error("certificate signing request rejected: {reason}")]
    InvalidCsr {
        /// Why.
        reason: String,
    },
    /// A name given for a certificate breaks a rule.
    #[error("invalid {what} {value:?}: {rule}")]
    InvalidName {
        /// What kind of name, e.g. `host` or `node id`.
        what: &'static str,
        /// The name as given.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A certificate lifetime outside what the CA signs.
    #[error("certificate lifetime of {secs} s refused: {rule}")]
    InvalidTtl {
        /// The lifetime asked for, in seconds.
        secs: u64,
        /// The allowed range.
        rule: &'static str,
    },
    /// A CA certificate is expired or about to expire, so it cannot sign.
    #[error("{what} expires at {not_after}: it can sign nothing more; issue a new one")]
    Expired {
        /// Which CA, e.g. `this replica's node CA (node-ca.pem)`.
        what: String,
        /// Its expiry.
        not_after: String,
    },
    /// A `--replica` flag breaks a rule.
    #[error("--replica {value:?}: {rule}")]
    InvalidReplica {
        /// The flag's value as given.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// kairosctl's config file could not be written.
    #[error(transparent)]
    CliConfig(#[from] crate::cli_config::ConfigError),
    /// The operating system's random source failed.
    #[error("the system random number generator failed: {0}")]
    Random(getrandom::Error),
}
