//! The virtual fleet: deterministic machine ids, identities drawn round-robin
//! over every image family of the seed support matrix, and the mutable
//! "machine" each virtual node runs on (it changes image on a simulated
//! reboot, or falls back to its passive partition when the new image does
//! not boot).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use kairos_fleet_domain::fleet::identity::{NodeIdentity, OS_RELEASE_PATH};
use kairos_fleet_domain::fleet::image::{ImageRef, RegistryPrefix, TagGrammar};
use kairos_fleet_domain::fleet::matrix::seed_families;
use kairos_fleet_domain::fleet::model::ImageFamily;
use kairos_fleet_domain::fleet::model::{K8sDistro, SoftwareVersion, Variant};
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

/// Why a start release cannot be used for the virtual fleet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartReleaseError {
    /// Not a semantic version.
    #[error("{input:?} is not a Kairos release such as v1.6.0: {reason}")]
    NotSemver {
        /// What was given.
        input: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Outside the releases the seed flavors' v1 tag grammar can name.
    #[error(
        "v{release}: the virtual fleet runs the Kairos v1.x seed flavors, whose images are named in \
         the v1 tag grammar (releases before v2.4.0)"
    )]
    NotV1 {
        /// The release.
        release: Version,
    },
    /// No image reference of some family can carry the release.
    #[error("v{release}: no image of {family} can carry it: {reason}")]
    NoImage {
        /// The release.
        release: Version,
        /// The family that failed.
        family: String,
        /// Why.
        reason: String,
    },
}

/// Parses the release every virtual node starts on (`v1.6.0` or `1.6.0`)
/// and checks that every seed family has an image at it.
pub fn parse_start_release(input: &str) -> Result<Version, StartReleaseError> {
    let trimmed = input.trim();
    let release = Version::parse(trimmed.strip_prefix('v').unwrap_or(trimmed))
        .map_err(|e| StartReleaseError::NotSemver { input: input.to_string(), reason: e.to_string() })?;
    check_start_release(&release)?;
    Ok(release)
}

/// Checks that every seed family has an image at `release` in the v1 grammar.
pub fn check_start_release(release: &Version) -> Result<(), StartReleaseError> {
    if TagGrammar::for_release(release) != TagGrammar::V1 {
        return Err(StartReleaseError::NotV1 { release: release.clone() });
    }
    for family in seed_families() {
        seed_image(&family, release).map_err(|reason| StartReleaseError::NoImage {
            release: release.clone(),
            family: family.to_string(),
            reason,
        })?;
    }
    Ok(())
}

/// The engine of a seed family's images: k3s on standard, none on core.
fn seed_software(family: &ImageFamily) -> Option<SoftwareVersion> {
    match family.variant {
        Variant::Core => None,
        Variant::Standard => SoftwareVersion::parse(K3S_VERSION, Some(K8sDistro::K3s)).ok(),
    }
}

/// The upstream v1 image of a seed family at `release`.
fn seed_image(family: &ImageFamily, release: &Version) -> Result<ImageRef, String> {
    ImageRef::for_target(&RegistryPrefix::default(), family, TagGrammar::V1, release, seed_software(family).as_ref())
        .map_err(|e| e.to_string())
}

