//! The Kairos versioning policy, made executable.
//!
//! Kairos releases are semver and version Kairos components, not the OS.
//! Only the newest release branch (major.minor) gets patches; in-place major
//! upgrades are not guaranteed; flavors are pinned to upstream OS branches.
//! This module turns those sentences into decisions: the change class of a
//! move, whether it is allowed, and the support status of a node. Every
//! refusal names the node, the rule and the way out.

use std::collections::BTreeMap;
use std::fmt;

use semver::Version;
use serde::{Deserialize, Serialize};

use super::model::{ImageFamily, NodeFacts, NodeId, SoftwareVersion, Variant};
use super::strategy::DefaultsClass;

/// How big a move from one image to another is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeClass {
    /// Same release and same Kubernetes engine: nothing to do.
    Same,
    /// Same Kairos release, different Kubernetes engine version.
    SoftwareOnly,
    /// Same major.minor, higher patch.
    Patch,
    /// Same major, higher minor.
    Minor,
    /// Higher major.
    Major,
    /// Lower Kairos release.
    Downgrade,
}

impl ChangeClass {
    /// Classifies a move between two Kairos releases (ignoring the Kubernetes engine).
    pub fn of_releases(from: &Version, to: &Version) -> Self {
        use std::cmp::Ordering::*;
        match cmp_release(to, from) {
            Less => ChangeClass::Downgrade,
            Equal => ChangeClass::Same,
            Greater if to.major != from.major => ChangeClass::Major,
            Greater if to.minor != from.minor => ChangeClass::Minor,
            Greater => ChangeClass::Patch,
        }
    }

    /// The strategy defaults that apply to a rollout of this class.
    pub fn defaults_class(self) -> DefaultsClass {
        match self {
            ChangeClass::Same | ChangeClass::SoftwareOnly | ChangeClass::Patch => DefaultsClass::Patch,
            ChangeClass::Minor => DefaultsClass::Minor,
            ChangeClass::Major | ChangeClass::Downgrade => DefaultsClass::Major,
        }
    }

    /// Kebab-case name, as shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeClass::Same => "same",
            ChangeClass::SoftwareOnly => "software-only",
            ChangeClass::Patch => "patch",
            ChangeClass::Minor => "minor",
            ChangeClass::Major => "major",
            ChangeClass::Downgrade => "downgrade",
        }
    }
}

impl fmt::Display for ChangeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Semver precedence without build metadata (which semver's `Ord` would compare).
fn cmp_release(a: &Version, b: &Version) -> std::cmp::Ordering {
    (a.major, a.minor, a.patch, &a.pre).cmp(&(b.major, b.minor, b.patch, &b.pre))
}

/// Where a node stands against the releases Kairos still supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupportStatus {
    /// On the newest patch of the newest release branch (or ahead of the catalog).
    Current,
    /// On the newest branch, but a newer patch exists.
    PatchAvailable,
    /// On an older branch: no more patches will come.
    UnsupportedBranch,
}

impl SupportStatus {
    /// Kebab-case name, as shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            SupportStatus::Current => "current",
            SupportStatus::PatchAvailable => "patch-available",
            SupportStatus::UnsupportedBranch => "unsupported-branch",
        }
    }
}

impl fmt::Display for SupportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The rule a refused move broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Flavors are pinned to upstream OS branches; changing flavor is a reinstall.
    FlavorChange,
    /// Changing the upstream OS branch (e.g. leap-15.5 → leap-15.6) is a new flavor release, not an upgrade.
    FlavorReleaseChange,
    /// An image built for another CPU architecture cannot boot.
    ArchMismatch,
    /// An image built for another board model cannot boot.
    ModelMismatch,
    /// Moving between UKI and non-UKI images changes how the node boots and is measured.
    TrustedBootChange,
    /// Core and standard images differ in what they run; switching is not an upgrade.
    VariantChange,
    /// In-place major upgrades are not guaranteed and need `allow_major`.
    MajorNotAllowed,
    /// A major upgrade must start from the newest release of the old major.
    MajorBarrier,
    /// Majors are crossed one at a time.
    MajorSkip,
    /// Going back to an older release needs a rollback or `allow_downgrade`.
    DowngradeNotAllowed,
    /// The Kubernetes engine is never downgraded.
    SoftwareDowngrade,
    /// At most one Kubernetes minor per step.
    SoftwareMinorSkip,
    /// k3s and k0s are different engines; switching is not an upgrade.
    SoftwareDistroChange,
    /// A standard image needs a Kubernetes engine version to move to.
    SoftwareRequired,
    /// Core images carry no Kubernetes engine.
    SoftwareOnCore,
    /// Pre-releases are never chosen implicitly.
    PrereleaseNotExplicit,
    /// The catalog has no image of the node's family at the target release.
    NoImageForFamily,
}

