//! Kairos image references in all three tag grammars.
//!
//! - v1.x (the seed): `quay.io/kairos/core-opensuse:v1.5.0`,
//!   `quay.io/kairos/kairos-opensuse:v1.5.1-k3sv1.26.1-k3s1`;
//! - v2.4 to v3.4: `quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1`;
//! - v3.5 and later: `quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.5.0-k3s-v1.33.2-k3s1`,
//!   with `-uki` for trusted-boot images.
//!
//! A reference is parsed into its parts and rendered back from them, so the
//! parser accepts only spellings it can reproduce byte for byte. The
//! registry/org prefix is kept apart ([`RegistryPrefix`]) because mirrors
//! make it configuration rather than part of an image's identity.

use std::fmt;
use std::str::FromStr;

use semver::Version;

use super::matrix::{self, DEFAULT_REGISTRY_PREFIX};
use super::model::{validate_component, Arch, ImageFamily, SoftwareVersion, ValueError, Variant};

/// The OCI distribution spec caps tags at 128 characters.
const MAX_TAG_LEN: usize = 128;

/// The generation of Kairos naming a reference is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TagGrammar {
    /// Kairos v1.x: `core-<flavor>:vX.Y.Z`, `kairos-<flavor>:vX.Y.Z-k3sv1.26.1-k3s1`.
    V1,
    /// Kairos v2.4 to v3.4: `<flavor>:<flavor_release>-<variant>-<arch>-<model>-vX.Y.Z[-k3sv1.27.6-k3s1]`.
    V2,
    /// Kairos v3.5 and later: as V2, with the engine spelled `-k3s-v1.33.2-k3s1`.
    V35,
}

impl TagGrammar {
    /// The grammar upstream Kairos publishes `release` in.
    pub fn for_release(release: &Version) -> TagGrammar {
        if (release.major, release.minor) < (2, 4) {
            TagGrammar::V1
        } else {
            v2_or_v35(release)
        }
    }

    /// Short name: `v1`, `v2` or `v3.5`.
    pub fn as_str(self) -> &'static str {
        match self {
            TagGrammar::V1 => "v1",
            TagGrammar::V2 => "v2",
            TagGrammar::V35 => "v3.5",
        }
    }
}

impl fmt::Display for TagGrammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Core tags are spelled alike in v2 and v3.5, so their grammar follows the release.
fn v2_or_v35(release: &Version) -> TagGrammar {
    // major.minor only: v3.5.0-rc1 already uses the v3.5 naming although
    // semver orders it before 3.5.0.
    if (release.major, release.minor) >= (3, 5) {
        TagGrammar::V35
    } else {
        TagGrammar::V2
    }
}

/// How a reference marks a raw disk artifact; kept so it renders as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DiskSpelling {
    /// Tag ends in `.img` (v1 Raspberry Pi artifacts).
    TagDot,
    /// Tag ends in `-img`.
    TagDash,
    /// v1 `-img` repositories, e.g. `core-opensuse-arm-rpi-img`.
    Repository,
}

impl DiskSpelling {
    fn as_str(self) -> &'static str {
        match self {
            DiskSpelling::TagDot => ".img",
            DiskSpelling::TagDash | DiskSpelling::Repository => "-img",
        }
    }
}

/// Error for an image reference that cannot be parsed, rendered or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// The reference follows no Kairos grammar.
    #[error("image reference {reference:?}: {error}")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// The part and the rule it broke.
        error: ValueError,
    },
    /// A raw disk artifact was given where an upgrade target was expected.
    #[error(
        "image reference {reference:?}: tag: raw disk artifacts are never upgrade targets; \
         use the container image tag without {suffix}: {container}"
    )]
    DiskImageAsUpgradeTarget {
        /// The reference as given.
        reference: String,
        /// The disk marker it carries (`.img` or `-img`).
        suffix: &'static str,
        /// The container image of the same release, which is upgradable.
        container: String,
    },
    /// No reference of that grammar can name this family, release and software.
    #[error("no {grammar} image reference exists for {target}: {error}")]
    ImpossibleTarget {
        /// The grammar asked for.
        grammar: TagGrammar,
        /// The family and release asked for, e.g. `ubuntu:24.04/core/amd64/generic at v3.5.0`.
        target: String,
        /// The part and the rule it broke.
        error: ValueError,
    },
    /// A registry prefix (configuration) is malformed.
    #[error("registry prefix {prefix:?}: {error}")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// The part and the rule it broke.
        error: ValueError,
    },
}

