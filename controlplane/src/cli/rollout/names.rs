//! How rollout enums, durations and times read on screen: enums lowercase
//! with dashes (`AWAITING_APPROVAL` → `awaiting-approval`), durations in the
//! form the flags accept (`1h30m`).

use kairos_fleet_proto::fleet::v1 as pb;

use super::super::timestamp;
use crate::fleet::strategy::{format_duration, Millis};

/// A protobuf enum value's name without its prefix, lowercase with dashes;
/// `unknown` for a value this build does not know.
fn lower(name: Option<&str>, prefix: &str) -> String {
    name.map_or_else(|| "unknown".to_owned(), |n| n.trim_start_matches(prefix).to_ascii_lowercase().replace('_', "-"))
}

/// A rollout phase, e.g. `awaiting-approval`.
pub fn phase_name(phase: i32) -> String {
    lower(pb::RolloutPhase::try_from(phase).ok().map(|p| p.as_str_name()), "ROLLOUT_PHASE_")
}

/// A wave phase, e.g. `baking`.
pub fn wave_phase_name(phase: i32) -> String {
    lower(pb::WavePhase::try_from(phase).ok().map(|p| p.as_str_name()), "WAVE_PHASE_")
}

/// A change class, e.g. `software-only`.
pub fn class_name(class: i32) -> String {
    lower(pb::ChangeClass::try_from(class).ok().map(|c| c.as_str_name()), "CHANGE_CLASS_")
}

/// A refusal rule, e.g. `major-needs-barrier`.
pub fn rule_name(rule: i32) -> String {
    lower(pb::RefusalRule::try_from(rule).ok().map(|r| r.as_str_name()), "REFUSAL_RULE_")
}

/// A node's state in a rollout, e.g. `in-flight`.
pub fn node_state_name(state: i32) -> String {
    lower(pb::RolloutNodeState::try_from(state).ok().map(|s| s.as_str_name()), "ROLLOUT_NODE_STATE_")
}

/// A pause reason, e.g. `failure-threshold`.
pub fn pause_reason_name(reason: i32) -> String {
    lower(pb::PauseReason::try_from(reason).ok().map(|r| r.as_str_name()), "PAUSE_REASON_")
}

/// A failure reason, e.g. `health-timeout`.
pub fn failure_name(reason: i32) -> String {
    lower(pb::FailureReason::try_from(reason).ok().map(|r| r.as_str_name()), "FAILURE_REASON_")
}

/// An event kind, e.g. `wave-progress`.
pub fn event_kind_name(kind: i32) -> String {
    lower(pb::RolloutEventKind::try_from(kind).ok().map(|k| k.as_str_name()), "ROLLOUT_EVENT_KIND_")
}

/// An on-failure action; unset and UNSPECIFIED both mean `pause`.
pub fn on_failure_name(action: i32) -> String {
    match pb::OnFailure::try_from(action) {
        Ok(pb::OnFailure::Unspecified) => "pause".to_owned(),
        other => lower(other.ok().map(|a| a.as_str_name()), "ON_FAILURE_"),
    }
}

/// A Kubernetes role, e.g. `server`.
pub fn k3s_role_name(role: i32) -> String {
    lower(pb::K3sRole::try_from(role).ok().map(|r| r.as_str_name()), "K3S_ROLE_")
}

/// Milliseconds as a protobuf duration.
pub fn proto_duration(ms: Millis) -> prost_types::Duration {
    // Both parts fit: u64 milliseconds / 1000 < i64::MAX, and < 1e9 nanos.
    prost_types::Duration {
        seconds: i64::try_from(ms / 1_000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1_000) * 1_000_000).unwrap_or(0),
    }
}

/// A protobuf duration as milliseconds; `None` when negative.
pub fn millis(d: &prost_types::Duration) -> Option<Millis> {
    let seconds = u64::try_from(d.seconds).ok()?;
    let nanos = u64::try_from(d.nanos).ok()?;
    Some(seconds.saturating_mul(1_000).saturating_add(nanos / 1_000_000))
}

/// A protobuf duration as `format_duration` writes it, e.g. `1h30m`.
pub fn duration_text(d: &prost_types::Duration) -> String {
    millis(d).map_or_else(|| format!("{}s", d.seconds), format_duration)
}

/// An optional protobuf timestamp as RFC 3339.
pub fn time_text(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_are_lowercase_with_dashes() {
        assert_eq!(phase_name(pb::RolloutPhase::AwaitingApproval as i32), "awaiting-approval");
        assert_eq!(phase_name(pb::RolloutPhase::RolledBack as i32), "rolled-back");
        assert_eq!(phase_name(99), "unknown");
        assert_eq!(class_name(pb::ChangeClass::SoftwareOnly as i32), "software-only");
        assert_eq!(rule_name(pb::RefusalRule::MajorNeedsBarrier as i32), "major-needs-barrier");
        assert_eq!(node_state_name(pb::RolloutNodeState::InFlight as i32), "in-flight");
        assert_eq!(pause_reason_name(pb::PauseReason::FailureThreshold as i32), "failure-threshold");
        assert_eq!(event_kind_name(pb::RolloutEventKind::WaveProgress as i32), "wave-progress");
        assert_eq!(on_failure_name(pb::OnFailure::Unspecified as i32), "pause");
        assert_eq!(on_failure_name(pb::OnFailure::Abort as i32), "abort");
    }

    #[test]
    fn durations_convert_both_ways() {
        for ms in [0, 999, 60_000, 5_400_000] {
            assert_eq!(millis(&proto_duration(ms)), Some(ms));
        }
        assert_eq!(duration_text(&proto_duration(5_400_000)), "1h30m");
        assert_eq!(millis(&prost_types::Duration { seconds: -1, nanos: 0 }), None);
    }
}