impl Rule {
    /// Kebab-case name, as shown to operators and used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::FlavorChange => "flavor-change",
            Rule::FlavorReleaseChange => "flavor-release-change",
            Rule::ArchMismatch => "arch-mismatch",
            Rule::ModelMismatch => "model-mismatch",
            Rule::TrustedBootChange => "trusted-boot-change",
            Rule::VariantChange => "variant-change",
            Rule::MajorNotAllowed => "major-not-allowed",
            Rule::MajorBarrier => "major-barrier",
            Rule::MajorSkip => "major-skip",
            Rule::DowngradeNotAllowed => "downgrade-not-allowed",
            Rule::SoftwareDowngrade => "software-downgrade",
            Rule::SoftwareMinorSkip => "software-minor-skip",
            Rule::SoftwareDistroChange => "software-distro-change",
            Rule::SoftwareRequired => "software-required",
            Rule::SoftwareOnCore => "software-on-core",
            Rule::PrereleaseNotExplicit => "prerelease-not-explicit",
            Rule::NoImageForFamily => "no-image-for-family",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a node may not make a move, and what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("node {node}: {rule}: {detail}; way out: {way_out}")]
pub struct Refusal {
    /// The node that was refused.
    pub node: NodeId,
    /// The rule it broke.
    pub rule: Rule,
    /// What was wrong, with the versions involved.
    pub detail: String,
    /// What the operator can do instead.
    pub way_out: String,
}

/// Where a node should move: an image family at a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The image family of the target image.
    pub family: ImageFamily,
    /// The target Kairos release.
    pub release: Version,
    /// The target Kubernetes engine (standard images).
    pub software: Option<SoftwareVersion>,
}

/// Operator overrides a rollout may carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOptions {
    /// Permit in-place major upgrades (still only from the barrier release).
    pub allow_major: bool,
    /// Permit moving to an older Kairos release.
    pub allow_downgrade: bool,
    /// This move undoes a rollout: downgrades are expected.
    pub rollback: bool,
    /// The operator named the target release explicitly (pre-releases allowed).
    pub explicit_target: bool,
}

/// The releases known to the control plane, per image family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseCatalog {
    families: BTreeMap<ImageFamily, Vec<CatalogEntry>>,
}

/// One release of one image family in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Kairos release.
    pub release: Version,
    /// Kubernetes engine of the image, for standard images.
    pub software: Option<SoftwareVersion>,
}

impl ReleaseCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `family` has an image at `release` (+ `software`); duplicates are ignored.
    pub fn add(&mut self, family: ImageFamily, release: Version, software: Option<SoftwareVersion>) {
        let entries = self.families.entry(family).or_default();
        let entry = CatalogEntry { release, software };
        if let Err(pos) = entries.binary_search(&entry) {
            entries.insert(pos, entry);
        }
    }

    /// Every entry of `family`, oldest first.
    pub fn entries(&self, family: &ImageFamily) -> &[CatalogEntry] {
        self.families.get(family).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every family in the catalog.
    pub fn families(&self) -> impl Iterator<Item = &ImageFamily> {
        self.families.keys()
    }

    /// Newest non-pre-release of `family`, if any.
    pub fn latest(&self, family: &ImageFamily) -> Option<&Version> {
        self.entries(family).iter().map(|e| &e.release).filter(|v| v.pre.is_empty()).max_by(|a, b| cmp_release(a, b))
    }

    /// The barrier of `major` for `family`: its newest non-pre-release.
    pub fn barrier(&self, family: &ImageFamily, major: u64) -> Option<&Version> {
        self.entries(family)
            .iter()
            .map(|e| &e.release)
            .filter(|v| v.major == major && v.pre.is_empty())
            .max_by(|a, b| cmp_release(a, b))
    }

    /// Whether `family` has an image at `release` with Kubernetes engine `software`
    /// (`None` matches any engine of that release).
    pub fn has(&self, family: &ImageFamily, release: &Version, software: Option<&SoftwareVersion>) -> bool {
        self.entries(family).iter().any(|e| {
            cmp_release(&e.release, release).is_eq() && software.is_none_or(|s| e.software.as_ref() == Some(s))
        })
    }

    /// Support status of a node of `family` on `release`. Without any catalog
    /// entry for the family the node is taken as current: nothing newer is known.
    pub fn support_status(&self, family: &ImageFamily, release: &Version) -> SupportStatus {
        support_status(release, self.entries(family).iter().map(|e| &e.release))
    }
}

