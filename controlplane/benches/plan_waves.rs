//! Wave planning at fleet scale: time and peak memory of `plan_waves` for
//! 10k, 100k and 1M nodes with `1,10%,50%,100%`.
//!
//! Peak memory (VmHWM) is per process, so the bench re-runs itself once per
//! fleet size with `PLAN_WAVES_BENCH_NODES` set and measures in that child:
//! generate the fleet, read VmHWM, plan, read VmHWM again. Arguments are
//! ignored, so the `--bench` flag cargo passes is harmless.
//!
//! Run: `cargo bench -p kairos-controlplane --bench plan_waves`.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use kairos_controlplane::fleet::matrix::SEED_FLAVORS;
use kairos_controlplane::fleet::model::{K8sDistro, SoftwareVersion};
use kairos_controlplane::fleet::planner::{order_key, plan_waves};
use kairos_controlplane::fleet::strategy::{WaveSpec, WAVE_LABEL, WAVE_LABEL_CANARY, WAVE_LABEL_LAST};
use kairos_controlplane::fleet::{ImageFamily, K3sMembership, K3sRole, NodeFacts, NodeId, Variant};
use semver::Version;

const CHILD_ENV: &str = "PLAN_WAVES_BENCH_NODES";
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
const SPEC: &str = "1,10%,50%,100%";
/// Nodes per k3s cluster: 3 servers, the rest agents.
const CLUSTER_SIZE: usize = 20;
const SERVERS_PER_CLUSTER: usize = 3;

fn main() -> Result<(), Box<dyn Error>> {
    match std::env::var(CHILD_ENV) {
        Ok(nodes) => child(nodes.trim().parse()?),
        Err(_) => parent(),
    }
}

/// One measurement, as the child prints it on a single line.
struct Row {
    nodes: usize,
    runs: usize,
    median_ms: f64,
    baseline_ms: f64,
    fleet_kib: u64,
    peak_kib: u64,
    waves: String,
}

fn parent() -> Result<(), Box<dyn Error>> {
    let exe = std::env::current_exe()?;
    println!("plan_waves with `{SPEC}`, {CLUSTER_SIZE}-node k3s clusters ({SERVERS_PER_CLUSTER} servers)");
    println!(
        "{:>9} | {:>4} | {:>13} | {:>15} | {:>7} | {:>9} | {:>9} | {:>14} | waves",
        "nodes", "runs", "plan ms (med)", "hash+sort ms", "ratio", "peak MiB", "fleet MiB", "peak-fleet MiB"
    );
    for nodes in SIZES {
        let out = Command::new(&exe).env(CHILD_ENV, nodes.to_string()).output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match (out.status.success(), parse_row(&stdout)) {
            (true, Some(r)) => println!(
                "{:>9} | {:>4} | {:>13.1} | {:>15.1} | {:>6.2}x | {:>9.1} | {:>9.1} | {:>14.1} | {}",
                r.nodes,
                r.runs,
                r.median_ms,
                r.baseline_ms,
                r.median_ms / r.baseline_ms,
                mib(r.peak_kib),
                mib(r.fleet_kib),
                mib(r.peak_kib.saturating_sub(r.fleet_kib)),
                r.waves
            ),
            _ => println!("{nodes:>9} | child failed: {} {}", out.status, String::from_utf8_lossy(&out.stderr)),
        }
    }
    Ok(())
}

fn parse_row(line: &str) -> Option<Row> {
    let mut f = line.split_whitespace();
    Some(Row {
        nodes: f.next()?.parse().ok()?,
        runs: f.next()?.parse().ok()?,
        median_ms: f.next()?.parse().ok()?,
        baseline_ms: f.next()?.parse().ok()?,
        fleet_kib: f.next()?.parse().ok()?,
        peak_kib: f.next()?.parse().ok()?,
        waves: f.next()?.to_string(),
    })
}

