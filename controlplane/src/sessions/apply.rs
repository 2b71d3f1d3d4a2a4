//! The pure rules of a node session: what a Hello and a status update are
//! allowed to say, and how they change the node record.

use kairos_fleet_proto::fleet::v1 as pb;

use crate::nodes::{family_to_pb, identity_from_pb, ms_of_timestamp, NodeRecord};

/// Most labels a node may declare.
pub const MAX_LABELS: usize = 64;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 63;
/// Longest label key (`prefix/name`).
pub const MAX_LABEL_KEY: usize = 253 + 1 + 63;
/// Longest hostname.
pub const MAX_HOSTNAME: usize = 253;
/// Longest status message, in bytes.
pub const MAX_STATUS_MESSAGE: usize = 4096;
/// Longest image reference or digest, rollout id, client version.
const MAX_SHORT: usize = 512;

/// A message from the node that breaks a rule; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct FieldError {
    /// The field, e.g. `hello.labels`.
    pub field: String,
    /// The rule it broke.
    pub rule: String,
}

fn err(field: impl Into<String>, rule: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), rule: rule.into() }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(err(field, format!("at most {max} bytes, got {}", value.len())));
    }
    Ok(())
}

fn check_digest(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Ok(());
    }
    match value.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(()),
        _ => Err(err(field, format!("must be `sha256:` and 64 lowercase hex digits, got {value:?}"))),
    }
}

fn check_label(key: &str, value: &str) -> Result<(), FieldError> {
    let field = format!("hello.labels[{key:?}]");
    if key.is_empty() || key.len() > MAX_LABEL_KEY {
        return Err(err(field, format!("keys are 1 to {MAX_LABEL_KEY} bytes")));
    }
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !name_ok {
        return Err(err(field, "key names are 1 to 63 of [A-Za-z0-9-_.], starting with a letter or digit"));
    }
    if value.len() > MAX_LABEL_VALUE
        || !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(err(field, format!("values are at most {MAX_LABEL_VALUE} of [A-Za-z0-9-_.]")));
    }
    Ok(())
}

/// Applies a Hello to the node's record: identity, boot state, labels,
/// images and the other facts the node reports about itself.
pub fn apply_hello(record: &mut NodeRecord, hello: &pb::Hello, now_ms: u64) -> Result<(), FieldError> {
    let identity = hello.identity.as_ref().ok_or_else(|| err("hello.identity", "is required"))?;
    let parsed = identity_from_pb(identity).map_err(|e| err(format!("hello.{}", e.field), e.rule))?;
    if hello.labels.len() > MAX_LABELS {
        return Err(err("hello.labels", format!("at most {MAX_LABELS} entries, got {}", hello.labels.len())));
    }
    for (k, v) in &hello.labels {
        check_label(k, v)?;
    }
    check_len("hello.hostname", &hello.hostname, MAX_HOSTNAME)?;
    check_len("hello.client_version", &hello.client_version, 64)?;
    check_len("hello.current_image_ref", &hello.current_image_ref, MAX_SHORT)?;
    check_len("hello.previous_image_ref", &hello.previous_image_ref, MAX_SHORT)?;
    check_digest("hello.current_image_digest", &hello.current_image_digest)?;
    check_digest("hello.previous_image_digest", &hello.previous_image_digest)?;
    if let Some(k3s) = &hello.k3s {
        check_len("hello.k3s.cluster_name", &k3s.cluster_name, 253)?;
    }
    if let Some(last) = &hello.last_status {
        check_status(last).map_err(|e| err(e.field.replacen("status", "hello.last_status", 1), e.rule))?;
    }
    record.identity = Some(identity.clone());
    record.family = Some(family_to_pb(&parsed.family()));
    record.boot_state = hello.boot_state;
    record.upgrade_failure = hello.upgrade_failure;
    record.node_labels = hello.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    record.k3s = hello.k3s.clone();
    record.client_version = hello.client_version.clone();
    if !hello.hostname.is_empty() {
        record.hostname = hello.hostname.clone();
    }
    record.current_image_ref =
        if hello.current_image_ref.is_empty() { identity.image_repo.clone() } else { hello.current_image_ref.clone() };
    record.current_image_digest = hello.current_image_digest.clone();
    record.previous_image_ref = hello.previous_image_ref.clone();
    record.previous_image_digest = hello.previous_image_digest.clone();
    record.boot_time_ms = ms_of_timestamp(hello.boot_time.as_ref());
    record.last_seen_ms = now_ms;
    // A node that lost its state dir (re-enrolled, reinstalled) counts its
    // transitions from 1 again: follow its numbering, or its updates would
    // be taken for ones already recorded.
    let node_seq = hello.last_status.as_ref().map_or(0, |s| s.seq);
    if node_seq < record.last_seq() {
        record.last_status = hello.last_status.clone();
    }
    Ok(())
}