/// Support status of `release` among `known` releases: only the newest
/// branch (major.minor) of non-pre-releases is supported with patches.
pub fn support_status<'a>(release: &Version, known: impl IntoIterator<Item = &'a Version>) -> SupportStatus {
    let newest = known.into_iter().filter(|v| v.pre.is_empty()).max_by(|a, b| cmp_release(a, b));
    let Some(newest) = newest else {
        return SupportStatus::Current;
    };
    if (release.major, release.minor) < (newest.major, newest.minor) {
        SupportStatus::UnsupportedBranch
    } else if cmp_release(release, newest).is_lt() {
        SupportStatus::PatchAvailable
    } else {
        SupportStatus::Current
    }
}

/// Decides whether `node` may move to `to`, and how big the move is.
///
/// Checks run from the hardest constraint (can the image boot at all?) to
/// the softest (operator overrides), so the first refusal is the one that
/// matters most. `catalog` supplies the barrier releases.
pub fn check_move(
    node: &NodeFacts,
    to: &Destination,
    opts: PolicyOptions,
    catalog: &ReleaseCatalog,
) -> Result<ChangeClass, Refusal> {
    let refuse = |rule: Rule, detail: String, way_out: String| Refusal { node: node.id.clone(), rule, detail, way_out };
    let from = &node.family;
    if to.family.arch != from.arch {
        return Err(refuse(
            Rule::ArchMismatch,
            format!("node is {} but the image is built for {}", from.arch, to.family.arch),
            format!("target a {} image or narrow the selector with --arch {}", from.arch, from.arch),
        ));
    }
    if to.family.model != from.model {
        return Err(refuse(
            Rule::ModelMismatch,
            format!("node model is {} but the image is built for {}", from.model, to.family.model),
            format!("target a {} image or narrow the selector with --model {}", from.model, from.model),
        ));
    }
    if to.family.trusted_boot != from.trusted_boot {
        let kind = |uki: bool| if uki { "uki" } else { "non-uki" };
        return Err(refuse(
            Rule::TrustedBootChange,
            format!(
                "node runs a {} image and the target is {}; switching changes how the node boots and is measured",
                kind(from.trusted_boot),
                kind(to.family.trusted_boot)
            ),
            format!("target the {} image of that release, or reinstall the node", kind(from.trusted_boot)),
        ));
    }
    if to.family.flavor != from.flavor {
        return Err(refuse(
            Rule::FlavorChange,
            format!("node runs flavor {} and the image is flavor {}", from.flavor, to.family.flavor),
            "flavors are pinned to upstream OS branches: reinstall the node with the new flavor, \
             or narrow the selector with --flavor"
                .into(),
        ));
    }
    if to.family.flavor_release != from.flavor_release {
        return Err(refuse(
            Rule::FlavorReleaseChange,
            format!(
                "node runs {} {} and the image is {} {}",
                from.flavor, from.flavor_release, to.family.flavor, to.family.flavor_release
            ),
            "a new upstream OS branch is a new flavor release: reinstall, or target an image of the node's flavor release"
                .into(),
        ));
    }
    if to.family.variant != from.variant {
        return Err(refuse(
            Rule::VariantChange,
            format!("node runs a {} image and the target is {}", from.variant, to.family.variant),
            format!(
                "target the {} image of that release, or narrow the selector with --variant {}",
                from.variant, from.variant
            ),
        ));
    }
    if !to.release.pre.is_empty() && !opts.explicit_target {
        return Err(refuse(
            Rule::PrereleaseNotExplicit,
            format!("v{} is a pre-release", to.release),
            format!("name v{} explicitly as the rollout target to test it", to.release),
        ));
    }
    check_software(node, to).map_err(|(rule, detail, way_out)| refuse(rule, detail, way_out))?;

    let class = ChangeClass::of_releases(&node.release, &to.release);
    match class {
        ChangeClass::Same if node.software != to.software => Ok(ChangeClass::SoftwareOnly),
        ChangeClass::Downgrade if !(opts.allow_downgrade || opts.rollback) => Err(refuse(
            Rule::DowngradeNotAllowed,
            format!("v{} is older than the installed v{}", to.release, node.release),
            "roll back the rollout that installed it, or pass --allow-downgrade".into(),
        )),
        ChangeClass::Major => {
            if to.release.major > node.release.major + 1 {
                let next = node.release.major + 1;
                return Err(refuse(
                    Rule::MajorSkip,
                    format!("v{} to v{} crosses more than one major", node.release, to.release),
                    format!("upgrade to the newest v{next}.x first, then to v{}", to.release),
                ));
            }
            if !opts.allow_major {
                return Err(refuse(
                    Rule::MajorNotAllowed,
                    format!(
                        "v{} to v{} is a major upgrade; in-place major upgrades are not guaranteed",
                        node.release, to.release
                    ),
                    "read the release notes, then pass --allow-major (nodes must be on the last release of their major)"
                        .into(),
                ));
            }
            let barrier = catalog.barrier(&node.family, node.release.major).unwrap_or(&node.release);
            if cmp_release(&node.release, barrier).is_lt() {
                return Err(refuse(
                    Rule::MajorBarrier,
                    format!(
                        "major upgrades start from v{barrier}, the last release of v{}; node is on v{}",
                        node.release.major, node.release
                    ),
                    format!("upgrade the node to v{barrier} first, then run the major upgrade"),
                ));
            }
            Ok(class)
        }
        other => Ok(other),
    }
}

