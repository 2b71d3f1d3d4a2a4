//! Node sessions at fleet scale: 10k and 50k simulated nodes (the real
//! node-client session code, `kairos-node-client simulate`) against a
//! three-replica control plane on this machine.
//!
//! For each fleet size it prints:
//! - RSS and CPU of each replica idle (no nodes: the baseline) and with
//!   every node connected and heartbeating, and the ratio of the two;
//! - the time until every node is enrolled and connected;
//! - heartbeat round-trip p50/p99 as the nodes measured them;
//! - a status storm: every node reports a transition at the same moment;
//!   raft entries committed and entries/s until all are acknowledged,
//!   and how many updates one entry carried.
//!
//! A benchmark, never part of the test suite: `scripts/bench-nodes` builds
//! the release binaries and runs it.

#[path = "../replication/cpu.rs"]
#[allow(dead_code)]
mod cpu;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use kairos_fleet_tests::{binary, ok_stdout, wait_for, Cluster};
use serde_json::Value;

/// Node sessions at scale: memory, CPU, heartbeat latency, connect time and status storms.
#[derive(Parser, Debug)]
struct Args {
    /// Fleet sizes to run, one cluster each.
    #[arg(long, env = "BENCH_NODES", value_delimiter = ',', default_value = "10000,50000")]
    nodes: Vec<usize>,
    /// Node heartbeat interval the replicas ask for, in milliseconds.
    #[arg(long, env = "BENCH_HEARTBEAT_MS", default_value_t = 10_000)]
    heartbeat_ms: u64,
    /// Seconds of steady state (everyone connected, heartbeating) measured.
    #[arg(long, env = "BENCH_STEADY_SECS", default_value_t = 30)]
    steady_secs: u64,
    /// Most virtual nodes per simulator process (each node holds a socket;
    /// the file-descriptor limit of a process bounds it).
    #[arg(long, env = "BENCH_NODES_PER_SIMULATOR", default_value_t = 15_000)]
    per_simulator: usize,
    /// Ignored: cargo passes it to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// CPU seconds of one process so far.
fn cpu_secs(pid: u32) -> f64 {
    cpu::Sample::take(&[pid]).members
}

fn replica_pids() -> Vec<(u64, u32)> {
    (1..=3)
        .filter_map(|id| {
            let dir_arg = format!("replica-{id}");
            cpu::pids_with_arg("serve")
                .into_iter()
                .find(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir_arg))
                })
                .map(|pid| (id, pid))
        })
        .collect()
}

/// RSS and CPU use of each replica over `window`.
fn measure(pids: &[(u64, u32)], window: Duration) -> Vec<(u64, f64, f64)> {
    let before: Vec<f64> = pids.iter().map(|(_, pid)| cpu_secs(*pid)).collect();
    let started = Instant::now();
    std::thread::sleep(window);
    let elapsed = started.elapsed().as_secs_f64();
    pids.iter().zip(before).map(|((id, pid), b)| (*id, rss_mib(*pid), 100.0 * (cpu_secs(*pid) - b) / elapsed)).collect()
}

fn fleet_report(cluster: &Cluster) -> Option<Value> {
    let out = cluster.ctl(&["fleet", "report", "-o", "json"]);
    serde_json::from_slice(&out.stdout).ok()
}

fn online_nodes(cluster: &Cluster) -> u64 {
    fleet_report(cluster).and_then(|r| r["online_nodes"].as_u64()).unwrap_or(0)
}

fn commit_index(cluster: &Cluster) -> Option<u64> {
    let out = cluster.ctl(&["cluster", "status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&out.stdout).ok()?;
    status["commit_index"].as_u64()
}

struct Simulator {
    child: Child,
    report: PathBuf,
    log: PathBuf,
}

impl Simulator {
    fn report(mut self) -> Value {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.report).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_else(|e| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            panic!("simulator report {}: {e}\n{log}", self.report.display())
        })
    }
}

fn start_simulators(cluster: &Cluster, count: usize, per: usize) -> Vec<Simulator> {
    let servers: Vec<String> = (1..=3).map(|id| format!("https://{}", cluster.addresses[&id])).collect();
    let mut sims = Vec::new();
    let mut left = count;
    let mut seed = 1;
    while left > 0 {
        let n = left.min(per);
        left -= n;
        let out = ok_stdout(
            &cluster.ctl(&["enroll-tokens", "create", "--uses", &n.to_string(), "--ttl", "2h", "-o", "json"]),
            "enroll-tokens create",
        );
        let token: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        let secret = token["secret"].as_str().unwrap_or_else(|| panic!("no secret: {out}")).to_string();
        let report = cluster.dir.path().join(format!("simulate-{seed}.json"));
        let log = cluster.dir.path().join(format!("simulate-{seed}.log"));
        let out_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err_file = out_file.try_clone().unwrap_or_else(|e| panic!("clone: {e}"));
        let child = Command::new(binary("kairos-node-client"))
            .args(["simulate", "--count", &n.to_string(), "--seed", &seed.to_string()])
            .args(["--server", &servers.join(",")])
            .arg("--ca-file")
            .arg(cluster.dir.path().join("ca.pem"))
            .arg("--report")
            .arg(&report)
            .env("KAIROS_FLEET_TOKEN", secret)
            .stdin(Stdio::null())
            .stdout(out_file)
            .stderr(err_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the simulator: {e}"));
        sims.push(Simulator { child, report, log });
        seed += 1;
    }
    sims
}

fn pct(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" / ")
}

