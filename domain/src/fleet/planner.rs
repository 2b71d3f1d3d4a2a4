//! The wave planner: which node goes in which wave, and which pending nodes
//! may be dispatched now.
//!
//! [`plan_waves`] follows these rules, each with a test named after it:
//!
//! - **Order.** Nodes are ranked by [`order_key`] (SHA-256 of the rollout id
//!   and the node id), ties by node id. The same rollout id and node set give
//!   the same plan whatever the input order; another rollout id reshuffles the
//!   fleet, so the same unlucky node is not always first.
//! - **Sizes.** Wave sizes are cumulative: wave `k` brings the total up to
//!   its size. Sizes are clamped so they never shrink (mixed counts and
//!   percentages can, once resolved against the fleet), and a size no bigger
//!   than the one before adds no wave. A spec that stops short of 100% gets a
//!   final wave with the rest.
//! - **Canary wave.** Wave 0 holds every node labelled
//!   `fleet.kairos.io/wave=canary`, plus one canary of every image family that
//!   has no such node (the first of the family in order, preferring a node that
//!   is not labelled `last`, then one that is not a k3s server), then is filled
//!   up to its size in order. It may exceed its size: a canary per family beats
//!   the number.
//! - **Last label.** Nodes labelled `fleet.kairos.io/wave=last` go in the
//!   final wave (the one reaching 100%), which therefore also takes them when
//!   earlier waves cannot be filled. Exception: when every node of a family is
//!   labelled `last`, the family still needs a canary, so the first of them
//!   goes in wave 0. Other values of the label are ignored.
//! - **Dispatch order.** Inside a wave, nodes keep plan order, except that
//!   k3s servers are grouped and take turns across clusters (a, b, c, a, b,
//!   c, ...) so that several clusters can each have one in flight. In waves
//!   after the canary wave the servers come first: a cluster's servers go one
//!   at a time, so they are the wave's longest chain, and k3s upgrades
//!   servers before agents. In the canary wave they come last, so the first
//!   node of a family to take the new image is the non-server its canary rule
//!   chose.
//! - Empty waves are dropped, but a fleet with nodes always has wave 0.
//!   A node id listed twice is planned once, with the facts listed first.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::model::{ImageFamily, K3sMembership, NodeFacts, NodeId};
use super::strategy::{WaveSpec, WAVE_LABEL, WAVE_LABEL_CANARY, WAVE_LABEL_LAST};

/// One wave of a plan: its nodes in dispatch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedWave {
    /// Nodes of the wave, in the order they are dispatched.
    pub nodes: Vec<NodeId>,
}

/// The waves of a rollout; wave 0 is the canary wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WavePlan {
    /// The waves in order.
    pub waves: Vec<PlannedWave>,
}

impl WavePlan {
    /// Number of nodes in all waves.
    pub fn node_count(&self) -> usize {
        self.waves.iter().map(|w| w.nodes.len()).sum()
    }

    /// A map from every node to the index of its wave, built once for repeated look-ups.
    pub fn wave_index(&self) -> WaveIndex {
        let mut by_node = HashMap::with_capacity(self.node_count());
        for (k, wave) in self.waves.iter().enumerate() {
            for id in &wave.nodes {
                by_node.insert(id.clone(), k);
            }
        }
        WaveIndex(by_node)
    }

    /// Node counts per wave and in total.
    pub fn summary(&self) -> PlanSummary {
        PlanSummary { nodes: self.node_count(), wave_sizes: self.waves.iter().map(|w| w.nodes.len()).collect() }
    }
}

/// Which wave each node of a plan is in; see [`WavePlan::wave_index`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WaveIndex(HashMap<NodeId, usize>);

impl WaveIndex {
    /// The index of the wave holding `id`, or None when the plan does not hold it.
    pub fn wave_of(&self, id: &NodeId) -> Option<usize> {
        self.0.get(id).copied()
    }

    /// Number of nodes indexed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the plan had no nodes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Node counts of a plan, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// Nodes in the plan.
    pub nodes: usize,
    /// Nodes per wave, wave 0 first.
    pub wave_sizes: Vec<usize>,
}

impl PlanSummary {
    /// Total nodes once each wave is done: the cumulative sizes the plan reached.
    pub fn cumulative(&self) -> Vec<usize> {
        self.wave_sizes
            .iter()
            .scan(0, |total, n| {
                *total += n;
                Some(*total)
            })
            .collect()
    }
}

