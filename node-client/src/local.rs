//! What the node knows about itself from its own filesystem: identity,
//! boot state, the fallback marker and the machine id.

use std::io;
use std::path::{Path, PathBuf};

use kairos_fleet_domain::fleet::identity::{boot_state_from_cmdline, parse_machine_id, BootState, NodeIdentity};
use kairos_fleet_domain::fleet::model::NodeId;

/// Errors reading the node's local facts; each names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// A file was read but its content is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The node's facts as read from a root filesystem.
#[derive(Debug, Clone)]
pub struct LocalFacts {
    /// Machine id from `/etc/machine-id`.
    pub machine_id: NodeId,
    /// Identity from `/etc/kairos-release` or `/etc/os-release`.
    pub identity: NodeIdentity,
    /// The file the identity came from.
    pub identity_source: PathBuf,
    /// Boot state from `/proc/cmdline`.
    pub boot: BootState,
    /// `/run/cos/upgrade_failure` exists: the last upgrade fell back.
    pub upgrade_failure_marker: bool,
}

fn read(path: &Path) -> Result<String, LocalError> {
    std::fs::read_to_string(path).map_err(|source| LocalError::Read { path: path.to_path_buf(), source })
}

/// Reads identity, boot state, fallback marker and machine id below `root`
/// (`/` on a device, a test folder in tests). `/etc/kairos-release` wins over
/// the v1.x `/etc/os-release`.
pub fn read_local_facts(root: &Path) -> Result<LocalFacts, LocalError> {
    let release = root.join("etc/kairos-release");
    let identity_source = if release.exists() { release } else { root.join("etc/os-release") };
    let identity = NodeIdentity::parse(&read(&identity_source)?)
        .map_err(|e| LocalError::Invalid { path: identity_source.clone(), message: e.to_string() })?;
    let machine_id_path = root.join("etc/machine-id");
    let machine_id = parse_machine_id(&read(&machine_id_path)?)
        .map_err(|e| LocalError::Invalid { path: machine_id_path, message: e.to_string() })?;
    let cmdline = root.join("proc/cmdline");
    let boot = match std::fs::read_to_string(&cmdline) {
        Ok(text) => boot_state_from_cmdline(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BootState::Unknown,
        Err(source) => return Err(LocalError::Read { path: cmdline, source }),
    };
    let upgrade_failure_marker = root.join("run/cos/upgrade_failure").exists();
    Ok(LocalFacts { machine_id, identity, identity_source, boot, upgrade_failure_marker })
}
