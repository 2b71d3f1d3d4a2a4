//! Planning a rollout from a spec: which selected nodes may move (the
//! versioning policy), to which image (the release catalog), in which
//! waves (the planner), under which strategy (the change class's defaults
//! and the spec's overrides). Plan and Create share it; Create stores the
//! result.

use std::collections::{BTreeMap, HashMap, HashSet};

use kairos_fleet_proto::fleet::v1 as pb;
use semver::Version;
use tonic::Status;

use crate::api::fleet::filter::{Facts, NodeMatcher};
use crate::api::release::{ReleaseRecord, RELEASES_PREFIX};
use crate::engine::records::NodeMeta;
use crate::fleet::image::ImageRef;
use crate::fleet::model::{ImageFamily, K8sDistro, NodeId, SoftwareVersion, Target};
use crate::fleet::planner::{plan_waves, WavePlan};
use crate::fleet::policy::{check_move, resolve_destination, ChangeClass, PolicyOptions, ReleaseCatalog, Rule};
use crate::fleet::rollout::NodeAssignment;
use crate::fleet::strategy::{
    format_duration, FailureThreshold, Millis, OnFailure, Strategy, WaveSpec, HOUR, WAVE_LABEL,
};
use crate::fleet::window::MaintenanceWindow;
use crate::nodes::{decode_node, facts, family_to_pb, identity_from_pb, image_ref_of, NODES_PREFIX, SESSIONS_PREFIX};
use crate::store::KvReader;

const SECOND: Millis = 1000;
const DAY: Millis = 24 * HOUR;
/// Most wave sizes a strategy may list.
const MAX_WAVES: usize = 64;
/// Most maintenance windows a strategy may list.
const MAX_WINDOWS: usize = 16;
/// Longest free-text field.
pub const MAX_TEXT: usize = 1024;

/// The catalog as planning needs it: the policy's view, and the image
/// reference and digest of every (family, release, software) it knows.
pub struct PlanCatalog {
    /// What the policy reads.
    pub policy: ReleaseCatalog,
    images: HashMap<(ImageFamily, Version, Option<String>), (String, String)>,
    releases: HashSet<Version>,
}

impl PlanCatalog {
    /// Reads every catalog record.
    pub fn load(reader: &KvReader) -> Result<PlanCatalog, Status> {
        let mut catalog =
            PlanCatalog { policy: ReleaseCatalog::new(), images: HashMap::new(), releases: HashSet::new() };
        for item in reader.scan_prefix(RELEASES_PREFIX.as_bytes()) {
            let (key, kv) = item.map_err(|e| Status::internal(e.to_string()))?;
            let record: ReleaseRecord = match serde_json::from_slice(&kv.value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key = %key.escape_ascii(), error = %e, "skipping a catalog record");
                    continue;
                }
            };
            let Ok(image) = ImageRef::parse(&record.image_ref) else { continue };
            let family = image.family();
            let release = image.release().clone();
            let software = image.software().cloned();
            catalog.policy.add(family.clone(), release.clone(), software.clone());
            catalog.releases.insert(release.clone());
            catalog.images.insert(
                (family, release, software.map(|s| s.upstream())),
                (record.image_ref.clone(), record.digest.clone()),
            );
        }
        Ok(catalog)
    }

    fn image(
        &self,
        family: &ImageFamily,
        release: &Version,
        software: Option<&SoftwareVersion>,
    ) -> Option<&(String, String)> {
        self.images.get(&(family.clone(), release.clone(), software.map(|s| s.upstream())))
    }
}

/// A planned rollout, before it is stored.
pub struct Planned {
    /// The highest change class among eligible nodes.
    pub class: ChangeClass,
    /// The strategy with every default filled in.
    pub strategy: Strategy,
    /// The target.
    pub target: Target,
    /// The waves.
    pub plan: WavePlan,
    /// One assignment per eligible node.
    pub assignments: Vec<NodeAssignment>,
    /// Engine data per eligible node (the target digest).
    pub meta: BTreeMap<NodeId, NodeMeta>,
    /// Eligible nodes as the API shows them.
    pub planned: HashMap<NodeId, pb::PlannedNode>,
    /// Refused nodes.
    pub refused: Vec<pb::NodeRefusal>,
    /// Selected nodes already on the target.
    pub up_to_date: Vec<String>,
    /// Nodes the selector matched.
    pub selected: u32,
    /// Things worth a second look.
    pub warnings: Vec<String>,
}

