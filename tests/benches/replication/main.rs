//! Replicated writes and leader failover: a 3-replica Kairos control plane
//! against a 3-member etcd, both on loopback, in one run.
//!
//! 1. Both clusters start: Kairos with `init` + `serve` (default raft
//!    timings) + `kairosctl cluster add-replica`; etcd (`/usr/bin/etcd`,
//!    default timings, TLS on client and peer URLs like Kairos).
//! 2. For 1, 16 and 64 concurrent clients (one tokio task each, spread over
//!    several HTTP/2 connections), a warm-up and a fixed measured window of
//!    writes to the leader: AddRelease on Kairos, then right away KV.Put of
//!    the same key and the same JSON value on etcd. The members' CPU time
//!    and the CPU other work took are read over each window.
//! 3. Leader failover, Kairos then etcd: while one client writes, SIGKILL
//!    the leader; time from the kill to the next acknowledged write; the
//!    killed member restarted and caught up before the next round.
//! 4. A table of both with the Kairos/etcd ratio per level. No figure is
//!    asserted: this is a benchmark, not a test.
//!
//! Run it with `scripts/bench-replication` (installs etcd, builds the
//! release binaries, runs `cargo bench -p kairos-fleet-tests --bench
//! replication -- FLAGS`). Without the `--bench` flag that `cargo bench`
//! passes, the binary does nothing, so `cargo test --all-targets` never
//! starts a cluster. Every child process is killed and every temporary
//! folder removed when the run ends, fails, panics or is interrupted.

mod cpu;
mod etcd;
mod failover;
mod kairos;
mod load;
mod report;
mod workload;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

/// Replicated writes/s, latency and leader failover of Kairos against etcd.
#[derive(Parser, Debug)]
#[command(name = "bench-replication")]
struct Args {
    /// Measured seconds per concurrency level (after the warm-up).
    #[arg(long, env = "BENCH_DURATION_SECS", default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up seconds per concurrency level, not measured.
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 2)]
    warmup_secs: u64,
    /// Concurrency levels: clients writing at once, each its own task.
    #[arg(long, env = "BENCH_CLIENTS", value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Clients per HTTP/2 connection: a level of N clients opens
    /// ceil(N / this) channels (one channel serializes on its connection).
    #[arg(long, env = "BENCH_CLIENTS_PER_CHANNEL", default_value_t = 8)]
    clients_per_channel: usize,
    /// Leader SIGKILL rounds on Kairos (0 skips failover).
    #[arg(long, env = "BENCH_KILL_ROUNDS", default_value_t = 20)]
    kill_rounds: usize,
    /// Leader SIGKILL rounds on etcd (0 skips them).
    #[arg(long, env = "BENCH_ETCD_KILL_ROUNDS", default_value_t = 20)]
    etcd_kill_rounds: usize,
    /// During failover, how long one write may take before the client gives
    /// up on it and tries the next member.
    #[arg(long, env = "BENCH_ATTEMPT_TIMEOUT_MS", default_value_t = 500)]
    attempt_timeout_ms: u64,
    /// The etcd server binary.
    #[arg(long, env = "BENCH_ETCD_BIN", default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Measure Kairos only.
    #[arg(long)]
    skip_etcd: bool,
    /// Run etcd without TLS (Kairos always uses TLS, client and peer).
    #[arg(long)]
    etcd_plaintext: bool,
    /// Copy the members' logs into this folder before their temporary
    /// folders are removed (`kairos-<id>.log`, `etcd-<id>.log`).
    #[arg(long, env = "BENCH_LOGS_DIR")]
    logs_dir: Option<PathBuf>,
    /// Set by `cargo bench`; without it the binary exits at once.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_secs)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs(self.warmup_secs)
    }

    fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }

    fn channels_for(&self, clients: usize) -> usize {
        clients.div_ceil(self.clients_per_channel.max(1)).max(1)
    }
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs bench targets without `--bench`:
    // starting six servers there would turn a benchmark into a slow test.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("bench-replication: run it with `scripts/bench-replication` or `cargo bench --bench replication`");
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    kairos_controlplane::security::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-replication: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C the run future is dropped, and with it every cluster: their
    // Drop kills the children and removes the temporary folders.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&args) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-replication failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let etcd_version = if args.skip_etcd { None } else { Some(etcd::version(&args.etcd_bin)?) };
    report::print_method(args, cores, etcd_version.as_deref());
    // One sequence for the whole run: every write has its own key.
    let seq = Arc::new(AtomicU64::new(0));

    eprintln!("== starting 3 kairos replicas");
    let mut kairos = kairos::Kairos::start().await.context("starting the Kairos cluster")?;
    let mut etcd = None;
    if !args.skip_etcd {
        eprintln!("== starting 3 etcd members");
        etcd = Some(etcd::Etcd::start(&args.etcd_bin, !args.etcd_plaintext).await.context("starting etcd")?);
    }

    // Both clusters are up (the idle one only sends heartbeats) and each
    // level runs on Kairos, then right away on etcd: other work on the
    // machine drifts over minutes, and a pair measured side by side shares
    // most of it, which keeps the ratio meaningful.
    let levels = measure_levels(args, &kairos, etcd.as_ref(), &seq).await;
    let kairos_failover = match (&levels, args.kill_rounds) {
        (Ok(_), rounds) if rounds > 0 => Some(failover::run(&mut kairos, rounds, args.attempt_timeout(), &seq).await),
        _ => None,
    };
    // The logs are worth most when something failed.
    save_logs(args, &kairos)?;
    drop(kairos);
    let kairos_failover = kairos_failover.transpose()?;
    let etcd_failover = match (etcd.as_mut(), &levels, args.etcd_kill_rounds) {
        (Some(etcd), Ok(_), rounds) if rounds > 0 => {
            Some(failover::run(etcd, rounds, args.attempt_timeout(), &seq).await)
        }
        _ => None,
    };
    if let Some(etcd) = etcd.take() {
        save_logs(args, &etcd)?;
    }
    let (kairos_levels, etcd_levels) = levels?;
    let etcd_failover = etcd_failover.transpose()?;

    let sizes = workload::ValueSizes::sample(seq.load(std::sync::atomic::Ordering::Relaxed))?;
    report::print_results(&sizes, &kairos_levels, &etcd_levels, kairos_failover.as_ref(), etcd_failover.as_ref());
    Ok(())
}

