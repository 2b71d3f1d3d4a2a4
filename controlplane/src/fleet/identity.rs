//! Node identity from `/etc/kairos-release` or v1.x `/etc/os-release`, boot
//! state from `/proc/cmdline`, and the machine id.
//!
//! The node client reads the files; everything here works on their text.

use std::collections::BTreeMap;

use semver::Version;

use super::image::{leading_release, ImageRef};
use super::matrix;
use super::model::{validate_component, Arch, ImageFamily, K8sDistro, NodeId, SoftwareVersion, ValueError, Variant};

/// Release file of Kairos v2 and later.
pub const KAIROS_RELEASE_PATH: &str = "/etc/kairos-release";
/// Release file of Kairos v1.x, shared with the OS's own keys.
pub const OS_RELEASE_PATH: &str = "/etc/os-release";
/// Kernel command line, which names the booted image.
pub const CMDLINE_PATH: &str = "/proc/cmdline";
/// Left behind when a node fell back after a failed upgrade.
pub const UPGRADE_FAILURE_MARKER: &str = "/run/cos/upgrade_failure";
/// systemd machine id, the node's id in the fleet.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// Error for a release file or machine id that does not identify a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A line is not shell-style `KEY=value`.
    #[error("release file line {line}: {rule}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The rule the line broke.
        rule: &'static str,
    },
    /// A required field was found nowhere.
    #[error("{field}: not found; looked for {looked_for}")]
    Missing {
        /// The identity field, e.g. `arch`.
        field: &'static str,
        /// Every key and fallback that was tried.
        looked_for: &'static str,
    },
    /// A value is present but malformed.
    #[error("{key}: {error}")]
    Invalid {
        /// The key (or file) the value came from.
        key: &'static str,
        /// The field and the rule it broke.
        error: ValueError,
    },
}

/// What a node is running, as its release file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Flavor id (`opensuse-arm-rpi` for v1, `ubuntu` for v2+).
    pub flavor: String,
    /// Upstream OS branch (`24.04`, `leap-15.5`); empty for v1 flavors.
    pub flavor_release: String,
    /// Core or standard.
    pub variant: Variant,
    /// Board model (`generic`, `rpi`, `rpi4`, ...).
    pub model: String,
    /// CPU architecture.
    pub arch: Arch,
    /// Installed Kairos release.
    pub release: Version,
    /// Installed Kubernetes engine, if the node names one.
    pub software: Option<SoftwareVersion>,
    /// The image reference as the release file wrote it, even when it does not parse.
    pub image_repo_raw: Option<String>,
    /// The image reference, when it parses.
    pub image_repo: Option<ImageRef>,
    /// Booted from a trusted-boot (UKI) image.
    pub trusted_boot: bool,
    /// Built with FIPS-validated crypto.
    pub fips: bool,
}

/// Where each field is looked for, in order; quoted in `Missing` errors.
const FLAVOR_SOURCES: &str = "KAIROS_FLAVOR, FLAVOR, the image reference in KAIROS_IMAGE_REPO/IMAGE_REPO";
const VARIANT_SOURCES: &str = "KAIROS_VARIANT, VARIANT, the image reference in KAIROS_IMAGE_REPO/IMAGE_REPO";
const ARCH_SOURCES: &str =
    "KAIROS_ARCH, KAIROS_TARGETARCH, the image reference in KAIROS_IMAGE_REPO/IMAGE_REPO, the v1 flavor table";
const MODEL_SOURCES: &str = "KAIROS_MODEL, the image reference in KAIROS_IMAGE_REPO/IMAGE_REPO, the v1 flavor table";
const RELEASE_SOURCES: &str = "KAIROS_RELEASE, KAIROS_VERSION, the image reference in KAIROS_IMAGE_REPO/IMAGE_REPO";