impl Planned {
    /// The waves node by node, as Plan answers them.
    pub fn waves_pb(&self) -> Vec<pb::PlannedWave> {
        self.plan
            .waves
            .iter()
            .filter(|w| !w.nodes.is_empty())
            .enumerate()
            .map(|(i, w)| pb::PlannedWave {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                nodes: w.nodes.iter().filter_map(|n| self.planned.get(n).cloned()).collect(),
            })
            .collect()
    }
}

fn invalid(field: &str, rule: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {rule}"))
}

fn duration_ms(field: &str, d: &prost_types::Duration, min: Millis, max: Millis) -> Result<Millis, Status> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    let ms =
        u64::try_from(d.seconds).unwrap_or(0).saturating_mul(1000) + u64::try_from(d.nanos / 1_000_000).unwrap_or(0);
    if ms < min || ms > max {
        return Err(invalid(
            field,
            format!(
                "must be between {} and {}, got {}",
                format_duration(min),
                format_duration(max),
                format_duration(ms)
            ),
        ));
    }
    Ok(ms)
}

/// The target release and software version of a spec.
pub fn target_of(spec: &pb::RolloutSpec) -> Result<Target, Status> {
    let text = spec.target_release.trim();
    if text.is_empty() {
        return Err(invalid("spec.target_release", "is required, e.g. v2.4.2"));
    }
    let release = Version::parse(text.trim_start_matches('v'))
        .map_err(|e| invalid("spec.target_release", format!("{text:?} is not a release such as v2.4.2: {e}")))?;
    let software = match spec.target_software_version.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(SoftwareVersion::parse(s, Some(K8sDistro::K3s)).map_err(|e| {
            invalid(
                "spec.target_software_version",
                format!("{s:?} is not a Kubernetes version such as v1.27.6+k3s1: {e}"),
            )
        })?),
    };
    Ok(Target { release, software })
}

/// Checks the spec's fields that do not depend on the fleet.
pub fn check_spec(spec: &pb::RolloutSpec) -> Result<(), Status> {
    if spec.description.len() > MAX_TEXT {
        return Err(invalid("spec.description", format!("must be at most {MAX_TEXT} bytes")));
    }
    target_of(spec)?;
    overrides(spec.strategy.as_ref(), Strategy::defaults_for(ChangeClass::Patch.defaults_class(), false))?;
    Ok(())
}

