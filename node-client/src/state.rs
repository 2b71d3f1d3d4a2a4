//! The node's state dir: what enrollment produced and what the session must
//! remember across restarts and reboots.
//!
//! ```text
//! <state dir>/            mode 0700
//!   node.key              the node's private key, PKCS#8 PEM, mode 0600
//!   node.pem              the node certificate chain, leaf first
//!   ca.pem                CA bundle the servers' certificates chain to
//!   enrollment.toml       node id, server endpoints, enrollment labels, cert not_after
//!   status.toml           the status log: next seq, unacknowledged updates,
//!                         last status, highest desired generation
//! ```
//!
//! Every file is replaced atomically (temp file, fsync, rename, fsync of the
//! dir), so a power cut leaves either the old or the new content.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::NodeCredentials;

mod status_log;

pub(crate) use status_log::rfc3339 as rfc3339_of;
pub use status_log::{FileStatusLog, MemoryStatusLog, SharedStatusLog, StatusLog, StatusLogState, MAX_UNACKED};

/// The node's private key.
pub const KEY_FILE: &str = "node.key";
/// The node certificate chain.
pub const CERT_FILE: &str = "node.pem";
/// CA bundle for the servers.
pub const CA_FILE: &str = "ca.pem";
/// What enrollment returned besides credentials.
pub const ENROLLMENT_FILE: &str = "enrollment.toml";
/// The persisted status log.
pub const STATUS_FILE: &str = "status.toml";

/// A state file that cannot be read, written or understood; names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or dir.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// The file exists but its content is not what this client writes.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Replaces `path` with `bytes` atomically: a temp file in the same dir with
/// `mode`, fsynced, renamed over `path`, then the dir fsynced so the rename
/// itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file =
        OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    // A temp file left over from a crash keeps its old mode: set it again.
    file.set_permissions(Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// What enrollment returned besides the credentials; `enrollment.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The node's id in the fleet (CN `node-<id>` of its certificate).
    pub node_id: String,
    /// Public endpoints of every replica.
    pub server_endpoints: Vec<String>,
    /// Labels the enroll token stamped on the node.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the node certificate expires, RFC 3339.
    pub cert_not_after: String,
}

/// The state dir of one node.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The state dir at `path` (not created until something is stored).
    pub fn new(path: impl Into<PathBuf>) -> StateDir {
        StateDir { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of one file in it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// True when an enrollment is stored.
    pub fn is_enrolled(&self) -> bool {
        self.file(ENROLLMENT_FILE).exists()
    }

    /// Creates the dir (mode 0700) if missing.
    pub fn create(&self) -> Result<(), StateError> {
        fs::create_dir_all(&self.path).map_err(io_err(&self.path))?;
        fs::set_permissions(&self.path, Permissions::from_mode(0o700)).map_err(io_err(&self.path))
    }

    /// Stores the credentials and the enrollment; the key is written first
    /// and `enrollment.toml` last, so a dir counts as enrolled only when
    /// everything is in place.
    pub fn store(&self, credentials: &NodeCredentials, enrollment: &Enrollment) -> Result<(), StateError> {
        self.create()?;
        write_atomic(&self.file(KEY_FILE), credentials.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.file(CERT_FILE), credentials.cert_chain_pem.as_bytes(), 0o644)?;
        write_atomic(&self.file(CA_FILE), credentials.ca_pem.as_bytes(), 0o644)?;
        let path = self.file(ENROLLMENT_FILE);
        let text = toml::to_string(enrollment)
            .map_err(|e| StateError::Invalid { path: path.clone(), reason: format!("cannot encode: {e}") })?;
        write_atomic(&path, text.as_bytes(), 0o644)
    }

    /// Reads `enrollment.toml`.
    pub fn load_enrollment(&self) -> Result<Enrollment, StateError> {
        let path = self.file(ENROLLMENT_FILE);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        toml::from_str(&text).map_err(|e| StateError::Invalid { path, reason: e.to_string() })
    }

    /// Reads the key, the certificate chain and the CA bundle, checking that
    /// each holds the PEM block it should.
    pub fn load_credentials(&self) -> Result<NodeCredentials, StateError> {
        Ok(NodeCredentials {
            key_pem: self.read_pem(KEY_FILE, "PRIVATE KEY")?,
            cert_chain_pem: self.read_pem(CERT_FILE, "CERTIFICATE")?,
            ca_pem: self.read_pem(CA_FILE, "CERTIFICATE")?,
        })
    }

    fn read_pem(&self, name: &str, label: &str) -> Result<String, StateError> {
        let path = self.file(name);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let begin = format!("{label}-----");
        if !text.lines().any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&begin)) {
            return Err(StateError::Invalid { path, reason: format!("expected a PEM `{label}` block") });
        }
        Ok(text)
    }

    /// Opens (or starts) the persisted status log.
    pub fn status_log(&self) -> Result<FileStatusLog, StateError> {
        FileStatusLog::open(self.file(STATUS_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_the_mode_even_over_a_stale_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        fs::write(dir.path().join(".secret.tmp"), "stale").expect("stale temp");
        fs::set_permissions(dir.path().join(".secret.tmp"), Permissions::from_mode(0o666)).expect("chmod");
        write_atomic(&path, b"new", 0o600).expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "new");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join(".secret.tmp").exists());
    }

    #[test]
    fn enrollment_round_trips_and_credentials_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        assert!(!state.is_enrolled());
        let enrollment = Enrollment {
            node_id: "abc".into(),
            server_endpoints: vec!["https://a:7443".into()],
            labels: BTreeMap::from([("site".into(), "x".into())]),
            cert_not_after: "2030-01-01T00:00:00Z".into(),
        };
        let creds = NodeCredentials {
            cert_chain_pem: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n".into(),
            ca_pem: "not pem".into(),
        };
        state.store(&creds, &enrollment).expect("store");
        assert!(state.is_enrolled());
        assert_eq!(state.load_enrollment().expect("load"), enrollment);
        let mode = fs::metadata(state.path()).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let err = state.load_credentials().expect_err("ca.pem is not PEM");
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
