//! Rollouts on a real three-replica cluster (separate processes on
//! loopback) with simulated nodes (`kairos-node-client simulate`, the real
//! session code) and `kairosctl rollout`: waves across every seed flavor,
//! canaries first, a failing canary, resume, abort, rollback, the versioning
//! policy's refusals, maintenance windows, bake, and leader SIGKILLs in the
//! middle of a wave checked against the recorded history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kairos_fleet_tests::history::{self, Kind, Record};
use kairos_fleet_tests::sim::{add_releases, seed_images, Simulator, SimulatorOptions};
use kairos_fleet_tests::{ok_stdout, wait_for, Cluster};
use serde_json::Value;

/// Node heartbeat interval of the replicas (liveness: 3x).
const HEARTBEAT_MS: &str = "1000";
/// Seed image families (flavors × core/standard).
const FAMILIES: usize = 16;

fn start_cluster() -> Cluster {
    let mut cluster = Cluster::init(3);
    cluster.form(&["--node-heartbeat-ms", HEARTBEAT_MS]);
    cluster
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The first string under `key` anywhere in `v` (depth first).
fn find_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match v {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_str)
            .or_else(|| map.values().find_map(|child| find_str(child, key))),
        Value::Array(items) => items.iter().find_map(|child| find_str(child, key)),
        _ => None,
    }
}

/// The first array under `key` anywhere in `v`.
fn find_array<'a>(v: &'a Value, key: &str) -> Option<&'a Vec<Value>> {
    match v {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_array)
            .or_else(|| map.values().find_map(|child| find_array(child, key))),
        Value::Array(items) => items.iter().find_map(|child| find_array(child, key)),
        _ => None,
    }
}

fn normalized(s: &str) -> String {
    s.to_ascii_lowercase().replace(['-', ' '], "_")
}

/// `kairosctl rollout create` with `args`; the new rollout's id.
fn create(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["rollout", "create"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = ok_stdout(&cluster.ctl(&all), "rollout create");
    find_str(&json(&out), "rollout_id").unwrap_or_else(|| panic!("no rollout_id in {out}")).to_string()
}

/// The rollout's status with its nodes, as kairosctl prints it in JSON.
fn status(cluster: &Cluster, id: &str) -> Option<Value> {
    let out = cluster.ctl(&["rollout", "status", id, "--nodes", "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn phase_of(status: &Value) -> String {
    normalized(find_str(status, "phase").unwrap_or_default())
}

/// Node id → state (normalized) of a status.
fn node_states(status: &Value) -> BTreeMap<String, String> {
    find_array(status, "nodes")
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| Some((n["node_id"].as_str()?.to_string(), normalized(n["state"].as_str()?))))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_phase(cluster: &Cluster, id: &str, want: &str, timeout: Duration) -> Value {
    wait_for(&format!("rollout {id} {want}"), timeout, || status(cluster, id).filter(|s| phase_of(s) == want))
}

fn read_history(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    history::parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// Node → the first forward desired state it received: (time, wave, image).
fn first_commands(records: &[Record], rollout: &str) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    for r in records {
        if let Kind::Desired { rollout: ro, image, rollback: false, .. } = &r.kind {
            if ro == rollout {
                out.entry(r.node.clone()).or_insert((r.t_ms, image.clone()));
            }
        }
    }
    out
}

fn sim(cluster: &Cluster, name: &str, count: usize, seed: u64, extra: &[&str]) -> (Simulator, PathBuf) {
    let history = cluster.dir.path().join(format!("{name}-history.jsonl"));
    let opts = SimulatorOptions { seed, name: name.into(), ..SimulatorOptions::new(cluster, count) }
        .arg(&["--history", history.to_str().expect("utf-8 path")])
        .arg(extra);
    (Simulator::start_with(cluster, &opts), history)
}

fn wait_online(cluster: &Cluster, count: usize) {
    wait_for(&format!("{count} nodes online"), Duration::from_secs(60), || {
        let out = cluster.ctl(&["fleet", "report", "-o", "json"]);
        let report: Value = serde_json::from_slice(&out.stdout).ok()?;
        let online = report["online_nodes"].as_u64()?;
        (online as usize >= count).then_some(())
    });
}

/// The image family part of an image tag: everything before the release.
fn family_of(image: &str) -> String {
    let tag = image.rsplit_once(':').map_or(image, |(_, t)| t);
    tag.split("-v1.").next().unwrap_or(tag).to_string()
}

#[test]
fn a_patch_rollout_moves_every_seed_flavor_wave_by_wave_canaries_first_and_bakes_between_waves() {
    let cluster = start_cluster();
    let count = FAMILIES * 3;
    let (sim, history_path) = sim(&cluster, "patch", count, 1, &["--release", "v1.6.0", "--upgrade-step", "100ms"]);
    add_releases(&cluster, &seed_images("1.6.0"));
    add_releases(&cluster, &seed_images("1.6.1"));
    wait_online(&cluster, count);

    let bake_ms = 3000;
    let id = create(
        &cluster,
        &["--to", "v1.6.1", "--waves", "1,50%,100%", "--max-unavailable", "6", "--bake", "3s"],
    );
    let done = wait_phase(&cluster, &id, "completed", Duration::from_secs(120));
    let states = node_states(&done);
    assert_eq!(states.len(), count, "{done}");
    assert!(states.values().all(|s| s == "healthy"), "{states:?}");

    let records = read_history(&history_path);
    let firsts = first_commands(&records, &id);
    assert_eq!(firsts.len(), count, "every node was commanded");
    // Wave 0 is one canary per image family, and every canary was
    // commanded before any other node.
    let mut by_time: Vec<(&String, &(u64, String))> = firsts.iter().collect();
    by_time.sort_by_key(|(_, (t, _))| *t);
    let canaries: BTreeSet<String> = by_time.iter().take(FAMILIES).map(|(_, (_, image))| family_of(image)).collect();
    assert_eq!(canaries.len(), FAMILIES, "the first {FAMILIES} commands are one per family: {canaries:?}");
    let waves = find_array(&done, "waves").expect("waves in the status");
    let wave0 = waves[0]["counts"]["total"].as_u64().or_else(|| waves[0]["total"].as_u64()).unwrap_or(0);
    assert_eq!(wave0 as usize, FAMILIES, "{done}");

    // Bake: nothing of wave 1 was commanded until `bake` after the last
    // canary's result was acknowledged.
    let canary_nodes: BTreeSet<&String> = by_time.iter().take(FAMILIES).map(|(n, _)| *n).collect();
    let last_canary_ack = records
        .iter()
        .filter(|r| canary_nodes.contains(&r.node))
        .filter_map(|r| match &r.kind {
            Kind::Acked { state, rollout, .. } if state == "healthy" && rollout == &id => Some(r.t_ms),
            _ => None,
        })
        .max()
        .expect("canaries acknowledged healthy");
    let first_wave1 = by_time.get(FAMILIES).map(|(_, (t, _))| *t).expect("a second wave");
    assert!(
        first_wave1 >= last_canary_ack + bake_ms - 200,
        "wave 1 started {} ms after the last canary result; bake is {bake_ms} ms",
        first_wave1.saturating_sub(last_canary_ack)
    );

    let verdict = history::check(&records, &id, 6, &states);
    println!(
        "history: {} operations, max {} in flight (max_unavailable 6), {} violations",
        verdict.operations,
        verdict.max_in_flight,
        verdict.violations.len()
    );
    assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
    let report = sim.report();
    assert_eq!(report["upgrades"]["healthy"].as_u64(), Some(count as u64), "{report}");
}
