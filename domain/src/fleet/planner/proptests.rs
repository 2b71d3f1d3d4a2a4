//! Planner properties over random fleets: the rules hold for any fleet,
//! wave spec and rollout id.

use proptest::prelude::*;

use super::tests::{in_cluster, k3s_lookup, labelled, node};
use super::*;
use crate::fleet::matrix::seed_families;
use crate::fleet::model::{Arch, K3sRole, Variant};
use crate::fleet::strategy::WaveSize;

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
    fams.into_iter().filter(|f| fleet.iter().filter(|n| &n.family == *f).all(|n| pin_is(n, WAVE_LABEL_LAST))).collect()
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
