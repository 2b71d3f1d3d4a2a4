//! Which listed tags SyncReleases adds: container images of a Kairos
//! release, in any of the three grammars. Everything else is skipped with
//! the reason and what to do about it.

use kairos_fleet_proto::fleet::v1 as pb;

use crate::fleet::image::{ImageRef, ImageRefError};

/// What SyncReleases does with one listed tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An upgrade target to add (boxed: it is ten times a skip's size).
    Keep(Box<ImageRef>),
    /// Not added: why, and a detail a person can act on.
    Skip(pb::SkipReason, String),
}

/// The verdict on `reference` (`registry/org/repository:tag`) as listed
/// under `tag`; pre-releases are kept only when `include_prereleases`.
pub fn classify(reference: &str, tag: &str, include_prereleases: bool) -> Verdict {
    match ImageRef::upgrade_target(reference) {
        Ok(image) if !image.release().pre.is_empty() && !include_prereleases => Verdict::Skip(
            pb::SkipReason::Prerelease,
            format!(
                "pre-release v{}: pre-releases are never added implicitly; sync with include_prereleases \
                 (kairosctl releases sync --include-prereleases) to add them",
                image.release()
            ),
        ),
        Ok(image) => Verdict::Keep(Box::new(image)),
        Err(ImageRefError::DiskImageAsUpgradeTarget { suffix, container, .. }) => Verdict::Skip(
            pb::SkipReason::DiskImage,
            format!("raw disk artifact (`{suffix}`), never an upgrade target; nodes upgrade to {container}"),
        ),
        Err(error) if looks_like_release(tag) => {
            let rule = match &error {
                ImageRefError::Invalid { error, .. } => error.to_string(),
                other => other.to_string(),
            };
            Verdict::Skip(
                pb::SkipReason::Unparseable,
                format!(
                    "follows none of the Kairos tag grammars: {rule}; `kairosctl image inspect` explains \
                     a reference, and the image can be added once tagged in a Kairos grammar"
                ),
            )
        }
        Err(_) => Verdict::Skip(
            pb::SkipReason::NotARelease,
            "not a release tag (no `vX.Y.Z` Kairos release in it); nothing to add, nothing to do".to_owned(),
        ),
    }
}

/// A tag meant to name a release: one of its dash-separated words is
/// `v` and a digit (`v2.4.2`, `v3.0.0.img`). `latest`, `master`, commit
/// hashes and cosign's `sha256-<hex>.sig` are not.
fn looks_like_release(tag: &str) -> bool {
    tag.split('-').any(|word| word.strip_prefix('v').is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "registry.local:5000/kairos";

    fn verdict(repository: &str, tag: &str, include_prereleases: bool) -> Verdict {
        classify(&format!("{PREFIX}/{repository}:{tag}"), tag, include_prereleases)
    }

    fn reason_of(repository: &str, tag: &str) -> pb::SkipReason {
        match verdict(repository, tag, false) {
            Verdict::Keep(image) => panic!("{tag} kept as {image}"),
            Verdict::Skip(reason, _) => reason,
        }
    }

    #[test]
    fn release_tags_of_every_grammar_are_kept_with_their_family() {
        let kept = [
            ("core-opensuse", "v1.5.0"),
            ("kairos-alpine-arm-rpi", "v1.5.1-k3sv1.26.1-k3s1"),
            ("opensuse", "leap-15.6-standard-amd64-generic-v2.4.2-k3sv1.30.2-k3s1"),
            ("ubuntu", "24.04-standard-arm64-rpi4-v3.5.0-k3s-v1.33.2-k3s1"),
            ("ubuntu", "24.04-core-amd64-generic-v3.5.0-uki"),
        ];
        for (repository, tag) in kept {
            match verdict(repository, tag, false) {
                Verdict::Keep(image) => assert_eq!(image.to_string(), format!("{PREFIX}/{repository}:{tag}")),
                skipped => panic!("{repository}:{tag} skipped: {skipped:?}"),
            }
        }
    }

    #[test]
    fn disk_images_are_skipped_naming_the_container_image() {
        let Verdict::Skip(reason, detail) = verdict("opensuse", "leap-15.6-core-amd64-generic-v2.4.2-img", false)
        else {
            panic!("a disk image was kept");
        };
        assert_eq!(reason, pb::SkipReason::DiskImage);
        assert!(detail.contains(&format!("{PREFIX}/opensuse:leap-15.6-core-amd64-generic-v2.4.2")), "{detail}");
        assert_eq!(reason_of("core-alpine-arm-rpi", "v1.1.7.img"), pb::SkipReason::DiskImage);
    }

    #[test]
    fn pre_releases_are_skipped_unless_asked_for() {
        let tag = "leap-15.6-core-amd64-generic-v3.0.0-rc1";
        let Verdict::Skip(reason, detail) = verdict("opensuse", tag, false) else { panic!("kept") };
        assert_eq!(reason, pb::SkipReason::Prerelease);
        assert!(detail.contains("v3.0.0-rc1") && detail.contains("--include-prereleases"), "{detail}");
        assert!(matches!(verdict("opensuse", tag, true), Verdict::Keep(_)));
    }

    #[test]
    fn tags_without_a_release_are_not_releases_and_near_misses_are_unparseable() {
        let not_releases =
            ["latest", "master", "main", "sha256-0123abcd.sig", "3f2a9c1", "leap-15.6-core-amd64-generic"];
        for tag in not_releases {
            assert_eq!(reason_of("opensuse", tag), pb::SkipReason::NotARelease, "{tag}");
        }
        let near_misses = ["leap-15.6-core-amd64-generic-v2.4", "v2.4.2", "leap-15.6-core-riscv-generic-v2.4.2"];
        for tag in near_misses {
            assert_eq!(reason_of("opensuse", tag), pb::SkipReason::Unparseable, "{tag}");
        }
        let Verdict::Skip(_, detail) = verdict("opensuse", "leap-15.6-core-riscv-generic-v2.4.2", false) else {
            panic!("kept")
        };
        assert!(detail.starts_with("follows none of the Kairos tag grammars: arch:"), "{detail}");
    }
}
