//! `NodeFilter`: checking a request's filter (errors name the field and the
//! rule) and matching nodes against it. Pure: no store, no tonic beyond
//! the status of a refused filter.

use kairos_fleet_proto::fleet::v1 as pb;
use semver::Version;
use tonic::Status;

use crate::nodes::{check_node_id, NodeRecord};

/// Limits of common.proto and fleet.proto.
const MAX_FLAVORS: usize = 64;
const MAX_FLAVOR_RELEASES: usize = 64;
const MAX_VARIANTS: usize = 2;
const MAX_ARCHES: usize = 8;
const MAX_MODELS: usize = 64;
const MAX_LABEL_REQUIREMENTS: usize = 32;
const MAX_NODE_IDS: usize = 1000;
const MAX_RELEASES: usize = 64;
const MAX_STATES: usize = 9;
const MAX_SUPPORT_STATUSES: usize = 4;
const MAX_LABEL_VALUES: usize = 64;
/// Longest flavor, flavor release, model, label name and label value.
const MAX_NAME: usize = 63;
/// Longest DNS prefix of a label key.
const MAX_LABEL_PREFIX: usize = 253;

const VARIANTS: [&str; 2] = ["core", "standard"];
const ARCHES: [&str; 2] = ["amd64", "arm64"];

/// A label requirement, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelRule {
    key: String,
    operator: pb::LabelOperator,
    values: Vec<String>,
}

impl LabelRule {
    fn matches(&self, value: Option<&str>) -> bool {
        let listed = |v: &str| self.values.iter().any(|w| w == v);
        match self.operator {
            pb::LabelOperator::In => value.is_some_and(listed),
            pb::LabelOperator::NotIn => !value.is_some_and(listed),
            pb::LabelOperator::Exists => value.is_some(),
            // Unspecified never passes the check; treat it as the
            // strictest reading should it ever get here.
            pb::LabelOperator::DoesNotExist | pb::LabelOperator::Unspecified => value.is_none(),
        }
    }
}

/// A checked `NodeFilter`, ready to match nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMatcher {
    flavors: Vec<String>,
    flavor_releases: Vec<String>,
    variants: Vec<String>,
    arches: Vec<String>,
    models: Vec<String>,
    labels: Vec<LabelRule>,
    node_ids: Vec<String>,
    releases: Vec<Version>,
    states: Vec<i32>,
    support_statuses: Vec<i32>,
    online: Option<bool>,
}

/// What a filter looks at in one node.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The node record.
    pub record: &'a NodeRecord,
    /// Its support status (computed against the release catalog).
    pub support: pb::SupportStatus,
    /// Whether a replica holds its stream.
    pub online: bool,
}

/// The family fields of a node: its derived family, else its identity.
pub fn family_field(
    record: &NodeRecord,
    of_family: fn(&pb::ImageFamily) -> &str,
    of_identity: fn(&pb::NodeIdentity) -> &str,
) -> &str {
    match (&record.family, &record.identity) {
        (Some(family), _) => of_family(family),
        (None, Some(identity)) => of_identity(identity),
        (None, None) => "",
    }
}

/// The node's flavor.
pub fn flavor(record: &NodeRecord) -> &str {
    family_field(record, |f| &f.flavor, |i| &i.flavor)
}

/// The node's flavor release.
pub fn flavor_release(record: &NodeRecord) -> &str {
    family_field(record, |f| &f.flavor_release, |i| &i.flavor_release)
}

/// The Kairos release the node runs: from its identity, else from its
/// last status transition; empty when unknown.
pub fn release(record: &NodeRecord) -> &str {
    match record.identity.as_ref().map(|i| i.release.as_str()) {
        Some(r) if !r.is_empty() => r,
        _ => record.last_status.as_ref().map_or("", |s| s.release.as_str()),
    }
}

/// A Kairos release (`v` + semver) as a version; `None` when it is not one.
pub fn parse_release(release: &str) -> Option<Version> {
    Version::parse(release.strip_prefix('v')?).ok()
}

/// The node's label `key`: enrollment labels win over node labels.
fn label<'a>(record: &'a NodeRecord, key: &str) -> Option<&'a str> {
    record.enrollment_labels.get(key).or_else(|| record.node_labels.get(key)).map(String::as_str)
}

fn any_or_all(wanted: &[String], value: &str) -> bool {
    wanted.is_empty() || wanted.iter().any(|w| w == value)
}