impl ImageRefError {
    /// The part of the reference whose rule was broken (`tag`, `arch`, `release`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            ImageRefError::Invalid { error, .. }
            | ImageRefError::ImpossibleTarget { error, .. }
            | ImageRefError::InvalidPrefix { error, .. } => error.field,
            ImageRefError::DiskImageAsUpgradeTarget { .. } => "tag",
        }
    }
}

/// Registry host and organisation path in front of a repository name, e.g.
/// `quay.io/kairos` or `registry.local:5000/mirror/kairos`; may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryPrefix {
    registry: Option<String>,
    path: Vec<String>,
}

impl RegistryPrefix {
    /// Parses a prefix from configuration; the first component is a registry
    /// host when it contains `.` or `:` or is `localhost` (Docker's rule).
    pub fn parse(prefix: &str) -> Result<RegistryPrefix, ImageRefError> {
        let trimmed = prefix.trim().trim_end_matches('/');
        let parts: Vec<&str> = if trimmed.is_empty() { Vec::new() } else { trimmed.split('/').collect() };
        Self::from_parts(&parts).map_err(|error| ImageRefError::InvalidPrefix { prefix: prefix.to_string(), error })
    }

    fn from_parts(parts: &[&str]) -> Result<RegistryPrefix, ValueError> {
        let (registry, path) = match parts.split_first() {
            Some((first, rest)) if is_registry_host(first) => {
                check_registry_host(first)?;
                (Some((*first).to_string()), rest)
            }
            _ => (None, parts),
        };
        for part in path {
            check_path_component("repository", part)?;
        }
        Ok(RegistryPrefix { registry, path: path.iter().map(|p| (*p).to_string()).collect() })
    }

    /// The registry host (with port), if the prefix names one.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// True when the prefix names neither a registry nor an organisation.
    pub fn is_empty(&self) -> bool {
        self.registry.is_none() && self.path.is_empty()
    }
}

impl Default for RegistryPrefix {
    /// The upstream `quay.io/kairos`.
    fn default() -> Self {
        let mut parts = DEFAULT_REGISTRY_PREFIX.split('/');
        RegistryPrefix { registry: parts.next().map(str::to_string), path: parts.map(str::to_string).collect() }
    }
}

impl fmt::Display for RegistryPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for part in self.registry.iter().chain(&self.path) {
            write!(f, "{sep}{part}")?;
            sep = "/";
        }
        Ok(())
    }
}

impl FromStr for RegistryPrefix {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegistryPrefix::parse(s)
    }
}

impl PartialEq<str> for RegistryPrefix {
    fn eq(&self, other: &str) -> bool {
        let parts = self.registry.iter().chain(&self.path).map(String::as_str);
        if other.is_empty() {
            self.is_empty()
        } else {
            parts.eq(other.split('/'))
        }
    }
}

impl PartialEq<&str> for RegistryPrefix {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

/// A Kairos OS image reference: registry prefix, repository, Kairos tag and
/// optional digest. Invariant: standard images name their Kubernetes
/// engine and core images do not.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    prefix: RegistryPrefix,
    grammar: TagGrammar,
    family: ImageFamily,
    release: Version,
    software: Option<SoftwareVersion>,
    disk: Option<DiskSpelling>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference in any of the three grammars.
    pub fn parse(reference: &str) -> Result<ImageRef, ImageRefError> {
        parse_reference(reference).map_err(|error| ImageRefError::Invalid { reference: reference.to_string(), error })
    }

