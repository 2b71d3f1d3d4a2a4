//! One step of a rollout: events applied to the state machine, and the
//! store writes that make its decisions real, as one guarded transaction.
//!
//! The transaction puts the rollout's header guarded by the revision it was
//! read at, the node records and wave lists that changed, and every desired
//! state the step commands, reverts or withdraws, each guarded by the
//! desired state's own revision. So a step either happens completely or not
//! at all, and two writers (the engine on the leader, an operator's call on
//! any replica) can never both act on the same state.

use std::collections::BTreeMap;

use kairos_fleet_proto::fleet::v1 as pb;

use super::records::{self, encode, Header, Loaded, NodeRecord, RecordError, WaveLists};
use crate::fleet::image::ImageRef;
use crate::fleet::model::NodeId;
use crate::fleet::rollout::{Action, Event, NodeState, RolloutError, RolloutEvent};
use crate::fleet::strategy::{format_duration, Millis};
use crate::nodes::{desired_key, read_desired, timestamp_ms, ReadNodeError};
use crate::store::{Compare, CompareOp, KvReader, Op};

/// What the events of one step decided, before it is written.
#[derive(Debug, Default)]
pub struct Pending {
    actions: Vec<Action>,
}

impl Pending {
    /// Whether nothing was decided.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Applies `event` to the rollout, collecting its actions in `pending`. On
/// error nothing changes.
pub fn apply(loaded: &mut Loaded, event: Event, pending: &mut Pending) -> Result<(), RolloutError> {
    let actions = loaded.rollout.apply(event)?;
    pending.actions.extend(actions);
    Ok(())
}

/// Records a node report without deciding anything yet (see
/// [`crate::fleet::rollout::Rollout::record`]); a step records every report
/// of its batch, then applies one tick.
pub fn record(loaded: &mut Loaded, event: Event, pending: &mut Pending) -> Result<(), RolloutError> {
    let actions = loaded.rollout.record(event)?;
    pending.actions.extend(actions);
    Ok(())
}

/// The writes of one step.
#[derive(Debug)]
pub struct Staged {
    /// Guards: the header's revision and every touched desired state's.
    pub compares: Vec<Compare>,
    /// The writes.
    pub ops: Vec<Op>,
    /// The header as written.
    pub header: Header,
    /// The wave lists as written.
    pub waves: WaveLists,
    /// The node records written.
    pub changed: Vec<(NodeId, NodeRecord)>,
}

/// A desired state being changed by this step.
struct DesiredChange {
    /// Mod revision it was read at (0 = absent).
    base_revision: u64,
    /// Generation stored before this step (0 = none).
    generation: u64,
    /// The value stored before this step.
    original: Option<pb::DesiredState>,
    /// The new value; None deletes it. Its generation is set when the step
    /// is staged.
    value: Option<pb::DesiredState>,
    /// The rollout's generation for the node before this step.
    meta_generation: u64,
}

/// Turns what the step decided into writes. Returns None when nothing
/// changed. `now` stamps deadlines; the state machine's times come from
/// its events.
///
/// Generations: every node has a counter (`desired-generations/<node>`)
/// that is never deleted, even when its desired state is withdrawn. A new
/// desired state gets the counter plus one (and at least the store revision
/// this step was planned at, so numbers keep rising across the fleet), and
/// the step's transaction is guarded by the counter's revision: a
/// generation is never handed out twice. One node gets at most one new
/// desired state per step.
pub fn stage(
    loaded: &mut Loaded,
    pending: Pending,
    reader: &KvReader,
    now: Millis,
) -> Result<Option<Staged>, RecordError> {
    let id = loaded.id().to_string();
    let mut messages = Vec::new();
    let mut desired: BTreeMap<NodeId, DesiredChange> = BTreeMap::new();
    let timeout = loaded.rollout.strategy().health_timeout;
    for action in pending.actions {
        match action {
            Action::Command { node, image, wave } => {
                let digest = loaded.meta.get(&node).map(|m| m.target_digest.clone()).unwrap_or_default();
                let meta_generation = loaded.meta.get(&node).map_or(0, |m| m.generation);
                let change = change_for(&mut desired, reader, &node, meta_generation)?;
                change.value = Some(desired_state(&id, wave, &image, &digest, now + timeout, false));
                let meta = loaded.meta.entry(node).or_default();
                meta.failure_reason = 0;
                meta.message.clear();
            }
            Action::Revert { node, image } => {
                let wave = loaded.rollout.node(&node).map_or(0, |e| e.wave);
                let meta_generation = loaded.meta.get(&node).map_or(0, |m| m.generation);
                let change = change_for(&mut desired, reader, &node, meta_generation)?;
                change.value = Some(desired_state(&id, wave, &image, "", now + timeout, true));
                let meta = loaded.meta.entry(node).or_default();
                meta.failure_reason = 0;
                meta.message.clear();
            }
            Action::Cancel { node } => {
                let meta_generation = loaded.meta.get(&node).map_or(0, |m| m.generation);
                let change = change_for(&mut desired, reader, &node, meta_generation)?;
                if change.value != change.original {
                    // Commanded in this same step: the command never goes out.
                    change.value = change.original.clone();
                    if let Some(meta) = loaded.meta.get_mut(&node) {
                        meta.generation = change.meta_generation;
                    }
                } else if change.original.as_ref().is_some_and(|d| d.rollout_id == id) {
                    // Only withdraw what this rollout wrote.
                    change.value = None;
                }
                let meta = loaded.meta.entry(node).or_default();
                meta.failure_reason = pb::FailureReason::Cancelled as i32;
                meta.message = "command withdrawn: the rollout was aborted".into();
            }
            Action::Emit(event) => messages.push(describe(&event)),
        }
    }
    // Read after the desired states: at least as new as any of them.
    let floor = reader.revision()?;
    let mut counters = Vec::new();
    for (node, change) in desired.iter_mut() {
        if change.value == change.original {
            continue;
        }
        if let Some(value) = change.value.as_mut() {
            let (counter, counter_revision) = generation_counter(reader, node)?;
            value.generation = change.generation.max(counter).max(floor) + 1;
            loaded.meta.entry(node.clone()).or_default().generation = value.generation;
            counters.push((node.clone(), value.generation, counter_revision));
        }
    }
    // Timed-out nodes get the server's failure reason.
    let timed_out: Vec<NodeId> = loaded
        .rollout
        .nodes()
        .filter(|(_, e)| matches!(e.state, NodeState::TimedOut { .. }))
        .map(|(id, _)| id.clone())
        .collect();
    for node in timed_out {
        let meta = loaded.meta.entry(node).or_default();
        if meta.failure_reason != pb::FailureReason::HealthTimeout as i32 {
            meta.failure_reason = pb::FailureReason::HealthTimeout as i32;
            meta.message = format!("no healthy report within the health timeout ({})", format_duration(timeout));
        }
    }

    let mut header = loaded.current_header();
    let waves = loaded.current_waves();
    let changed = loaded.changed_nodes();
    let header_changed = {
        let mut old = loaded.header.clone();
        old.messages.clone_from(&header.messages);
        old != header
    };
    let waves_changed = loaded.waves_changed(&waves);
    let desired_changed = desired.values().any(|c| c.value != c.original);
    if !header_changed && !waves_changed && changed.is_empty() && !desired_changed && messages.is_empty() {
        return Ok(None);
    }
    header.messages = messages;

    let mut compares = vec![Compare::mod_revision(records::header_key(&id), CompareOp::Equal, loaded.header_revision)];
    let mut ops = vec![Op::put(records::header_key(&id), encode(&header))];
    if waves_changed {
        ops.push(Op::put(records::waves_key(&id), encode(&waves)));
    }
    for (node, record) in &changed {
        ops.push(Op::put(records::node_key(&id, node.as_str()), encode(record)));
    }
    for (node, generation, revision) in counters {
        let key = generation_key(node.as_str());
        compares.push(Compare::mod_revision(key.as_bytes(), CompareOp::Equal, revision));
        ops.push(Op::put(key, generation.to_string()));
    }
    for (node, change) in desired.into_iter().filter(|(_, c)| c.value != c.original) {
        let key = desired_key(node.as_str());
        compares.push(Compare::mod_revision(key.as_bytes(), CompareOp::Equal, change.base_revision));
        match change.value {
            Some(value) => ops.push(Op::put(key, prost::Message::encode_to_vec(&value))),
            None if change.base_revision != 0 => ops.push(Op::delete(key)),
            None => {}
        }
    }
    Ok(Some(Staged { compares, ops, header, waves, changed }))
}

/// Prefix of the per-node generation counters.
pub const GENERATIONS_PREFIX: &str = "desired-generations/";

/// The generation counter key of `node`.
pub fn generation_key(node: &str) -> String {
    format!("{GENERATIONS_PREFIX}{node}")
}

/// The node's last generation handed out and the counter's mod revision
/// (0, 0 while it has none).
fn generation_counter(reader: &KvReader, node: &NodeId) -> Result<(u64, u64), RecordError> {
    let key = generation_key(node.as_str());
    let Some(kv) = reader.get(key.as_bytes())? else { return Ok((0, 0)) };
    let n = std::str::from_utf8(&kv.value)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| RecordError::Corrupt { key: key.clone(), detail: "not a number".into() })?;
    Ok((n, kv.mod_revision))
}

