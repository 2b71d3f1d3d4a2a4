//! What the release catalog (`releases/<image ref>`) says about a node:
//! its support status and the patch it could move to.
//!
//! A node's support status is relative to the newest stable release of the
//! whole catalog (what `FleetReport.latest_release` shows): only that
//! release's branch (major.minor) gets patches. It is UNKNOWN when the
//! catalog holds no stable release or the node's release is no semver, and
//! UNSPECIFIED when the node never reported a release. The available patch
//! is family-specific: the newest stable catalog release of the node's
//! image family on the node's branch, if newer than what it runs.

use std::collections::HashMap;

use kairos_fleet_proto::fleet::v1 as pb;
use semver::Version;
use tonic::Status;

use super::filter::parse_release;
use crate::api::release::{ReleaseRecord, RELEASES_PREFIX};
use crate::fleet::policy::{support_status, SupportStatus};
use crate::store::KvReader;

/// Flavor, flavor release, variant, arch, model, trusted boot.
type FamilyKey = (String, String, String, String, String, bool);

fn family_key(f: &pb::ImageFamily) -> FamilyKey {
    (f.flavor.clone(), f.flavor_release.clone(), f.variant.clone(), f.arch.clone(), f.model.clone(), f.trusted_boot)
}

/// The catalog as the fleet views need it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    /// Newest stable release of any family.
    latest: Option<Version>,
    /// Stable releases per family.
    families: HashMap<FamilyKey, Vec<Version>>,
}

impl Catalog {
    /// Reads every catalog record from `reader`.
    pub fn load(reader: &KvReader) -> Result<Catalog, Status> {
        let mut records = Vec::new();
        for item in reader.scan_prefix(RELEASES_PREFIX.as_bytes()) {
            let (key, kv) = item.map_err(|e| Status::internal(e.to_string()))?;
            match serde_json::from_slice::<ReleaseRecord>(&kv.value) {
                Ok(record) => records.push(record),
                // One bad record must not hide the fleet; it shows in ListReleases.
                Err(e) => tracing::warn!(key = %key.escape_ascii(), error = %e, "skipping a catalog record"),
            }
        }
        Ok(Catalog::from_records(&records))
    }

    /// The catalog of these records.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a ReleaseRecord>) -> Catalog {
        let mut catalog = Catalog::default();
        for r in records {
            let Some(version) = parse_release(&r.release).filter(|v| v.pre.is_empty()) else { continue };
            if catalog.latest.as_ref().is_none_or(|latest| version > *latest) {
                catalog.latest = Some(version.clone());
            }
            let family = pb::ImageFamily {
                flavor: r.flavor.clone(),
                flavor_release: r.flavor_release.clone(),
                variant: r.variant.clone(),
                arch: r.arch.clone(),
                model: r.model.clone(),
                trusted_boot: r.trusted_boot,
            };
            catalog.families.entry(family_key(&family)).or_default().push(version);
        }
        catalog
    }

    /// Newest stable release, e.g. `v2.4.3`; empty when there is none.
    pub fn latest_release(&self) -> String {
        self.latest.as_ref().map(|v| format!("v{v}")).unwrap_or_default()
    }

    /// Support status of a node running `release`.
    pub fn support(&self, release: &str) -> pb::SupportStatus {
        if release.is_empty() {
            return pb::SupportStatus::Unspecified;
        }
        let (Some(latest), Some(version)) = (&self.latest, parse_release(release)) else {
            return pb::SupportStatus::Unknown;
        };
        match support_status(&version, [latest]) {
            SupportStatus::Current => pb::SupportStatus::Current,
            SupportStatus::PatchAvailable => pb::SupportStatus::PatchAvailable,
            SupportStatus::UnsupportedBranch => pb::SupportStatus::UnsupportedBranch,
        }
    }

    /// Newest stable release of `family` on the branch of `release` that is
    /// newer than it, e.g. `v2.4.3`; empty when none is.
    pub fn available_patch(&self, family: Option<&pb::ImageFamily>, release: &str) -> String {
        let (Some(family), Some(current)) = (family, parse_release(release)) else { return String::new() };
        self.families
            .get(&family_key(family))
            .into_iter()
            .flatten()
            .filter(|v| (v.major, v.minor) == (current.major, current.minor) && **v > current)
            .max()
            .map(|v| format!("v{v}"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::image::ImageRef;

    fn record(reference: &str) -> ReleaseRecord {
        ReleaseRecord::manual(&ImageRef::upgrade_target(reference).expect("valid reference"), None)
    }

    fn ubuntu() -> pb::ImageFamily {
        pb::ImageFamily {
            flavor: "ubuntu".into(),
            flavor_release: "22.04".into(),
            variant: "core".into(),
            arch: "amd64".into(),
            model: "generic".into(),
            trusted_boot: false,
        }
    }

    fn catalog() -> Catalog {
        let records = [
            record("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.1"),
            record("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.3"),
            record("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.3.9"),
            record("quay.io/kairos/opensuse:leap-15.5-core-amd64-generic-v2.4.4"),
            record("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.5.0-rc1"),
        ];
        Catalog::from_records(&records)
    }

    #[test]
    fn support_is_relative_to_the_newest_stable_release_of_the_catalog() {
        let c = catalog();
        assert_eq!(c.latest_release(), "v2.4.4", "pre-releases never count");
        assert_eq!(c.support("v2.4.4"), pb::SupportStatus::Current);
        assert_eq!(c.support("v2.5.0"), pb::SupportStatus::Current, "ahead of the catalog");
        assert_eq!(c.support("v2.4.3"), pb::SupportStatus::PatchAvailable);
        assert_eq!(c.support("v2.3.9"), pb::SupportStatus::UnsupportedBranch);
        assert_eq!(c.support("latest"), pb::SupportStatus::Unknown);
        assert_eq!(c.support(""), pb::SupportStatus::Unspecified);
        assert_eq!(Catalog::default().support("v2.4.4"), pb::SupportStatus::Unknown, "empty catalog");
        assert_eq!(Catalog::default().latest_release(), "");
    }

    #[test]
    fn available_patch_is_the_newest_release_of_the_family_on_the_branch() {
        let c = catalog();
        assert_eq!(c.available_patch(Some(&ubuntu()), "v2.4.1"), "v2.4.3");
        assert_eq!(c.available_patch(Some(&ubuntu()), "v2.4.3"), "", "nothing newer on the branch");
        assert_eq!(c.available_patch(Some(&ubuntu()), "v2.3.1"), "v2.3.9");
        let arm = pb::ImageFamily { arch: "arm64".into(), ..ubuntu() };
        assert_eq!(c.available_patch(Some(&arm), "v2.4.1"), "", "another family");
        assert_eq!(c.available_patch(None, "v2.4.1"), "");
    }
}