/// `base` with the spec's strategy fields applied, each checked.
pub fn overrides(s: Option<&pb::RolloutStrategy>, mut base: Strategy) -> Result<Strategy, Status> {
    let Some(s) = s else { return Ok(base) };
    const F: &str = "spec.strategy";
    if !s.waves.is_empty() {
        if s.waves.len() > MAX_WAVES {
            return Err(invalid(&format!("{F}.waves"), format!("at most {MAX_WAVES} wave sizes")));
        }
        base.waves = WaveSpec::parse(&s.waves.join(",")).map_err(|e| invalid(&format!("{F}.waves"), e))?;
    }
    if let Some(n) = s.max_unavailable {
        if n == 0 {
            return Err(invalid(&format!("{F}.max_unavailable"), "must be at least 1"));
        }
        base.max_unavailable = n;
    }
    if let Some(d) = &s.health_timeout {
        base.health_timeout = duration_ms(&format!("{F}.health_timeout"), d, SECOND, DAY)?;
    }
    if let Some(t) = &s.failure_threshold {
        base.failure_threshold = t.trim().parse::<FailureThreshold>().map_err(|e| {
            invalid(&format!("{F}.failure_threshold"), format!("{e} (a count such as 2 or a share such as 5%)"))
        })?;
        if matches!(base.failure_threshold, FailureThreshold::Percent(p) if p > 99) {
            return Err(invalid(&format!("{F}.failure_threshold"), "a percentage must be between 0% and 99%"));
        }
    }
    if let Some(n) = s.min_sample {
        if n == 0 {
            return Err(invalid(&format!("{F}.min_sample"), "must be at least 1"));
        }
        base.min_sample = n;
    }
    if let Some(v) = s.on_failure {
        base.on_failure = match pb::OnFailure::try_from(v) {
            Ok(pb::OnFailure::Unspecified | pb::OnFailure::Pause) => OnFailure::Pause,
            Ok(pb::OnFailure::Abort) => OnFailure::Abort,
            Err(_) => return Err(invalid(&format!("{F}.on_failure"), format!("unknown value {v}"))),
        };
    }
    if let Some(d) = &s.bake {
        base.bake = duration_ms(&format!("{F}.bake"), d, 0, 7 * DAY)?;
    }
    if !s.maintenance_windows.is_empty() {
        if s.maintenance_windows.len() > MAX_WINDOWS {
            return Err(invalid(&format!("{F}.maintenance_windows"), format!("at most {MAX_WINDOWS} windows")));
        }
        base.windows = s
            .maintenance_windows
            .iter()
            .enumerate()
            .map(|(i, w)| MaintenanceWindow::parse(w).map_err(|e| invalid(&format!("{F}.maintenance_windows[{i}]"), e)))
            .collect::<Result<_, _>>()?;
    }
    if let Some(v) = s.approve_waves {
        base.approve_waves = v;
    }
    if let Some(v) = s.urgent {
        base.urgent = v;
    }
    if let Some(d) = &s.offline_grace {
        base.offline_grace = duration_ms(&format!("{F}.offline_grace"), d, SECOND, 7 * DAY)?;
    }
    Ok(base)
}

fn pb_duration(ms: Millis) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A resolved strategy with every field set.
pub fn strategy_to_pb(s: &Strategy, allow_major: bool, allow_downgrade: bool) -> pb::RolloutStrategy {
    pb::RolloutStrategy {
        waves: s.waves.to_string().split(',').map(str::to_string).collect(),
        max_unavailable: Some(s.max_unavailable),
        health_timeout: Some(pb_duration(s.health_timeout)),
        failure_threshold: Some(s.failure_threshold.to_string()),
        min_sample: Some(s.min_sample),
        on_failure: Some(match s.on_failure {
            OnFailure::Pause => pb::OnFailure::Pause as i32,
            OnFailure::Abort => pb::OnFailure::Abort as i32,
        }),
        bake: Some(pb_duration(s.bake)),
        maintenance_windows: s.windows.iter().map(|w| w.to_string()).collect(),
        approve_waves: Some(s.approve_waves),
        urgent: Some(s.urgent),
        allow_major: Some(allow_major),
        allow_downgrade: Some(allow_downgrade),
        offline_grace: Some(pb_duration(s.offline_grace)),
    }
}

/// The API's name of a change class.
pub fn class_to_pb(class: ChangeClass) -> pb::ChangeClass {
    match class {
        ChangeClass::Same => pb::ChangeClass::Same,
        ChangeClass::SoftwareOnly => pb::ChangeClass::SoftwareOnly,
        ChangeClass::Patch => pb::ChangeClass::Patch,
        ChangeClass::Minor => pb::ChangeClass::Minor,
        ChangeClass::Major => pb::ChangeClass::Major,
        ChangeClass::Downgrade => pb::ChangeClass::Downgrade,
    }
}

fn rule_to_pb(rule: Rule) -> pb::RefusalRule {
    use pb::RefusalRule as R;
    match rule {
        Rule::FlavorChange => R::FlavorChange,
        Rule::FlavorReleaseChange => R::FlavorReleaseChange,
        Rule::ArchMismatch => R::ArchMismatch,
        Rule::ModelMismatch => R::ModelMismatch,
        Rule::TrustedBootChange => R::TrustedBootChange,
        Rule::VariantChange => R::VariantChange,
        Rule::MajorNotAllowed => R::MajorNotAllowed,
        Rule::MajorBarrier => R::MajorNeedsBarrier,
        Rule::MajorSkip => R::MajorSkip,
        Rule::DowngradeNotAllowed => R::DowngradeNotAllowed,
        Rule::SoftwareDowngrade => R::SoftwareDowngrade,
        Rule::SoftwareMinorSkip => R::SoftwareMinorSkip,
        Rule::SoftwareDistroChange => R::SoftwareDistroChange,
        Rule::SoftwareRequired => R::SoftwareRequired,
        Rule::SoftwareOnCore => R::SoftwareOnCore,
        Rule::PrereleaseNotExplicit => R::Prerelease,
        Rule::NoImageForFamily => R::NoImageForFamily,
    }
}