impl NodeMatcher {
    /// Checks `filter`; errors are INVALID_ARGUMENT naming the field under
    /// `field` (e.g. `filter.selector.arches[0]`) and the rule.
    pub fn new(field: &str, filter: Option<&pb::NodeFilter>) -> Result<Self, Status> {
        let Some(filter) = filter else { return Ok(NodeMatcher::default()) };
        check(field, filter).map_err(Status::invalid_argument)
    }

    /// Node ids the filter is restricted to; empty = any node.
    pub fn node_ids(&self) -> &[String] {
        &self.node_ids
    }

    /// Whether the node matches every non-empty field.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let record = facts.record;
        let release = release(record);
        // Releases compare as versions, so `v2.4.2` in a filter matches however
        // the node spelled it; a node release that is no semver matches none.
        any_or_all(&self.node_ids, &record.node_id)
            && any_or_all(&self.flavors, flavor(record))
            && any_or_all(&self.flavor_releases, flavor_release(record))
            && any_or_all(&self.variants, family_field(record, |f| &f.variant, |i| &i.variant))
            && any_or_all(&self.arches, family_field(record, |f| &f.arch, |i| &i.arch))
            && any_or_all(&self.models, family_field(record, |f| &f.model, |i| &i.model))
            && self.labels.iter().all(|rule| rule.matches(label(record, &rule.key)))
            && (self.releases.is_empty() || parse_release(release).is_some_and(|v| self.releases.contains(&v)))
            && (self.states.is_empty() || self.states.contains(&record.state))
            && (self.support_statuses.is_empty() || self.support_statuses.contains(&(facts.support as i32)))
            && self.online.is_none_or(|online| online == facts.online)
    }
}

fn check(field: &str, filter: &pb::NodeFilter) -> Result<NodeMatcher, String> {
    let mut m = NodeMatcher::default();
    if let Some(selector) = &filter.selector {
        let sel = format!("{field}.selector");
        m.flavors = names(&format!("{sel}.flavors"), &selector.flavors, MAX_FLAVORS, "a flavor id such as opensuse")?;
        m.flavor_releases = names(
            &format!("{sel}.flavor_releases"),
            &selector.flavor_releases,
            MAX_FLAVOR_RELEASES,
            "a flavor release such as leap-15.5 or 22.04",
        )?;
        m.variants = one_of(&format!("{sel}.variants"), &selector.variants, MAX_VARIANTS, &VARIANTS)?;
        m.arches = one_of(&format!("{sel}.arches"), &selector.arches, MAX_ARCHES, &ARCHES)?;
        m.models =
            names(&format!("{sel}.models"), &selector.models, MAX_MODELS, "a board model such as generic or rpi4")?;
        let labels = format!("{sel}.labels");
        at_most(&labels, selector.labels.len(), MAX_LABEL_REQUIREMENTS)?;
        m.labels = selector
            .labels
            .iter()
            .enumerate()
            .map(|(i, r)| label_rule(&format!("{labels}[{i}]"), r))
            .collect::<Result<_, _>>()?;
        let ids = format!("{sel}.node_ids");
        at_most(&ids, selector.node_ids.len(), MAX_NODE_IDS)?;
        for (i, id) in selector.node_ids.iter().enumerate() {
            check_node_id(&format!("{ids}[{i}]"), id)?;
        }
        m.node_ids = selector.node_ids.clone();
    }
    let releases = format!("{field}.releases");
    at_most(&releases, filter.releases.len(), MAX_RELEASES)?;
    for (i, r) in filter.releases.iter().enumerate() {
        let version = parse_release(r).ok_or_else(|| {
            format!("{releases}[{i}]: must be a Kairos release, `v` and a semver such as v2.4.2, got {:?}", short(r))
        })?;
        m.releases.push(version);
    }
    let states = format!("{field}.states");
    at_most(&states, filter.states.len(), MAX_STATES)?;
    for (i, s) in filter.states.iter().enumerate() {
        if pb::NodeState::try_from(*s).is_err() {
            return Err(format!("{states}[{i}]: must be a NodeState (0 to 8), got {s}"));
        }
    }
    m.states = filter.states.clone();
    let statuses = format!("{field}.support_statuses");
    at_most(&statuses, filter.support_statuses.len(), MAX_SUPPORT_STATUSES)?;
    for (i, s) in filter.support_statuses.iter().enumerate() {
        if pb::SupportStatus::try_from(*s).is_err() {
            return Err(format!("{statuses}[{i}]: must be a SupportStatus (0 to 4), got {s}"));
        }
    }
    m.support_statuses = filter.support_statuses.clone();
    m.online = filter.online;
    Ok(m)
}

