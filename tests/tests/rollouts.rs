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
use kairos_fleet_tests::json::{find_array, find_str, node_states, normalized, parse as json, phase_of};
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

/// The image family of a v1.6.1 image reference: the reference without
/// its release.
fn family_of(image: &str) -> String {
    image.replace("v1.6.1", "")
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
    let id = create(&cluster, &["--to", "v1.6.1", "--waves", "1,50%,100%", "--max-unavailable", "6", "--bake", "3s"]);
    let watch = cluster.ctl_spawn(&["rollout", "watch", &id]);
    let done = wait_phase(&cluster, &id, "completed", Duration::from_secs(120));
    let watched = watch.wait_with_output().expect("rollout watch ends");
    let lines = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched.status.success(),
        "watch exits 0 on completion: {lines}\n{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    // Wave 0 started with the Create, before the watch attached.
    assert!(lines.contains("wave 0"), "{lines}");
    for wave in 1..3 {
        assert!(lines.contains(&format!("wave {wave} started")), "the watch shows wave {wave} starting: {lines}");
    }
    assert!(lines.contains("completed"), "{lines}");
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

#[test]
fn a_failing_canary_pauses_the_rollout_resume_after_the_fix_continues_rollback_and_abort() {
    let cluster = start_cluster();
    let count = FAMILIES * 2;
    let fail_file = cluster.dir.path().join("fail-rules");
    // The Raspberry Pi standard image does not boot until it is "fixed".
    std::fs::write(&fail_file, "alpine-arm-rpi/standard\n").expect("fail file");
    let (_sim, history_path) = sim(
        &cluster,
        "canary",
        count,
        2,
        &["--release", "v1.6.0", "--upgrade-step", "100ms", "--fail-file", fail_file.to_str().expect("utf-8")],
    );
    add_releases(&cluster, &seed_images("1.6.0"));
    add_releases(&cluster, &seed_images("1.6.1"));
    wait_online(&cluster, count);

    let id = create(&cluster, &["--to", "v1.6.1", "--waves", "1,100%", "--max-unavailable", "8", "--bake", "0s"]);
    let paused = wait_phase(&cluster, &id, "paused", Duration::from_secs(60));
    let states = node_states(&paused);
    let failed: Vec<&String> = states.iter().filter(|(_, s)| *s == "failed").map(|(n, _)| n).collect();
    assert_eq!(failed.len(), 1, "the rpi standard canary failed: {states:?}");
    let reason = find_str(&paused, "reason_message").unwrap_or_default().to_string();
    assert!(reason.contains(failed[0].as_str()) && reason.contains("threshold"), "{reason}");
    let records = read_history(&history_path);
    let commanded = first_commands(&records, &id);
    assert_eq!(commanded.len(), FAMILIES, "only the canary wave was commanded before the pause: {commanded:?}");

    // Resuming without saying what to do about the failure is refused.
    let plain = cluster.ctl(&["rollout", "resume", &id]);
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("retry"), "{}", String::from_utf8_lossy(&plain.stderr));
    // The fixed image is published; the failed canary is retried and the rollout goes on.
    std::fs::write(&fail_file, "").expect("fix");
    ok_stdout(&cluster.ctl(&["rollout", "resume", &id, "--retry-failed"]), "rollout resume --retry-failed");
    let done = wait_phase(&cluster, &id, "completed", Duration::from_secs(90));
    assert!(node_states(&done).values().all(|s| s == "healthy"), "{done}");
    let records = read_history(&history_path);
    let verdict = history::check(&records, &id, 8, &node_states(&done));
    assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);

    // Rollback: every node goes back to the image it ran before.
    ok_stdout(&cluster.ctl(&["rollout", "rollback", &id, "--reason", "test"]), "rollout rollback");
    let back = wait_phase(&cluster, &id, "rolled_back", Duration::from_secs(90));
    assert!(node_states(&back).values().all(|s| s == "rolled_back"), "{back}");
    let releases = wait_for("every node reports v1.6.0 again", Duration::from_secs(30), || {
        let nodes = json(&ok_stdout(&cluster.ctl(&["nodes", "list", "--all", "-o", "json"]), "nodes list"));
        let releases: BTreeSet<String> = find_array(&nodes, "nodes")
            .or_else(|| nodes.as_array())?
            .iter()
            .filter_map(|n| n["release"].as_str().map(str::to_string))
            .collect();
        (releases.len() == 1).then_some(releases)
    });
    assert_eq!(releases, BTreeSet::from(["v1.6.0".to_string()]));

    // With --on-failure abort a failing canary ends the rollout.
    std::fs::write(&fail_file, "*\n").expect("fail file");
    let id =
        create(&cluster, &["--to", "v1.6.1", "--waves", "1,100%", "--max-unavailable", "4", "--on-failure", "abort"]);
    let aborted = wait_phase(&cluster, &id, "aborted", Duration::from_secs(60));
    let states = node_states(&aborted);
    assert!(states.values().filter(|s| *s == "healthy").count() == 0, "{states:?}");
    assert!(states.values().any(|s| s == "pending"), "wave 1 was never started: {states:?}");
    let watch = cluster.ctl(&["rollout", "watch", &id]);
    assert!(!watch.status.success(), "watching an aborted rollout ends with a failure exit code");
}