impl NodeIdentity {
    /// Parses the text of `/etc/kairos-release` or a v1.x `/etc/os-release`.
    pub fn parse(release_file_text: &str) -> Result<NodeIdentity, IdentityError> {
        let vars = ReleaseVars::parse(release_file_text)?;
        let image_repo_raw = vars.first(&["KAIROS_IMAGE_REPO", "IMAGE_REPO"]).map(|(_, v)| v.to_string());
        let label = vars.first(&["KAIROS_IMAGE_LABEL", "IMAGE_LABEL"]).map(|(_, v)| v);
        let image_repo = image_repo_raw.as_deref().and_then(|raw| parse_image_repo(raw, label));
        let image = image_repo.as_ref().map(ImageRef::family);

        let flavor = match vars.first(&["KAIROS_FLAVOR", "FLAVOR"]) {
            Some((key, value)) => component(key, "flavor", value)?,
            None => image.as_ref().map(|f| f.flavor.clone()).ok_or(missing("flavor", FLAVOR_SOURCES))?,
        };
        let flavor_release = match vars.first(&["KAIROS_FLAVOR_RELEASE"]) {
            Some((key, value)) => component(key, "flavor_release", value)?,
            // v1 images have none: the flavor id pins the OS branch.
            None => image.as_ref().map(|f| f.flavor_release.clone()).unwrap_or_default(),
        };
        // The seed table only speaks for v1 flavors, which have no flavor release.
        let seed = if flavor_release.is_empty() { matrix::seed_flavor(&flavor) } else { None };

        let variant = match vars.first(&["KAIROS_VARIANT"]) {
            Some((key, value)) => value.parse::<Variant>().map_err(|error| IdentityError::Invalid { key, error })?,
            // os-release(5) defines its own VARIANT (e.g. "Server Edition"):
            // only a Kairos variant name is taken from it.
            None => match vars.first(&["VARIANT"]).and_then(|(_, v)| v.parse::<Variant>().ok()) {
                Some(variant) => variant,
                None => image.as_ref().map(|f| f.variant).ok_or(missing("variant", VARIANT_SOURCES))?,
            },
        };
        let arch = match vars.first(&["KAIROS_ARCH", "KAIROS_TARGETARCH"]) {
            Some((key, value)) => value.parse::<Arch>().map_err(|error| IdentityError::Invalid { key, error })?,
            None => image.as_ref().map(|f| f.arch).or(seed.map(|s| s.arch)).ok_or(missing("arch", ARCH_SOURCES))?,
        };
        let model = match vars.first(&["KAIROS_MODEL"]) {
            Some((key, value)) => component(key, "model", value)?,
            None => image
                .as_ref()
                .map(|f| f.model.clone())
                .or(seed.map(|s| s.model.to_string()))
                .ok_or(missing("model", MODEL_SOURCES))?,
        };
        let release = release(&vars, image_repo.as_ref())?;
        let software = match software(&vars)? {
            Some(software) => Some(software),
            None => image_repo.as_ref().and_then(|i| i.software().cloned()),
        };
        let trusted_boot = match vars.first(&["KAIROS_TRUSTED_BOOT"]) {
            Some((key, value)) => boolean(key, "trusted_boot", value)?,
            None => image_repo.as_ref().is_some_and(ImageRef::trusted_boot),
        };
        let fips = match vars.first(&["KAIROS_FIPS"]) {
            Some((key, value)) => boolean(key, "fips", value)?,
            None => false,
        };
        Ok(NodeIdentity {
            flavor,
            flavor_release,
            variant,
            model,
            arch,
            release,
            software,
            image_repo_raw,
            image_repo,
            trusted_boot,
            fips,
        })
    }

    /// The image family the node runs.
    pub fn family(&self) -> ImageFamily {
        ImageFamily {
            flavor: self.flavor.clone(),
            flavor_release: self.flavor_release.clone(),
            variant: self.variant,
            arch: self.arch,
            model: self.model.clone(),
            trusted_boot: self.trusted_boot,
        }
    }
}

fn missing(field: &'static str, looked_for: &'static str) -> IdentityError {
    IdentityError::Missing { field, looked_for }
}

fn component(key: &'static str, field: &'static str, value: &str) -> Result<String, IdentityError> {
    validate_component(field, value).map_err(|error| IdentityError::Invalid { key, error })?;
    Ok(value.to_string())
}

