//! Pulling an upgrade image: the node client against `skopeo copy` of the
//! same image from the same local registry, in one run.
//!
//! A Debian `docker-registry` on loopback holds one image of several
//! random (incompressible) layers. Alternating, `kairos-node-client pull`
//! (resolve, download, verify every blob, write the OCI archive the
//! executor gets) and `skopeo copy docker://… oci-archive:…` (the same work
//! with the containers/image library) pull it into fresh folders. It prints
//! each run's time and throughput and the ratio of the medians, the node
//! client's peak RSS while pulling, its RSS idle (`run` connected to a
//! replica, nothing to do), and the release binary's size.
//!
//! A benchmark, never part of the test suite: `scripts/bench-pull` installs
//! skopeo, builds the release binaries and runs it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use kairos_fleet_testkit::LocalRegistry;
use kairos_fleet_tests::sim::{ca_file, enroll_token, node_root, server, spawn_logged};
use kairos_fleet_tests::{binary, wait_for, Cluster};

/// Pull throughput of the node client against skopeo.
#[derive(Parser, Debug)]
struct Args {
    /// Layers of the image.
    #[arg(long, env = "BENCH_LAYERS", default_value_t = 4)]
    layers: usize,
    /// Size of each layer in MiB.
    #[arg(long, env = "BENCH_LAYER_MIB", default_value_t = 48)]
    layer_mib: usize,
    /// Pulls of each tool.
    #[arg(long, env = "BENCH_RUNS", default_value_t = 3)]
    runs: usize,
    /// Ignored: cargo passes it to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Incompressible bytes from a xorshift generator.
fn random_layer(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `cmd` to completion; its wall time and peak RSS (KiB, sampled).
fn timed(mut cmd: Command) -> (Duration, u64) {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let pid = child.id();
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kib(pid, "VmHWM:")).max(rss_kib(pid, "VmRSS:"));
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            assert!(
                status.success(),
                "{cmd:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return (started.elapsed(), peak);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn idle_rss_kib() -> u64 {
    let mut cluster = Cluster::init(1);
    cluster.form(&[]);
    let dir = cluster.dir.path().join("node");
    std::fs::create_dir_all(&dir).expect("node dir");
    let machine_id = "2f2e2d2c2b2a29282726252423222120";
    let root = node_root(&dir, machine_id);
    let state = dir.join("state");
    let token = enroll_token(&cluster, 1);
    let enroll = Command::new(binary("kairos-node-client"))
        .args(["enroll", "--server", &server(&cluster, 1), "--token", &token])
        .arg("--root")
        .arg(&root)
        .arg("--state-dir")
        .arg(&state)
        .arg("--ca-file")
        .arg(ca_file(&cluster))
        .output()
        .expect("enroll");
    assert!(enroll.status.success(), "{}", String::from_utf8_lossy(&enroll.stderr));
    let mut cmd = Command::new(binary("kairos-node-client"));
    cmd.arg("run").arg("--root").arg(&root).arg("--state-dir").arg(&state).arg("--config").arg(dir.join("none.toml"));
    let mut child = spawn_logged(cmd, &dir.join("run.log"));
    wait_for("the node online", Duration::from_secs(30), || {
        let out = cluster.ctl(&["nodes", "get", machine_id, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["node"]["online"] == true).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let rss = rss_kib(child.id(), "VmRSS:");
    let _ = child.kill();
    let _ = child.wait();
    rss
}

fn dir_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry = runtime.block_on(LocalRegistry::start());
    let layers: Vec<Vec<u8>> =
        (0..args.layers).map(|i| random_layer(args.layer_mib << 20, 0x9e37_79b9_7f4a_7c15 ^ i as u64)).collect();
    let total: usize = layers.iter().map(Vec::len).sum();
    runtime.block_on(registry.push("kairos/bench", &["v1"], layers, "amd64"));
    let image = registry.reference("kairos/bench", "v1");
    println!(
        "== pulling {image}: {} layers of {} MiB ({:.0} MiB), {} runs each ==",
        args.layers,
        args.layer_mib,
        total as f64 / 1048576.0,
        args.runs
    );
    let work = tempfile::tempdir().expect("tempdir");
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut peak_rss = 0;
    for run in 0..args.runs {
        let state = work.path().join(format!("node-{run}"));
        let mut cmd = Command::new(binary("kairos-node-client"));
        cmd.args(["pull", &image, "--arch", "amd64", "--plain-http", registry.addr()])
            .arg("--config")
            .arg(work.path().join("none.toml"))
            .arg("--state-dir")
            .arg(&state);
        let (t, rss) = timed(cmd);
        peak_rss = peak_rss.max(rss);
        ours.push(t.as_secs_f64());
        println!(
            "node client  run {run}: {:.2} s, {:.0} MiB/s, peak RSS {:.1} MiB",
            t.as_secs_f64(),
            total as f64 / 1048576.0 / t.as_secs_f64(),
            rss as f64 / 1024.0
        );

        let out = work.path().join(format!("skopeo-{run}.tar"));
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{image}"),
            &format!("oci-archive:{}", out.display()),
        ]);
        let (t, rss) = timed(cmd);
        theirs.push(t.as_secs_f64());
        println!(
            "skopeo copy  run {run}: {:.2} s, {:.0} MiB/s, peak RSS {:.1} MiB, archive {:.0} MiB",
            t.as_secs_f64(),
            total as f64 / 1048576.0 / t.as_secs_f64(),
            rss as f64 / 1024.0,
            dir_size(&out) as f64 / 1048576.0
        );
    }
    let (m_ours, m_theirs) = (median(ours), median(theirs));
    println!(
        "median: node client {m_ours:.2} s ({:.0} MiB/s), skopeo {m_theirs:.2} s ({:.0} MiB/s); node client time / skopeo time = {:.2}",
        total as f64 / 1048576.0 / m_ours,
        total as f64 / 1048576.0 / m_theirs,
        m_ours / m_theirs
    );
    println!("node client peak RSS while pulling: {:.1} MiB", peak_rss as f64 / 1024.0);
    println!("node client RSS idle (run, connected, nothing to do): {:.1} MiB", idle_rss_kib() as f64 / 1024.0);
    let size = dir_size(&binary("kairos-node-client"));
    println!("release binary kairos-node-client: {:.1} MiB", size as f64 / 1048576.0);
}