fn child(nodes: usize) -> Result<(), Box<dyn Error>> {
    let fleet = generate_fleet(nodes);
    let fleet_kib = vm_hwm_kib()?;
    let spec = WaveSpec::parse(SPEC)?;
    // Small fleets plan in milliseconds, so take the median of several runs.
    let runs = match nodes {
        ..=10_000 => 9,
        10_001..=100_000 => 5,
        _ => 3,
    };
    let mut times = Vec::with_capacity(runs);
    let mut waves = String::new();
    // Peak memory is read after the first run: later runs only add the
    // allocator's fragmentation from earlier ones.
    let mut peak_kib = 0;
    for run in 0..runs {
        let start = Instant::now();
        let plan = plan_waves(&format!("rollout-{run}"), black_box(&fleet), &spec);
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if run == 0 {
            peak_kib = vm_hwm_kib()?;
            let sizes: Vec<String> = plan.summary().wave_sizes.iter().map(usize::to_string).collect();
            waves = sizes.join(",");
        }
        black_box(plan);
    }
    // Baseline in the same process: the least any planner must do, one
    // order key per node and a sort, so the ratio shows the planner's own cost.
    let mut baseline = Vec::with_capacity(runs);
    for run in 0..runs {
        let start = Instant::now();
        let rollout = format!("rollout-{run}");
        let mut keys: Vec<(u64, usize)> =
            black_box(&fleet).iter().enumerate().map(|(i, n)| (order_key(&rollout, &n.id), i)).collect();
        keys.sort_unstable();
        baseline.push(start.elapsed().as_secs_f64() * 1e3);
        black_box(keys);
    }
    println!("{} {runs} {:.3} {:.3} {fleet_kib} {peak_kib} {waves}", fleet.len(), median(times), median(baseline));
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Peak resident set size of this process so far, in KiB.
fn vm_hwm_kib() -> Result<u64, Box<dyn Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).ok_or("no VmHWM in /proc/self/status")?;
    let kib = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim();
    Ok(kib.parse()?)
}

/// SplitMix64: a fixed, dependency-free generator so every run plans the same fleet.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A fleet like a real one: amd64 generic boxes dominate, some Raspberry
/// Pis, 70% standard images in 20-node k3s clusters of one family each, a
/// site label on a tenth, and a handful pinned to the canary or last wave.
fn generate_fleet(nodes: usize) -> Vec<NodeFacts> {
    // Weights per seed flavor, in SEED_FLAVORS order (sum 100).
    const WEIGHTS: [u64; 8] = [20, 10, 25, 10, 5, 10, 10, 10];
    let families: Vec<(ImageFamily, ImageFamily)> =
        SEED_FLAVORS.iter().map(|f| (f.family(Variant::Core), f.family(Variant::Standard))).collect();
    let k3s = SoftwareVersion { distro: K8sDistro::K3s, version: Version::new(1, 27, 6), build: "k3s1".into() };
    let mut in_family: HashMap<usize, usize> = HashMap::new();
    let mut rng = SplitMix(0x6b61_6972_6f73);
    let mut fleet = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let mut pick = rng.below(100);
        let mut flavor = 0;
        while pick >= WEIGHTS[flavor] {
            pick -= WEIGHTS[flavor];
            flavor += 1;
        }
        let standard = rng.below(10) < 7;
        let (core_family, standard_family) = &families[flavor];
        let mut labels = BTreeMap::new();
        match rng.below(1000) {
            0 => {
                labels.insert(WAVE_LABEL.to_string(), WAVE_LABEL_CANARY.to_string());
            }
            1 | 2 => {
                labels.insert(WAVE_LABEL.to_string(), WAVE_LABEL_LAST.to_string());
            }
            3..=99 => {
                labels.insert("site".to_string(), format!("site-{}", rng.below(50)));
            }
            _ => {}
        }
        let (family, software, membership) = if standard {
            let seq = in_family.entry(flavor).or_insert(0);
            let role = if *seq % CLUSTER_SIZE < SERVERS_PER_CLUSTER { K3sRole::Server } else { K3sRole::Agent };
            let cluster = format!("{}-{}", SEED_FLAVORS[flavor].id, *seq / CLUSTER_SIZE);
            *seq += 1;
            (standard_family.clone(), Some(k3s.clone()), Some(K3sMembership { cluster, role }))
        } else {
            (core_family.clone(), None, None)
        };
        fleet.push(NodeFacts {
            id: NodeId::new(format!("{:016x}{:016x}", rng.next(), rng.next())),
            family,
            release: Version::new(2, 4, 2),
            software,
            labels,
            k3s: membership,
        });
    }
    fleet
}