fn boolean(key: &'static str, field: &'static str, value: &str) -> Result<bool, IdentityError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(IdentityError::Invalid { key, error: ValueError::new(field, "must be `true` or `false`", value) }),
    }
}

/// v1 release files may split the reference into a bare repository and `IMAGE_LABEL` (the tag).
fn parse_image_repo(raw: &str, label: Option<&str>) -> Option<ImageRef> {
    ImageRef::parse(raw).ok().or_else(|| label.and_then(|tag| ImageRef::parse(&format!("{raw}:{tag}")).ok()))
}

fn release(vars: &ReleaseVars, image: Option<&ImageRef>) -> Result<Version, IdentityError> {
    if let Some((key, value)) = vars.first(&["KAIROS_RELEASE"]) {
        let text = value.strip_prefix('v').unwrap_or(value);
        return Version::parse(text).map_err(|e| IdentityError::Invalid {
            key,
            error: ValueError::new("release", format!("must be the Kairos release as semver `vX.Y.Z`: {e}"), value),
        });
    }
    // KAIROS_VERSION may append the k3s version (`v2.4.2-v1.27.6+k3s1`), so
    // only its leading release is read; the unprefixed VERSION is the OS's.
    let version = vars.first(&["KAIROS_VERSION"]);
    if let Some(release) = version.and_then(|(_, v)| leading_release(v)) {
        return Ok(release);
    }
    if let Some(image) = image {
        return Ok(image.release().clone());
    }
    match version {
        Some((key, value)) => Err(IdentityError::Invalid {
            key,
            error: ValueError::new("release", "must start with the Kairos release `vX.Y.Z`", value),
        }),
        None => Err(missing("release", RELEASE_SOURCES)),
    }
}

fn software(vars: &ReleaseVars) -> Result<Option<SoftwareVersion>, IdentityError> {
    let Some((key, value)) = vars.first(&["KAIROS_SOFTWARE_VERSION"]) else {
        return Ok(None);
    };
    let distro = match vars.first(&["KAIROS_SOFTWARE_VERSION_PREFIX"]) {
        Some((prefix_key, prefix)) => {
            Some(prefix.parse::<K8sDistro>().map_err(|error| IdentityError::Invalid { key: prefix_key, error })?)
        }
        None => None,
    };
    let parsed = match distro {
        Some(distro) => SoftwareVersion::parse(value, Some(distro)),
        // Without a prefix the build suffix (`+k3s1`, `+k0s.0`) names the distribution.
        None => SoftwareVersion::parse(value, Some(K8sDistro::K3s))
            .or_else(|_| SoftwareVersion::parse(value, Some(K8sDistro::K0s))),
    };
    parsed.map(Some).map_err(|error| IdentityError::Invalid { key, error })
}

/// The assignments of a shell-style release file; empty values count as absent.
struct ReleaseVars(BTreeMap<String, String>);

impl ReleaseVars {
    fn parse(text: &str) -> Result<ReleaseVars, IdentityError> {
        let mut vars = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let syntax = |rule| IdentityError::Syntax { line: index + 1, rule };
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").map_or(line, str::trim_start);
            let (key, value) = line.split_once('=').ok_or(syntax("expected `KEY=value`"))?;
            if !is_shell_name(key) {
                return Err(syntax("the key must be letters, digits and `_`, not starting with a digit"));
            }
            // Shell semantics: a later assignment wins.
            vars.insert(key.to_string(), shell_value(value).map_err(syntax)?);
        }
        Ok(ReleaseVars(vars))
    }

    /// The first of `keys` that holds a non-empty value, with that key.
    fn first(&self, keys: &[&'static str]) -> Option<(&'static str, &str)> {
        keys.iter().find_map(|key| self.0.get(*key).filter(|v| !v.is_empty()).map(|v| (*key, v.as_str())))
    }
}