impl fmt::Display for PlanSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: Vec<String> = self.wave_sizes.iter().map(usize::to_string).collect();
        write!(f, "{} nodes in {} waves: {}", self.nodes, self.wave_sizes.len(), sizes.join(", "))
    }
}

/// The stable rank of node `id` in rollout `rollout_id`: the first 8 bytes,
/// big-endian, of SHA-256(`rollout_id` ‖ 0x00 ‖ `id`). Fixed forever, so a
/// plan recomputed by another leader or release is the same plan.
pub fn order_key(rollout_id: &str, id: &NodeId) -> u64 {
    key_after_prefix(&rollout_prefix(rollout_id), id)
}

/// The hash state after the rollout id and separator, cloned per node so the
/// rollout id is fed once per plan rather than once per node.
fn rollout_prefix(rollout_id: &str) -> Sha256 {
    // The 0 byte keeps ("ab", "c") and ("a", "bc") apart.
    Sha256::new().chain_update(rollout_id.as_bytes()).chain_update([0u8])
}

fn key_after_prefix(prefix: &Sha256, id: &NodeId) -> u64 {
    let digest = prefix.clone().chain_update(id.as_str().as_bytes()).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// What the wave label asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pin {
    None,
    Canary,
    Last,
}

fn pin_of(node: &NodeFacts) -> Pin {
    match node.labels.get(WAVE_LABEL).map(String::as_str) {
        Some(WAVE_LABEL_CANARY) => Pin::Canary,
        Some(WAVE_LABEL_LAST) => Pin::Last,
        _ => Pin::None,
    }
}

/// One node as the planner sees it: everything it needs, read once in input
/// order, so the passes in plan order never touch the (large, scattered) facts.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// [`order_key`] of the node.
    key: u64,
    /// Index into the input.
    idx: usize,
    /// Dense image family number.
    family: u32,
    /// Assigned wave, [`UNASSIGNED`] until then.
    wave: u32,
    /// What the wave label asks for.
    pin: Pin,
    /// The node is a k3s server.
    server: bool,
}

const UNASSIGNED: u32 = u32::MAX;

/// Saturating usize to u32. A count that saturates needs over four billion
/// nodes in memory, which no slice of `NodeFacts` can hold on any machine
/// this runs on; saturating keeps the planner total instead of panicking.
fn small(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(UNASSIGNED - 1)
}

/// The nodes in plan order, each node id once (its first listing).
fn plan_order(rollout_id: &str, nodes: &[NodeFacts]) -> Vec<Slot> {
    let prefix = rollout_prefix(rollout_id);
    let mut family_ids: HashMap<&ImageFamily, u32> = HashMap::new();
    let mut slots: Vec<Slot> = Vec::with_capacity(nodes.len());
    for (idx, node) in nodes.iter().enumerate() {
        let next = small(family_ids.len());
        let family = *family_ids.entry(&node.family).or_insert(next);
        let server = node.k3s.as_ref().is_some_and(K3sMembership::is_server);
        let key = key_after_prefix(&prefix, &node.id);
        slots.push(Slot { key, idx, family, wave: UNASSIGNED, pin: pin_of(node), server });
    }
    // The input index is the last tie-break so that, of a duplicated id, the
    // first listing deterministically wins.
    slots.sort_unstable_by(|a, b| {
        a.key.cmp(&b.key).then_with(|| nodes[a.idx].id.cmp(&nodes[b.idx].id)).then(a.idx.cmp(&b.idx))
    });
    slots.dedup_by(|later, first| later.key == first.key && nodes[later.idx].id == nodes[first.idx].id);
    slots
}

/// Strictly growing cumulative targets, the last one `total`.
fn cumulative_targets(spec: &WaveSpec, total: usize) -> Vec<usize> {
    let mut targets: Vec<usize> = Vec::with_capacity(spec.0.len() + 1);
    for size in &spec.0 {
        // A hand-built size above 100% or a count above the fleet means "all".
        let target = size.cumulative(total).min(total);
        match targets.last() {
            // A size no bigger than the total so far would be an empty wave.
            Some(&reached) if target <= reached => {}
            _ => targets.push(target),
        }
    }
    if targets.last().is_none_or(|&reached| reached < total) {
        targets.push(total);
    }
    targets
}