/// Copies the member logs of `system` into `--logs-dir`, if given.
fn save_logs<S: System>(args: &Args, system: &S) -> anyhow::Result<()> {
    let Some(to) = &args.logs_dir else { return Ok(()) };
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for member in system.members() {
        let from = system.log_path(member);
        let copy = to.join(format!("{}-{member}.log", system.name()));
        std::fs::copy(&from, &copy).with_context(|| format!("copying {} to {}", from.display(), copy.display()))?;
    }
    Ok(())
}

/// Every concurrency level, on Kairos and then on etcd (if running).
async fn measure_levels(
    args: &Args,
    kairos: &kairos::Kairos,
    etcd: Option<&etcd::Etcd>,
    seq: &Arc<AtomicU64>,
) -> anyhow::Result<(Vec<load::LevelResult>, Vec<load::LevelResult>)> {
    let (mut kairos_levels, mut etcd_levels) = (Vec::new(), Vec::new());
    for &clients in &args.clients {
        kairos_levels.push(measure_level(args, kairos, clients, seq).await?);
        if let Some(etcd) = etcd {
            etcd_levels.push(measure_level(args, etcd, clients, seq).await?);
        }
    }
    Ok((kairos_levels, etcd_levels))
}

/// `clients` clients writing to the current leader of `system`.
async fn measure_level<S: System>(
    args: &Args,
    system: &S,
    clients: usize,
    seq: &Arc<AtomicU64>,
) -> anyhow::Result<load::LevelResult> {
    let leader = wait_leader(system).await?;
    let channels = args.channels_for(clients);
    let mut writers = Vec::with_capacity(channels);
    for _ in 0..channels {
        writers.push(system.connect(leader, load::LOAD_CALL_TIMEOUT).await?);
    }
    let sample_cpu = || cpu::Sample::take(&system.pids());
    let (warmup, duration) = (args.warmup(), args.duration());
    let result = load::run_level(system.name(), &writers, clients, Arc::clone(seq), warmup, duration, sample_cpu).await;
    eprintln!("{}", report::level_line(&result));
    Ok(result)
}

/// The leader, waiting up to 30 s for one to be known.
async fn wait_leader<S: System>(system: &S) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(leader) = system.leader().await {
            return Ok(leader);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{}: no leader within 30 s", system.name());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One write as a client sees it: a request that returns once the write is
/// committed by a quorum (or fails).
pub(crate) trait Put: Clone + Send + Sync + 'static {
    /// Writes the record of sequence number `seq`; `Err` carries the reason.
    fn put(&self, seq: u64) -> impl Future<Output = Result<(), String>> + Send;
}

/// A 3-member replicated system under test, whose members run as child
/// processes of the bench.
pub(crate) trait System {
    /// The client type of one connection.
    type Writer: Put;

    /// `kairos` or `etcd`.
    fn name(&self) -> &'static str;

    /// Member ids, 1-based.
    fn members(&self) -> Vec<u64>;

    /// Process ids of the members running now.
    fn pids(&self) -> Vec<u32>;

    /// The log file of `member` (stdout and stderr, across restarts).
    fn log_path(&self, member: u64) -> PathBuf;

    /// Opens a new HTTP/2 connection to `member`, each call deadline `timeout`.
    async fn connect(&self, member: u64, timeout: Duration) -> anyhow::Result<Self::Writer>;

    /// The current leader if a running member names one and that member agrees.
    async fn leader(&self) -> Option<u64>;

    /// SIGKILLs `member` and reaps it.
    fn kill(&mut self, member: u64);

    /// Starts `member` again on its data folder.
    fn restart(&mut self, member: u64) -> anyhow::Result<()>;

    /// Waits until `member` has applied every entry the leader has committed
    /// (as of this call).
    async fn wait_caught_up(&self, member: u64, timeout: Duration) -> anyhow::Result<()>;
}