/// Picks the image a node should move to for a rollout `target`: the node's
/// own family at the target release. Without an explicit Kubernetes engine,
/// a standard node keeps its engine line: the newest engine of the release
/// on the node's own minor, else the next minor up.
pub fn resolve_destination(
    node: &NodeFacts,
    target: &super::model::Target,
    catalog: &ReleaseCatalog,
) -> Result<Destination, Refusal> {
    let family = node.family.clone();
    let at_release: Vec<&CatalogEntry> =
        catalog.entries(&family).iter().filter(|e| cmp_release(&e.release, &target.release).is_eq()).collect();
    let missing = || Refusal {
        node: node.id.clone(),
        rule: Rule::NoImageForFamily,
        detail: format!("no {family} image is known at v{}", target.release),
        way_out: "add the image with `kairosctl releases add REF` or `kairosctl releases sync`, \
                  or narrow the selector"
            .into(),
    };
    if at_release.is_empty() {
        return Err(missing());
    }
    let software = match (&target.software, family.variant) {
        (Some(s), _) => {
            if !at_release.iter().any(|e| e.software.as_ref() == Some(s)) {
                return Err(Refusal {
                    detail: format!("no {family} image is known at v{} with {s}", target.release),
                    ..missing()
                });
            }
            Some(s.clone())
        }
        (None, Variant::Core) => None,
        (None, Variant::Standard) => {
            let engines = at_release.iter().filter_map(|e| e.software.as_ref());
            match &node.software {
                Some(cur) => {
                    let same_line = |s: &&SoftwareVersion, minor: u64| {
                        s.distro == cur.distro && s.version.major == cur.version.major && s.version.minor == minor
                    };
                    let same: Option<&SoftwareVersion> =
                        engines.clone().filter(|s| same_line(s, cur.version.minor)).max();
                    same.or_else(|| engines.filter(|s| same_line(s, cur.version.minor + 1)).min()).cloned()
                }
                None => engines.max().cloned(),
            }
        }
    };
    if family.variant == Variant::Standard && software.is_none() {
        return Err(Refusal {
            rule: Rule::SoftwareRequired,
            detail: format!(
                "no {family} image at v{} carries a Kubernetes engine the node can move to from {}",
                target.release,
                node.software.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "an unknown engine".into())
            ),
            way_out: "pass --software-version with an engine at most one minor ahead".into(),
            ..missing()
        });
    }
    Ok(Destination { family, release: target.release.clone(), software })
}

/// The Kubernetes engine rules for standard images: present, same engine,
/// never downgraded, at most one minor per step.
fn check_software(node: &NodeFacts, to: &Destination) -> Result<(), (Rule, String, String)> {
    if to.family.variant == Variant::Core {
        return match &to.software {
            Some(s) => Err((
                Rule::SoftwareOnCore,
                format!("core images carry no Kubernetes engine, but {s} was requested"),
                "drop --software-version, or select standard nodes with --variant standard".into(),
            )),
            None => Ok(()),
        };
    }
    let Some(target) = &to.software else {
        return Err((
            Rule::SoftwareRequired,
            "standard images need a Kubernetes engine version".into(),
            "pass --software-version (e.g. k3sv1.27.6-k3s1)".into(),
        ));
    };
    let Some(current) = &node.software else {
        // A standard node that did not report its engine cannot be checked
        // for downgrades; the target is taken as its first known engine.
        return Ok(());
    };
    if current.distro != target.distro {
        return Err((
            Rule::SoftwareDistroChange,
            format!("node runs {} and the target ships {}", current.distro.as_str(), target.distro.as_str()),
            format!("target an image with {}", current.distro.as_str()),
        ));
    }
    let (cv, tv) = (&current.version, &target.version);
    if (tv.major, tv.minor, tv.patch) < (cv.major, cv.minor, cv.patch)
        || ((tv.major, tv.minor, tv.patch) == (cv.major, cv.minor, cv.patch)
            && build_number(target) < build_number(current))
    {
        return Err((
            Rule::SoftwareDowngrade,
            format!("{} would go from v{} to v{}", target.distro.as_str(), current.upstream(), target.upstream()),
            format!("pick a {} version at or above {}", target.distro.as_str(), current.upstream()),
        ));
    }
    if tv.major != cv.major || tv.minor > cv.minor + 1 {
        let next_minor = cv.minor + 1;
        return Err((
            Rule::SoftwareMinorSkip,
            format!("Kubernetes v{} to v{} skips a minor", cv, tv),
            format!("upgrade to a v{}.{next_minor}.x image first", cv.major),
        ));
    }
    Ok(())
}

