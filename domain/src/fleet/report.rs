//! The fleet report: how many nodes run which release of which flavor, and
//! where each stands against the versioning policy.

use std::collections::BTreeMap;

use semver::Version;
use serde::{Deserialize, Serialize};

use super::model::ImageFamily;
use super::policy::{ReleaseCatalog, SupportStatus};

/// One line of the report: a flavor on a release with a support status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReportRow {
    /// Flavor id (with the flavor release for v2+ flavors, e.g. `opensuse:leap-15.5`).
    pub flavor: String,
    /// Kairos release.
    pub release: Version,
    /// Support status of that release for that flavor.
    pub status: SupportStatus,
    /// Number of nodes.
    pub nodes: usize,
}

/// Nodes per flavor × release × support status, sorted by flavor then release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetReport {
    /// The rows.
    pub rows: Vec<ReportRow>,
    /// Total nodes per support status.
    pub totals: BTreeMap<SupportStatus, usize>,
}

impl FleetReport {
    /// Builds the report from each node's family and release. A family the
    /// catalog does not know counts as current: nothing newer is known for it.
    pub fn build<'a>(
        nodes: impl IntoIterator<Item = (&'a ImageFamily, &'a Version)>,
        catalog: &ReleaseCatalog,
    ) -> Self {
        let mut counts: BTreeMap<(String, Version, SupportStatus), usize> = BTreeMap::new();
        let mut totals = BTreeMap::new();
        for (family, release) in nodes {
            let status = catalog.support_status(family, release);
            let flavor = if family.flavor_release.is_empty() {
                family.flavor.clone()
            } else {
                format!("{}:{}", family.flavor, family.flavor_release)
            };
            *counts.entry((flavor, release.clone(), status)).or_default() += 1;
            *totals.entry(status).or_default() += 1;
        }
        let rows = counts
            .into_iter()
            .map(|((flavor, release, status), nodes)| ReportRow { flavor, release, status, nodes })
            .collect();
        Self { rows, totals }
    }

    /// Total number of nodes in the report.
    pub fn total(&self) -> usize {
        self.totals.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::matrix::seed_flavor;
    use crate::fleet::model::Variant;

    #[test]
    fn report_counts_nodes_per_flavor_release_and_status() {
        let fam = seed_flavor("opensuse").unwrap().family(Variant::Core);
        let other = seed_flavor("alpine-ubuntu").unwrap().family(Variant::Standard);
        let mut catalog = ReleaseCatalog::new();
        for r in ["1.5.0", "1.5.1", "1.6.0"] {
            catalog.add(fam.clone(), Version::parse(r).unwrap(), None);
        }
        let (v150, v160) = (Version::parse("1.5.0").unwrap(), Version::parse("1.6.0").unwrap());
        let nodes = vec![(&fam, &v150), (&fam, &v150), (&fam, &v160), (&other, &v150)];
        let report = FleetReport::build(nodes, &catalog);
        assert_eq!(report.total(), 4);
        assert_eq!(report.rows.len(), 3);
        assert_eq!(report.rows[1].flavor, "opensuse");
        assert_eq!((report.rows[1].nodes, report.rows[1].status), (2, SupportStatus::UnsupportedBranch));
        assert_eq!(report.rows[2].status, SupportStatus::Current);
        // Nothing is known for alpine-ubuntu standard: its nodes count as current.
        assert_eq!(report.rows[0].status, SupportStatus::Current);
        assert_eq!(report.totals[&SupportStatus::Current], 2);
    }
}
