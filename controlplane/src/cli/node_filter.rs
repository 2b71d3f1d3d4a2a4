//! Node filter flags shared by `nodes list`, `nodes watch` and
//! `fleet report`, and the `-l/--label` selector syntax.

use clap::{Args, ValueEnum};
use kairos_fleet_proto::fleet::v1 as pb;

/// Which nodes a command is about: the image family, labels and ids.
/// Repeated flags match any of their values; different flags must all match.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Node selection")]
pub struct SelectorArgs {
    /// Flavor id, e.g. opensuse or alpine-arm-rpi (repeat for several).
    #[arg(long, value_name = "FLAVOR")]
    pub flavor: Vec<String>,
    /// Flavor release, e.g. leap-15.5 or 22.04 (repeat for several).
    #[arg(long, value_name = "RELEASE")]
    pub flavor_release: Vec<String>,
    /// core or standard (repeat for both).
    #[arg(long, value_name = "VARIANT")]
    pub variant: Vec<String>,
    /// amd64 or arm64 (repeat for both).
    #[arg(long, value_name = "ARCH")]
    pub arch: Vec<String>,
    /// Board model, e.g. generic or rpi4 (repeat for several).
    #[arg(long, value_name = "MODEL")]
    pub model: Vec<String>,
    /// Label selector: k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k (set) or !k (unset);
    /// commas join requirements, all must match (repeat for more).
    #[arg(short = 'l', long = "label", value_name = "SELECTOR")]
    pub labels: Vec<String>,
    /// Node id, the 32-digit machine id (repeat for several).
    #[arg(long = "node", visible_alias = "node-id", value_name = "ID")]
    pub nodes: Vec<String>,
}

impl SelectorArgs {
    /// The selector these flags describe; a label selector that does not
    /// parse is an error naming it.
    pub fn to_selector(&self) -> Result<pb::NodeSelector, String> {
        let mut labels = Vec::new();
        for selector in &self.labels {
            labels.extend(parse_selector(selector)?);
        }
        let trimmed = |values: &[String]| values.iter().map(|v| v.trim().to_owned()).collect::<Vec<_>>();
        Ok(pb::NodeSelector {
            flavors: trimmed(&self.flavor),
            flavor_releases: trimmed(&self.flavor_release),
            variants: trimmed(&self.variant),
            arches: trimmed(&self.arch),
            models: trimmed(&self.model),
            labels,
            node_ids: trimmed(&self.nodes),
        })
    }
}

/// Which nodes a listing is about: the selection, plus release, state,
/// support status and connectivity.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Node filters")]
pub struct NodeFilterArgs {
    /// Image family, labels and ids.
    #[command(flatten)]
    pub selector: SelectorArgs,
    /// Installed Kairos release, e.g. v2.4.2 (repeat for several).
    #[arg(long, value_name = "RELEASE")]
    pub release: Vec<String>,
    /// Upgrade state (repeat for several).
    #[arg(long, value_enum, value_name = "STATE")]
    pub state: Vec<StateArg>,
    /// Support status (repeat for several).
    #[arg(long, value_enum, value_name = "STATUS")]
    pub support: Vec<SupportArg>,
    /// Only nodes a replica holds a stream for.
    #[arg(long, conflicts_with = "offline")]
    pub online: bool,
    /// Only nodes no replica holds a stream for.
    #[arg(long)]
    pub offline: bool,
}

/// A `--state` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Not reported yet.
    Unspecified,
    /// No upgrade in progress.
    Idle,
    /// Pulling the target image.
    Downloading,
    /// Verifying the pulled image.
    Verifying,
    /// Writing the new image.
    Installing,
    /// Rebooting into the new image.
    Rebooting,
    /// Running the target release.
    Healthy,
    /// The upgrade failed.
    Failed,
    /// Back on the previous image.
    RolledBack,
}

impl StateArg {
    fn to_pb(self) -> pb::NodeState {
        match self {
            StateArg::Unspecified => pb::NodeState::Unspecified,
            StateArg::Idle => pb::NodeState::Idle,
            StateArg::Downloading => pb::NodeState::Downloading,
            StateArg::Verifying => pb::NodeState::Verifying,
            StateArg::Installing => pb::NodeState::Installing,
            StateArg::Rebooting => pb::NodeState::Rebooting,
            StateArg::Healthy => pb::NodeState::Healthy,
            StateArg::Failed => pb::NodeState::Failed,
            StateArg::RolledBack => pb::NodeState::RolledBack,
        }
    }
}

/// A `--support` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SupportArg {
    /// On the newest patch of the latest branch.
    Current,
    /// On the latest branch; a newer patch exists.
    PatchAvailable,
    /// On an older branch.
    UnsupportedBranch,
    /// Release or catalog unknown.
    Unknown,
}

impl SupportArg {
    fn to_pb(self) -> pb::SupportStatus {
        match self {
            SupportArg::Current => pb::SupportStatus::Current,
            SupportArg::PatchAvailable => pb::SupportStatus::PatchAvailable,
            SupportArg::UnsupportedBranch => pb::SupportStatus::UnsupportedBranch,
            SupportArg::Unknown => pb::SupportStatus::Unknown,
        }
    }
}