#[test]
fn major_upgrades_need_allow_major_and_the_barrier_release_and_a_closed_window_holds_the_wave() {
    let cluster = start_cluster();
    // 16 nodes on the barrier (newest v1.x in the catalog), 16 behind it.
    let (_on_barrier, _) = sim(&cluster, "barrier", FAMILIES, 3, &["--release", "v1.6.1"]);
    let (_behind, _) = sim(&cluster, "behind", FAMILIES, 4, &["--release", "v1.5.0"]);
    for release in ["1.5.0", "1.6.1", "2.0.0"] {
        add_releases(&cluster, &seed_images(release));
    }
    wait_online(&cluster, 2 * FAMILIES);

    let plan = |args: &[&str]| {
        let mut all = vec!["rollout", "plan", "--to", "v2.0.0"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        json(&ok_stdout(&cluster.ctl(&all), "rollout plan"))
    };
    let refused_rules = |plan: &Value| -> BTreeMap<String, String> {
        find_array(plan, "refused")
            .map(|r| {
                r.iter()
                    .filter_map(|n| Some((n["node_id"].as_str()?.to_string(), normalized(n["rule"].as_str()?))))
                    .collect()
            })
            .unwrap_or_default()
    };
    let without = plan(&[]);
    let rules = refused_rules(&without);
    assert_eq!(rules.len(), 2 * FAMILIES, "every node is refused without --allow-major: {without}");
    assert!(rules.values().all(|r| r.contains("major_not_allowed")), "{rules:?}");

    let with = plan(&["--allow-major"]);
    let rules = refused_rules(&with);
    assert_eq!(rules.len(), FAMILIES, "the nodes behind the barrier are refused by name: {with}");
    assert!(rules.values().all(|r| r.contains("barrier")), "{rules:?}");
    let refusal_text = with.to_string();
    assert!(refusal_text.contains("v1.6.1"), "the refusal names the barrier release: {refusal_text}");

    // A maintenance window that is closed now: the first wave waits, nothing is commanded.
    let tomorrow = match jiff_weekday_tomorrow() {
        Some(day) => day,
        None => return,
    };
    let window = format!("{tomorrow} 03:00+1h UTC");
    let id = create(&cluster, &["--to", "v2.0.0", "--allow-major", "--window", &window]);
    let waiting = wait_phase(&cluster, &id, "waiting_window", Duration::from_secs(20));
    assert!(find_str(&waiting, "next_window_at").is_some(), "{waiting}");
    std::thread::sleep(Duration::from_secs(3));
    let still = status(&cluster, &id).expect("status");
    assert_eq!(phase_of(&still), "waiting_window");
    assert!(node_states(&still).values().all(|s| s == "pending"), "{still}");
    ok_stdout(&cluster.ctl(&["rollout", "abort", &id]), "rollout abort");
}

/// Tomorrow's weekday as the window grammar spells it (`Mon`..`Sun`), UTC.
fn jiff_weekday_tomorrow() -> Option<&'static str> {
    let days = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    // 1970-01-01 was a Thursday; tomorrow is one day on.
    Some(days[((now / 86_400 + 1) % 7) as usize])
}