fn change_for<'a>(
    desired: &'a mut BTreeMap<NodeId, DesiredChange>,
    reader: &KvReader,
    node: &NodeId,
    meta_generation: u64,
) -> Result<&'a mut DesiredChange, RecordError> {
    if !desired.contains_key(node) {
        let stored = read_desired(reader, node.as_str()).map_err(|e| match e {
            ReadNodeError::Store(e) => RecordError::Store(e),
            ReadNodeError::Record(e) => RecordError::Corrupt { key: desired_key(node.as_str()), detail: e.to_string() },
        })?;
        let change = match stored {
            Some((value, revision)) => DesiredChange {
                base_revision: revision,
                generation: value.generation,
                original: Some(value.clone()),
                value: Some(value),
                meta_generation,
            },
            None => DesiredChange { base_revision: 0, generation: 0, original: None, value: None, meta_generation },
        };
        desired.insert(node.clone(), change);
    }
    // Inserted just above when missing.
    desired.get_mut(node).ok_or_else(|| RecordError::Corrupt {
        key: desired_key(node.as_str()),
        detail: "desired state vanished while staging".into(),
    })
}

fn desired_state(
    rollout: &str,
    wave: usize,
    image: &str,
    digest: &str,
    deadline: Millis,
    rollback: bool,
) -> pb::DesiredState {
    let parsed = ImageRef::parse(image).ok();
    pb::DesiredState {
        generation: 0,
        rollout_id: rollout.to_string(),
        wave: u32::try_from(wave).unwrap_or(u32::MAX),
        target_image_ref: image.to_string(),
        target_image_digest: digest.to_string(),
        target_release: parsed.as_ref().map(|r| format!("v{}", r.release())).unwrap_or_default(),
        target_software_version: parsed.as_ref().and_then(|r| r.software()).map(|s| s.upstream()).unwrap_or_default(),
        deadline: timestamp_ms(deadline),
        executor: None,
        rollback,
    }
}