/// The lowercase name of a node state, as `--state` spells it.
pub fn state_name(state: i32) -> &'static str {
    match pb::NodeState::try_from(state) {
        Ok(pb::NodeState::Unspecified) => "unspecified",
        Ok(pb::NodeState::Idle) => "idle",
        Ok(pb::NodeState::Downloading) => "downloading",
        Ok(pb::NodeState::Verifying) => "verifying",
        Ok(pb::NodeState::Installing) => "installing",
        Ok(pb::NodeState::Rebooting) => "rebooting",
        Ok(pb::NodeState::Healthy) => "healthy",
        Ok(pb::NodeState::Failed) => "failed",
        Ok(pb::NodeState::RolledBack) => "rolled-back",
        Err(_) => "unknown",
    }
}

impl NodeFilterArgs {
    /// The filter these flags describe; a label selector that does not
    /// parse is an error naming it.
    pub fn to_filter(&self) -> Result<pb::NodeFilter, String> {
        Ok(pb::NodeFilter {
            selector: Some(self.selector.to_selector()?),
            releases: self.release.clone(),
            states: self.state.iter().map(|s| s.to_pb() as i32).collect(),
            support_statuses: self.support.iter().map(|s| s.to_pb() as i32).collect(),
            online: match (self.online, self.offline) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            },
        })
    }
}

/// Splits a selector at the commas outside parentheses.
fn split_requirements(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

/// Parses a label selector in Kubernetes syntax into requirements; the
/// server checks keys and values.
pub fn parse_selector(selector: &str) -> Result<Vec<pb::LabelRequirement>, String> {
    split_requirements(selector).into_iter().map(|part| parse_requirement(part.trim(), selector)).collect()
}

fn requirement(key: &str, operator: pb::LabelOperator, values: Vec<String>) -> pb::LabelRequirement {
    pb::LabelRequirement { key: key.trim().to_owned(), operator: operator as i32, values }
}

fn parse_requirement(part: &str, selector: &str) -> Result<pb::LabelRequirement, String> {
    let bad = |rule: &str| format!("--label {selector:?}: {rule}");
    if part.is_empty() {
        return Err(bad("empty requirement; write k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k or !k"));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(requirement(key, pb::LabelOperator::NotIn, vec![value.trim().to_owned()]));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(requirement(key, pb::LabelOperator::In, vec![value.trim().to_owned()]));
    }
    if let Some(open) = part.find('(') {
        let head = part[..open].trim();
        let list = part[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| bad("a value list must end with `)`, e.g. 'site in (berlin,paris)'"))?;
        let values: Vec<String> = list.split(',').map(|v| v.trim().to_owned()).collect();
        let (key, operator) = if let Some(key) = head.strip_suffix(" notin") {
            (key, pb::LabelOperator::NotIn)
        } else if let Some(key) = head.strip_suffix(" in") {
            (key, pb::LabelOperator::In)
        } else {
            return Err(bad("before `(` write `KEY in` or `KEY notin`"));
        };
        return Ok(requirement(key, operator, values));
    }
    if let Some(key) = part.strip_prefix('!') {
        return Ok(requirement(key, pb::LabelOperator::DoesNotExist, Vec::new()));
    }
    if part.contains(char::is_whitespace) {
        return Err(bad("write k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k or !k"));
    }
    Ok(requirement(part, pb::LabelOperator::Exists, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(selector: &str) -> Vec<(String, pb::LabelOperator, Vec<String>)> {
        parse_selector(selector).expect(selector).into_iter().map(|r| (r.key.clone(), r.operator(), r.values)).collect()
    }

    fn one(key: &str, op: pb::LabelOperator, values: &[&str]) -> (String, pb::LabelOperator, Vec<String>) {
        (key.to_owned(), op, values.iter().map(|v| v.to_string()).collect())
    }

    #[test]
    fn selectors_follow_the_kubernetes_syntax() {
        use pb::LabelOperator::*;
        assert_eq!(parsed("site=berlin"), [one("site", In, &["berlin"])]);
        assert_eq!(parsed("site==berlin"), [one("site", In, &["berlin"])]);
        assert_eq!(parsed("site!=berlin"), [one("site", NotIn, &["berlin"])]);
        assert_eq!(parsed("site in (berlin, paris)"), [one("site", In, &["berlin", "paris"])]);
        assert_eq!(parsed("fleet.kairos.io/wave notin (canary)"), [one("fleet.kairos.io/wave", NotIn, &["canary"])]);
        assert_eq!(parsed("gpu"), [one("gpu", Exists, &[])]);
        assert_eq!(parsed("!gpu"), [one("gpu", DoesNotExist, &[])]);
        assert_eq!(
            parsed("site in (a,b),gpu,rack!=7"),
            [one("site", In, &["a", "b"]), one("gpu", Exists, &[]), one("rack", NotIn, &["7"])]
        );
    }

    #[test]
    fn malformed_selectors_name_the_flag() {
        for bad in ["site in (a", "site of (a)", "", "a b", "x,,y"] {
            let err = parse_selector(bad).expect_err(bad);
            assert!(err.starts_with("--label "), "{err}");
        }
    }

    #[test]
    fn online_and_offline_flags_set_the_optional_filter() {
        let args = |online, offline| NodeFilterArgs { online, offline, ..Default::default() };
        assert_eq!(args(true, false).to_filter().expect("valid").online, Some(true));
        assert_eq!(args(false, true).to_filter().expect("valid").online, Some(false));
        assert_eq!(args(false, false).to_filter().expect("valid").online, None);
        let states = NodeFilterArgs { state: vec![StateArg::RolledBack], ..Default::default() };
        assert_eq!(states.to_filter().expect("valid").states, [pb::NodeState::RolledBack as i32]);
    }
}
