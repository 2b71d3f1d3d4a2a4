//! The vocabulary shared by the whole domain: node ids, image families,
//! Kubernetes software versions and upgrade targets.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use semver::Version;
use serde::{Deserialize, Serialize};

/// Error for a domain value that failed to parse; names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule} (got {value:?})")]
pub struct ValueError {
    /// The field or value kind that was being parsed, e.g. `arch`.
    pub field: &'static str,
    /// The rule the input broke, phrased so a person can fix the input.
    pub rule: String,
    /// The offending input.
    pub value: String,
}

impl ValueError {
    /// Builds an error for `field` holding `value`, which broke `rule`.
    pub fn new(field: &'static str, rule: impl Into<String>, value: impl Into<String>) -> Self {
        Self { field, rule: rule.into(), value: value.into() }
    }
}

/// A node's stable identity inside the fleet (its machine id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// Wraps a string as a node id.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Image variant: `core` has no Kubernetes engine, `standard` ships k3s (or k0s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// No Kubernetes engine.
    Core,
    /// Kubernetes engine (k3s or k0s) and the kairos provider.
    Standard,
}

impl Variant {
    /// The lowercase name used in tags and release files.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Core => "core",
            Variant::Standard => "standard",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "core" => Ok(Variant::Core),
            // Kairos v1 called the k3s images "kairos-<flavor>"; some release
            // files say "kairos" for the standard variant.
            "standard" | "kairos" => Ok(Variant::Standard),
            _ => Err(ValueError::new("variant", "must be `core` or `standard`", s)),
        }
    }
}

/// CPU architecture of an image or node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64.
    Amd64,
    /// 64-bit ARM (Raspberry Pi 3 and 4, Jetson, ...).
    Arm64,
}

impl Arch {
    /// The OCI platform name.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(ValueError::new("arch", "must be `amd64` or `arm64`", s)),
        }
    }
}

/// Checks that `s` is a lowercase tag component: `[a-z0-9][a-z0-9._-]*`.
pub(crate) fn validate_component(field: &'static str, s: &str) -> Result<(), ValueError> {
    let ok = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(ValueError::new(
            field,
            "must be lowercase letters, digits, `.`, `-` or `_`, starting with a letter or digit",
            s,
        ))
    }
}

/// The set of nodes that can run the same image: Kairos never moves a node
/// across families in an upgrade, and every family gets its own canary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImageFamily {
    /// Flavor id: the v1.x ids of the seed (`opensuse`, `ubuntu-22-lts`,
    /// `alpine-arm-rpi`, ...) or the v2+ distribution name (`opensuse`, `ubuntu`, ...).
    pub flavor: String,
    /// Upstream OS branch the flavor is pinned to (`leap-15.5`, `22.04`);
    /// empty for v1.x images, whose flavor id already pins it.
    pub flavor_release: String,
    /// Core or standard.
    pub variant: Variant,
    /// CPU architecture.
    pub arch: Arch,
    /// Board model: `generic`, `rpi`, `rpi3`, `rpi4`, ...
    pub model: String,
    /// Trusted-boot (UKI) image: signed, measured boot; never mixed with non-UKI images.
    pub trusted_boot: bool,
}

impl fmt::Display for ImageFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.flavor_release.is_empty() {
            write!(f, "{}/{}/{}/{}", self.flavor, self.variant, self.arch, self.model)?;
        } else {
            write!(f, "{}:{}/{}/{}/{}", self.flavor, self.flavor_release, self.variant, self.arch, self.model)?;
        }
        if self.trusted_boot {
            f.write_str("/uki")?;
        }
        Ok(())
    }
}

/// Kubernetes distribution shipped in standard images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum K8sDistro {
    /// Rancher k3s.
    K3s,
    /// Mirantis k0s.
    K0s,
}

impl K8sDistro {
    /// The lowercase name (`k3s`, `k0s`).
    pub fn as_str(self) -> &'static str {
        match self {
            K8sDistro::K3s => "k3s",
            K8sDistro::K0s => "k0s",
        }
    }
}

impl FromStr for K8sDistro {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "k3s" => Ok(K8sDistro::K3s),
            "k0s" => Ok(K8sDistro::K0s),
            _ => Err(ValueError::new("software", "Kubernetes distribution must be `k3s` or `k0s`", s)),
        }
    }
}

/// The Kubernetes engine version of a standard image, e.g. k3s `v1.27.6+k3s1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SoftwareVersion {
    /// k3s or k0s.
    pub distro: K8sDistro,
    /// The Kubernetes version, e.g. `1.27.6`.
    pub version: Version,
    /// The distribution's build suffix, e.g. `k3s1` or `k0s.0`.
    pub build: String,
}

