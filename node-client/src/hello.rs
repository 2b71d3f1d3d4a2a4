//! What a node says about itself: the wire form of its identity, and the
//! Hello that opens every stream.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kairos_fleet_domain::fleet::identity::{BootState, NodeIdentity};
use kairos_fleet_proto::fleet::v1 as pb;

use crate::config::K3sRoleSetting;
use crate::local::{read_local_facts, LocalError};
use crate::CLIENT_VERSION;

/// Builds the Hello of each new stream; the session adds `last_status`.
pub trait HelloSource: Send + Sync {
    /// The node's Hello as of now (identity and boot facts may have changed
    /// since the last stream, e.g. after a reboot into a new image).
    fn hello(&self) -> Result<pb::Hello, LocalError>;
}

/// The wire identity of `identity`, read from `release_file` (the path as
/// the node sees it, e.g. `/etc/kairos-release`); see
/// [`identity_to_pb`](kairos_fleet_domain::wire::identity_to_pb).
pub fn pb_identity(identity: &NodeIdentity, release_file: &Path) -> pb::NodeIdentity {
    kairos_fleet_domain::wire::identity_to_pb(identity, &release_file.display().to_string())
}

pub use kairos_fleet_domain::wire::image_ref_of;

/// The wire boot state.
pub fn pb_boot_state(boot: BootState) -> pb::BootState {
    match boot {
        BootState::Active => pb::BootState::Active,
        BootState::Passive => pb::BootState::Passive,
        BootState::Recovery => pb::BootState::Recovery,
        BootState::Unknown => pb::BootState::Unknown,
    }
}

/// The wire k3s membership.
pub fn pb_k3s(role: K3sRoleSetting, cluster: &str) -> pb::K3sMembership {
    let role = match role {
        K3sRoleSetting::None => pb::K3sRole::None,
        K3sRoleSetting::Server => pb::K3sRole::Server,
        K3sRoleSetting::Agent => pb::K3sRole::Agent,
    };
    pb::K3sMembership { role: role as i32, cluster_name: cluster.to_string() }
}

/// Boot time from the `btime` line of `<root>/proc/stat`; None when unreadable.
pub fn read_boot_time(root: &Path) -> Option<prost_types::Timestamp> {
    let text = std::fs::read_to_string(root.join("proc/stat")).ok()?;
    let secs = text.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<i64>().ok()?;
    Some(prost_types::Timestamp { seconds: secs, nanos: 0 })
}

/// Hostname from `<root>/proc/sys/kernel/hostname`, else `<root>/etc/hostname`;
/// empty when neither is readable. Cut to 253 bytes (Hello's limit).
pub fn read_hostname(root: &Path) -> String {
    let name = ["proc/sys/kernel/hostname", "etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(root.join(p)).ok())
        .map(|t| t.trim().to_string())
        .find(|t| !t.is_empty())
        .unwrap_or_default();
    let mut end = name.len().min(253);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// The path of `file` as the node sees it, for a file read below `root`.
pub fn node_path(root: &Path, file: &Path) -> PathBuf {
    match file.strip_prefix(root) {
        Ok(rest) => Path::new("/").join(rest),
        Err(_) => file.to_path_buf(),
    }
}

/// The Hello of a real node: read from its root filesystem at every stream.
#[derive(Debug, Clone)]
pub struct LocalHello {
    /// Root filesystem (`/` on a device).
    pub root: PathBuf,
    /// Labels from the local configuration.
    pub labels: BTreeMap<String, String>,
    /// k3s role from the local configuration.
    pub k3s_role: K3sRoleSetting,
    /// k3s cluster from the local configuration.
    pub k3s_cluster: String,
}

impl HelloSource for LocalHello {
    fn hello(&self) -> Result<pb::Hello, LocalError> {
        let facts = read_local_facts(&self.root)?;
        let identity = pb_identity(&facts.identity, &node_path(&self.root, &facts.identity_source));
        Ok(pb::Hello {
            current_image_ref: identity.image_repo.clone(),
            identity: Some(identity),
            boot_state: pb_boot_state(facts.boot) as i32,
            upgrade_failure: facts.upgrade_failure_marker,
            labels: self.labels.clone().into_iter().collect(),
            k3s: Some(pb_k3s(self.k3s_role, &self.k3s_cluster)),
            client_version: CLIENT_VERSION.to_string(),
            hostname: read_hostname(&self.root),
            boot_time: read_boot_time(&self.root),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "KAIROS_FLAVOR=opensuse\nKAIROS_FLAVOR_RELEASE=leap-15.5\nKAIROS_VARIANT=standard\n\
        KAIROS_MODEL=generic\nKAIROS_ARCH=amd64\nKAIROS_RELEASE=v2.4.2\nKAIROS_SOFTWARE_VERSION=v1.27.6+k3s1\n\
        KAIROS_SOFTWARE_VERSION_PREFIX=k3s\n\
        KAIROS_IMAGE_REPO=quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1\n";

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in [
            ("etc/kairos-release", RELEASE),
            ("etc/machine-id", "0123456789abcdef0123456789abcdef\n"),
            ("proc/cmdline", "BOOT_IMAGE=/cOS/active.img root=LABEL=COS_STATE cos-img/filename=/cOS/active.img\n"),
            ("proc/stat", "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            ("etc/hostname", "edge-7\n"),
        ] {
            let file = dir.path().join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, text).expect("write");
        }
        dir
    }

    #[test]
    fn identity_maps_every_documented_field() {
        let identity = NodeIdentity::parse(RELEASE).expect("identity");
        let pb = pb_identity(&identity, Path::new("/etc/kairos-release"));
        assert_eq!(
            (pb.flavor.as_str(), pb.flavor_release.as_str(), pb.variant.as_str(), pb.model.as_str(), pb.arch.as_str()),
            ("opensuse", "leap-15.5", "standard", "generic", "amd64")
        );
        assert_eq!(pb.release, "v2.4.2");
        assert_eq!(pb.software_version, "v1.27.6+k3s1");
        assert_eq!(pb.software_version_prefix, "k3s");
        assert_eq!(pb.image_repo, "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1");
        assert_eq!(pb.image_label, "leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1");
        assert_eq!(pb.release_file, "/etc/kairos-release");
    }

    #[test]
    fn local_hello_reads_boot_facts_below_the_root() {
        let dir = root();
        let source = LocalHello {
            root: dir.path().to_path_buf(),
            labels: BTreeMap::from([("site".into(), "berlin".into())]),
            k3s_role: K3sRoleSetting::Agent,
            k3s_cluster: "edge".into(),
        };
        let hello = source.hello().expect("hello");
        assert_eq!(hello.boot_state(), pb::BootState::Active);
        assert_eq!(hello.boot_time, Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }));
        assert_eq!(hello.hostname, "edge-7");
        assert_eq!(hello.client_version, CLIENT_VERSION);
        assert_eq!(hello.identity.as_ref().map(|i| i.release_file.as_str()), Some("/etc/kairos-release"));
        assert_eq!(hello.k3s.as_ref().map(|k| k.role()), Some(pb::K3sRole::Agent));
        assert!(hello.current_image_ref.starts_with("quay.io/kairos/opensuse:"));
        assert!(!hello.upgrade_failure);
    }

    #[test]
    fn missing_proc_files_leave_boot_time_unset() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_boot_time(dir.path()), None);
        assert_eq!(read_hostname(dir.path()), "");
    }
}