    /// Parses a reference a node may be upgraded to: raw disk artifacts are refused.
    pub fn upgrade_target(reference: &str) -> Result<ImageRef, ImageRefError> {
        let image = ImageRef::parse(reference)?;
        match image.disk {
            None => Ok(image),
            Some(spelling) => Err(ImageRefError::DiskImageAsUpgradeTarget {
                reference: reference.to_string(),
                suffix: spelling.as_str(),
                container: ImageRef { disk: None, ..image }.to_string(),
            }),
        }
    }

    /// The reference of the container image for `family` at `release` (+ `software`)
    /// under `prefix`, spelled in `grammar` (with `-uki` when the family is
    /// trusted-boot); refuses combinations no tag can express.
    pub fn for_target(
        prefix: &RegistryPrefix,
        family: &ImageFamily,
        grammar: TagGrammar,
        release: &Version,
        software: Option<&SoftwareVersion>,
    ) -> Result<ImageRef, ImageRefError> {
        let image = ImageRef {
            prefix: prefix.clone(),
            grammar,
            family: family.clone(),
            release: release.clone(),
            software: software.cloned(),
            disk: None,
            digest: None,
        };
        image.check().map_err(|error| ImageRefError::ImpossibleTarget {
            grammar,
            target: format!("{family} at v{release}"),
            error,
        })?;
        Ok(image)
    }

    /// The same image under another registry/org prefix (a mirror).
    pub fn with_registry_prefix(&self, prefix: &RegistryPrefix) -> ImageRef {
        // The digest names content, not a location, so a mirror keeps it.
        ImageRef { prefix: prefix.clone(), ..self.clone() }
    }

    /// The same image pinned to `digest` (`sha256:<64 lowercase hex>`).
    pub fn with_digest(&self, digest: &str) -> Result<ImageRef, ImageRefError> {
        let unpinned = ImageRef { digest: None, ..self.clone() };
        let digest = parse_digest(digest)
            .map_err(|error| ImageRefError::Invalid { reference: format!("{unpinned}@{digest}"), error })?;
        Ok(ImageRef { digest: Some(digest), ..unpinned })
    }

    /// The image family (flavor, flavor release, variant, arch, model, trusted boot).
    pub fn family(&self) -> ImageFamily {
        self.family.clone()
    }

    /// The Kairos release.
    pub fn release(&self) -> &Version {
        &self.release
    }

    /// The Kubernetes engine of a standard image; None for core images.
    pub fn software(&self) -> Option<&SoftwareVersion> {
        self.software.as_ref()
    }

    /// The tag grammar the reference is written in.
    pub fn grammar(&self) -> TagGrammar {
        self.grammar
    }

    /// True for a raw disk artifact (`.img` / `-img`), which is never an upgrade target.
    pub fn is_disk_image(&self) -> bool {
        self.disk.is_some()
    }

    /// True for a trusted-boot (UKI) image; it only replaces another UKI image.
    pub fn trusted_boot(&self) -> bool {
        self.family.trusted_boot
    }

    /// The registry/org prefix, e.g. `quay.io/kairos`.
    pub fn registry_prefix(&self) -> &RegistryPrefix {
        &self.prefix
    }

    /// The registry host, if the reference names one.
    pub fn registry(&self) -> Option<&str> {
        self.prefix.registry()
    }

    /// The repository name without prefix, e.g. `core-opensuse` or `ubuntu`.
    pub fn name(&self) -> String {
        match (self.grammar, self.family.variant) {
            (TagGrammar::V1, variant) => {
                let head = if variant == Variant::Core { "core" } else { "kairos" };
                let tail = if self.disk == Some(DiskSpelling::Repository) { "-img" } else { "" };
                format!("{head}-{}{tail}", self.family.flavor)
            }
            _ => self.family.flavor.clone(),
        }
    }