/// Plans `spec` for a rollout with id `rollout_id` (the wave order depends
/// on it). `busy` maps nodes to the active rollout they are in.
pub fn plan(
    reader: &KvReader,
    spec: &pb::RolloutSpec,
    rollout_id: &str,
    busy: &BTreeMap<NodeId, String>,
) -> Result<Planned, Status> {
    check_spec(spec)?;
    let target = target_of(spec)?;
    let filter = pb::NodeFilter { selector: spec.selector.clone(), ..Default::default() };
    let matcher = NodeMatcher::new("spec", Some(&filter))?;
    let catalog = PlanCatalog::load(reader)?;
    if !catalog.releases.iter().any(|r| r == &target.release) {
        return Err(Status::failed_precondition(format!(
            "spec.target_release: v{} is not in the release catalog; add its images with `kairosctl releases add REF` \
             or `kairosctl releases sync`",
            target.release
        )));
    }
    let allow_major = spec.strategy.as_ref().and_then(|s| s.allow_major).unwrap_or(false);
    let allow_downgrade = spec.strategy.as_ref().and_then(|s| s.allow_downgrade).unwrap_or(false);
    let opts = PolicyOptions { allow_major, allow_downgrade, rollback: false, explicit_target: true };

    let mut online = HashSet::new();
    for item in reader.scan_prefix(SESSIONS_PREFIX.as_bytes()) {
        let (key, _) = item.map_err(|e| Status::internal(e.to_string()))?;
        if let Some(id) = key.strip_prefix(SESSIONS_PREFIX.as_bytes()) {
            online.insert(String::from_utf8_lossy(id).into_owned());
        }
    }

    let mut out = Planned {
        class: ChangeClass::Same,
        strategy: Strategy::defaults_for(ChangeClass::Patch.defaults_class(), false),
        target: target.clone(),
        plan: WavePlan { waves: Vec::new() },
        assignments: Vec::new(),
        meta: BTreeMap::new(),
        planned: HashMap::new(),
        refused: Vec::new(),
        up_to_date: Vec::new(),
        selected: 0,
        warnings: Vec::new(),
    };
    let mut eligible = Vec::new();
    let mut offline = 0usize;
    for item in reader.scan_prefix(NODES_PREFIX.as_bytes()) {
        let (key, kv) = item.map_err(|e| Status::internal(e.to_string()))?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let record = match decode_node(&key, &kv) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%key, error = %e, "skipping a node record");
                continue;
            }
        };
        let is_online = online.contains(&record.node_id);
        if !matcher.matches(&Facts { record: &record, support: pb::SupportStatus::Unspecified, online: is_online }) {
            continue;
        }
        out.selected += 1;
        let current_release = crate::api::fleet::filter::release(&record).to_string();
        let current_software = record.identity.as_ref().map(|i| i.software_version.clone()).unwrap_or_default();
        let refusal =
            |rule: pb::RefusalRule, message: String, way_out: String, class: pb::ChangeClass| pb::NodeRefusal {
                node_id: record.node_id.clone(),
                rule: rule as i32,
                message,
                way_out,
                change_class: class as i32,
                current_release: current_release.clone(),
                current_software_version: current_software.clone(),
            };
        let id = NodeId::new(record.node_id.clone());
        if let Some(other) = busy.get(&id) {
            out.refused.push(refusal(
                pb::RefusalRule::InOtherRollout,
                format!("node {id} is part of rollout {other}, which has not finished"),
                format!("wait for rollout {other} to finish, or abort it with `kairosctl rollout abort {other}`"),
                pb::ChangeClass::Unspecified,
            ));
            continue;
        }
        let node_facts = match facts(&record) {
            Ok(f) => f,
            Err(e) => {
                out.refused.push(refusal(
                    pb::RefusalRule::UnknownIdentity,
                    format!("node {id}: its identity is incomplete: {e}"),
                    "check /etc/kairos-release on the node and restart its node client".into(),
                    pb::ChangeClass::Unspecified,
                ));
                continue;
            }
        };
        let decision = resolve_destination(&node_facts, &target, &catalog.policy)
            .and_then(|dest| check_move(&node_facts, &dest, opts, &catalog.policy).map(|class| (dest, class)));
        let (dest, class) = match decision {
            Ok(d) => d,
            Err(r) => {
                let class = ChangeClass::of_releases(&node_facts.release, &target.release);
                out.refused.push(refusal(
                    rule_to_pb(r.rule),
                    format!("node {}: {}: {}", r.node, r.rule, r.detail),
                    r.way_out,
                    class_to_pb(class),
                ));
                continue;
            }
        };
        if class == ChangeClass::Same {
            out.up_to_date.push(record.node_id.clone());
            continue;
        }
        let Some((image, digest)) = catalog.image(&dest.family, &dest.release, dest.software.as_ref()).cloned() else {
            out.refused.push(refusal(
                pb::RefusalRule::NoImageForFamily,
                format!("node {id}: no {} image at v{} in the catalog", dest.family, dest.release),
                "add the image with `kairosctl releases add REF`".into(),
                class_to_pb(class),
            ));
            continue;
        };
        let previous = if record.current_image_ref.is_empty() {
            record
                .identity
                .as_ref()
                .and_then(|i| identity_from_pb(i).ok())
                .map(|i| image_ref_of(&i))
                .unwrap_or_default()
        } else {
            record.current_image_ref.clone()
        };
        if previous.is_empty() {
            out.refused.push(refusal(
                pb::RefusalRule::UnknownIdentity,
                format!("node {id}: the image it runs is unknown, so it could not be rolled back"),
                "restart its node client so it reports its image".into(),
                class_to_pb(class),
            ));
            continue;
        }
        out.class = out.class.max(class);
        if !is_online {
            offline += 1;
        }
        let pinned = record.labels().get(WAVE_LABEL).cloned().unwrap_or_default();
        out.planned.insert(
            id.clone(),
            pb::PlannedNode {
                node_id: record.node_id.clone(),
                family: Some(family_to_pb(&node_facts.family)),
                current_release: current_release.clone(),
                current_software_version: current_software.clone(),
                target_image_ref: image.clone(),
                target_image_digest: digest.clone(),
                change_class: class_to_pb(class) as i32,
                k3s: record.k3s.clone(),
                online: is_online,
                pinned_by_label: pinned,
            },
        );
        out.meta.insert(id.clone(), NodeMeta { target_digest: digest, ..Default::default() });
        out.assignments.push(NodeAssignment {
            id: id.clone(),
            target_image: image,
            previous_image: previous,
            k3s: node_facts.k3s.clone(),
            online: is_online,
        });
        eligible.push(node_facts);
    }
    let urgent = spec.strategy.as_ref().and_then(|s| s.urgent).unwrap_or(false);
    let class = if out.class == ChangeClass::Same { ChangeClass::Patch } else { out.class };
    out.strategy = overrides(spec.strategy.as_ref(), Strategy::defaults_for(class.defaults_class(), urgent))?;
    out.plan = plan_waves(rollout_id, &eligible, &out.strategy.waves);
    if offline > 0 {
        out.warnings.push(format!(
            "{offline} eligible node(s) are offline; they are deferred if still offline {} into their wave",
            format_duration(out.strategy.offline_grace)
        ));
    }
    if !out.strategy.windows.is_empty()
        && !crate::fleet::window::any_open(&out.strategy.windows, crate::engine::now_ms())
    {
        out.warnings.push("no maintenance window is open now: the first wave waits for one".into());
    }
    if out.strategy.max_unavailable as usize > eligible.len().max(1) {
        out.warnings.push(format!(
            "max_unavailable {} is more than the {} eligible node(s)",
            out.strategy.max_unavailable,
            eligible.len()
        ));
    }
    Ok(out)
}