/// A rollout event in words, for watchers and the status.
pub fn describe(event: &RolloutEvent) -> String {
    match event {
        RolloutEvent::Started => "rollout started".into(),
        RolloutEvent::WaveStarted { wave, nodes } => format!("wave {wave} started: {nodes} nodes"),
        RolloutEvent::WaveCompleted { wave, healthy, failed, deferred } => {
            format!("wave {wave} finished: {healthy} healthy, {failed} failed, {deferred} deferred")
        }
        RolloutEvent::Baking { wave, until } => format!("baking after wave {wave} until {}", rfc3339(*until)),
        RolloutEvent::WaitingForWindow { next_open: Some(t) } => {
            format!("waiting for a maintenance window; the next opens at {}", rfc3339(*t))
        }
        RolloutEvent::WaitingForWindow { next_open: None } => {
            "waiting for a maintenance window; none will open (check the windows)".into()
        }
        RolloutEvent::AwaitingApproval { wave } => {
            format!("wave {wave} awaits approval: `kairosctl rollout approve <id> --wave {wave}`")
        }
        RolloutEvent::Approved { wave } => format!("wave {wave} approved"),
        RolloutEvent::NodeTimedOut { node, wave } => format!("node {node} (wave {wave}) timed out"),
        RolloutEvent::NodeDeferred { node, wave } => format!("node {node} (wave {wave}) is offline: deferred"),
        RolloutEvent::NodeRejoined { node, wave } => format!("node {node} is back online: queued in wave {wave}"),
        RolloutEvent::ThresholdTripped { wave, failed, threshold } => {
            let names: Vec<&str> = failed.iter().take(10).map(NodeId::as_str).collect();
            let more = failed.len().saturating_sub(names.len());
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            format!("wave {wave}: failure threshold {threshold} exceeded by {}{more}", names.join(", "))
        }
        RolloutEvent::Paused { reason } => format!("paused: {reason}"),
        RolloutEvent::Resumed { retried } if retried.is_empty() => "resumed".into(),
        RolloutEvent::Resumed { retried } => format!("resumed; retrying {} node(s)", retried.len()),
        RolloutEvent::Aborted { reason } => format!("aborted: {reason}"),
        RolloutEvent::Completed => "completed: every wave finished".into(),
        RolloutEvent::RollbackStarted { nodes } => format!("rollback started: {nodes} node(s) go back"),
        RolloutEvent::RevertTimedOut { node } => format!("node {node} did not come back healthy on its previous image"),
        RolloutEvent::RolledBack { reverted, failed } => {
            format!("rolled back: {reverted} node(s) on their previous image, {failed} failed to revert")
        }
    }
}

fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}