/// Checks a status update on its own.
pub fn check_status(update: &pb::StatusUpdate) -> Result<(), FieldError> {
    if update.seq == 0 {
        return Err(err("status.seq", "starts at 1"));
    }
    match pb::NodeState::try_from(update.state) {
        Ok(pb::NodeState::Unspecified) | Err(_) => {
            return Err(err(
                "status.state",
                format!("must be a NodeState other than UNSPECIFIED, got {}", update.state),
            ))
        }
        Ok(_) => {}
    }
    if pb::FailureReason::try_from(update.failure_reason).is_err() {
        return Err(err("status.failure_reason", format!("unknown FailureReason {}", update.failure_reason)));
    }
    if pb::BootState::try_from(update.boot_state).is_err() {
        return Err(err("status.boot_state", format!("unknown BootState {}", update.boot_state)));
    }
    check_len("status.message", &update.message, MAX_STATUS_MESSAGE)?;
    check_len("status.rollout_id", &update.rollout_id, 128)?;
    check_len("status.image_ref", &update.image_ref, MAX_SHORT)?;
    check_len("status.release", &update.release, 64)?;
    check_len("status.software_version", &update.software_version, 64)?;
    check_digest("status.image_digest", &update.image_digest)?;
    Ok(())
}

/// What applying a status update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOutcome {
    /// Recorded as the node's newest transition.
    Recorded,
    /// Its sequence number was recorded before: nothing changed.
    AlreadyRecorded,
}