/// How well a node suits as its family's canary, lower is better: the
/// operator's `last` label outweighs the wish to spare a k3s server.
fn canary_rank(slot: &Slot) -> u8 {
    u8::from(slot.pin == Pin::Last) * 2 + u8::from(slot.server)
}

/// Per image family while choosing canaries.
#[derive(Debug, Clone, Copy, Default)]
struct FamilyCanary {
    /// The operator already named a canary of this family.
    labelled: bool,
    /// Best candidate so far: (rank, position in plan order).
    best: Option<(u8, usize)>,
}

/// Puts the wave-0 nodes in wave 0: canary-labelled ones and one canary per
/// family without such a node. Returns how many there are.
fn assign_canaries(slots: &mut [Slot]) -> usize {
    let family_count = slots.iter().map(|s| s.family as usize + 1).max().unwrap_or(0);
    let mut families = vec![FamilyCanary::default(); family_count];
    let mut forced = 0;
    for (pos, slot) in slots.iter_mut().enumerate() {
        let Some(fam) = families.get_mut(slot.family as usize) else { continue };
        if slot.pin == Pin::Canary {
            slot.wave = 0;
            fam.labelled = true;
            forced += 1;
            continue;
        }
        let rank = canary_rank(slot);
        // Strictly better only: the first in plan order wins among equals.
        if fam.best.is_none_or(|(best, _)| rank < best) {
            fam.best = Some((rank, pos));
        }
    }
    for fam in families.iter().filter(|f| !f.labelled) {
        if let Some(slot) = fam.best.and_then(|(_, pos)| slots.get_mut(pos)) {
            slot.wave = 0;
            forced += 1;
        }
    }
    forced
}

/// Splits `nodes` (all eligible) into waves for rollout `rollout_id`,
/// following the rules in the module documentation.
pub fn plan_waves(rollout_id: &str, nodes: &[NodeFacts], spec: &WaveSpec) -> WavePlan {
    let mut slots = plan_order(rollout_id, nodes);
    let total = slots.len();
    if total == 0 {
        return WavePlan { waves: Vec::new() };
    }
    let targets = cumulative_targets(spec, total);
    let final_wave = small(targets.len() - 1);

    // Fill each wave up to its target in plan order; `last` nodes wait for the final wave.
    let mut reached = assign_canaries(&mut slots);
    let mut free = slots.iter_mut().filter(|s| s.wave == UNASSIGNED && s.pin != Pin::Last);
    for (wave, &target) in targets.iter().enumerate() {
        let wave = small(wave);
        while reached < target {
            let Some(slot) = free.next() else { break };
            slot.wave = wave;
            reached += 1;
        }
    }
    // The final target is the whole fleet, so only `last` nodes are left.
    for slot in slots.iter_mut().filter(|s| s.wave == UNASSIGNED) {
        slot.wave = final_wave;
    }
    let position = dispatch_positions(&slots, targets.len(), nodes);
    drop(slots);

    // Cloning ids in input order reads the facts front to back; cloning them
    // in dispatch order would miss the cache twice per node on a big fleet.
    // Every position is written below; the empty ids only hold the places
    // (and, being empty, allocate nothing).
    let mut waves: Vec<Vec<NodeId>> = Vec::with_capacity(position.starts.len());
    for (k, &start) in position.starts.iter().enumerate() {
        let end = position.starts.get(k + 1).copied().unwrap_or(total);
        waves.push(vec![NodeId(String::new()); end - start]);
    }
    for (node, &pos) in nodes.iter().zip(&position.of_node) {
        if pos == UNPLANNED {
            continue;
        }
        // The last wave starting at or before `pos` holds it (empty waves share a start).
        let k = position.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        let start = position.starts.get(k).copied().unwrap_or(0);
        if let Some(slot) = waves.get_mut(k).and_then(|w| w.get_mut(pos - start)) {
            *slot = node.id.clone();
        }
    }
    let waves = waves.into_iter().filter(|w| !w.is_empty()).map(|nodes| PlannedWave { nodes }).collect();
    WavePlan { waves }
}

/// Position of a node not in the plan (a duplicate listing).
const UNPLANNED: usize = usize::MAX;