impl SoftwareVersion {
    /// Parses the forms Kairos uses: `v1.27.6+k3s1`, `v1.27.6-k3s1`,
    /// `k3sv1.27.6-k3s1`, `k3s-v1.33.2-k3s1`, `k0s-v1.33.3-k0s.0`. A bare
    /// version needs the distribution named in `default_distro`.
    pub fn parse(s: &str, default_distro: Option<K8sDistro>) -> Result<Self, ValueError> {
        let err = || {
            ValueError::new(
                "software_version",
                "must look like `k3sv1.27.6-k3s1`, `k3s-v1.33.2-k3s1` or `v1.27.6+k3s1`",
                s,
            )
        };
        let t = s.trim();
        let (distro, rest) = if let Some(r) = t.strip_prefix("k3s") {
            (K8sDistro::K3s, r.strip_prefix('-').unwrap_or(r))
        } else if let Some(r) = t.strip_prefix("k0s") {
            (K8sDistro::K0s, r.strip_prefix('-').unwrap_or(r))
        } else {
            (default_distro.ok_or_else(err)?, t)
        };
        let rest = rest.strip_prefix('v').ok_or_else(err)?;
        let sep = rest.find(['+', '-']).ok_or_else(err)?;
        let (ver, build) = (&rest[..sep], &rest[sep + 1..]);
        let version = Version::parse(ver).map_err(|_| err())?;
        if build.is_empty() || !build.starts_with(distro.as_str()) {
            return Err(err());
        }
        validate_component("software_version", build)?;
        Ok(Self { distro, version, build: build.to_string() })
    }

    /// The canonical upstream spelling: `v1.27.6+k3s1`.
    pub fn upstream(&self) -> String {
        format!("v{}+{}", self.version, self.build)
    }
}

impl fmt::Display for SoftwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}+{}", self.distro.as_str(), self.version, self.build)
    }
}

/// What a rollout moves nodes to: a Kairos release and, for standard
/// images, a Kubernetes engine version (None = keep the node's current one
/// where the release offers it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// The Kairos release (semver).
    pub release: Version,
    /// The Kubernetes engine version for standard images.
    pub software: Option<SoftwareVersion>,
}

/// Role of a node in its Kubernetes cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum K3sRole {
    /// Runs the control plane (and etcd); at most one per cluster may be
    /// upgrading at a time so the cluster keeps quorum.
    Server,
    /// Worker node.
    Agent,
}

/// Which Kubernetes cluster a node belongs to and in what role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct K3sMembership {
    /// Cluster name as the node reports it.
    pub cluster: String,
    /// Server or agent.
    pub role: K3sRole,
}

impl K3sMembership {
    /// True for a server (control-plane) node.
    pub fn is_server(&self) -> bool {
        self.role == K3sRole::Server
    }
}

/// What the domain needs to know about a node to decide on it: the planner
/// and policy work on these, never on wire messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// Machine id.
    pub id: NodeId,
    /// The image family the node runs.
    pub family: ImageFamily,
    /// Installed Kairos release.
    pub release: Version,
    /// Installed Kubernetes engine (standard images).
    pub software: Option<SoftwareVersion>,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// Kubernetes cluster membership, if any.
    pub k3s: Option<K3sMembership>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_version_accepts_every_kairos_spelling() {
        let want = SoftwareVersion { distro: K8sDistro::K3s, version: Version::new(1, 27, 6), build: "k3s1".into() };
        for s in ["k3sv1.27.6-k3s1", "k3s-v1.27.6-k3s1", "k3sv1.27.6+k3s1"] {
            assert_eq!(SoftwareVersion::parse(s, None).unwrap(), want, "{s}");
        }
        assert_eq!(SoftwareVersion::parse("v1.27.6+k3s1", Some(K8sDistro::K3s)).unwrap(), want);
        let k0s = SoftwareVersion::parse("k0s-v1.33.3-k0s.0", None).unwrap();
        assert_eq!(k0s.distro, K8sDistro::K0s);
        assert_eq!(k0s.build, "k0s.0");
        assert_eq!(want.upstream(), "v1.27.6+k3s1");
    }

    #[test]
    fn software_version_rejects_garbage_naming_the_field() {
        for s in ["", "v1.27.6+k3s1", "k3sv1.27-k3s1", "k3sv1.27.6", "k3sv1.27.6-k0s1"] {
            let e = SoftwareVersion::parse(s, None).unwrap_err();
            assert_eq!(e.field, "software_version", "{s}");
        }
    }

    #[test]
    fn arch_and_variant_accept_kernel_and_v1_spellings() {
        assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::Amd64);
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert_eq!("kairos".parse::<Variant>().unwrap(), Variant::Standard);
        assert!("riscv64".parse::<Arch>().unwrap_err().to_string().contains("arch"));
    }
}