fn at_most(field: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{field}: at most {max} values, got {len}"));
    }
    Ok(())
}

/// At most 80 characters of a value, for messages.
fn short(value: &str) -> &str {
    value.char_indices().nth(80).map_or(value, |(i, _)| &value[..i])
}

/// Lowercase names: 1 to 63 characters of `[a-z0-9._-]`.
fn names(field: &str, values: &[String], max: usize, example: &str) -> Result<Vec<String>, String> {
    at_most(field, values.len(), max)?;
    for (i, v) in values.iter().enumerate() {
        let ok = !v.is_empty()
            && v.len() <= MAX_NAME
            && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(format!(
                "{field}[{i}]: must be {example}: 1 to {MAX_NAME} characters of a-z 0-9 . _ -, got {:?}",
                short(v)
            ));
        }
    }
    Ok(values.to_vec())
}

fn one_of(field: &str, values: &[String], max: usize, allowed: &[&str]) -> Result<Vec<String>, String> {
    at_most(field, values.len(), max)?;
    for (i, v) in values.iter().enumerate() {
        if !allowed.contains(&v.as_str()) {
            return Err(format!("{field}[{i}]: must be {}, got {:?}", allowed.join(" or "), short(v)));
        }
    }
    Ok(values.to_vec())
}

/// A label key: an optional DNS prefix and `/`, then 1 to 63 characters of
/// `[A-Za-z0-9._-]`.
fn check_label_key(field: &str, key: &str) -> Result<(), String> {
    let (prefix, name) = key.rsplit_once('/').map_or((None, key), |(p, n)| (Some(p), n));
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err(format!(
            "{field}: the name after the optional prefix must be 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ -, \
             got {:?}",
            short(key)
        ));
    }
    if let Some(prefix) = prefix {
        let dns_label =
            |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if prefix.len() > MAX_LABEL_PREFIX || !prefix.split('.').all(dns_label) {
            return Err(format!(
                "{field}: the prefix before `/` must be a DNS name such as fleet.kairos.io, got {:?}",
                short(key)
            ));
        }
    }
    Ok(())
}