fn is_shell_name(key: &str) -> bool {
    key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Unquotes a shell word: `'...'` literally, `"..."` with `\"`, `\\`, `\$`
/// and `` \` `` escapes, bare text with `\x` escapes; a `#` after
/// whitespace starts a comment.
fn shell_value(raw: &str) -> Result<String, &'static str> {
    let mut out = String::new();
    let mut chars = raw.chars();
    let mut quote = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (None, '\\') => out.push(chars.next().ok_or("a backslash ends the line; values span one line")?),
            (None, c) if c.is_whitespace() => {
                let rest = chars.as_str().trim_start();
                return if rest.is_empty() || rest.starts_with('#') {
                    Ok(out)
                } else {
                    Err("unquoted whitespace in a value; quote values that contain spaces")
                };
            }
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('"'), '\\') => match chars.next() {
                Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => return Err("unterminated double quote"),
            },
            (_, c) => out.push(c),
        }
    }
    match quote {
        Some('\'') => Err("unterminated single quote"),
        Some(_) => Err("unterminated double quote"),
        None => Ok(out),
    }
}

/// Which of its images a Kairos node booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootState {
    /// The active image: normal operation.
    Active,
    /// The passive (previous) image: a fallback, usually after a failed upgrade.
    Passive,
    /// The recovery system.
    Recovery,
    /// The command line names no Kairos image (e.g. a live ISO or UKI boot).
    Unknown,
}

impl BootState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            BootState::Active => "active",
            BootState::Passive => "passive",
            BootState::Recovery => "recovery",
            BootState::Unknown => "unknown",
        }
    }
}

/// The boot state named by the kernel command line (`/proc/cmdline`).
pub fn boot_state_from_cmdline(cmdline: &str) -> BootState {
    let mut from_labels = None;
    for word in cmdline.split_whitespace() {
        // The image file is what was really booted; Kairos passes
        // `root=LABEL=COS_STATE` with it, so it outranks any label.
        if let Some(file) = word.strip_prefix("cos-img/filename=") {
            let state = match file.rsplit('/').next() {
                Some("active.img") => BootState::Active,
                Some("passive.img") => BootState::Passive,
                Some("recovery.img" | "recovery.squashfs") => BootState::Recovery,
                _ => BootState::Unknown,
            };
            if state != BootState::Unknown {
                return state;
            }
            continue;
        }
        let state = match word.rsplit('=').next() {
            Some("COS_ACTIVE") => BootState::Active,
            Some("COS_PASSIVE") => BootState::Passive,
            Some("COS_RECOVERY") => BootState::Recovery,
            _ => continue,
        };
        if from_labels.is_some_and(|seen| seen != state) {
            // Two labels disagree: claiming either would be a guess.
            return BootState::Unknown;
        }
        from_labels = Some(state);
    }
    from_labels.unwrap_or(BootState::Unknown)
}

/// True when the node fell back after a failed upgrade: the upgrade failure
/// marker exists, or it booted the passive image.
pub fn upgrade_failed(marker_present: bool, boot: BootState) -> bool {
    marker_present || boot == BootState::Passive
}