fn run(args: &Args, count: usize) {
    println!("\n== {count} simulated nodes, heartbeat every {} ms, 3 replicas ==", args.heartbeat_ms);
    let mut cluster = Cluster::init(3);
    let hb = args.heartbeat_ms.to_string();
    cluster.form(&["--node-heartbeat-ms", &hb]);
    let pids = replica_pids();
    assert_eq!(pids.len(), 3, "replica processes: {pids:?}");
    let idle = measure(&pids, Duration::from_secs(5));

    let started = Instant::now();
    let mut sims = start_simulators(&cluster, count, args.per_simulator);
    let connected = wait_for("every node online", Duration::from_secs(1800), || {
        for sim in &mut sims {
            if let Ok(Some(status)) = sim.child.try_wait() {
                let log = std::fs::read_to_string(&sim.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                panic!("a simulator exited early ({status}): {tail:?}");
            }
        }
        (online_nodes(&cluster) >= count as u64).then(|| started.elapsed())
    });
    println!(
        "all {count} nodes enrolled and online (as the fleet report sees them) after {:.1} s",
        connected.as_secs_f64()
    );

    // Steady state: everyone heartbeating, nothing changing.
    std::thread::sleep(Duration::from_secs(3));
    let c0 = commit_index(&cluster).unwrap_or(0);
    let steady = measure(&pids, Duration::from_secs(args.steady_secs));
    let c1 = commit_index(&cluster).unwrap_or(0);

    // Every simulator sends its storm at once (SIGUSR1); follow the commit
    // index until the log is quiet again.
    let mut series: Vec<(u64, u64)> = vec![(now_ms(), c1)];
    for sim in &sims {
        let pid = nix::unistd::Pid::from_raw(sim.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1);
    }
    let until = Instant::now() + Duration::from_secs(120);
    let mut quiet_since: Option<Instant> = None;
    let mut last = c1;
    while Instant::now() < until {
        let c = commit_index(&cluster).unwrap_or(last);
        series.push((now_ms(), c));
        if c == last && series.len() > 20 {
            let q = *quiet_since.get_or_insert_with(Instant::now);
            if q.elapsed() > Duration::from_secs(8) && c > c1 {
                break;
            }
        } else {
            quiet_since = None;
        }
        last = c;
        std::thread::sleep(Duration::from_millis(250));
    }
    let loaded = measure(&pids, Duration::from_secs(2));
    let reports: Vec<Value> = sims.into_iter().map(Simulator::report).collect();

    let sum = |key: &str| reports.iter().map(|r| r[key].as_u64().unwrap_or(0)).sum::<u64>();
    let max = |key: &str| reports.iter().map(|r| r[key].as_f64().unwrap_or(0.0)).fold(0.0, f64::max);
    let storm_sent = reports.iter().filter_map(|r| r["storm"]["sent_at_ms"].as_u64()).min().unwrap_or(0);
    let storm_acked_ms =
        reports.iter().map(|r| r["storm"]["all_acked_ms"].as_f64().unwrap_or(f64::NAN)).fold(0.0, f64::max);
    let storm_end = storm_sent + storm_acked_ms as u64;
    let at = |t: u64| series.iter().rev().find(|(ms, _)| *ms <= t).map_or(c1, |(_, c)| *c);
    let storm_entries = at(storm_end + 250).saturating_sub(at(storm_sent));
    let storm_updates: u64 = reports.iter().map(|r| r["storm"]["nodes"].as_u64().unwrap_or(0)).sum();

    println!("replica                      {:>12} {:>12} {:>12}", "1", "2", "3");
    println!("RSS idle (MiB)               {}", pct(&idle.iter().map(|r| r.1).collect::<Vec<_>>()));
    println!("RSS with nodes (MiB)         {}", pct(&steady.iter().map(|r| r.1).collect::<Vec<_>>()));
    println!(
        "RSS ratio with/idle          {}",
        steady.iter().zip(&idle).map(|(s, i)| format!("{:.1}x", s.1 / i.1.max(1.0))).collect::<Vec<_>>().join(" / ")
    );
    println!("CPU idle (% of a core)       {}", pct(&idle.iter().map(|r| r.2).collect::<Vec<_>>()));
    println!("CPU steady (% of a core)     {}", pct(&steady.iter().map(|r| r.2).collect::<Vec<_>>()));
    println!("RSS after the storm (MiB)    {}", pct(&loaded.iter().map(|r| r.1).collect::<Vec<_>>()));
    println!(
        "heartbeats: {} sent, {} acked; RTT p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (worst simulator)",
        sum("heartbeats_sent"),
        sum("heartbeats_acked"),
        max("rtt_p50_ms"),
        max("rtt_p99_ms"),
        max("rtt_max_ms")
    );
    println!(
        "connect: {} enrolled, {} connected; all connected after {:.1} s (slowest simulator), {:.1} s by the fleet report",
        sum("enrolled"),
        sum("connected"),
        max("time_to_all_connected_ms") / 1000.0,
        connected.as_secs_f64()
    );
    println!(
        "steady state: {} raft entries in {} s ({} nodes heartbeating)",
        c1.saturating_sub(c0),
        args.steady_secs,
        count
    );
    println!(
        "status storm: {storm_updates} updates at once, all acknowledged after {:.2} s; {storm_entries} raft entries \
         ({:.1} entries/s, {:.0} updates per entry); reconnects {}",
        storm_acked_ms / 1000.0,
        storm_entries as f64 / (storm_acked_ms / 1000.0).max(0.001),
        storm_updates as f64 / storm_entries.max(1) as f64,
        sum("reconnects")
    );
    drop(cluster);
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("nodes benchmark: run it with scripts/bench-nodes (skipped without --bench)");
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    for count in &args.nodes {
        run(&args, *count);
    }
    ExitCode::SUCCESS
}
