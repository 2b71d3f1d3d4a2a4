//! The virtual fleet: deterministic machine ids, identities drawn round-robin
//! over every image family of the seed support matrix, and the mutable
//! "machine" each virtual node runs on (it changes image on a simulated
//! reboot).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use kairos_controlplane::fleet::identity::{NodeIdentity, OS_RELEASE_PATH};
use kairos_controlplane::fleet::image::{ImageRef, RegistryPrefix, TagGrammar};
use kairos_controlplane::fleet::matrix::seed_families;
use kairos_controlplane::fleet::model::{K8sDistro, SoftwareVersion, Variant};
use kairos_fleet_proto::fleet::v1 as pb;
use semver::Version;
use sha2::{Digest, Sha256};

use crate::config::K3sRoleSetting;
use crate::hello::{image_ref_of, pb_identity, pb_k3s, HelloSource};
use crate::local::LocalError;
use crate::CLIENT_VERSION;

/// Kairos v1.x releases the virtual fleet starts on, spread over the nodes
/// so a rollout finds nodes already current, one patch behind and one
/// minor behind.
const RELEASES: [(u64, u64, u64); 3] = [(1, 6, 0), (1, 5, 1), (1, 5, 0)];
/// k3s of the standard images, as the seed spells it.
const K3S_VERSION: &str = "k3sv1.26.1-k3s1";
/// Standard nodes per simulated k3s cluster.
pub const CLUSTER_SIZE: usize = 10;
/// Server nodes per simulated k3s cluster (an HA control plane).
pub const SERVERS_PER_CLUSTER: usize = 3;

/// The machine id of virtual node `index` under `seed`: 32 lowercase hex
/// digits, the same on every run with the same seed.
pub fn machine_id(seed: u64, index: usize) -> String {
    let digest = Sha256::digest(format!("kairos-fleet-simulate/{seed}/{index}").as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Who virtual node `index` is: its identity and k3s membership.
#[derive(Debug, Clone)]
pub struct VirtualIdentity {
    /// Identity as a release file would give it.
    pub identity: NodeIdentity,
    /// k3s role.
    pub k3s_role: K3sRoleSetting,
    /// k3s cluster name; empty without a role.
    pub k3s_cluster: String,
}

/// The identity of virtual node `index`: families round-robin over the seed
/// matrix (every flavor, core and standard, amd64 and the arm64 Raspberry
/// Pi flavors), releases spread, standard nodes in k3s clusters of
/// [`CLUSTER_SIZE`] with [`SERVERS_PER_CLUSTER`] servers each.
pub fn virtual_identity(seed: u64, index: usize) -> VirtualIdentity {
    let families = seed_families();
    let family = families[index % families.len()].clone();
    let (major, minor, patch) = RELEASES[(index / families.len()) % RELEASES.len()];
    let release = Version::new(major, minor, patch);
    let software = match family.variant {
        Variant::Core => None,
        Variant::Standard => SoftwareVersion::parse(K3S_VERSION, Some(K8sDistro::K3s)).ok(),
    };
    let image =
        ImageRef::for_target(&RegistryPrefix::default(), &family, TagGrammar::V1, &release, software.as_ref()).ok();
    let identity = NodeIdentity {
        flavor: family.flavor.clone(),
        flavor_release: family.flavor_release.clone(),
        variant: family.variant,
        model: family.model.clone(),
        arch: family.arch,
        release,
        software,
        image_repo_raw: image.as_ref().map(ToString::to_string),
        image_repo: image,
        trusted_boot: family.trusted_boot,
        fips: false,
    };
    let (k3s_role, k3s_cluster) = match family.variant {
        Variant::Core => (K3sRoleSetting::None, String::new()),
        Variant::Standard => {
            // Standard nodes are every other index: number them among themselves.
            let k = index / 2;
            let role =
                if k % CLUSTER_SIZE < SERVERS_PER_CLUSTER { K3sRoleSetting::Server } else { K3sRoleSetting::Agent };
            (role, format!("sim-{seed}-{}", k / CLUSTER_SIZE))
        }
    };
    VirtualIdentity { identity, k3s_role, k3s_cluster }
}

/// What changes on a virtual machine: its image and its boot time.
#[derive(Debug, Clone)]
struct MachineState {
    identity: NodeIdentity,
    boot_time: SystemTime,
}

/// A virtual node's machine; its Hello reflects the image it runs now.
#[derive(Debug)]
pub struct VirtualMachine {
    /// The node's machine id.
    pub machine_id: String,
    /// Hostname shown by the control plane.
    pub hostname: String,
    labels: BTreeMap<String, String>,
    k3s: pb::K3sMembership,
    state: Mutex<MachineState>,
}

impl VirtualMachine {
    /// Virtual node `index` of a simulation with `seed`, booted `uptime` ago.
    pub fn new(seed: u64, index: usize, uptime: Duration) -> VirtualMachine {
        let who = virtual_identity(seed, index);
        VirtualMachine {
            machine_id: machine_id(seed, index),
            hostname: format!("sim-{seed}-{index:05}"),
            labels: BTreeMap::from([("simulated".to_string(), "true".to_string())]),
            k3s: pb_k3s(who.k3s_role, &who.k3s_cluster),
            state: Mutex::new(MachineState {
                identity: who.identity,
                boot_time: SystemTime::now().checked_sub(uptime).unwrap_or_else(SystemTime::now),
            }),
        }
    }

    /// The image the machine runs now.
    pub fn identity(&self) -> NodeIdentity {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).identity.clone()
    }

    /// The wire identity, as read from `/etc/os-release` (v1.x images).
    pub fn pb_identity(&self) -> pb::NodeIdentity {
        pb_identity(&self.identity(), Path::new(OS_RELEASE_PATH))
    }

    /// Boots into `identity` at `boot_time`.
    pub fn reboot_into(&self, identity: NodeIdentity, boot_time: SystemTime) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = MachineState { identity, boot_time };
    }
}

