//! A rollout across a large simulated fleet with instant upgrades: how
//! close the engine gets to the fastest the wave settings allow.
//!
//! A three-replica control plane on this machine, N simulated nodes
//! (`kairos-node-client simulate --upgrade-step 0s`: each upgrade is only
//! the status transitions and the reconnect after the simulated reboot),
//! one patch rollout of every node. It prints:
//! - time from Create to COMPLETED, and the minimum the settings allow
//!   (the bake times between waves; upgrades take no time), as a ratio;
//! - nodes upgraded per minute, over the whole rollout and over the time
//!   not spent baking;
//! - each wave's duration and the raft entries the rollout committed.
//!
//! A benchmark, never part of the test suite: `scripts/bench-rollout`
//! builds the release binaries and runs it.

use std::time::{Duration, Instant};

use clap::Parser;
use kairos_fleet_tests::sim::{add_releases, seed_images, Simulator, SimulatorOptions};
use kairos_fleet_tests::{ok_stdout, wait_for, Cluster};
use serde_json::Value;

/// A large rollout with instant simulated upgrades.
#[derive(Parser, Debug)]
struct Args {
    /// Simulated nodes.
    #[arg(long, env = "BENCH_NODES", default_value_t = 10_000)]
    nodes: usize,
    /// Wave sizes of the rollout.
    #[arg(long, env = "BENCH_WAVES", default_value = "1,10%,50%,100%")]
    waves: String,
    /// Nodes in flight at once.
    #[arg(long, env = "BENCH_MAX_UNAVAILABLE", default_value_t = 500)]
    max_unavailable: u32,
    /// Bake time between waves, in seconds.
    #[arg(long, env = "BENCH_BAKE_SECS", default_value_t = 5)]
    bake_secs: u64,
    /// Most virtual nodes per simulator process.
    #[arg(long, env = "BENCH_NODES_PER_SIMULATOR", default_value_t = 10_000)]
    per_simulator: usize,
    /// Ignored: cargo passes it to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn commit_index(cluster: &Cluster) -> u64 {
    let out = cluster.ctl(&["cluster", "status", "-o", "json"]);
    serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|s| s["commit_index"].as_u64()).unwrap_or(0)
}

fn online_nodes(cluster: &Cluster) -> u64 {
    let out = cluster.ctl(&["fleet", "report", "-o", "json"]);
    serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|r| r["online_nodes"].as_u64()).unwrap_or(0)
}

/// The rollout as `kairosctl rollout get` shows it in JSON (proto field names).
fn rollout(cluster: &Cluster, id: &str) -> Option<Value> {
    let out = cluster.ctl(&["rollout", "status", id, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map.get(key).or_else(|| map.values().find_map(|c| find(c, key))),
        Value::Array(items) => items.iter().find_map(|c| find(c, key)),
        _ => None,
    }
}

fn phase(v: &Value) -> String {
    find(v, "phase").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase()
}

fn main() {
    let args = Args::parse();
    let n = args.nodes;
    println!(
        "== rollout of {n} simulated nodes (instant upgrades), waves {}, max_unavailable {}, bake {} s, 3 replicas ==",
        args.waves, args.max_unavailable, args.bake_secs
    );
    let mut cluster = Cluster::init(3);
    cluster.form(&["--node-heartbeat-ms", "10000"]);
    add_releases(&cluster, &seed_images("1.6.0"));
    add_releases(&cluster, &seed_images("1.6.1"));

    let started = Instant::now();
    let mut sims = Vec::new();
    let mut left = n;
    let mut seed = 1;
    while left > 0 {
        let count = left.min(args.per_simulator);
        left -= count;
        let opts = SimulatorOptions {
            seed,
            name: format!("simulate-{seed}"),
            duration: "2h".into(),
            ..SimulatorOptions::new(&cluster, count)
        }
        .arg(&["--release", "v1.6.0", "--upgrade-step", "0s", "--concurrency", "128"]);
        sims.push(Simulator::start_with(&cluster, &opts));
        seed += 1;
    }
    wait_for("every node online", Duration::from_secs(1800), || (online_nodes(&cluster) >= n as u64).then_some(()));
    println!("{n} nodes enrolled and online after {:.1} s", started.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));

    let c0 = commit_index(&cluster);
    let t0 = Instant::now();
    let out = ok_stdout(
        &cluster.ctl(&[
            "rollout",
            "create",
            "--to",
            "v1.6.1",
            "--waves",
            &args.waves,
            "--max-unavailable",
            &args.max_unavailable.to_string(),
            "--bake",
            &format!("{}s", args.bake_secs),
            "-o",
            "json",
        ]),
        "rollout create",
    );
    let created_in = t0.elapsed();
    let id = find(&json(&out), "rollout_id").and_then(Value::as_str).expect("rollout id").to_string();
    // Wave start and finish times as the status reports them.
    let done = wait_for("the rollout completes", Duration::from_secs(3600), || {
        let r = rollout(&cluster, &id)?;
        match phase(&r).as_str() {
            "completed" => Some(r),
            "paused" | "aborted" => panic!("the rollout stopped: {r}"),
            _ => {
                std::thread::sleep(Duration::from_millis(200));
                None
            }
        }
    });
    let total = t0.elapsed();
    let c1 = commit_index(&cluster);

    let waves = find(&done, "waves").and_then(Value::as_array).cloned().unwrap_or_default();
    let bakes = waves.len().saturating_sub(1) as f64 * args.bake_secs as f64;
    let secs = total.as_secs_f64();
    println!("Create answered in {:.2} s", created_in.as_secs_f64());
    println!(
        "create → completed: {secs:.1} s; minimum the settings allow (bake only): {bakes:.1} s; ratio {:.2}",
        secs / bakes.max(0.001)
    );
    println!(
        "nodes upgraded per minute: {:.0} overall, {:.0} outside bake time",
        n as f64 * 60.0 / secs,
        n as f64 * 60.0 / (secs - bakes).max(0.001)
    );
    println!(
        "raft entries committed during the rollout: {} ({:.1} nodes per entry)",
        c1 - c0,
        n as f64 / (c1 - c0).max(1) as f64
    );
    for w in &waves {
        let total = find(w, "total").and_then(Value::as_u64).unwrap_or(0);
        let start = find(w, "started_at").and_then(Value::as_str).unwrap_or("?");
        let end = find(w, "finished_at").and_then(Value::as_str).unwrap_or("?");
        println!("  wave {}: {total} nodes, {start} → {end}", find(w, "index").and_then(Value::as_u64).unwrap_or(0));
    }
    let reports: Vec<Value> = sims.into_iter().map(Simulator::report).collect();
    let healthy: u64 = reports.iter().filter_map(|r| r["upgrades"]["healthy"].as_u64()).sum();
    println!("simulators report {healthy} healthy upgrades of {n}");
}
