//! The Kairos image support matrix (Kairos v1.x naming): which flavors
//! exist, where their core and standard images live, and which architecture,
//! board model and init system each one has.

use super::model::{Arch, ImageFamily, Variant};

/// Init system of a flavor: the node client must run under both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitSystem {
    /// openSUSE and Ubuntu flavors.
    Systemd,
    /// Alpine flavors.
    OpenRc,
}

/// One row of the support matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlavorSpec {
    /// Flavor id as used in v1.x repositories and `/etc/os-release`.
    pub id: &'static str,
    /// Repository of the flavor's images from Kairos v2.4 on, named after
    /// the distribution it is built from (e.g. `alpine` for `alpine-arm-rpi`).
    pub distribution: &'static str,
    /// Human description, from the seed table.
    pub description: &'static str,
    /// The upstream OS branch the flavor is pinned to.
    pub upstream: &'static str,
    /// CPU architecture of the images.
    pub arch: Arch,
    /// Board model (`generic` or `rpi` for Raspberry Pi 3 and 4).
    pub model: &'static str,
    /// Init system.
    pub init: InitSystem,
}

impl FlavorSpec {
    /// Repository name (without registry/org) of this flavor's images of `variant`:
    /// `core-<id>` or `kairos-<id>`.
    pub fn repository(&self, variant: Variant) -> String {
        match variant {
            Variant::Core => format!("core-{}", self.id),
            Variant::Standard => format!("kairos-{}", self.id),
        }
    }

    /// The image family of this flavor's `variant` images.
    pub fn family(&self, variant: Variant) -> ImageFamily {
        ImageFamily {
            flavor: self.id.to_string(),
            flavor_release: String::new(),
            variant,
            arch: self.arch,
            model: self.model.to_string(),
            // v1 images have no trusted-boot variant.
            trusted_boot: false,
        }
    }
}

/// Registry and organisation of the upstream images; mirrors replace it by configuration.
pub const DEFAULT_REGISTRY_PREFIX: &str = "quay.io/kairos";

/// Every flavor of the seed's support matrix.
pub const SEED_FLAVORS: [FlavorSpec; 8] = [
    FlavorSpec {
        id: "opensuse",
        distribution: "opensuse",
        description: "openSUSE based",
        upstream: "openSUSE Leap 15.4",
        arch: Arch::Amd64,
        model: "generic",
        init: InitSystem::Systemd,
    },
    FlavorSpec {
        id: "ubuntu",
        distribution: "ubuntu",
        description: "Ubuntu based (rolling)",
        upstream: "latest Ubuntu release",
        arch: Arch::Amd64,
        model: "generic",
        init: InitSystem::Systemd,
    },
    FlavorSpec {
        id: "ubuntu-22-lts",
        distribution: "ubuntu",
        description: "Ubuntu based (22 LTS)",
        upstream: "Ubuntu 22.04",
        arch: Arch::Amd64,
        model: "generic",
        init: InitSystem::Systemd,
    },
    FlavorSpec {
        id: "ubuntu-20-lts",
        distribution: "ubuntu",
        description: "Ubuntu based (20 LTS)",
        upstream: "Ubuntu 20.04",
        arch: Arch::Amd64,
        model: "generic",
        init: InitSystem::Systemd,
    },
    FlavorSpec {
        id: "alpine-opensuse-leap",
        distribution: "alpine",
        description: "Alpine Linux based (openSUSE kernel)",
        upstream: "Alpine Linux with the openSUSE Leap kernel",
        arch: Arch::Amd64,
        model: "generic",
        init: InitSystem::OpenRc,
    },
    FlavorSpec {
        id: "alpine-ubuntu",
        distribution: "alpine",
        description: "Alpine Linux based (Ubuntu kernel)",
        upstream: "Alpine Linux with the Ubuntu kernel",
        arch: Arch::Amd64,
        model: "generic",
        init: InitSystem::OpenRc,
    },
    FlavorSpec {
        id: "opensuse-arm-rpi",
        distribution: "opensuse",
        description: "openSUSE based (Raspberry Pi 3 and 4, arm64)",
        upstream: "openSUSE Leap 15.4",
        arch: Arch::Arm64,
        model: "rpi",
        init: InitSystem::Systemd,
    },
    FlavorSpec {
        id: "alpine-arm-rpi",
        distribution: "alpine",
        description: "Alpine Linux based (Raspberry Pi 3 and 4, arm64)",
        upstream: "Alpine Linux",
        arch: Arch::Arm64,
        model: "rpi",
        init: InitSystem::OpenRc,
    },
];

/// Looks up a seed flavor by its v1.x id.
pub fn seed_flavor(id: &str) -> Option<&'static FlavorSpec> {
    SEED_FLAVORS.iter().find(|f| f.id == id)
}

/// Every image family of the seed matrix: 8 flavors × core/standard.
pub fn seed_families() -> Vec<ImageFamily> {
    SEED_FLAVORS.iter().flat_map(|f| [f.family(Variant::Core), f.family(Variant::Standard)]).collect()
}

/// Repository names (without registry/org) the seed flavors publish to: the
/// v1.x `core-<id>` and `kairos-<id>` names, then each v2+ distribution name once.
pub fn seed_repositories() -> Vec<String> {
    let mut repositories: Vec<String> =
        SEED_FLAVORS.iter().flat_map(|f| [f.repository(Variant::Core), f.repository(Variant::Standard)]).collect();
    for flavor in &SEED_FLAVORS {
        if !repositories.iter().any(|r| r == flavor.distribution) {
            repositories.push(flavor.distribution.to_string());
        }
    }
    repositories
}

/// Init system for a flavor id of any generation: Alpine flavors use OpenRC.
pub fn init_system(flavor: &str) -> InitSystem {
    match seed_flavor(flavor) {
        Some(spec) => spec.init,
        None if flavor.starts_with("alpine") => InitSystem::OpenRc,
        None => InitSystem::Systemd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_matrix_has_sixteen_families_with_rpi_on_arm64() {
        let fams = seed_families();
        assert_eq!(fams.len(), 16);
        let rpi: Vec<_> = fams.iter().filter(|f| f.model == "rpi").collect();
        assert_eq!(rpi.len(), 4);
        assert!(rpi.iter().all(|f| f.arch == Arch::Arm64));
        assert!(fams.iter().filter(|f| f.model == "generic").all(|f| f.arch == Arch::Amd64));
    }

    #[test]
    fn seed_repositories_follow_core_and_kairos_prefixes() {
        let f = seed_flavor("alpine-arm-rpi").unwrap();
        assert_eq!(f.repository(Variant::Core), "core-alpine-arm-rpi");
        assert_eq!(f.repository(Variant::Standard), "kairos-alpine-arm-rpi");
        assert!(seed_flavor("debian").is_none());
    }

    #[test]
    fn seed_repositories_are_the_v1_names_then_each_distribution_once() {
        let repos = seed_repositories();
        assert_eq!(repos.len(), 16 + 3, "{repos:?}");
        assert_eq!(&repos[..2], ["core-opensuse", "kairos-opensuse"]);
        assert_eq!(&repos[16..], ["opensuse", "ubuntu", "alpine"]);
    }

    #[test]
    fn alpine_flavors_run_openrc() {
        assert_eq!(init_system("alpine-ubuntu"), InitSystem::OpenRc);
        assert_eq!(init_system("alpine"), InitSystem::OpenRc);
        assert_eq!(init_system("ubuntu-22-lts"), InitSystem::Systemd);
        assert_eq!(init_system("rockylinux"), InitSystem::Systemd);
    }
}