/// Parses `/etc/machine-id`: 32 lowercase hex digits, not all zero.
pub fn parse_machine_id(text: &str) -> Result<NodeId, IdentityError> {
    let id = text.trim();
    let hex = id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let rule = if !hex {
        Some("must be 32 lowercase hex digits (machine-id(5))")
    } else if id.bytes().all(|b| b == b'0') {
        Some("must not be all zeros, which is an uninitialised machine id")
    } else {
        None
    };
    match rule {
        Some(rule) => {
            Err(IdentityError::Invalid { key: MACHINE_ID_PATH, error: ValueError::new("machine_id", rule, id) })
        }
        None => Ok(NodeId::new(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::image::TagGrammar;
    use proptest::prelude::*;

    const V3_CORE: &str = r#"KAIROS_ARCH="amd64"
KAIROS_FAMILY="ubuntu"
KAIROS_FIPS="false"
KAIROS_FLAVOR="ubuntu"
KAIROS_FLAVOR_RELEASE="24.04"
KAIROS_ID="kairos"
KAIROS_ID_LIKE="kairos-core-ubuntu-24.04"
KAIROS_IMAGE_LABEL="24.04-core-amd64-generic-v3.2.1"
KAIROS_IMAGE_REPO="quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.2.1"
KAIROS_MODEL="generic"
KAIROS_NAME="kairos-core-ubuntu-24.04"
KAIROS_RELEASE="v3.2.1"
KAIROS_SOFTWARE_VERSION=""
KAIROS_SOFTWARE_VERSION_PREFIX="k3s"
KAIROS_TARGETARCH="amd64"
KAIROS_TRUSTED_BOOT="false"
KAIROS_VARIANT="core"
KAIROS_VERSION="v3.2.1"
"#;

    const V2_STANDARD: &str = r#"KAIROS_ARCH="amd64"
KAIROS_FAMILY="opensuse"
KAIROS_FLAVOR="opensuse"
KAIROS_FLAVOR_RELEASE="leap-15.5"
KAIROS_ID="kairos"
KAIROS_IMAGE_LABEL="leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1"
KAIROS_IMAGE_REPO="quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1"
KAIROS_MODEL="generic"
KAIROS_NAME="kairos-standard-opensuse-leap-15.5"
KAIROS_RELEASE="v2.4.2"
KAIROS_SOFTWARE_VERSION="v1.27.6+k3s1"
KAIROS_SOFTWARE_VERSION_PREFIX="k3s"
KAIROS_TARGETARCH="amd64"
KAIROS_VARIANT="standard"
KAIROS_VERSION="v2.4.2-v1.27.6+k3s1"
"#;

    const V1_OS_RELEASE: &str = r#"NAME="openSUSE Leap"
VERSION="15.4"
ID="opensuse-leap"
ID_LIKE="suse opensuse"
VERSION_ID="15.4"
PRETTY_NAME="openSUSE Leap 15.4"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:opensuse:leap:15.4"
BUG_REPORT_URL="https://bugs.opensuse.org"
HOME_URL="https://www.opensuse.org/"
KAIROS_NAME="kairos-opensuse-arm-rpi"
KAIROS_VERSION="v1.5.0-k3sv1.26.1+k3s1"
KAIROS_ID="kairos"
KAIROS_FLAVOR="opensuse-arm-rpi"
KAIROS_IMAGE_REPO="quay.io/kairos/kairos-opensuse-arm-rpi:v1.5.0-k3sv1.26.1-k3s1"
KAIROS_GITHUB_REPO="kairos-io/kairos"
"#;

    const V1_UNPREFIXED: &str = r#"NAME="Ubuntu"
VERSION="22.04.2 LTS (Jammy Jellyfish)"
ID=ubuntu
ID_LIKE=debian
VERSION_ID="22.04"
FLAVOR=ubuntu-22-lts
VARIANT=core
IMAGE_REPO=quay.io/kairos/core-ubuntu-22-lts:v1.6.0
"#;

    fn identify(text: &str) -> NodeIdentity {
        NodeIdentity::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn without(text: &str, keys: &[&str]) -> String {
        text.lines()
            .filter(|l| !keys.iter().any(|k| l.starts_with(&format!("{k}="))))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn kairos_release_v3_core_names_family_release_and_image() {
        let id = identify(V3_CORE);
        assert_eq!(
            id.family(),
            ImageFamily {
                flavor: "ubuntu".into(),
                flavor_release: "24.04".into(),
                variant: Variant::Core,
                arch: Arch::Amd64,
                model: "generic".into(),
                trusted_boot: false,
            }
        );
        assert_eq!(id.release, Version::new(3, 2, 1));
        assert_eq!(id.software, None);
        assert!(!id.trusted_boot && !id.fips);
        let image = id.image_repo.as_ref().unwrap();
        assert_eq!(image.family(), id.family());
        assert_eq!(image.grammar(), TagGrammar::V2);
    }

    #[test]
    fn kairos_release_wins_over_kairos_version_with_k3s_appended() {
        let id = identify(V2_STANDARD);
        assert_eq!(id.release, Version::new(2, 4, 2));
        assert_eq!(id.variant, Variant::Standard);
        let sw = id.software.unwrap();
        assert_eq!((sw.distro, sw.upstream()), (K8sDistro::K3s, "v1.27.6+k3s1".to_string()));
    }

    #[test]
    fn kairos_version_counts_only_for_its_leading_release() {
        let id = identify(&without(V2_STANDARD, &["KAIROS_RELEASE"]));
        assert_eq!(id.release, Version::new(2, 4, 2));
        let rc = identify(&without(V3_CORE, &["KAIROS_RELEASE", "KAIROS_VERSION"]).replace("v3.2.1", "v3.0.0-rc1"));
        assert_eq!(rc.release, Version::parse("3.0.0-rc1").unwrap(), "from the image tag");
    }

    #[test]
    fn v1_os_release_ignores_the_os_version_and_id() {
        let id = identify(V1_OS_RELEASE);
        assert_eq!(id.flavor, "opensuse-arm-rpi");
        assert_eq!(id.flavor_release, "");
        assert_eq!(id.release, Version::new(1, 5, 0), "not the OS's VERSION=15.4");
        assert_eq!((id.arch, id.model.as_str()), (Arch::Arm64, "rpi"));
        assert_eq!(id.variant, Variant::Standard, "kairos- repository");
        assert_eq!(id.software.as_ref().map(SoftwareVersion::upstream), Some("v1.26.1+k3s1".to_string()));
        assert_eq!(id.family(), matrix::seed_flavor("opensuse-arm-rpi").unwrap().family(Variant::Standard));
    }

    #[test]
    fn v1_os_release_with_unprefixed_keys_fills_the_rest_from_image_and_seed_table() {
        let id = identify(V1_UNPREFIXED);
        assert_eq!(id.family(), matrix::seed_flavor("ubuntu-22-lts").unwrap().family(Variant::Core));
        assert_eq!(id.release, Version::new(1, 6, 0));
        assert_eq!(id.image_repo_raw.as_deref(), Some("quay.io/kairos/core-ubuntu-22-lts:v1.6.0"));

        let seed_only = identify("FLAVOR=alpine-arm-rpi\nVARIANT=core\nKAIROS_VERSION=v1.1.7\n");
        assert_eq!((seed_only.arch, seed_only.model.as_str()), (Arch::Arm64, "rpi"));
    }

    #[test]
    fn os_release_variant_that_is_not_a_kairos_variant_is_the_oss_own() {
        let text = format!("VARIANT=\"Server Edition\"\n{}", without(V1_OS_RELEASE, &[]));
        assert_eq!(identify(&text).variant, Variant::Standard);
        let e = NodeIdentity::parse("KAIROS_VARIANT=server\nKAIROS_FLAVOR=ubuntu\n").unwrap_err();
        assert!(matches!(e, IdentityError::Invalid { key: "KAIROS_VARIANT", .. }), "{e}");
    }

    #[test]
    fn image_repo_without_a_tag_takes_the_image_label() {
        let text =
            "KAIROS_FLAVOR=opensuse\nKAIROS_IMAGE_REPO=quay.io/kairos/core-opensuse\nKAIROS_IMAGE_LABEL=v1.5.1\n";
        let id = identify(text);
        assert_eq!(id.release, Version::new(1, 5, 1));
        assert_eq!(id.image_repo.unwrap().to_string(), "quay.io/kairos/core-opensuse:v1.5.1");
        assert_eq!(id.image_repo_raw.as_deref(), Some("quay.io/kairos/core-opensuse"));
    }

    #[test]
    fn unparsable_image_repo_is_kept_raw() {
        let text =
            V3_CORE.replace("quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.2.1", "my.registry/custom:latest");
        let id = identify(&text);
        assert_eq!(id.image_repo, None);
        assert_eq!(id.image_repo_raw.as_deref(), Some("my.registry/custom:latest"));
        assert_eq!(id.release, Version::new(3, 2, 1));
    }

    #[test]
    fn trusted_boot_comes_from_the_key_or_the_uki_image() {
        let text = V3_CORE.replace("KAIROS_TRUSTED_BOOT=\"false\"", "KAIROS_TRUSTED_BOOT=\"true\"");
        assert!(identify(&text).trusted_boot);
        let uki = without(V3_CORE, &["KAIROS_TRUSTED_BOOT"]).replace("generic-v3.2.1\"", "generic-v3.2.1-uki\"");
        assert!(identify(&uki).trusted_boot);
    }

    #[test]
    fn uki_node_runs_a_trusted_boot_family_matching_its_image() {
        let uki = without(V3_CORE, &["KAIROS_TRUSTED_BOOT"]).replace("generic-v3.2.1\"", "generic-v3.2.1-uki\"");
        let id = identify(&uki);
        assert!(id.family().trusted_boot);
        assert_eq!(id.image_repo.as_ref().map(ImageRef::family), Some(id.family()));
        assert_ne!(id.family(), identify(V3_CORE).family());
    }

    #[test]
    fn shell_quoting_escapes_and_comments_follow_the_shell() {
        let text = r#"
# a comment
export KAIROS_FLAVOR='ubuntu'
KAIROS_FLAVOR_RELEASE=24.04   # trailing comment
KAIROS_VARIANT="co"'re'
KAIROS_MODEL=gen\eric
KAIROS_ARCH="amd64"
KAIROS_RELEASE=v3.5.0
PRETTY_NAME="Kairos \"quoted\" \$HOME \n"
"#;
        let id = identify(text);
        assert_eq!(id.flavor, "ubuntu");
        assert_eq!(id.flavor_release, "24.04");
        assert_eq!(id.variant, Variant::Core);
        assert_eq!(id.model, "generic");
        let vars = ReleaseVars::parse(text).unwrap();
        assert_eq!(vars.first(&["PRETTY_NAME"]), Some(("PRETTY_NAME", r#"Kairos "quoted" $HOME \n"#)));
    }

    #[test]
    fn malformed_lines_name_their_line_number() {
        for (text, line) in [
            ("KAIROS_FLAVOR=ubuntu\nKAIROS_ARCH=\"amd64\n", 2),
            ("KAIROS_FLAVOR='ubuntu\n", 1),
            ("\n\nKAIROS FLAVOR=ubuntu\n", 3),
            ("just words\n", 1),
            ("KAIROS_NAME=two words\n", 1),
        ] {
            match NodeIdentity::parse(text) {
                Err(IdentityError::Syntax { line: got, .. }) => assert_eq!(got, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_field_names_every_place_looked() {
        let e = NodeIdentity::parse("KAIROS_VARIANT=core\n").unwrap_err();
        assert_eq!(e, IdentityError::Missing { field: "flavor", looked_for: FLAVOR_SOURCES });
        assert!(e.to_string().starts_with("flavor: not found; looked for KAIROS_FLAVOR, FLAVOR"), "{e}");
        let e = NodeIdentity::parse("KAIROS_FLAVOR=ubuntu\nKAIROS_FLAVOR_RELEASE=24.04\nKAIROS_VARIANT=core\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("arch: not found"), "v2 flavors get no seed defaults: {e}");
        let e = identify_err(&without(V3_CORE, &["KAIROS_RELEASE", "KAIROS_VERSION", "KAIROS_IMAGE_REPO"]));
        assert!(e.to_string().starts_with("release: not found; looked for KAIROS_RELEASE, KAIROS_VERSION"), "{e}");
    }

    fn identify_err(text: &str) -> IdentityError {
        NodeIdentity::parse(text).unwrap_err()
    }

    #[test]
    fn malformed_values_name_their_key() {
        let cases = [
            (V3_CORE.replace("KAIROS_FIPS=\"false\"", "KAIROS_FIPS=\"yes\""), "KAIROS_FIPS"),
            (V3_CORE.replace("KAIROS_ARCH=\"amd64\"", "KAIROS_ARCH=\"riscv64\""), "KAIROS_ARCH"),
            (V3_CORE.replace("KAIROS_RELEASE=\"v3.2.1\"", "KAIROS_RELEASE=\"v3.2\""), "KAIROS_RELEASE"),
            (V2_STANDARD.replace("\"v1.27.6+k3s1\"", "\"1.27\""), "KAIROS_SOFTWARE_VERSION"),
            (V2_STANDARD.replace("PREFIX=\"k3s\"", "PREFIX=\"rke2\""), "KAIROS_SOFTWARE_VERSION_PREFIX"),
            (V3_CORE.replace("KAIROS_MODEL=\"generic\"", "KAIROS_MODEL=\"Generic\""), "KAIROS_MODEL"),
        ];
        for (text, key) in cases {
            match identify_err(&text) {
                IdentityError::Invalid { key: got, error } => {
                    assert_eq!(got, key);
                    assert!(!error.rule.is_empty());
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        let garbage_version =
            without(V3_CORE, &["KAIROS_RELEASE", "KAIROS_IMAGE_REPO"]).replace("v3.2.1\"", "latest\"");
        assert!(matches!(identify_err(&garbage_version), IdentityError::Invalid { key: "KAIROS_VERSION", .. }));
    }

    #[test]
    fn software_version_without_prefix_is_named_by_its_build() {
        let k0s =
            without(V2_STANDARD, &["KAIROS_SOFTWARE_VERSION_PREFIX"]).replace("v1.27.6+k3s1\"", "v1.30.2+k0s.0\"");
        let sw = identify(&k0s).software.unwrap();
        assert_eq!((sw.distro, sw.build.as_str()), (K8sDistro::K0s, "k0s.0"));
    }

    #[test]
    fn boot_state_follows_the_booted_image_file_then_the_labels() {
        let cases = [
            (
                "BOOT_IMAGE=/cOS/vmlinuz console=tty1 root=LABEL=COS_STATE cos-img/filename=/cOS/active.img panic=5",
                BootState::Active,
            ),
            ("root=LABEL=COS_STATE cos-img/filename=/cOS/passive.img rd.neednet=0", BootState::Passive),
            ("root=LABEL=COS_RECOVERY cos-img/filename=/cOS/recovery.img", BootState::Recovery),
            ("root=LABEL=COS_RECOVERY cos-img/filename=/cOS/recovery.squashfs", BootState::Recovery),
            ("root=LABEL=COS_ACTIVE quiet", BootState::Active),
            ("root=LABEL=COS_PASSIVE", BootState::Passive),
            ("root=LABEL=COS_ACTIVE rd.cos.label=COS_PASSIVE", BootState::Unknown),
            ("BOOT_IMAGE=/boot/vmlinuz root=/dev/sda2 ro", BootState::Unknown),
            ("", BootState::Unknown),
        ];
        for (cmdline, want) in cases {
            assert_eq!(boot_state_from_cmdline(cmdline), want, "{cmdline}");
        }
    }

    #[test]
    fn failed_upgrade_shows_as_marker_or_passive_boot() {
        assert!(upgrade_failed(true, BootState::Active));
        assert!(upgrade_failed(false, BootState::Passive));
        assert!(!upgrade_failed(false, BootState::Active));
        assert!(!upgrade_failed(false, BootState::Recovery));
    }

    #[test]
    fn machine_id_is_32_lowercase_hex_digits() {
        let id = parse_machine_id("  4c4c4544004d3510804ab4c04f4d3732\n").unwrap();
        assert_eq!(id.as_str(), "4c4c4544004d3510804ab4c04f4d3732");
        for bad in [
            "",
            "uninitialized",
            "4C4C4544004D3510804AB4C04F4D3732",
            "4c4c4544004d3510804ab4c04f4d373",
            "4c4c4544-004d-3510-804a-b4c04f4d3732",
            "00000000000000000000000000000000",
        ] {
            match parse_machine_id(bad) {
                Err(IdentityError::Invalid { key, error }) => {
                    assert_eq!((key, error.field), (MACHINE_ID_PATH, "machine_id"), "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// Up to eight lines of printable ASCII, most shaped like `KEY=...`.
    const RELEASE_FILE_LIKE: &str = "(([A-Z_]{1,8}=)?[\\x20-\\x7e\\t]{0,30}\n){0,8}";

    proptest! {
        #[test]
        fn any_text_yields_an_identity_or_an_error_never_a_panic(text in RELEASE_FILE_LIKE) {
            let _ = NodeIdentity::parse(&text);
            let _ = boot_state_from_cmdline(&text);
            let _ = parse_machine_id(&text);
        }
    }
}