/// Where every node goes in the concatenated dispatch order of all waves.
struct Positions {
    /// Position by input index; [`UNPLANNED`] for duplicates.
    of_node: Vec<usize>,
    /// First position of each wave, empty waves included.
    starts: Vec<usize>,
}

/// Lays out each wave for dispatch (see the module documentation): servers
/// taking turns across clusters, after the rest in wave 0 and before it in
/// later waves.
fn dispatch_positions(slots: &[Slot], wave_count: usize, nodes: &[NodeFacts]) -> Positions {
    let mut sizes = vec![0usize; wave_count];
    let mut server_counts = vec![0usize; wave_count];
    // Per wave: cluster -> (its turn within a round, servers seen so far).
    let mut clusters: Vec<HashMap<&str, (usize, usize)>> = (0..wave_count).map(|_| HashMap::new()).collect();
    // (wave, round, turn, input index): unique per server, so sorting fixes the order.
    let mut servers: Vec<(u32, usize, usize, usize)> = Vec::new();
    for slot in slots {
        if let Some(n) = sizes.get_mut(slot.wave as usize) {
            *n += 1;
        }
        if !slot.server {
            continue;
        }
        if let Some(n) = server_counts.get_mut(slot.wave as usize) {
            *n += 1;
        }
        if let Some(turns) = clusters.get_mut(slot.wave as usize) {
            let cluster = nodes[slot.idx].k3s.as_ref().map_or("", |m| m.cluster.as_str());
            let next_turn = turns.len();
            let seen = turns.entry(cluster).or_insert((next_turn, 0));
            servers.push((slot.wave, seen.1, seen.0, slot.idx));
            seen.1 += 1;
        }
    }
    servers.sort_unstable();

    let starts: Vec<usize> = sizes
        .iter()
        .scan(0, |next, n| {
            let start = *next;
            *next += n;
            Some(start)
        })
        .collect();
    // Next free position for servers and for the rest, per wave.
    let mut next_server = Vec::with_capacity(wave_count);
    let mut next_other = Vec::with_capacity(wave_count);
    for (wave, (&start, (&size, &servers))) in starts.iter().zip(sizes.iter().zip(&server_counts)).enumerate() {
        if wave == 0 {
            next_server.push(start + size - servers);
            next_other.push(start);
        } else {
            next_server.push(start);
            next_other.push(start + servers);
        }
    }
    let mut of_node = vec![UNPLANNED; nodes.len()];
    let mut place = |next: &mut [usize], wave: u32, idx: usize| {
        if let (Some(pos), Some(at)) = (next.get_mut(wave as usize), of_node.get_mut(idx)) {
            *at = *pos;
            *pos += 1;
        }
    };
    for (wave, _, _, idx) in servers {
        place(&mut next_server, wave, idx);
    }
    for slot in slots.iter().filter(|s| !s.server) {
        place(&mut next_other, slot.wave, slot.idx);
    }
    Positions { of_node, starts }
}

/// Picks which of `pending` (in dispatch order) may be commanded now, given
/// the nodes already in flight: never more than `max_unavailable` in flight,
/// never two k3s servers of one cluster.
///
/// A server whose cluster already has one in flight is skipped without
/// blocking the nodes behind it; agents have no per-cluster limit. A node
/// already in flight, or listed twice, is picked at most once.
pub fn select_dispatch<'a>(
    pending: &[NodeId],
    in_flight: &[NodeId],
    k3s: &dyn Fn(&NodeId) -> Option<&'a K3sMembership>,
    max_unavailable: usize,
) -> Vec<NodeId> {
    let budget = max_unavailable.saturating_sub(in_flight.len());
    let mut picked = Vec::with_capacity(budget.min(pending.len()));
    if budget == 0 {
        return picked;
    }
    let mut busy: HashSet<&str> =
        in_flight.iter().filter_map(k3s).filter(|m| m.is_server()).map(|m| m.cluster.as_str()).collect();
    let mut taken: HashSet<&NodeId> = in_flight.iter().collect();
    for id in pending {
        if picked.len() == budget {
            break;
        }
        if taken.contains(id) {
            continue;
        }
        if let Some(m) = k3s(id).filter(|m| m.is_server()) {
            if !busy.insert(m.cluster.as_str()) {
                continue;
            }
        }
        taken.insert(id);
        picked.push(id.clone());
    }
    picked
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
