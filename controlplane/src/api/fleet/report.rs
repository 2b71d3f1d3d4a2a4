//! FleetReport counts: per flavor × release × support status, per state,
//! and online/offline totals. Pure.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashMap};

use kairos_fleet_proto::fleet::v1 as pb;

use super::filter::parse_release;

/// Nodes and how many of them are online.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Count {
    nodes: u32,
    online: u32,
}

impl Count {
    fn add(&mut self, online: bool) {
        self.nodes = self.nodes.saturating_add(1);
        self.online = self.online.saturating_add(u32::from(online));
    }
}

/// Counts nodes one at a time, then renders the report.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    by_release: HashMap<(String, String, i32), Count>,
    by_state: BTreeMap<i32, Count>,
    total: Count,
}

/// Flavor ascending, then release newest first (releases that are no
/// semver after all others, by text), then support status.
fn release_row_order(a: &pb::ReleaseCount, b: &pb::ReleaseCount) -> Ordering {
    let position = |r: &pb::ReleaseCount| {
        let version = parse_release(&r.release);
        (version.is_none(), Reverse(version), r.release.clone(), r.support_status)
    };
    a.flavor.cmp(&b.flavor).then_with(|| position(a).cmp(&position(b)))
}

impl ReportBuilder {
    /// Counts one node.
    pub fn add(&mut self, flavor: &str, release: &str, support: pb::SupportStatus, state: i32, online: bool) {
        self.by_release.entry((flavor.to_owned(), release.to_owned(), support as i32)).or_default().add(online);
        self.by_state.entry(state).or_default().add(online);
        self.total.add(online);
    }

    /// The report; `latest_release` is the catalog's newest stable release.
    pub fn finish(self, latest_release: String) -> pb::FleetReportResponse {
        let mut by_release: Vec<pb::ReleaseCount> = self
            .by_release
            .into_iter()
            .map(|((flavor, release, support_status), c)| pb::ReleaseCount {
                flavor,
                release,
                support_status,
                nodes: c.nodes,
                online: c.online,
            })
            .collect();
        by_release.sort_by(release_row_order);
        // Enum order is numeric order; a state is only here when counted.
        let by_state = self
            .by_state
            .into_iter()
            .map(|(state, c)| pb::StateCount { state, nodes: c.nodes, online: c.online })
            .collect();
        pb::FleetReportResponse {
            total_nodes: self.total.nodes,
            online_nodes: self.total.online,
            offline_nodes: self.total.nodes - self.total.online,
            by_release,
            by_state,
            latest_release,
            meta: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sort_by_flavor_then_newest_release_and_states_in_enum_order() {
        let mut b = ReportBuilder::default();
        let (current, patch, old) =
            (pb::SupportStatus::Current, pb::SupportStatus::PatchAvailable, pb::SupportStatus::UnsupportedBranch);
        let (idle, failed, healthy) =
            (pb::NodeState::Idle as i32, pb::NodeState::Failed as i32, pb::NodeState::Healthy as i32);
        b.add("ubuntu", "v2.4.3", current, healthy, true);
        b.add("ubuntu", "v2.10.0", current, healthy, false);
        b.add("opensuse", "v2.3.0", old, failed, false);
        b.add("ubuntu", "v2.4.3", current, idle, true);
        b.add("ubuntu", "junk", pb::SupportStatus::Unknown, idle, false);
        b.add("opensuse", "v2.4.2", patch, idle, true);
        let report = b.finish("v2.10.0".into());
        let rows: Vec<(&str, &str, u32, u32)> =
            report.by_release.iter().map(|r| (r.flavor.as_str(), r.release.as_str(), r.nodes, r.online)).collect();
        assert_eq!(
            rows,
            [
                ("opensuse", "v2.4.2", 1, 1),
                ("opensuse", "v2.3.0", 1, 0),
                ("ubuntu", "v2.10.0", 1, 0),
                ("ubuntu", "v2.4.3", 2, 2),
                ("ubuntu", "junk", 1, 0),
            ]
        );
        let states: Vec<(i32, u32, u32)> = report.by_state.iter().map(|s| (s.state, s.nodes, s.online)).collect();
        assert_eq!(states, [(idle, 3, 2), (healthy, 2, 1), (failed, 1, 0)]);
        assert_eq!((report.total_nodes, report.online_nodes, report.offline_nodes), (6, 3, 3));
        assert_eq!(report.latest_release, "v2.10.0");
    }

    #[test]
    fn an_empty_fleet_reports_zeros_and_no_rows() {
        let report = ReportBuilder::default().finish(String::new());
        assert_eq!((report.total_nodes, report.online_nodes, report.offline_nodes), (0, 0, 0));
        assert!(report.by_release.is_empty() && report.by_state.is_empty());
    }
}