/// Applies a checked status update to the record. Sequence numbers at or
/// below the last recorded one are ignored (the node resends updates that
/// were not acknowledged before a stream broke).
pub fn apply_status(record: &mut NodeRecord, update: &pb::StatusUpdate, now_ms: u64) -> StatusOutcome {
    if update.seq <= record.last_seq() {
        return StatusOutcome::AlreadyRecorded;
    }
    if record.state != update.state {
        record.state_changed_at_ms = now_ms;
    }
    record.state = update.state;
    if !update.image_ref.is_empty() && update.image_ref != record.current_image_ref {
        record.previous_image_ref = std::mem::take(&mut record.current_image_ref);
        record.previous_image_digest = std::mem::take(&mut record.current_image_digest);
        record.current_image_ref = update.image_ref.clone();
    }
    if !update.image_digest.is_empty() {
        record.current_image_digest = update.image_digest.clone();
    }
    if update.boot_state != pb::BootState::Unspecified as i32 {
        record.boot_state = update.boot_state;
    }
    if let Some(identity) = record.identity.as_mut() {
        if !update.release.is_empty() {
            identity.release = update.release.clone();
        }
        if !update.software_version.is_empty() {
            identity.software_version = update.software_version.clone();
        }
    }
    record.last_status = Some(update.clone());
    record.last_seen_ms = now_ms;
    StatusOutcome::Recorded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::identity::NodeIdentity;
    use crate::nodes::identity_to_pb;

    fn hello() -> pb::Hello {
        let identity = NodeIdentity::parse(
            "KAIROS_FLAVOR=alpine\nKAIROS_FLAVOR_RELEASE=3.19\nKAIROS_VARIANT=core\nKAIROS_MODEL=rpi4\n\
             KAIROS_ARCH=arm64\nKAIROS_RELEASE=v2.4.2\n",
        )
        .expect("valid identity");
        pb::Hello {
            identity: Some(identity_to_pb(&identity, "/etc/kairos-release")),
            boot_state: pb::BootState::Active as i32,
            labels: [("site".to_string(), "berlin".to_string())].into(),
            hostname: "edge-1".into(),
            client_version: "0.1.0".into(),
            ..Default::default()
        }
    }

    fn status(seq: u64, state: pb::NodeState) -> pb::StatusUpdate {
        pb::StatusUpdate { seq, state: state as i32, ..Default::default() }
    }

    #[test]
    fn hello_sets_identity_family_labels_and_last_seen() {
        let mut r = NodeRecord::default();
        apply_hello(&mut r, &hello(), 42).expect("valid hello");
        let family = r.family.expect("family derived");
        assert_eq!((family.flavor.as_str(), family.model.as_str(), family.arch.as_str()), ("alpine", "rpi4", "arm64"));
        assert_eq!(r.node_labels["site"], "berlin");
        assert_eq!((r.hostname.as_str(), r.last_seen_ms, r.boot_state), ("edge-1", 42, pb::BootState::Active as i32));
    }

    #[test]
    fn hello_without_identity_or_with_bad_labels_is_refused_naming_the_field() {
        let mut r = NodeRecord::default();
        let mut h = hello();
        h.identity = None;
        assert_eq!(apply_hello(&mut r, &h, 1).expect_err("no identity").field, "hello.identity");
        let mut h = hello();
        h.labels.insert("bad key!".into(), "x".into());
        assert!(apply_hello(&mut r, &h, 1).expect_err("bad key").field.starts_with("hello.labels["));
        let mut h = hello();
        h.current_image_digest = "sha256:short".into();
        assert_eq!(apply_hello(&mut r, &h, 1).expect_err("bad digest").field, "hello.current_image_digest");
        assert_eq!(r, NodeRecord::default(), "a refused hello changes nothing");
    }

    #[test]
    fn status_updates_apply_once_in_sequence_order() {
        let mut r = NodeRecord { state: pb::NodeState::Idle as i32, ..Default::default() };
        assert_eq!(apply_status(&mut r, &status(1, pb::NodeState::Downloading), 10), StatusOutcome::Recorded);
        assert_eq!((r.state, r.state_changed_at_ms), (pb::NodeState::Downloading as i32, 10));
        assert_eq!(apply_status(&mut r, &status(1, pb::NodeState::Failed), 11), StatusOutcome::AlreadyRecorded);
        assert_eq!(r.state, pb::NodeState::Downloading as i32, "a resent update is not applied again");
        assert_eq!(apply_status(&mut r, &status(2, pb::NodeState::Downloading), 12), StatusOutcome::Recorded);
        assert_eq!(r.state_changed_at_ms, 10, "same state: the change time stays");
    }

    #[test]
    fn a_healthy_update_on_a_new_image_keeps_the_old_one_as_previous() {
        let mut r = NodeRecord { current_image_ref: "old".into(), ..Default::default() };
        let mut u = status(1, pb::NodeState::Healthy);
        u.image_ref = "new".into();
        u.image_digest = format!("sha256:{}", "a".repeat(64));
        apply_status(&mut r, &u, 5);
        assert_eq!((r.previous_image_ref.as_str(), r.current_image_ref.as_str()), ("old", "new"));
    }

    #[test]
    fn a_node_that_restarts_its_numbering_is_followed() {
        let mut r = NodeRecord::default();
        apply_status(&mut r, &status(9, pb::NodeState::Healthy), 1);
        let mut h = hello();
        h.last_status = None;
        apply_hello(&mut r, &h, 2).expect("valid hello");
        assert_eq!(r.last_seq(), 0, "a node with no persisted status starts over");
        assert_eq!(apply_status(&mut r, &status(1, pb::NodeState::Idle), 3), StatusOutcome::Recorded);
        // A node whose last status is the recorded one keeps the numbering.
        h.last_status = r.last_status.clone();
        apply_hello(&mut r, &h, 4).expect("valid hello");
        assert_eq!(r.last_seq(), 1);
    }

    #[test]
    fn invalid_status_updates_are_refused() {
        assert_eq!(check_status(&status(0, pb::NodeState::Idle)).expect_err("seq 0").field, "status.seq");
        assert_eq!(check_status(&status(1, pb::NodeState::Unspecified)).expect_err("state").field, "status.state");
        let mut u = status(1, pb::NodeState::Failed);
        u.message = "x".repeat(MAX_STATUS_MESSAGE + 1);
        assert_eq!(check_status(&u).expect_err("long").field, "status.message");
        assert!(check_status(&status(3, pb::NodeState::Healthy)).is_ok());
    }
}