    /// The repository path without the registry host, e.g. `kairos/core-opensuse`.
    pub fn repository(&self) -> String {
        let mut path = self.prefix.path.join("/");
        if !path.is_empty() {
            path.push('/');
        }
        path + &self.name()
    }

    /// The tag, e.g. `24.04-core-amd64-generic-v3.5.0-uki`.
    pub fn tag(&self) -> String {
        let f = &self.family;
        let mut tag = String::new();
        if self.grammar != TagGrammar::V1 {
            tag.push_str(&format!("{}-{}-{}-{}-", f.flavor_release, f.variant, f.arch, f.model));
        }
        tag.push_str(&format!("v{}", self.release));
        if let Some(sw) = &self.software {
            let dash = if self.grammar == TagGrammar::V35 { "-" } else { "" };
            tag.push_str(&format!("-{}{dash}v{}-{}", sw.distro.as_str(), sw.version, sw.build));
        }
        if f.trusted_boot {
            tag.push_str("-uki");
        }
        match self.disk {
            Some(spelling @ (DiskSpelling::TagDot | DiskSpelling::TagDash)) => tag.push_str(spelling.as_str()),
            Some(DiskSpelling::Repository) | None => {}
        }
        tag
    }

    /// The content digest (`sha256:...`), if the reference is pinned.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Every rule a reference must satisfy to be rendered and read back unchanged.
    fn check(&self) -> Result<(), ValueError> {
        let f = &self.family;
        check_path_component("flavor", &f.flavor)?;
        match self.grammar {
            TagGrammar::V1 => self.check_v1()?,
            TagGrammar::V2 | TagGrammar::V35 => self.check_v2()?,
        }
        match (f.variant, &self.software) {
            (Variant::Core, Some(sw)) => {
                return Err(ValueError::new("software", "core images carry no Kubernetes engine", sw.to_string()))
            }
            (Variant::Standard, None) => {
                return Err(ValueError::new(
                    "software",
                    "standard images name their Kubernetes engine (k3s or k0s version) in the tag",
                    "",
                ))
            }
            (Variant::Standard, Some(sw)) => check_software(sw)?,
            (Variant::Core, None) => {}
        }
        check_release(&self.release)?;
        let tag = self.tag();
        if tag.len() > MAX_TAG_LEN {
            return Err(ValueError::new("tag", "longer than the 128 characters an OCI tag may have", tag));
        }
        Ok(())
    }

    fn check_v1(&self) -> Result<(), ValueError> {
        let f = &self.family;
        if !f.flavor_release.is_empty() {
            return Err(ValueError::new(
                "flavor_release",
                "v1 tags have no flavor release: the v1 flavor id pins the OS branch",
                f.flavor_release.as_str(),
            ));
        }
        if f.flavor.ends_with("-img") {
            return Err(ValueError::new(
                "flavor",
                "a v1 flavor ending in `-img` would read as a disk-image repository",
                f.flavor.as_str(),
            ));
        }
        let (arch, model) = v1_platform(&f.flavor);
        if f.arch != arch || f.model != model {
            return Err(ValueError::new(
                "arch",
                format!(
                    "v1 `{}` images are {arch}/{model}; the v1 grammar cannot name another arch or model",
                    f.flavor
                ),
                format!("{}/{}", f.arch, f.model),
            ));
        }
        if f.trusted_boot {
            return Err(ValueError::new("trusted_boot", "v1 images have no trusted-boot (`-uki`) variant", "true"));
        }
        Ok(())
    }