/// The numeric part of a build suffix (`k3s2` → 2, `k0s.0` → 0), for ordering.
fn build_number(s: &SoftwareVersion) -> u64 {
    let digits: String = s.build.chars().skip(3).filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::matrix::seed_flavor;
    use crate::fleet::model::Arch;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn k3s(s: &str) -> Option<SoftwareVersion> {
        Some(SoftwareVersion::parse(s, None).unwrap())
    }

    fn node(flavor: &str, variant: Variant, release: &str, software: Option<SoftwareVersion>) -> NodeFacts {
        NodeFacts {
            id: NodeId::new("node-1"),
            family: seed_flavor(flavor).unwrap().family(variant),
            release: v(release),
            software,
            labels: Default::default(),
            k3s: None,
        }
    }

    fn dest(n: &NodeFacts, release: &str, software: Option<SoftwareVersion>) -> Destination {
        Destination { family: n.family.clone(), release: v(release), software }
    }

    fn catalog_for(n: &NodeFacts, releases: &[&str]) -> ReleaseCatalog {
        let mut c = ReleaseCatalog::new();
        for r in releases {
            c.add(n.family.clone(), v(r), None);
        }
        c
    }

    #[test]
    fn change_class_table() {
        let table = [
            ("1.5.0", "1.5.0", ChangeClass::Same),
            ("1.5.0", "1.5.1", ChangeClass::Patch),
            ("1.5.1", "1.6.0", ChangeClass::Minor),
            ("1.6.3", "2.0.0", ChangeClass::Major),
            ("1.6.0", "1.5.9", ChangeClass::Downgrade),
            ("2.0.0", "2.0.0-rc1", ChangeClass::Downgrade),
            ("2.0.0-rc1", "2.0.0", ChangeClass::Patch),
        ];
        for (from, to, want) in table {
            assert_eq!(ChangeClass::of_releases(&v(from), &v(to)), want, "{from} -> {to}");
        }
    }

    #[test]
    fn patch_and_minor_moves_are_allowed_without_flags() {
        let n = node("opensuse", Variant::Core, "1.5.0", None);
        let c = ReleaseCatalog::new();
        assert_eq!(check_move(&n, &dest(&n, "1.5.1", None), PolicyOptions::default(), &c), Ok(ChangeClass::Patch));
        assert_eq!(check_move(&n, &dest(&n, "1.6.0", None), PolicyOptions::default(), &c), Ok(ChangeClass::Minor));
        assert_eq!(check_move(&n, &dest(&n, "1.5.0", None), PolicyOptions::default(), &c), Ok(ChangeClass::Same));
    }

    #[test]
    fn major_upgrade_requires_allow_major() {
        let n = node("opensuse", Variant::Core, "1.6.3", None);
        let c = catalog_for(&n, &["1.6.2", "1.6.3", "2.0.0"]);
        let r = check_move(&n, &dest(&n, "2.0.0", None), PolicyOptions::default(), &c).unwrap_err();
        assert_eq!(r.rule, Rule::MajorNotAllowed);
        assert!(r.way_out.contains("--allow-major"));
        assert_eq!(r.node, NodeId::new("node-1"));
        let allow = PolicyOptions { allow_major: true, ..Default::default() };
        assert_eq!(check_move(&n, &dest(&n, "2.0.0", None), allow, &c), Ok(ChangeClass::Major));
    }

    #[test]
    fn major_upgrade_requires_barrier_release() {
        let n = node("ubuntu-22-lts", Variant::Core, "1.6.2", None);
        let c = catalog_for(&n, &["1.6.2", "1.6.3", "2.0.0"]);
        let allow = PolicyOptions { allow_major: true, ..Default::default() };
        let r = check_move(&n, &dest(&n, "2.0.0", None), allow, &c).unwrap_err();
        assert_eq!(r.rule, Rule::MajorBarrier);
        assert!(r.detail.contains("v1.6.3"), "{}", r.detail);
        assert!(r.way_out.contains("v1.6.3"), "{}", r.way_out);
    }

    #[test]
    fn major_barrier_ignores_prereleases_of_the_old_major() {
        let n = node("ubuntu-22-lts", Variant::Core, "1.6.3", None);
        let c = catalog_for(&n, &["1.6.3", "1.7.0-rc1", "2.0.0"]);
        let allow = PolicyOptions { allow_major: true, ..Default::default() };
        assert_eq!(check_move(&n, &dest(&n, "2.0.0", None), allow, &c), Ok(ChangeClass::Major));
    }

    #[test]
    fn majors_are_crossed_one_at_a_time() {
        let n = node("opensuse", Variant::Core, "1.6.3", None);
        let allow = PolicyOptions { allow_major: true, ..Default::default() };
        let r = check_move(&n, &dest(&n, "3.0.0", None), allow, &ReleaseCatalog::new()).unwrap_err();
        assert_eq!(r.rule, Rule::MajorSkip);
        assert!(r.way_out.contains("v2.x"));
    }

    #[test]
    fn downgrade_needs_rollback_or_allow_downgrade() {
        let n = node("opensuse", Variant::Core, "1.6.0", None);
        let c = ReleaseCatalog::new();
        let r = check_move(&n, &dest(&n, "1.5.0", None), PolicyOptions::default(), &c).unwrap_err();
        assert_eq!(r.rule, Rule::DowngradeNotAllowed);
        for opts in [
            PolicyOptions { allow_downgrade: true, ..Default::default() },
            PolicyOptions { rollback: true, ..Default::default() },
        ] {
            assert_eq!(check_move(&n, &dest(&n, "1.5.0", None), opts, &c), Ok(ChangeClass::Downgrade));
        }
    }

    #[test]
    fn flavor_flavor_release_variant_arch_model_and_trusted_boot_changes_are_refused() {
        let n = node("opensuse", Variant::Core, "1.5.0", None);
        let c = ReleaseCatalog::new();
        let mut cases: Vec<(ImageFamily, Rule)> = Vec::new();
        let mut f = n.family.clone();
        f.flavor = "ubuntu".into();
        cases.push((f, Rule::FlavorChange));
        let mut f = n.family.clone();
        f.flavor_release = "leap-15.5".into();
        cases.push((f, Rule::FlavorReleaseChange));
        let mut f = n.family.clone();
        f.arch = Arch::Arm64;
        cases.push((f, Rule::ArchMismatch));
        let mut f = n.family.clone();
        f.model = "rpi".into();
        cases.push((f, Rule::ModelMismatch));
        let mut f = n.family.clone();
        f.trusted_boot = true;
        cases.push((f, Rule::TrustedBootChange));
        let mut f = n.family.clone();
        f.variant = Variant::Standard;
        cases.push((f, Rule::VariantChange));
        for (family, rule) in cases {
            let to = Destination { family, release: v("1.5.1"), software: k3s("k3sv1.26.1-k3s1") };
            let r = check_move(&n, &to, PolicyOptions::default(), &c).unwrap_err();
            assert_eq!(r.rule, rule);
            assert!(!r.way_out.is_empty());
        }
    }

    #[test]
    fn trusted_boot_change_is_refused_both_ways_naming_the_image_to_target() {
        let plain = node("opensuse", Variant::Core, "1.5.0", None);
        let uki_family = ImageFamily { flavor_release: "leap-15.6".into(), trusted_boot: true, ..plain.family.clone() };
        let uki = NodeFacts { family: uki_family.clone(), ..plain.clone() };
        let c = ReleaseCatalog::new();
        let to_plain =
            Destination { family: ImageFamily { trusted_boot: false, ..uki_family }, ..dest(&uki, "1.5.1", None) };
        let r = check_move(&uki, &to_plain, PolicyOptions::default(), &c).unwrap_err();
        assert_eq!(r.rule, Rule::TrustedBootChange);
        assert!(r.detail.contains("uki image and the target is non-uki"), "{}", r.detail);
        assert_eq!(r.way_out, "target the uki image of that release, or reinstall the node");
        let to_uki = dest(&uki, "1.5.1", None);
        let r = check_move(&plain, &to_uki, PolicyOptions::default(), &c).unwrap_err();
        assert_eq!(r.rule, Rule::TrustedBootChange, "checked before the flavor release");
        assert_eq!(r.way_out, "target the non-uki image of that release, or reinstall the node");
        // No operator override lifts it.
        let any = PolicyOptions { allow_major: true, allow_downgrade: true, rollback: true, explicit_target: true };
        assert_eq!(check_move(&plain, &to_uki, any, &c).unwrap_err().rule, Rule::TrustedBootChange);
        // The model check comes first.
        let rpi_uki = Destination { family: ImageFamily { model: "rpi".into(), ..to_uki.family.clone() }, ..to_uki };
        assert_eq!(check_move(&plain, &rpi_uki, PolicyOptions::default(), &c).unwrap_err().rule, Rule::ModelMismatch);
        assert_eq!(Rule::TrustedBootChange.to_string(), "trusted-boot-change");
    }

    #[test]
    fn prerelease_is_never_chosen_implicitly() {
        let n = node("opensuse", Variant::Core, "1.5.0", None);
        let c = ReleaseCatalog::new();
        let r = check_move(&n, &dest(&n, "1.6.0-rc1", None), PolicyOptions::default(), &c).unwrap_err();
        assert_eq!(r.rule, Rule::PrereleaseNotExplicit);
        let explicit = PolicyOptions { explicit_target: true, ..Default::default() };
        assert_eq!(check_move(&n, &dest(&n, "1.6.0-rc1", None), explicit, &c), Ok(ChangeClass::Minor));
    }

    #[test]
    fn k3s_is_never_downgraded() {
        let n = node("opensuse", Variant::Standard, "1.5.0", k3s("k3sv1.26.1-k3s1"));
        let c = ReleaseCatalog::new();
        for target in ["k3sv1.25.9-k3s1", "k3sv1.26.0-k3s2"] {
            let r = check_move(&n, &dest(&n, "1.5.1", k3s(target)), PolicyOptions::default(), &c).unwrap_err();
            assert_eq!(r.rule, Rule::SoftwareDowngrade, "{target}");
        }
        let n2 = node("opensuse", Variant::Standard, "1.5.0", k3s("k3sv1.26.1-k3s2"));
        let r = check_move(&n2, &dest(&n2, "1.5.1", k3s("k3sv1.26.1-k3s1")), PolicyOptions::default(), &c);
        assert_eq!(r.unwrap_err().rule, Rule::SoftwareDowngrade);
    }

    #[test]
    fn k3s_moves_at_most_one_minor_per_step() {
        let n = node("opensuse", Variant::Standard, "1.5.0", k3s("k3sv1.26.1-k3s1"));
        let c = ReleaseCatalog::new();
        let ok = check_move(&n, &dest(&n, "1.5.1", k3s("k3sv1.27.6-k3s1")), PolicyOptions::default(), &c);
        assert_eq!(ok, Ok(ChangeClass::Patch));
        let r = check_move(&n, &dest(&n, "1.5.1", k3s("k3sv1.28.2-k3s1")), PolicyOptions::default(), &c).unwrap_err();
        assert_eq!(r.rule, Rule::SoftwareMinorSkip);
        assert!(r.way_out.contains("v1.27.x"), "{}", r.way_out);
    }

    #[test]
    fn same_release_with_new_k3s_is_software_only() {
        let n = node("ubuntu", Variant::Standard, "1.5.0", k3s("k3sv1.26.1-k3s1"));
        let r = check_move(
            &n,
            &dest(&n, "1.5.0", k3s("k3sv1.26.3-k3s1")),
            PolicyOptions::default(),
            &ReleaseCatalog::new(),
        );
        assert_eq!(r, Ok(ChangeClass::SoftwareOnly));
    }

    #[test]
    fn k3s_rules_cover_engine_presence_and_distro() {
        let c = ReleaseCatalog::new();
        let std_node = node("ubuntu", Variant::Standard, "1.5.0", k3s("k3sv1.26.1-k3s1"));
        let r = check_move(&std_node, &dest(&std_node, "1.5.1", None), PolicyOptions::default(), &c).unwrap_err();
        assert_eq!(r.rule, Rule::SoftwareRequired);
        let r =
            check_move(&std_node, &dest(&std_node, "1.5.1", k3s("k0s-v1.26.1-k0s.0")), PolicyOptions::default(), &c);
        assert_eq!(r.unwrap_err().rule, Rule::SoftwareDistroChange);
        let core = node("ubuntu", Variant::Core, "1.5.0", None);
        let r = check_move(&core, &dest(&core, "1.5.1", k3s("k3sv1.26.1-k3s1")), PolicyOptions::default(), &c);
        assert_eq!(r.unwrap_err().rule, Rule::SoftwareOnCore);
    }

    #[test]
    fn support_status_only_latest_branch_is_supported() {
        let known: Vec<Version> = ["1.5.0", "1.5.1", "1.6.0", "1.6.1", "1.7.0-rc1"].iter().map(|s| v(s)).collect();
        let table = [
            ("1.6.1", SupportStatus::Current),
            ("1.6.0", SupportStatus::PatchAvailable),
            ("1.5.1", SupportStatus::UnsupportedBranch),
            ("1.7.0-rc1", SupportStatus::Current),
            ("1.8.0", SupportStatus::Current),
        ];
        for (release, want) in table {
            assert_eq!(support_status(&v(release), &known), want, "{release}");
        }
        assert_eq!(support_status(&v("0.1.0"), &[]), SupportStatus::Current);
    }

    #[test]
    fn catalog_latest_skips_prereleases_and_has_matches_software() {
        let n = node("opensuse", Variant::Standard, "1.5.0", None);
        let mut c = ReleaseCatalog::new();
        c.add(n.family.clone(), v("1.5.0"), k3s("k3sv1.26.1-k3s1"));
        c.add(n.family.clone(), v("1.6.0-rc1"), k3s("k3sv1.26.1-k3s1"));
        c.add(n.family.clone(), v("1.5.0"), k3s("k3sv1.26.1-k3s1"));
        assert_eq!(c.entries(&n.family).len(), 2);
        assert_eq!(c.latest(&n.family), Some(&v("1.5.0")));
        assert!(c.has(&n.family, &v("1.5.0"), None));
        assert!(c.has(&n.family, &v("1.5.0"), k3s("k3sv1.26.1-k3s1").as_ref()));
        assert!(!c.has(&n.family, &v("1.5.0"), k3s("k3sv1.27.1-k3s1").as_ref()));
        assert_eq!(c.support_status(&n.family, &v("1.4.0")), SupportStatus::UnsupportedBranch);
    }

    #[test]
    fn every_refusal_names_node_rule_and_way_out() {
        let n = node("opensuse", Variant::Standard, "1.6.0", k3s("k3sv1.26.1-k3s1"));
        let r = check_move(
            &n,
            &dest(&n, "1.5.0", k3s("k3sv1.26.1-k3s1")),
            PolicyOptions::default(),
            &ReleaseCatalog::new(),
        )
        .unwrap_err();
        let msg = r.to_string();
        assert!(msg.contains("node-1") && msg.contains("downgrade-not-allowed") && msg.contains("way out"), "{msg}");
    }

    #[test]
    fn destination_needs_an_image_of_the_node_family() {
        let n = node("opensuse", Variant::Core, "1.5.0", None);
        let target = crate::fleet::model::Target { release: v("1.5.1"), software: None };
        let r = resolve_destination(&n, &target, &ReleaseCatalog::new()).unwrap_err();
        assert_eq!(r.rule, Rule::NoImageForFamily);
        assert!(r.way_out.contains("releases add"));
        let c = catalog_for(&n, &["1.5.1"]);
        assert_eq!(resolve_destination(&n, &target, &c).unwrap().release, v("1.5.1"));
    }

    #[test]
    fn destination_keeps_the_node_k3s_line_unless_told_otherwise() {
        let n = node("opensuse", Variant::Standard, "1.5.0", k3s("k3sv1.26.1-k3s1"));
        let mut c = ReleaseCatalog::new();
        for s in ["k3sv1.26.9-k3s1", "k3sv1.27.6-k3s1", "k3sv1.28.2-k3s1"] {
            c.add(n.family.clone(), v("1.5.1"), k3s(s));
        }
        let target = crate::fleet::model::Target { release: v("1.5.1"), software: None };
        assert_eq!(resolve_destination(&n, &target, &c).unwrap().software, k3s("k3sv1.26.9-k3s1"));
        let explicit = crate::fleet::model::Target { release: v("1.5.1"), software: k3s("k3sv1.27.6-k3s1") };
        assert_eq!(resolve_destination(&n, &explicit, &c).unwrap().software, k3s("k3sv1.27.6-k3s1"));
        let unknown = crate::fleet::model::Target { release: v("1.5.1"), software: k3s("k3sv1.29.0-k3s1") };
        assert_eq!(resolve_destination(&n, &unknown, &c).unwrap_err().rule, Rule::NoImageForFamily);
        let mut only_next = ReleaseCatalog::new();
        only_next.add(n.family.clone(), v("1.5.1"), k3s("k3sv1.27.6-k3s1"));
        assert_eq!(resolve_destination(&n, &target, &only_next).unwrap().software, k3s("k3sv1.27.6-k3s1"));
        let mut too_far = ReleaseCatalog::new();
        too_far.add(n.family.clone(), v("1.5.1"), k3s("k3sv1.28.2-k3s1"));
        assert_eq!(resolve_destination(&n, &target, &too_far).unwrap_err().rule, Rule::SoftwareRequired);
    }

    #[test]
    fn defaults_follow_change_class() {
        assert_eq!(ChangeClass::SoftwareOnly.defaults_class(), DefaultsClass::Patch);
        assert_eq!(ChangeClass::Minor.defaults_class(), DefaultsClass::Minor);
        assert_eq!(ChangeClass::Downgrade.defaults_class(), DefaultsClass::Major);
    }
}