/// The identity of virtual node `index`: families round-robin over the seed
/// matrix (every flavor, core and standard, amd64 and the arm64 Raspberry
/// Pi flavors), on `release` or else releases spread over [`RELEASES`],
/// standard nodes in k3s clusters of [`CLUSTER_SIZE`] with
/// [`SERVERS_PER_CLUSTER`] servers each.
pub fn virtual_identity(seed: u64, index: usize, release: Option<&Version>) -> VirtualIdentity {
    let families = seed_families();
    let family = families[index % families.len()].clone();
    let release = release.cloned().unwrap_or_else(|| {
        let (major, minor, patch) = RELEASES[(index / families.len()) % RELEASES.len()];
        Version::new(major, minor, patch)
    });
    let software = seed_software(&family);
    let image = seed_image(&family, &release).ok();
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

/// What changes on a virtual machine: its image, the image its passive
/// partition keeps, what it booted from and when.
#[derive(Debug, Clone)]
struct MachineState {
    identity: NodeIdentity,
    /// Digest of the running image; empty until the first upgrade pinned one.
    digest: String,
    /// The image before the last upgrade (reference, digest); empty before any.
    previous: (String, String),
    boot_state: pb::BootState,
    /// `/run/cos/upgrade_failure` exists: the last upgrade fell back.
    upgrade_failure: bool,
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
    /// Virtual node `index` of a simulation with `seed`, booted `uptime`
    /// ago, on `release` (else on a release spread over the fleet).
    pub fn new(seed: u64, index: usize, uptime: Duration, release: Option<&Version>) -> VirtualMachine {
        let who = virtual_identity(seed, index, release);
        VirtualMachine {
            machine_id: machine_id(seed, index),
            hostname: format!("sim-{seed}-{index:05}"),
            labels: BTreeMap::from([("simulated".to_string(), "true".to_string())]),
            k3s: pb_k3s(who.k3s_role, &who.k3s_cluster),
            state: Mutex::new(MachineState {
                identity: who.identity,
                digest: String::new(),
                previous: (String::new(), String::new()),
                boot_state: pb::BootState::Active,
                upgrade_failure: false,
                boot_time: SystemTime::now().checked_sub(uptime).unwrap_or_else(SystemTime::now),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MachineState> {
        // Every change replaces the state whole, so a poisoned lock holds a consistent one.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The image the machine runs now.
    pub fn identity(&self) -> NodeIdentity {
        self.state().identity.clone()
    }

    /// Digest of the image the machine runs now; empty when unknown.
    pub fn digest(&self) -> String {
        self.state().digest.clone()
    }

    /// The partition the machine booted from.
    pub fn boot_state(&self) -> pb::BootState {
        self.state().boot_state
    }

    /// The wire identity, as read from `/etc/os-release` (v1.x images).
    pub fn pb_identity(&self) -> pb::NodeIdentity {
        pb_identity(&self.identity(), Path::new(OS_RELEASE_PATH))
    }

    /// Boots into `identity` (image digest `digest`) from the active
    /// partition at `boot_time`; the image it ran becomes the previous one.
    pub fn reboot_into(&self, identity: NodeIdentity, digest: String, boot_time: SystemTime) {
        let mut state = self.state();
        let previous = (image_ref_of(&state.identity), std::mem::take(&mut state.digest));
        *state = MachineState {
            identity,
            digest,
            previous,
            boot_state: pb::BootState::Active,
            upgrade_failure: false,
            boot_time,
        };
    }

    /// The new image did not boot: the machine comes back at `boot_time`
    /// on the image it ran, from the passive partition, with
    /// `/run/cos/upgrade_failure` present.
    pub fn fall_back(&self, boot_time: SystemTime) {
        let mut state = self.state();
        state.boot_state = pb::BootState::Passive;
        state.upgrade_failure = true;
        state.boot_time = boot_time;
    }
}

impl HelloSource for VirtualMachine {
    fn hello(&self) -> Result<pb::Hello, LocalError> {
        let state = self.state().clone();
        let identity = pb_identity(&state.identity, Path::new(OS_RELEASE_PATH));
        Ok(pb::Hello {
            current_image_ref: image_ref_of(&state.identity),
            current_image_digest: state.digest,
            previous_image_ref: state.previous.0,
            previous_image_digest: state.previous.1,
            identity: Some(identity),
            boot_state: state.boot_state as i32,
            upgrade_failure: state.upgrade_failure,
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

    use kairos_fleet_domain::fleet::matrix::SEED_FLAVORS;
    use kairos_fleet_domain::fleet::model::Arch;

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
        assert!(kairos_fleet_domain::fleet::identity::parse_machine_id(&machine_id(1, 0)).is_ok());
    }

    #[test]
    fn sixteen_nodes_cover_every_seed_family_with_k3s_on_standard_only() {
        let who: Vec<VirtualIdentity> = (0..16).map(|i| virtual_identity(1, i, None)).collect();
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
    fn a_start_release_puts_every_node_on_it_and_must_be_a_v1_grammar_semver() {
        let release = parse_start_release("v1.5.0").expect("v1.5.0");
        assert_eq!(parse_start_release(" 1.5.0 "), Ok(release.clone()));
        for i in 0..48 {
            let who = virtual_identity(1, i, Some(&release));
            assert_eq!(who.identity.release, release);
            let image = who.identity.image_repo.expect("an image");
            assert_eq!(image.release(), &release);
        }
        let spread: BTreeSet<Version> = (0..48).map(|i| virtual_identity(1, i, None).identity.release).collect();
        assert_eq!(spread.len(), RELEASES.len());
        assert!(matches!(parse_start_release("1.5"), Err(StartReleaseError::NotSemver { .. })));
        assert!(matches!(parse_start_release("latest"), Err(StartReleaseError::NotSemver { .. })));
        let v2 = parse_start_release("v2.4.0").expect_err("v2 grammar");
        assert!(matches!(v2, StartReleaseError::NotV1 { .. }) && v2.to_string().contains("v2.4.0"), "{v2}");
        assert!(matches!(parse_start_release("v1.7.0-core"), Err(StartReleaseError::NoImage { .. })));
    }

    #[test]
    fn a_fallback_boots_the_passive_partition_on_the_old_image_and_an_upgrade_keeps_the_previous_one() {
        let machine = VirtualMachine::new(1, 0, Duration::from_secs(60), Some(&Version::new(1, 5, 0)));
        let first = machine.hello().expect("hello");
        assert_eq!((first.boot_state(), first.upgrade_failure), (pb::BootState::Active, false));
        assert!(first.previous_image_ref.is_empty() && first.current_image_digest.is_empty());

        let later = SystemTime::now() + Duration::from_secs(5);
        machine.fall_back(later);
        let fallen = machine.hello().expect("hello");
        assert_eq!((fallen.boot_state(), fallen.upgrade_failure), (pb::BootState::Passive, true));
        assert_eq!(fallen.current_image_ref, first.current_image_ref, "still the old image");
        assert_eq!(fallen.boot_time, Some(prost_types::Timestamp::from(later)));

        let mut next = machine.identity();
        next.release = Version::new(1, 6, 0);
        next.image_repo_raw = Some("quay.io/kairos/core-opensuse:v1.6.0".into());
        machine.reboot_into(next, format!("sha256:{}", "a".repeat(64)), later);
        let upgraded = machine.hello().expect("hello");
        assert_eq!((upgraded.boot_state(), upgraded.upgrade_failure), (pb::BootState::Active, false));
        assert_eq!(upgraded.current_image_ref, "quay.io/kairos/core-opensuse:v1.6.0");
        assert_eq!(upgraded.current_image_digest, format!("sha256:{}", "a".repeat(64)));
        assert_eq!(upgraded.previous_image_ref, first.current_image_ref, "the rollback target");
    }

    #[test]
    fn hello_identity_round_trips_through_the_release_file_parser() {
        let machine = VirtualMachine::new(1, 5, Duration::from_secs(60), None);
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