fn label_rule(field: &str, r: &pb::LabelRequirement) -> Result<LabelRule, String> {
    check_label_key(&format!("{field}.key"), &r.key)?;
    let operator = match pb::LabelOperator::try_from(r.operator) {
        Ok(op) if op != pb::LabelOperator::Unspecified => op,
        _ => {
            return Err(format!(
                "{field}.operator: must be LABEL_OPERATOR_IN, _NOT_IN, _EXISTS or _DOES_NOT_EXIST, got {}",
                r.operator
            ))
        }
    };
    let values = format!("{field}.values");
    match operator {
        pb::LabelOperator::In | pb::LabelOperator::NotIn => {
            if r.values.is_empty() || r.values.len() > MAX_LABEL_VALUES {
                return Err(format!(
                    "{values}: {} needs 1 to {MAX_LABEL_VALUES} values, got {}",
                    operator.as_str_name(),
                    r.values.len()
                ));
            }
            for (i, v) in r.values.iter().enumerate() {
                if v.chars().count() > MAX_NAME || v.chars().any(char::is_control) {
                    return Err(format!(
                        "{values}[{i}]: must be at most {MAX_NAME} printable characters, got {:?}",
                        short(v)
                    ));
                }
            }
        }
        _ => {
            if !r.values.is_empty() {
                return Err(format!(
                    "{values}: must be empty for {}, got {} values",
                    operator.as_str_name(),
                    r.values.len()
                ));
            }
        }
    }
    Ok(LabelRule { key: r.key.clone(), operator, values: r.values.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn node() -> NodeRecord {
        let mut r = NodeRecord {
            node_id: ID.into(),
            family: Some(pb::ImageFamily {
                flavor: "opensuse".into(),
                flavor_release: "leap-15.5".into(),
                variant: "standard".into(),
                arch: "amd64".into(),
                model: "generic".into(),
                trusted_boot: false,
            }),
            identity: Some(pb::NodeIdentity { release: "v2.4.2".into(), ..Default::default() }),
            state: pb::NodeState::Idle as i32,
            ..Default::default()
        };
        r.node_labels.insert("site".into(), "berlin".into());
        r.enrollment_labels.insert("fleet.kairos.io/wave".into(), "canary".into());
        r
    }

    fn selector(s: pb::NodeSelector) -> pb::NodeFilter {
        pb::NodeFilter { selector: Some(s), ..Default::default() }
    }

    fn matcher(filter: pb::NodeFilter) -> NodeMatcher {
        NodeMatcher::new("filter", Some(&filter)).expect("valid filter")
    }

    fn refusal(filter: pb::NodeFilter) -> String {
        let status = NodeMatcher::new("filter", Some(&filter)).expect_err("invalid filter");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status.message().to_owned()
    }

    fn matches(filter: pb::NodeFilter, record: &NodeRecord, online: bool) -> bool {
        matcher(filter).matches(&Facts { record, support: pb::SupportStatus::Current, online })
    }

    fn req(key: &str, operator: pb::LabelOperator, values: &[&str]) -> pb::LabelRequirement {
        pb::LabelRequirement {
            key: key.into(),
            operator: operator as i32,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn empty_filter_matches_every_node() {
        assert!(matches(pb::NodeFilter::default(), &node(), false));
        assert!(NodeMatcher::new("filter", None).expect("absent filter").matches(&Facts {
            record: &NodeRecord::default(),
            support: pb::SupportStatus::Unspecified,
            online: true
        }));
    }

    #[test]
    fn repeated_fields_match_any_value_and_fields_must_all_match() {
        let s = |flavors: &[&str], arches: &[&str]| pb::NodeSelector {
            flavors: flavors.iter().map(|v| v.to_string()).collect(),
            arches: arches.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        };
        assert!(matches(selector(s(&["ubuntu", "opensuse"], &[])), &node(), false));
        assert!(!matches(selector(s(&["ubuntu"], &[])), &node(), false));
        assert!(matches(selector(s(&["opensuse"], &["amd64"])), &node(), false));
        assert!(!matches(selector(s(&["opensuse"], &["arm64"])), &node(), false));
    }

    #[test]
    fn family_fields_fall_back_to_the_identity() {
        let mut r = node();
        r.family = None;
        r.identity =
            Some(pb::NodeIdentity { flavor: "alpine-arm-rpi".into(), model: "rpi4".into(), ..Default::default() });
        let s = pb::NodeSelector {
            flavors: vec!["alpine-arm-rpi".into()],
            models: vec!["rpi4".into()],
            ..Default::default()
        };
        assert!(matches(selector(s), &r, false));
    }

    #[test]
    fn label_operators_follow_the_set_based_selector_rules() {
        let r = node();
        let with = |rule: pb::LabelRequirement| selector(pb::NodeSelector { labels: vec![rule], ..Default::default() });
        use pb::LabelOperator::*;
        assert!(matches(with(req("site", In, &["berlin", "paris"])), &r, false));
        assert!(!matches(with(req("site", In, &["paris"])), &r, false));
        assert!(!matches(with(req("rack", In, &["7"])), &r, false), "IN needs the label set");
        assert!(matches(with(req("site", NotIn, &["paris"])), &r, false));
        assert!(matches(with(req("rack", NotIn, &["7"])), &r, false), "NOT_IN passes an unset label");
        assert!(!matches(with(req("site", NotIn, &["berlin"])), &r, false));
        assert!(matches(with(req("fleet.kairos.io/wave", Exists, &[])), &r, false), "enrollment labels count");
        assert!(!matches(with(req("rack", Exists, &[])), &r, false));
        assert!(matches(with(req("rack", DoesNotExist, &[])), &r, false));
        assert!(!matches(with(req("site", DoesNotExist, &[])), &r, false));
    }

    #[test]
    fn releases_compare_as_semver_states_and_online_as_given() {
        let r = node();
        let f = |releases: &[&str], states: &[pb::NodeState], online: Option<bool>| pb::NodeFilter {
            releases: releases.iter().map(|v| v.to_string()).collect(),
            states: states.iter().map(|s| *s as i32).collect(),
            online,
            ..Default::default()
        };
        assert!(matches(f(&["v2.4.1", "v2.4.2"], &[], None), &r, false));
        assert!(!matches(f(&["v2.4.3"], &[], None), &r, false));
        assert!(matches(f(&[], &[pb::NodeState::Idle, pb::NodeState::Failed], None), &r, false));
        assert!(!matches(f(&[], &[pb::NodeState::Failed], None), &r, false));
        assert!(matches(f(&[], &[], Some(true)), &r, true));
        assert!(!matches(f(&[], &[], Some(true)), &r, false));
        assert!(matches(f(&[], &[], Some(false)), &r, false));
        let support =
            pb::NodeFilter { support_statuses: vec![pb::SupportStatus::PatchAvailable as i32], ..Default::default() };
        let m = matcher(support);
        assert!(m.matches(&Facts { record: &r, support: pb::SupportStatus::PatchAvailable, online: false }));
        assert!(!m.matches(&Facts { record: &r, support: pb::SupportStatus::Current, online: false }));
    }

    #[test]
    fn node_ids_restrict_the_match() {
        let other = "f".repeat(32);
        assert!(matches(
            selector(pb::NodeSelector { node_ids: vec![other.clone(), ID.into()], ..Default::default() }),
            &node(),
            false
        ));
        assert!(!matches(selector(pb::NodeSelector { node_ids: vec![other], ..Default::default() }), &node(), false));
    }

    #[test]
    fn refusals_name_the_field_and_the_rule() {
        let arch = refusal(selector(pb::NodeSelector { arches: vec!["x86".into()], ..Default::default() }));
        assert_eq!(arch, r#"filter.selector.arches[0]: must be amd64 or arm64, got "x86""#);
        let variant = refusal(selector(pb::NodeSelector { variants: vec!["kairos".into()], ..Default::default() }));
        assert!(variant.starts_with("filter.selector.variants[0]: must be core or standard"), "{variant}");
        let flavor =
            refusal(selector(pb::NodeSelector { flavors: vec!["ok".into(), "Ubuntu".into()], ..Default::default() }));
        assert!(flavor.starts_with("filter.selector.flavors[1]: must be a flavor id"), "{flavor}");
        let id = refusal(selector(pb::NodeSelector { node_ids: vec!["node-1".into()], ..Default::default() }));
        assert!(id.starts_with("filter.selector.node_ids[0]: must be a machine id"), "{id}");
        let release = refusal(pb::NodeFilter { releases: vec!["2.4.2".into()], ..Default::default() });
        assert!(release.starts_with("filter.releases[0]: must be a Kairos release"), "{release}");
        let state = refusal(pb::NodeFilter { states: vec![42], ..Default::default() });
        assert_eq!(state, "filter.states[0]: must be a NodeState (0 to 8), got 42");
        let support = refusal(pb::NodeFilter { support_statuses: vec![9], ..Default::default() });
        assert!(support.starts_with("filter.support_statuses[0]: must be a SupportStatus"), "{support}");
        let many = refusal(selector(pb::NodeSelector { arches: vec!["amd64".into(); 9], ..Default::default() }));
        assert_eq!(many, "filter.selector.arches: at most 8 values, got 9");
    }

    #[test]
    fn label_requirement_refusals_name_the_requirement_part() {
        use pb::LabelOperator::*;
        let with = |rule: pb::LabelRequirement| {
            refusal(selector(pb::NodeSelector { labels: vec![req("site", Exists, &[]), rule], ..Default::default() }))
        };
        let key = with(req("bad key", Exists, &[]));
        assert!(key.starts_with("filter.selector.labels[1].key: the name"), "{key}");
        let prefix = with(req("under_score.io/wave", Exists, &[]));
        assert!(prefix.starts_with("filter.selector.labels[1].key: the prefix"), "{prefix}");
        let op = with(req("site", Unspecified, &["x"]));
        assert!(op.starts_with("filter.selector.labels[1].operator: must be"), "{op}");
        let none = with(req("site", In, &[]));
        assert_eq!(none, "filter.selector.labels[1].values: LABEL_OPERATOR_IN needs 1 to 64 values, got 0");
        let extra = with(req("site", Exists, &["x"]));
        assert!(
            extra.starts_with("filter.selector.labels[1].values: must be empty for LABEL_OPERATOR_EXISTS"),
            "{extra}"
        );
        let long = with(req("site", NotIn, &[&"v".repeat(64)]));
        assert!(long.starts_with("filter.selector.labels[1].values[0]: must be at most 63"), "{long}");
        assert!(NodeMatcher::new(
            "filter",
            Some(&selector(pb::NodeSelector {
                labels: vec![req("fleet.kairos.io/wave", In, &["canary"])],
                ..Default::default()
            }))
        )
        .is_ok());
    }
}
