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
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use semver::Version;

    use super::*;
    use crate::fleet::matrix::seed_families;
    use crate::fleet::model::{Arch, K3sRole, Variant};
    use crate::fleet::strategy::WaveSize;

    fn family(flavor: &str, variant: Variant) -> ImageFamily {
        ImageFamily {
            flavor: flavor.into(),
            flavor_release: String::new(),
            variant,
            arch: Arch::Amd64,
            model: "generic".into(),
            trusted_boot: false,
        }
    }

    fn node(id: &str, family: &ImageFamily) -> NodeFacts {
        NodeFacts {
            id: NodeId::new(id),
            family: family.clone(),
            release: Version::new(2, 4, 2),
            software: None,
            labels: BTreeMap::new(),
            k3s: None,
        }
    }

    fn labelled(mut n: NodeFacts, value: &str) -> NodeFacts {
        n.labels.insert(WAVE_LABEL.into(), value.into());
        n
    }

    fn in_cluster(mut n: NodeFacts, cluster: &str, role: K3sRole) -> NodeFacts {
        n.k3s = Some(K3sMembership { cluster: cluster.into(), role });
        n
    }

    fn spec(s: &str) -> WaveSpec {
        WaveSpec::parse(s).unwrap()
    }

    /// `count` nodes of one family, named `n000`...
    fn uniform_fleet(count: usize) -> Vec<NodeFacts> {
        let fam = family("opensuse", Variant::Core);
        (0..count).map(|i| node(&format!("n{i:03}"), &fam)).collect()
    }

    fn ids_in_order(rollout: &str, fleet: &[NodeFacts]) -> Vec<NodeId> {
        plan_order(rollout, fleet).into_iter().map(|s| fleet[s.idx].id.clone()).collect()
    }

    fn k3s_lookup(fleet: &[NodeFacts]) -> HashMap<NodeId, K3sMembership> {
        fleet.iter().filter_map(|n| n.k3s.clone().map(|m| (n.id.clone(), m))).collect()
    }

    #[test]
    fn order_key_is_the_first_eight_bytes_of_sha256_of_rollout_zero_node() {
        // printf 'r1\0n1' | sha256sum -> 34f475b0808280b7...
        assert_eq!(order_key("r1", &NodeId::new("n1")), 0x34f4_75b0_8082_80b7);
    }

    #[test]
    fn empty_fleet_has_no_waves() {
        let plan = plan_waves("r", &[], &spec("1,10%,100%"));
        assert!(plan.waves.is_empty());
        assert!(plan.wave_index().is_empty());
    }

    #[test]
    fn cumulative_sizes_bring_the_total_up_to_each_wave() {
        let plan = plan_waves("r", &uniform_fleet(100), &spec("1,10%,50%,100%"));
        assert_eq!(plan.summary().wave_sizes, vec![1, 9, 40, 50]);
        assert_eq!(plan.summary().cumulative(), vec![1, 10, 50, 100]);
    }

    #[test]
    fn percentages_round_up_so_small_fleets_still_progress() {
        let plan = plan_waves("r", &uniform_fleet(5), &spec("1,10%,50%,100%"));
        // 10% of 5 rounds up to 1, no more than the canary: that wave is dropped.
        assert_eq!(plan.summary().wave_sizes, vec![1, 2, 2]);
    }

    #[test]
    fn spec_short_of_100_percent_gets_a_final_wave_with_the_rest() {
        let plan = plan_waves("r", &uniform_fleet(20), &spec("2,25%"));
        assert_eq!(plan.summary().wave_sizes, vec![2, 3, 15]);
    }

    #[test]
    fn sizes_no_bigger_than_the_total_so_far_add_no_wave() {
        // Mixed kinds pass WaveSpec::parse but shrink once resolved: 50 then 10% of 100.
        let plan = plan_waves("r", &uniform_fleet(100), &spec("50,10%,100%,100%"));
        assert_eq!(plan.summary().wave_sizes, vec![50, 50]);
        let hand_built = WaveSpec(vec![WaveSize::Count(3), WaveSize::Count(3), WaveSize::Count(1000)]);
        assert_eq!(plan_waves("r", &uniform_fleet(10), &hand_built).summary().wave_sizes, vec![3, 7]);
    }

    #[test]
    fn plan_never_has_zero_waves_when_there_are_nodes() {
        for s in [WaveSpec(Vec::new()), spec("100%")] {
            let plan = plan_waves("r", &uniform_fleet(3), &s);
            assert_eq!(plan.summary().wave_sizes, vec![3], "{s:?}");
        }
        // A hand-built size of 0 still leaves the family canary in wave 0.
        let zero = plan_waves("r", &uniform_fleet(3), &WaveSpec(vec![WaveSize::Count(0)]));
        assert_eq!(zero.summary().wave_sizes, vec![1, 2]);
        let plan = plan_waves("r", &uniform_fleet(1), &spec("1,10%,50%,100%"));
        assert_eq!(plan.summary().wave_sizes, vec![1]);
    }

    #[test]
    fn waves_follow_the_rollout_hash_order() {
        let fleet = uniform_fleet(30);
        let plan = plan_waves("r-7", &fleet, &spec("1,10%,50%,100%"));
        let flat: Vec<NodeId> = plan.waves.iter().flat_map(|w| w.nodes.clone()).collect();
        assert_eq!(flat, ids_in_order("r-7", &fleet));
        assert_ne!(flat, ids_in_order("r-8", &fleet));
    }

    #[test]
    fn every_family_gets_a_canary_in_wave_zero() {
        let fams: Vec<ImageFamily> = seed_families();
        let fleet: Vec<NodeFacts> = (0..160).map(|i| node(&format!("n{i:03}"), &fams[i % fams.len()])).collect();
        let plan = plan_waves("r", &fleet, &spec("1,10%,100%"));
        assert_eq!(plan.waves[0].nodes.len(), 16, "one canary per family, beyond the size of 1");
        let index = plan.wave_index();
        for fam in &fams {
            assert!(fleet.iter().any(|n| &n.family == fam && index.wave_of(&n.id) == Some(0)), "{fam}");
        }
        // The canary is the first of its family in hash order.
        let order = ids_in_order("r", &fleet);
        let first_core_opensuse = order.iter().find(|id| fleet.iter().any(|n| &n.id == *id && n.family == fams[0]));
        assert_eq!(first_core_opensuse.and_then(|id| index.wave_of(id)), Some(0));
    }

    #[test]
    fn uki_and_non_uki_nodes_of_one_flavor_get_separate_canaries() {
        let plain = ImageFamily { flavor_release: "24.04".into(), ..family("ubuntu", Variant::Core) };
        let uki = ImageFamily { trusted_boot: true, ..plain.clone() };
        let mut fleet: Vec<NodeFacts> = (0..20).map(|i| node(&format!("p{i:02}"), &plain)).collect();
        fleet.extend((0..20).map(|i| node(&format!("u{i:02}"), &uki)));
        let plan = plan_waves("r", &fleet, &spec("1,100%"));
        let families_in_wave0: Vec<&ImageFamily> =
            plan.waves[0].nodes.iter().filter_map(|id| fleet.iter().find(|n| &n.id == id)).map(|n| &n.family).collect();
        assert_eq!(families_in_wave0.len(), 2, "one canary each, beyond the size of 1");
        assert!(families_in_wave0.contains(&&plain) && families_in_wave0.contains(&&uki), "{families_in_wave0:?}");
    }

    #[test]
    fn family_canary_prefers_a_node_that_is_not_a_k3s_server() {
        let fam = family("ubuntu", Variant::Standard);
        let fleet: Vec<NodeFacts> = (0..12)
            .map(|i| {
                let role = if i == 11 { K3sRole::Agent } else { K3sRole::Server };
                in_cluster(node(&format!("n{i:02}"), &fam), &format!("c{}", i / 3), role)
            })
            .collect();
        let plan = plan_waves("r", &fleet, &spec("1,100%"));
        assert_eq!(plan.waves[0].nodes, vec![NodeId::new("n11")]);
    }

    #[test]
    fn family_of_only_servers_gets_a_server_canary() {
        let fam = family("ubuntu", Variant::Standard);
        let fleet: Vec<NodeFacts> =
            (0..3).map(|i| in_cluster(node(&format!("s{i}"), &fam), "c", K3sRole::Server)).collect();
        let plan = plan_waves("r", &fleet, &spec("1,100%"));
        assert_eq!(plan.waves[0].nodes, vec![ids_in_order("r", &fleet)[0].clone()]);
    }

    #[test]
    fn canary_labelled_nodes_are_in_wave_zero_even_beyond_its_size() {
        let mut fleet = uniform_fleet(50);
        for i in [3, 17, 42] {
            fleet[i] = labelled(fleet[i].clone(), WAVE_LABEL_CANARY);
        }
        let plan = plan_waves("r", &fleet, &spec("1,50%,100%"));
        let mut wave0 = plan.waves[0].nodes.clone();
        wave0.sort();
        // The family already has an operator-chosen canary, so no extra one is added.
        assert_eq!(wave0, vec![NodeId::new("n003"), NodeId::new("n017"), NodeId::new("n042")]);
        assert_eq!(plan.summary().cumulative(), vec![3, 25, 50]);
    }

    #[test]
    fn last_labelled_nodes_go_in_the_final_wave() {
        let mut fleet = uniform_fleet(20);
        for n in fleet.iter_mut().take(6) {
            *n = labelled(n.clone(), WAVE_LABEL_LAST);
        }
        // The 90% wave can only take the 14 unlabelled nodes; the final wave gets the 6.
        let plan = plan_waves("r", &fleet, &spec("1,90%,100%"));
        assert_eq!(plan.summary().wave_sizes, vec![1, 13, 6]);
        let index = plan.wave_index();
        assert!(fleet.iter().take(6).all(|n| index.wave_of(&n.id) == Some(2)));
        // Other values of the label do nothing.
        fleet[10] = labelled(fleet[10].clone(), "3");
        assert_eq!(plan_waves("r", &fleet, &spec("1,90%,100%")).summary().wave_sizes, vec![1, 13, 6]);
    }

    #[test]
    fn last_labelled_family_with_no_other_node_still_gets_its_canary() {
        let mut fleet = uniform_fleet(10);
        let rpi = ImageFamily { arch: Arch::Arm64, model: "rpi".into(), ..family("alpine-arm-rpi", Variant::Core) };
        fleet.push(labelled(node("pi-0", &rpi), WAVE_LABEL_LAST));
        fleet.push(labelled(node("pi-1", &rpi), WAVE_LABEL_LAST));
        let plan = plan_waves("r", &fleet, &spec("1,50%,100%"));
        let index = plan.wave_index();
        let pis = [index.wave_of(&NodeId::new("pi-0")), index.wave_of(&NodeId::new("pi-1"))];
        let last = Some(plan.waves.len() - 1);
        assert!(pis == [Some(0), last] || pis == [last, Some(0)], "{pis:?}");
    }

    #[test]
    fn family_canary_avoids_last_labelled_nodes_when_the_family_has_others() {
        let fam = family("ubuntu", Variant::Standard);
        let mut fleet: Vec<NodeFacts> =
            (0..8).map(|i| labelled(node(&format!("n{i}"), &fam), WAVE_LABEL_LAST)).collect();
        // The only unlabelled node is a server: the label still outweighs sparing servers.
        fleet.push(in_cluster(node("server", &fam), "c", K3sRole::Server));
        let plan = plan_waves("r", &fleet, &spec("1,100%"));
        assert_eq!(plan.waves[0].nodes, vec![NodeId::new("server")]);
        assert_eq!(plan.waves[1].nodes.len(), 8);
    }

    #[test]
    fn duplicate_node_ids_are_planned_once_with_their_first_facts() {
        let core = family("opensuse", Variant::Core);
        let standard = family("opensuse", Variant::Standard);
        let fleet = vec![node("a", &core), node("b", &core), node("a", &standard)];
        let plan = plan_waves("r", &fleet, &spec("100%"));
        assert_eq!(plan.node_count(), 2);
        assert_eq!(plan.wave_index().len(), 2);
    }

    /// Two clusters of 3 servers and 3 agents, labelled canary so they all
    /// land in wave 0 when `canary` is set, or in one later wave otherwise.
    fn two_clusters(canary: bool) -> Vec<NodeFacts> {
        let fam = family("ubuntu", Variant::Standard);
        // The operator's canary: the cluster nodes need no family canary.
        let mut fleet = vec![labelled(node("other", &fam), WAVE_LABEL_CANARY)];
        for c in ["a", "b"] {
            for i in 0..3 {
                for (kind, role) in [("s", K3sRole::Server), ("g", K3sRole::Agent)] {
                    let n = in_cluster(node(&format!("{c}-{kind}{i}"), &fam), c, role);
                    fleet.push(if canary { labelled(n, WAVE_LABEL_CANARY) } else { n });
                }
            }
        }
        fleet
    }

    /// (is server, cluster) of a wave's nodes in dispatch order, k3s members only.
    fn roles<'a>(wave: &PlannedWave, k3s: &'a HashMap<NodeId, K3sMembership>) -> Vec<(bool, &'a str)> {
        wave.nodes.iter().filter_map(|id| k3s.get(id)).map(|m| (m.is_server(), m.cluster.as_str())).collect()
    }

    #[test]
    fn later_waves_dispatch_servers_first_taking_turns_across_clusters() {
        let fleet = two_clusters(false);
        let k3s = k3s_lookup(&fleet);
        // "other" is the canary wave; the 12 cluster nodes form wave 1.
        let plan = plan_waves("r", &fleet, &spec("1,100%"));
        assert_eq!(plan.waves[0].nodes, vec![NodeId::new("other")]);
        let roles = roles(&plan.waves[1], &k3s);
        assert!(roles[..6].iter().all(|r| r.0) && roles[6..].iter().all(|r| !r.0), "{roles:?}");
        assert!(roles[..6].windows(2).all(|w| w[0].1 != w[1].1), "servers alternate clusters: {roles:?}");
    }

    #[test]
    fn canary_wave_dispatches_servers_last_so_the_chosen_canary_goes_first() {
        let fleet = two_clusters(true);
        let k3s = k3s_lookup(&fleet);
        let plan = plan_waves("r", &fleet, &spec("1,100%"));
        let roles = roles(&plan.waves[0], &k3s);
        assert_eq!((plan.waves.len(), roles.len()), (1, 12));
        assert!(roles[..6].iter().all(|r| !r.0) && roles[6..].iter().all(|r| r.0), "{roles:?}");
        assert!(roles[6..].windows(2).all(|w| w[0].1 != w[1].1), "servers alternate clusters: {roles:?}");
    }

    #[test]
    fn wave_index_and_summary_count_every_node() {
        let plan = plan_waves("r", &uniform_fleet(40), &spec("1,10%,100%"));
        let index = plan.wave_index();
        assert_eq!(index.len(), 40);
        for (k, wave) in plan.waves.iter().enumerate() {
            assert!(wave.nodes.iter().all(|id| index.wave_of(id) == Some(k)));
        }
        assert_eq!(index.wave_of(&NodeId::new("nope")), None);
        assert_eq!(plan.summary().to_string(), "40 nodes in 3 waves: 1, 3, 36");
    }

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::new(*n)).collect()
    }

    fn dispatch_fleet() -> HashMap<NodeId, K3sMembership> {
        let mut m = HashMap::new();
        for (id, cluster, role) in [
            ("s1", "a", K3sRole::Server),
            ("s2", "a", K3sRole::Server),
            ("s3", "b", K3sRole::Server),
            ("g1", "a", K3sRole::Agent),
            ("g2", "a", K3sRole::Agent),
        ] {
            m.insert(NodeId::new(id), K3sMembership { cluster: cluster.into(), role });
        }
        m
    }

    #[test]
    fn dispatch_never_exceeds_max_unavailable_counting_in_flight() {
        let k3s = dispatch_fleet();
        let lookup = |id: &NodeId| k3s.get(id);
        let pending = ids(&["x1", "x2", "x3", "x4"]);
        assert_eq!(select_dispatch(&pending, &[], &lookup, 3), ids(&["x1", "x2", "x3"]));
        assert_eq!(select_dispatch(&pending, &ids(&["y"]), &lookup, 3), ids(&["x1", "x2"]));
        assert!(select_dispatch(&pending, &ids(&["y", "z", "w"]), &lookup, 3).is_empty());
        assert!(select_dispatch(&pending, &ids(&["y", "z", "w", "v"]), &lookup, 3).is_empty());
    }

    #[test]
    fn dispatch_with_zero_max_unavailable_picks_nothing() {
        let k3s = dispatch_fleet();
        assert!(select_dispatch(&ids(&["x1", "g1"]), &[], &|id| k3s.get(id), 0).is_empty());
    }

    #[test]
    fn dispatch_holds_one_server_per_cluster_counting_in_flight() {
        let k3s = dispatch_fleet();
        let lookup = |id: &NodeId| k3s.get(id);
        assert_eq!(select_dispatch(&ids(&["s1", "s2", "s3"]), &[], &lookup, 10), ids(&["s1", "s3"]));
        assert_eq!(select_dispatch(&ids(&["s2", "s3"]), &ids(&["s1"]), &lookup, 10), ids(&["s3"]));
    }

    #[test]
    fn blocked_server_does_not_block_the_agents_behind_it() {
        let k3s = dispatch_fleet();
        let lookup = |id: &NodeId| k3s.get(id);
        let picked = select_dispatch(&ids(&["s2", "g1", "g2", "x"]), &ids(&["s1"]), &lookup, 4);
        assert_eq!(picked, ids(&["g1", "g2", "x"]));
    }

    #[test]
    fn dispatch_never_picks_a_node_twice() {
        let k3s = dispatch_fleet();
        let lookup = |id: &NodeId| k3s.get(id);
        let picked = select_dispatch(&ids(&["x", "y", "x", "z"]), &ids(&["y"]), &lookup, 10);
        assert_eq!(picked, ids(&["x", "z"]));
    }

    // ---- properties over random fleets ----

    fn v2_family() -> impl Strategy<Value = ImageFamily> {
        (
            prop::sample::select(vec!["opensuse", "ubuntu", "fedora", "rockylinux", "debian", "alpine"]),
            prop::sample::select(vec!["leap-15.5", "22.04", "24.04", "40", "9", "3.19"]),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec!["generic", "rpi3", "rpi4", "nvidia-jetson-agx-orin"]),
            any::<bool>(),
        )
            .prop_map(|(flavor, release, standard, arm, model, uki)| ImageFamily {
                flavor: flavor.into(),
                flavor_release: release.into(),
                variant: if standard { Variant::Standard } else { Variant::Core },
                arch: if arm { Arch::Arm64 } else { Arch::Amd64 },
                model: model.into(),
                trusted_boot: uki,
            })
    }

    /// A v2 family, sometimes with its twin of the other trusted-boot kind,
    /// which must still get a canary of its own.
    fn v2_families() -> impl Strategy<Value = Vec<ImageFamily>> {
        (v2_family(), any::<bool>()).prop_map(|(fam, twin)| {
            let other = ImageFamily { trusted_boot: !fam.trusted_boot, ..fam.clone() };
            if twin {
                vec![fam, other]
            } else {
                vec![fam]
            }
        })
    }

    /// Random fleets: families from the seed matrix and v2-style ones (UKI
    /// or not), some canary/last/other labels, k3s clusters with servers and agents.
    fn fleet_of(sizes: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<NodeFacts>> {
        let seed = prop::sample::select(seed_families()).prop_map(|fam| vec![fam]);
        let pool = prop::collection::vec(prop_oneof![seed, v2_families()], 1..8)
            .prop_map(|groups| groups.into_iter().flatten().collect::<Vec<ImageFamily>>());
        (pool, sizes).prop_flat_map(|(pool, n)| {
            let per_node = (0..pool.len(), 0u8..12, prop::option::of((0u8..4, any::<bool>())));
            prop::collection::vec(per_node, n).prop_map(move |specs| {
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(i, (fam, label, k3s))| {
                        let mut n = node(&format!("m-{i:03}"), &pool[fam]);
                        match label {
                            0 => n = labelled(n, WAVE_LABEL_CANARY),
                            1 | 2 => n = labelled(n, WAVE_LABEL_LAST),
                            3 => n = labelled(n, "2"),
                            _ => {}
                        }
                        if let Some((cluster, server)) = k3s {
                            let role = if server { K3sRole::Server } else { K3sRole::Agent };
                            n = in_cluster(n, &format!("cluster-{cluster}"), role);
                        }
                        n
                    })
                    .collect()
            })
        })
    }

    fn fleet(max: usize) -> impl Strategy<Value = Vec<NodeFacts>> {
        fleet_of(0..=max)
    }

    fn wave_spec() -> impl Strategy<Value = WaveSpec> {
        let size = prop_oneof![(1u32..40).prop_map(WaveSize::Count), (1u8..=100).prop_map(WaveSize::Percent)];
        prop::collection::vec(size, 1..6).prop_map(WaveSpec)
    }

    fn rollout_id() -> impl Strategy<Value = String> {
        "[a-z0-9-]{1,16}"
    }

    fn is_server(n: &NodeFacts) -> bool {
        n.k3s.as_ref().is_some_and(K3sMembership::is_server)
    }

    fn pin_is(n: &NodeFacts, value: &str) -> bool {
        n.labels.get(WAVE_LABEL).is_some_and(|v| v == value)
    }

    /// Families all of whose nodes are labelled `last`: the documented exception.
    fn all_last_families(fleet: &[NodeFacts]) -> HashSet<&ImageFamily> {
        let fams: HashSet<&ImageFamily> = fleet.iter().map(|n| &n.family).collect();
        fams.into_iter()
            .filter(|f| fleet.iter().filter(|n| &n.family == *f).all(|n| pin_is(n, WAVE_LABEL_LAST)))
            .collect()
    }

    /// The cumulative ends the module documentation promises, computed from the
    /// rules alone: wave 0 ends at max(forced canaries, its size), each later
    /// wave at max(wave 0, its size), both capped by the nodes not held back
    /// by `last`; the final wave ends at the whole fleet.
    fn promised_ends(fleet: &[NodeFacts], spec: &WaveSpec) -> Vec<usize> {
        let total = fleet.len();
        let fams: HashSet<&ImageFamily> = fleet.iter().map(|n| &n.family).collect();
        let labelled_fams: HashSet<&ImageFamily> =
            fleet.iter().filter(|n| pin_is(n, WAVE_LABEL_CANARY)).map(|n| &n.family).collect();
        let forced = fleet.iter().filter(|n| pin_is(n, WAVE_LABEL_CANARY)).count() + fams.len() - labelled_fams.len();
        let held_back = fleet.iter().filter(|n| pin_is(n, WAVE_LABEL_LAST)).count() - all_last_families(fleet).len();
        let cap = total - held_back;
        let mut sizes: Vec<usize> = spec.0.iter().map(|s| s.cumulative(total).min(total)).collect();
        for k in 1..sizes.len() {
            sizes[k] = sizes[k].max(sizes[k - 1]);
        }
        let first = sizes.first().copied().unwrap_or(total);
        if first >= total {
            return vec![total];
        }
        let end0 = forced.max(first.min(cap));
        let mut ends = vec![end0];
        for s in sizes.into_iter().skip(1).filter(|&s| s < total) {
            ends.push(end0.max(s).min(cap));
        }
        ends.push(total);
        ends.dedup();
        ends
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn every_eligible_node_is_in_exactly_one_wave(id in rollout_id(), fleet in fleet(150), spec in wave_spec()) {
            let plan = plan_waves(&id, &fleet, &spec);
            let mut planned: Vec<NodeId> = plan.waves.iter().flat_map(|w| w.nodes.clone()).collect();
            planned.sort();
            let mut eligible: Vec<NodeId> = fleet.iter().map(|n| n.id.clone()).collect();
            eligible.sort();
            prop_assert_eq!(planned, eligible);
            prop_assert!(plan.waves.iter().all(|w| !w.nodes.is_empty()), "no empty waves");
            prop_assert_eq!(plan.waves.is_empty(), fleet.is_empty());
        }

        #[test]
        fn wave_zero_holds_every_image_family(id in rollout_id(), fleet in fleet(150), spec in wave_spec()) {
            let plan = plan_waves(&id, &fleet, &spec);
            let index = plan.wave_index();
            let all: HashSet<&ImageFamily> = fleet.iter().map(|n| &n.family).collect();
            let in_wave0: HashSet<&ImageFamily> =
                fleet.iter().filter(|n| index.wave_of(&n.id) == Some(0)).map(|n| &n.family).collect();
            prop_assert_eq!(all, in_wave0);
        }

        #[test]
        fn family_canary_is_not_a_server_when_the_family_has_an_unpinned_non_server(
            id in rollout_id(), fleet in fleet(150), spec in wave_spec()
        ) {
            let plan = plan_waves(&id, &fleet, &spec);
            let by_id: HashMap<&NodeId, &NodeFacts> = fleet.iter().map(|n| (&n.id, n)).collect();
            let fams: HashSet<&ImageFamily> = fleet.iter().map(|n| &n.family).collect();
            for fam in fams {
                let members: Vec<&NodeFacts> = fleet.iter().filter(|n| &n.family == fam).collect();
                let operator_chose = members.iter().any(|n| pin_is(n, WAVE_LABEL_CANARY));
                let has_candidate = members.iter().any(|n| !is_server(n) && !pin_is(n, WAVE_LABEL_LAST));
                if !operator_chose && has_candidate {
                    // The first of the family to be dispatched, not merely one in wave 0.
                    let first = plan.waves[0].nodes.iter().filter_map(|id| by_id.get(id)).find(|n| &n.family == fam);
                    prop_assert!(first.is_some_and(|n| !is_server(n)), "{}", fam);
                }
            }
        }

        #[test]
        fn plan_is_identical_for_the_same_rollout_and_node_set_in_any_order(
            id in rollout_id(),
            (fleet, shuffled) in fleet(150).prop_flat_map(|f| (Just(f.clone()), Just(f).prop_shuffle())),
            spec in wave_spec(),
        ) {
            prop_assert_eq!(plan_waves(&id, &fleet, &spec), plan_waves(&id, &shuffled, &spec));
        }

        #[test]
        fn different_rollout_id_gives_a_different_order(
            a in rollout_id(), fleet in fleet_of(40..=150), spec in wave_spec()
        ) {
            let b = format!("{a}-2");
            let flat = |id: &str| -> Vec<NodeId> {
                plan_waves(id, &fleet, &spec).waves.into_iter().flat_map(|w| w.nodes).collect()
            };
            prop_assert_ne!(flat(&a), flat(&b));
        }

        #[test]
        fn canary_labels_go_in_wave_zero_and_last_labels_in_the_final_wave(
            id in rollout_id(), fleet in fleet(150), spec in wave_spec()
        ) {
            let plan = plan_waves(&id, &fleet, &spec);
            let index = plan.wave_index();
            let final_wave = plan.waves.len().checked_sub(1);
            let exceptions = all_last_families(&fleet);
            for n in &fleet {
                let wave = index.wave_of(&n.id);
                if pin_is(n, WAVE_LABEL_CANARY) {
                    prop_assert_eq!(wave, Some(0), "{}", n.id);
                }
                if pin_is(n, WAVE_LABEL_LAST) && wave != final_wave {
                    // Documented exception: the family's only canary candidate.
                    prop_assert!(wave == Some(0) && exceptions.contains(&n.family), "{}", n.id);
                    let same_family_in_wave0 = fleet
                        .iter()
                        .filter(|m| m.family == n.family && index.wave_of(&m.id) == Some(0))
                        .count();
                    prop_assert_eq!(same_family_in_wave0, 1);
                }
            }
        }

        #[test]
        fn cumulative_sizes_are_respected_beyond_wave_zero(
            id in rollout_id(), fleet in fleet(150), spec in wave_spec()
        ) {
            prop_assume!(!fleet.is_empty());
            let plan = plan_waves(&id, &fleet, &spec);
            prop_assert_eq!(plan.summary().cumulative(), promised_ends(&fleet, &spec));
        }

        #[test]
        fn dispatching_a_whole_plan_respects_limits_and_finishes(
            id in rollout_id(),
            fleet in fleet(150),
            spec in wave_spec(),
            max_unavailable in 1usize..8,
            seed in any::<u64>(),
        ) {
            let plan = plan_waves(&id, &fleet, &spec);
            let k3s = k3s_lookup(&fleet);
            let lookup = |id: &NodeId| k3s.get(id);
            let mut rng = seed | 1;
            let mut done = 0;
            for wave in &plan.waves {
                let mut pending = wave.nodes.clone();
                let mut in_flight: Vec<NodeId> = Vec::new();
                while !pending.is_empty() || !in_flight.is_empty() {
                    let picked = select_dispatch(&pending, &in_flight, &lookup, max_unavailable);
                    prop_assert!(picked.len() + in_flight.len() <= max_unavailable);
                    prop_assert!(picked.iter().all(|p| pending.contains(p) && !in_flight.contains(p)));
                    pending.retain(|p| !picked.contains(p));
                    in_flight.extend(picked);
                    let servers: Vec<&str> =
                        in_flight.iter().filter_map(|n| k3s.get(n)).filter(|m| m.is_server()).map(|m| m.cluster.as_str()).collect();
                    let busy: HashSet<&str> = servers.iter().copied().collect();
                    prop_assert_eq!(servers.len(), busy.len(), "two servers of one cluster in flight");
                    // Greedy: with room left, whatever is still pending is a blocked server.
                    if in_flight.len() < max_unavailable {
                        for p in &pending {
                            let blocked = k3s.get(p).is_some_and(|m| m.is_server() && busy.contains(m.cluster.as_str()));
                            prop_assert!(blocked, "{} was allowed but not picked", p);
                        }
                    }
                    prop_assert!(!in_flight.is_empty() || pending.is_empty(), "dispatch stalled");
                    // Complete a random non-empty subset of the nodes in flight.
                    let before = in_flight.len();
                    let mut keep = Vec::with_capacity(before);
                    for (k, n) in in_flight.drain(..).enumerate() {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        if k == 0 || rng % 2 == 0 {
                            done += 1;
                        } else {
                            keep.push(n);
                        }
                    }
                    in_flight = keep;
                }
            }
            prop_assert_eq!(done, fleet.len());
        }
    }
}