    fn check_v2(&self) -> Result<(), ValueError> {
        let f = &self.family;
        if f.flavor_release.is_empty() {
            return Err(ValueError::new(
                "flavor_release",
                "v2 and v3.5 tags start with the flavor release, e.g. `24.04` or `leap-15.5`",
                "",
            ));
        }
        validate_component("flavor_release", &f.flavor_release)?;
        if f.flavor_release.split('-').any(is_variant_word) {
            return Err(ValueError::new(
                "flavor_release",
                "must not contain a `core` or `standard` part: the tag is anchored on the variant",
                f.flavor_release.as_str(),
            ));
        }
        if f.model.is_empty() {
            return Err(ValueError::new("model", "must not be empty; upstream uses `generic` for PCs", ""));
        }
        validate_component("model", &f.model)?;
        if f.model.split('-').any(is_release_segment) {
            return Err(ValueError::new(
                "model",
                "must not contain a `vX.Y.Z` part: the tag is anchored on the release",
                f.model.as_str(),
            ));
        }
        if f.variant == Variant::Core && self.grammar != v2_or_v35(&self.release) {
            return Err(ValueError::new(
                "grammar",
                "core tags read the same in v2 and v3.5, so releases before 3.5 use v2 and later ones v3.5",
                self.grammar.as_str(),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.prefix.is_empty() {
            write!(f, "{}/", self.prefix)?;
        }
        write!(f, "{}:{}", self.name(), self.tag())?;
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Arch and model of a v1 flavor: the seed table, else a generic PC.
fn v1_platform(flavor: &str) -> (Arch, String) {
    match matrix::seed_flavor(flavor) {
        Some(spec) => (spec.arch, spec.model.to_string()),
        None => (Arch::Amd64, "generic".to_string()),
    }
}

fn parse_reference(reference: &str) -> Result<ImageRef, ValueError> {
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((name_and_tag, digest)) => (name_and_tag, Some(parse_digest(digest)?)),
        None => (reference, None),
    };
    let name_start = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let Some(colon) = name_and_tag[name_start..].find(':').map(|i| name_start + i) else {
        return Err(ValueError::new(
            "tag",
            "missing: Kairos images are named `repository:tag`, and the tag carries the release",
            reference,
        ));
    };
    let (path, tag) = (&name_and_tag[..colon], &name_and_tag[colon + 1..]);
    let parts: Vec<&str> = path.split('/').collect();
    let (name, prefix_parts) = match parts.split_last() {
        Some((name, prefix_parts)) => (*name, prefix_parts),
        None => (path, &[][..]),
    };
    let prefix = RegistryPrefix::from_parts(prefix_parts)?;
    check_path_component("repository", name)?;
    check_tag_charset(tag)?;
    let mut image = parse_tag(name, tag)?;
    image.prefix = prefix;
    image.digest = digest;
    image.check()?;
    Ok(image)
}

/// Parses `name:tag` into an image with an empty prefix and no digest.
fn parse_tag(name: &str, tag: &str) -> Result<ImageRef, ValueError> {
    let (body, dot_img) = match tag.strip_suffix(".img") {
        Some(body) => (body, true),
        None => (tag, false),
    };
    let segments: Vec<&str> = body.split('-').collect();
    // The variant word is the anchor of v2+ tags; v1 tags never contain one
    // because release checks keep it out of pre-releases.
    let anchor = segments.iter().skip(1).position(|s| is_variant_word(s)).map(|i| i + 1);
    let mut image = match anchor {
        Some(anchor) => parse_v2_tag(name, tag, &segments, anchor)?,
        None if starts_with_release(body) => parse_v1_tag(name, tag, &segments)?,
        None => {
            return Err(ValueError::new(
                "tag",
                "expected `vX.Y.Z...` (v1) or `<flavor_release>-<core|standard>-<arch>-<model>-vX.Y.Z...` (v2+)",
                tag,
            ))
        }
    };
    if dot_img {
        if image.disk.is_some() {
            return Err(ValueError::new("tag", "marks a disk image twice", tag));
        }
        image.disk = Some(DiskSpelling::TagDot);
    }
    Ok(image)
}

fn parse_v1_tag(name: &str, tag: &str, segments: &[&str]) -> Result<ImageRef, ValueError> {
    let (variant, flavor) = if let Some(flavor) = name.strip_prefix("core-") {
        (Variant::Core, flavor)
    } else if let Some(flavor) = name.strip_prefix("kairos-") {
        (Variant::Standard, flavor)
    } else {
        return Err(ValueError::new(
            "repository",
            "a v1 tag (vX.Y.Z) belongs to a repository named `core-<flavor>` or `kairos-<flavor>`",
            name,
        ));
    };
    let (flavor, repo_img) = match flavor.strip_suffix("-img") {
        Some(flavor) => (flavor, true),
        None => (flavor, false),
    };
    let (release_segment, rest) = match segments.split_first() {
        Some((first, rest)) if is_release_segment(first) => (*first, rest),
        _ => {
            return Err(ValueError::new(
                "release",
                "a v1 tag starts with the Kairos release as semver `vX.Y.Z`",
                segments.first().copied().unwrap_or(tag),
            ))
        }
    };
    let tail = parse_tail(tag, release_segment, rest)?;
    if tail.software.as_ref().is_some_and(|(_, spelling)| *spelling == EngineSpelling::Dashed) {
        return Err(ValueError::new("software_version", "v1 tags spell the engine `k3sv1.26.1-k3s1`", tag));
    }
    if tail.uki {
        return Err(ValueError::new("trusted_boot", "v1 images have no trusted-boot (`-uki`) variant", tag));
    }
    let disk = match (repo_img, tail.dash_img) {
        (true, true) => return Err(ValueError::new("tag", "marks a disk image twice", tag)),
        (true, false) => Some(DiskSpelling::Repository),
        (false, true) => Some(DiskSpelling::TagDash),
        (false, false) => None,
    };
    let (arch, model) = v1_platform(flavor);
    Ok(ImageRef {
        prefix: RegistryPrefix { registry: None, path: Vec::new() },
        grammar: TagGrammar::V1,
        family: ImageFamily {
            flavor: flavor.to_string(),
            flavor_release: String::new(),
            variant,
            arch,
            model,
            trusted_boot: false,
        },
        release: tail.release,
        software: tail.software.map(|(sw, _)| sw),
        disk,
        digest: None,
    })
}

fn parse_v2_tag(name: &str, tag: &str, segments: &[&str], anchor: usize) -> Result<ImageRef, ValueError> {
    let variant = if segments[anchor] == "core" { Variant::Core } else { Variant::Standard };
    let arch = match segments.get(anchor + 1).copied() {
        Some("amd64") => Arch::Amd64,
        Some("arm64") => Arch::Arm64,
        other => {
            return Err(ValueError::new(
                "arch",
                "must be `amd64` or `arm64`, right after the variant",
                other.unwrap_or(""),
            ))
        }
    };
    let model_start = anchor + 2;
    let release_at = segments
        .iter()
        .enumerate()
        .skip(model_start)
        .find(|(_, s)| is_release_segment(s))
        .map(|(i, _)| i)
        .ok_or_else(|| ValueError::new("release", "missing: expected `-vX.Y.Z` after the model", tag))?;
    if release_at == model_start {
        return Err(ValueError::new("model", "missing between the arch and the release", tag));
    }
    let tail = parse_tail(tag, segments[release_at], &segments[release_at + 1..])?;
    let grammar = match &tail.software {
        Some((_, EngineSpelling::Joined)) => TagGrammar::V2,
        Some((_, EngineSpelling::Dashed)) => TagGrammar::V35,
        None => v2_or_v35(&tail.release),
    };
    Ok(ImageRef {
        prefix: RegistryPrefix { registry: None, path: Vec::new() },
        grammar,
        family: ImageFamily {
            flavor: name.to_string(),
            flavor_release: segments[..anchor].join("-"),
            variant,
            arch,
            model: segments[model_start..release_at].join("-"),
            trusted_boot: tail.uki,
        },
        release: tail.release,
        software: tail.software.map(|(sw, _)| sw),
        disk: tail.dash_img.then_some(DiskSpelling::TagDash),
        digest: None,
    })
}

/// `k3sv1.27.6-k3s1` (v1, v2) or `k3s-v1.33.2-k3s1` (v3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineSpelling {
    Joined,
    Dashed,
}

/// What follows the release segment: `[-pre-release][-engine][-uki][-img]`.
struct Tail {
    release: Version,
    software: Option<(SoftwareVersion, EngineSpelling)>,
    uki: bool,
    dash_img: bool,
}

fn parse_tail(tag: &str, release_segment: &str, rest: &[&str]) -> Result<Tail, ValueError> {
    let pre_len = rest.iter().position(|s| is_tail_token(s)).unwrap_or(rest.len());
    let core = release_segment.strip_prefix('v').unwrap_or(release_segment);
    // An empty pre-release (`v1.6.0--k3s...`) must fail semver, not vanish.
    let text = match pre_len {
        0 => core.to_string(),
        _ => format!("{core}-{}", rest[..pre_len].join("-")),
    };
    let release = Version::parse(&text).map_err(|e| {
        ValueError::new("release", format!("must be semver `vX.Y.Z[-pre-release]`: {e}"), format!("v{text}"))
    })?;
    let mut rest = &rest[pre_len..];
    let engine_error = || {
        ValueError::new("software_version", "expected `k3sv1.27.6-k3s1` or `k3s-v1.33.2-k3s1` after the release", tag)
    };
    let software = match rest {
        [distro @ ("k3s" | "k0s"), version, build, more @ ..] => {
            rest = more;
            Some((SoftwareVersion::parse(&format!("{distro}-{version}-{build}"), None)?, EngineSpelling::Dashed))
        }
        ["k3s" | "k0s", ..] => return Err(engine_error()),
        [joined, build, more @ ..] if is_joined_engine(joined) => {
            rest = more;
            Some((SoftwareVersion::parse(&format!("{joined}-{build}"), None)?, EngineSpelling::Joined))
        }
        [joined] if is_joined_engine(joined) => return Err(engine_error()),
        _ => None,
    };
    let uki = rest.first() == Some(&"uki");
    if uki {
        rest = &rest[1..];
    }
    let dash_img = rest.first() == Some(&"img");
    if dash_img {
        rest = &rest[1..];
    }
    if let Some(extra) = rest.first() {
        return Err(ValueError::new(
            "tag",
            format!(
                "unexpected `{extra}` after the release: only a k3s/k0s version, then `-uki`, then `-img` may follow"
            ),
            tag,
        ));
    }
    Ok(Tail { release, software, uki, dash_img })
}

fn is_variant_word(s: &str) -> bool {
    matches!(s, "core" | "standard")
}

/// `vX.Y.Z` with decimal parts: the anchor of every Kairos release.
fn is_release_segment(s: &str) -> bool {
    s.strip_prefix('v').is_some_and(|v| {
        let parts: Vec<&str> = v.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn starts_with_release(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next() == Some(b'v') && bytes.next().is_some_and(|b| b.is_ascii_digit())
}

/// `k3sv1...` / `k0sv1...`: the v1 and v2 engine spelling.
fn is_joined_engine(s: &str) -> bool {
    ["k3s", "k0s"].iter().any(|d| s.strip_prefix(d).is_some_and(starts_with_release))
}

/// A dash-separated word that ends a pre-release.
fn is_tail_token(s: &str) -> bool {
    matches!(s, "k3s" | "k0s" | "uki" | "img") || is_joined_engine(s)
}

fn check_release(release: &Version) -> Result<(), ValueError> {
    if !release.build.is_empty() {
        return Err(ValueError::new(
            "release",
            "build metadata (`+...`) cannot be written in an OCI tag",
            release.to_string(),
        ));
    }
    let pre = release.pre.as_str();
    if let Some(word) = pre.split('-').find(|s| is_tail_token(s) || is_variant_word(s)) {
        return Err(ValueError::new(
            "release",
            format!("pre-release part `{word}` would read as a tag word (core, standard, k3s, k0s, uki, img)"),
            release.to_string(),
        ));
    }
    if pre.ends_with(".img") {
        return Err(ValueError::new("release", "a pre-release ending in `.img` would read as a disk image", pre));
    }
    Ok(())
}

fn check_software(sw: &SoftwareVersion) -> Result<(), ValueError> {
    let rule = if !sw.version.pre.is_empty() || !sw.version.build.is_empty() {
        Some("a tag cannot carry a Kubernetes pre-release or build metadata")
    } else if !sw.build.starts_with(sw.distro.as_str()) {
        Some("the build suffix starts with the distribution name, e.g. `k3s1` or `k0s.0`")
    } else if sw.build.contains('-') || sw.build.ends_with(".img") {
        Some("the build suffix must be one tag word, e.g. `k3s1` or `k0s.0`")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(ValueError::new("software_version", rule, sw.to_string())),
        None => validate_component("software_version", &sw.build),
    }
}

fn parse_digest(digest: &str) -> Result<String, ValueError> {
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    if ok {
        Ok(digest.to_string())
    } else {
        Err(ValueError::new("digest", "must be `sha256:` followed by 64 lowercase hex digits", digest))
    }
}

fn is_registry_host(part: &str) -> bool {
    part.contains('.') || part.contains(':') || part == "localhost"
}

fn check_registry_host(part: &str) -> Result<(), ValueError> {
    let (host, port) = match part.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (part, None),
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-']);
    let port_ok = port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(ValueError::new("registry", "must be a host name with an optional `:port`", part))
    }
}

/// An OCI repository path component: lowercase letters and digits, joined by `.`, `_` or `-`.
fn check_path_component(field: &'static str, part: &str) -> Result<(), ValueError> {
    let bytes = part.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValueError::new(
            field,
            "a repository path component is lowercase letters and digits joined by `.`, `_` or `-`",
            part,
        ))
    }
}

/// OCI tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag_charset(tag: &str) -> Result<(), ValueError> {
    if tag.is_empty() {
        return Err(ValueError::new("tag", "missing: nothing follows the `:`", tag));
    }
    let ok = !tag.starts_with(['.', '-'])
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(ValueError::new(
            "tag",
            "may hold only letters, digits, `_`, `.` and `-`, and must not start with `.` or `-`",
            tag,
        ));
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(ValueError::new("tag", "longer than the 128 characters an OCI tag may have", tag));
    }
    Ok(())
}

/// The leading Kairos release of a free-form version string such as
/// `v2.4.2-v1.27.6+k3s1` or `v3.0.0-rc1`: `vX.Y.Z` plus any pre-release
/// that precedes an engine version.
pub(crate) fn leading_release(s: &str) -> Option<Version> {
    let s = s.trim();
    let s = s.strip_prefix('v').unwrap_or(s);
    let mut segments = s.split('-');
    let core = segments.next()?.split('+').next()?;
    if !is_release_segment(&format!("v{core}")) {
        return None;
    }
    // An engine version follows as `v1.27.6+k3s1` or `k3sv1.27.6`; anything
    // before it is the release's own pre-release.
    let pre: Vec<&str> = segments.take_while(|seg| !is_tail_token(seg) && !starts_with_release(seg)).collect();
    let pre = pre.join("-");
    let pre = pre.split('+').next().unwrap_or("");
    let text = if pre.is_empty() { core.to_string() } else { format!("{core}-{pre}") };
    Version::parse(&text).ok()
}

#[cfg(test)]
mod tests;
