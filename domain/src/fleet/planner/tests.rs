//! Planner scenario tests: order, wave sizes, canaries, wave labels and
//! dispatch, each named after the rule it proves.

use std::collections::BTreeMap;

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

pub(super) fn node(id: &str, family: &ImageFamily) -> NodeFacts {
    NodeFacts {
        id: NodeId::new(id),
        family: family.clone(),
        release: Version::new(2, 4, 2),
        software: None,
        labels: BTreeMap::new(),
        k3s: None,
    }
}

pub(super) fn labelled(mut n: NodeFacts, value: &str) -> NodeFacts {
    n.labels.insert(WAVE_LABEL.into(), value.into());
    n
}

pub(super) fn in_cluster(mut n: NodeFacts, cluster: &str, role: K3sRole) -> NodeFacts {
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

pub(super) fn k3s_lookup(fleet: &[NodeFacts]) -> HashMap<NodeId, K3sMembership> {
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
    let mut fleet: Vec<NodeFacts> = (0..8).map(|i| labelled(node(&format!("n{i}"), &fam), WAVE_LABEL_LAST)).collect();
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
