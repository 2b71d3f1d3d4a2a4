//! `upgrade.toml` in the state dir: the upgrade under way, kept across the
//! reboot so the client that starts on the new image can tell how it ended.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{write_atomic, StateDir, StateError};

/// The record's file in the state dir.
pub const UPGRADE_FILE: &str = "upgrade.toml";

/// How far an upgrade got before the client stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Pulling the image; nothing on disk changed yet.
    Fetching,
    /// The executor was started; the partitions may be half written.
    Installing,
    /// The executor succeeded and the reboot was requested.
    Rebooting,
}

/// The upgrade under way, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRecord {
    /// DesiredState generation.
    pub generation: u64,
    /// Rollout it belongs to.
    #[serde(default)]
    pub rollout_id: String,
    /// How far it got.
    pub phase: Phase,
    /// Target image reference.
    pub target_image: String,
    /// Target Kairos release, e.g. `v2.4.3`.
    pub target_release: String,
    /// Target Kubernetes software version; empty on core images.
    #[serde(default)]
    pub target_software: String,
    /// Manifest digest of the fetched image; empty before the fetch ended.
    #[serde(default)]
    pub digest: String,
    /// True for a rollback desired state.
    #[serde(default)]
    pub rollback: bool,
    /// When the upgrade started, RFC 3339.
    pub started_at: String,
    /// Attempts of this generation, from 1 (a restarted client fails the
    /// generation rather than retrying it, so this stays 1 today).
    pub attempt: u32,
    /// `/proc/sys/kernel/random/boot_id` when the record was written.
    #[serde(default)]
    pub boot_id: String,
    /// `btime` of `/proc/stat` when the record was written, Unix seconds.
    #[serde(default)]
    pub boot_time: Option<i64>,
}

/// Where the record of a state dir lives.
pub fn record_path(state: &StateDir) -> PathBuf {
    state.file(UPGRADE_FILE)
}

/// Writes `record` atomically (mode 0600).
pub fn store(path: &Path, record: &UpgradeRecord) -> Result<(), StateError> {
    let text = toml::to_string(record)
        .map_err(|e| StateError::Invalid { path: path.to_path_buf(), reason: format!("cannot encode: {e}") })?;
    write_atomic(path, text.as_bytes(), 0o600)
}

/// The record at `path`; None when there is none.
pub fn load(path: &Path) -> Result<Option<UpgradeRecord>, StateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::Invalid { path: path.to_path_buf(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path: path.to_path_buf(), source }),
    }
}

/// Removes the record; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io { path: path.to_path_buf(), source }),
    }
}

/// The current boot's id from `<root>/proc/sys/kernel/random/boot_id`; empty when unreadable.
pub fn read_boot_id(root: &Path) -> String {
    std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_store_and_load_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(UPGRADE_FILE);
        assert_eq!(load(&path).expect("none"), None);
        let record = UpgradeRecord {
            generation: 7,
            rollout_id: "r-1".into(),
            phase: Phase::Rebooting,
            target_image: "quay.io/kairos/opensuse:v2.4.3".into(),
            target_release: "v2.4.3".into(),
            target_software: String::new(),
            digest: "sha256:00".into(),
            rollback: false,
            started_at: "2026-01-01T00:00:00Z".into(),
            attempt: 1,
            boot_id: "b1".into(),
            boot_time: Some(1_700_000_000),
        };
        store(&path, &record).expect("store");
        assert_eq!(load(&path).expect("load"), Some(record));
        remove(&path).expect("remove");
        remove(&path).expect("again");
        std::fs::write(&path, "generation = \"x\"").expect("write");
        let err = load(&path).expect_err("garbage");
        assert!(err.to_string().contains(UPGRADE_FILE), "{err}");
    }
}