impl HelloSource for VirtualMachine {
    fn hello(&self) -> Result<pb::Hello, LocalError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let identity = pb_identity(&state.identity, Path::new(OS_RELEASE_PATH));
        Ok(pb::Hello {
            current_image_ref: image_ref_of(&state.identity),
            identity: Some(identity),
            boot_state: pb::BootState::Active as i32,
            labels: self.labels.clone().into_iter().collect(),
            k3s: Some(self.k3s.clone()),
            client_version: CLIENT_VERSION.to_string(),
            hostname: self.hostname.clone(),
            boot_time: Some(prost_types::Timestamp::from(state.boot_time)),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kairos_controlplane::fleet::matrix::SEED_FLAVORS;
    use kairos_controlplane::fleet::model::Arch;

    use super::*;

    #[test]
    fn machine_ids_are_deterministic_distinct_lowercase_hex() {
        assert_eq!(machine_id(7, 3), machine_id(7, 3));
        let ids: BTreeSet<String> = (0..1000).map(|i| machine_id(7, i)).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
        assert_ne!(machine_id(7, 0), machine_id(8, 0));
        assert!(kairos_controlplane::fleet::identity::parse_machine_id(&machine_id(1, 0)).is_ok());
    }

    #[test]
    fn sixteen_nodes_cover_every_seed_family_with_k3s_on_standard_only() {
        let who: Vec<VirtualIdentity> = (0..16).map(|i| virtual_identity(1, i)).collect();
        let families: BTreeSet<String> = who.iter().map(|w| w.identity.family().to_string()).collect();
        assert_eq!(families.len(), 16);
        let flavors: BTreeSet<&str> = who.iter().map(|w| w.identity.flavor.as_str()).collect();
        assert_eq!(flavors, SEED_FLAVORS.iter().map(|f| f.id).collect());
        for w in &who {
            let standard = w.identity.variant == Variant::Standard;
            assert_eq!(w.identity.software.is_some(), standard, "{:?}", w.identity.flavor);
            assert_eq!(w.k3s_role != K3sRoleSetting::None, standard);
            assert_eq!(w.identity.model == "rpi", w.identity.arch == Arch::Arm64);
            let image = w.identity.image_repo.as_ref().expect("every virtual image has a reference");
            assert_eq!(image.family(), w.identity.family());
        }
    }

    #[test]
    fn hello_identity_round_trips_through_the_release_file_parser() {
        let machine = VirtualMachine::new(1, 5, Duration::from_secs(60));
        let hello = machine.hello().expect("hello");
        let id = hello.identity.expect("identity");
        let text = format!(
            "FLAVOR={}\nVARIANT={}\nIMAGE_REPO={}\nKAIROS_RELEASE={}\n",
            id.flavor, id.variant, id.image_repo, id.release
        );
        let parsed = NodeIdentity::parse(&text).expect("parses");
        assert_eq!(parsed.family(), machine.identity().family());
        assert_eq!(hello.current_image_ref, id.image_repo);
    }
}