#[test]
fn sigkilling_the_leader_in_the_middle_of_waves_loses_nothing_and_the_rollout_finishes() {
    let mut cluster = start_cluster();
    let count = 40;
    let max_unavailable = 5;
    let (sim, history_path) = sim(&cluster, "failover", count, 5, &["--release", "v1.6.0", "--upgrade-step", "300ms"]);
    add_releases(&cluster, &seed_images("1.6.0"));
    add_releases(&cluster, &seed_images("1.6.1"));
    wait_online(&cluster, count);
    let id = create(
        &cluster,
        &["--to", "v1.6.1", "--waves", "1,25%,100%", "--max-unavailable", &max_unavailable.to_string(), "--bake", "0s"],
    );
    // A watch that follows the rollout through the kills (it resumes on
    // another replica when the one it reads from dies).
    let watch = cluster.ctl_spawn(&["rollout", "watch", &id, "-o", "json"]);
    let started = Instant::now();
    let mut kills = 0;
    for round in 0..3 {
        // Wait until nodes are in flight, then kill the leader under them.
        wait_for("nodes in flight", Duration::from_secs(60), || {
            let s = status(&cluster, &id)?;
            let in_flight = node_states(&s).values().filter(|v| *v == "in_flight").count();
            (in_flight > 0 || phase_of(&s) == "completed").then_some(())
        });
        if phase_of(&status(&cluster, &id).expect("status")) == "completed" {
            break;
        }
        let leader = wait_for("a leader", Duration::from_secs(20), || cluster.leader(&[1, 2, 3]));
        cluster.kill9(leader);
        kills += 1;
        println!("round {round}: SIGKILLed leader {leader} at {:.1} s", started.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(1500));
        cluster.start_with(leader, &["--node-heartbeat-ms", HEARTBEAT_MS]);
    }
    let done = wait_phase(&cluster, &id, "completed", Duration::from_secs(180));
    let states = node_states(&done);
    assert!(states.values().all(|s| s == "healthy"), "{states:?}");
    // In flight as the control plane recorded it: from each node's command
    // to its result (one attempt each, nothing failed).
    let ms = |v: &Value| v.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_millisecond() as u64);
    let intervals: Vec<(u64, u64)> = find_array(&done, "nodes")
        .expect("nodes")
        .iter()
        .map(|n| {
            assert_eq!(n["attempt"].as_u64(), Some(1), "{n}");
            (ms(&n["commanded_at"]).expect("commanded_at"), ms(&n["finished_at"]).expect("finished_at"))
        })
        .collect();
    let recorded = history::max_overlap(&intervals);
    // The nodes' own history: one target per node, generations never
    // reused, no acknowledged result lost. Its in-flight count is printed,
    // not judged: an acknowledgement lost with a SIGKILLed replica is
    // repeated after the reconnect, so a node can look in flight to itself
    // after the control plane has counted its result.
    let records = read_history(&history_path);
    let verdict = history::check(&records, &id, usize::MAX, &states);
    println!(
        "{kills} leader SIGKILLs; rollout completed after {:.1} s; most nodes in flight as recorded {recorded} \
         (max_unavailable {max_unavailable}); node history: {} operations checked, {} violations (the nodes saw \
         at most {} between command and acknowledged result)",
        started.elapsed().as_secs_f64(),
        verdict.operations,
        verdict.violations.len(),
        verdict.max_in_flight,
    );
    assert!(recorded <= max_unavailable, "{recorded} nodes were in flight at once: {intervals:?}");
    assert!(kills >= 2, "the leader was killed at least twice mid-rollout");
    let watched = watch.wait_with_output().expect("rollout watch ends");
    let stdout = String::from_utf8_lossy(&watched.stdout);
    assert!(watched.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&watched.stderr));
    let last = stdout.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()).expect("JSON lines");
    assert_eq!(phase_of(&last), "completed", "the watch saw the end: {last}");
    assert!(verdict.violations.is_empty(), "{:#?}", verdict.violations);
    drop(sim);
}
