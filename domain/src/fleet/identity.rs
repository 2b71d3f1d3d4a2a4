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
mod tests;
