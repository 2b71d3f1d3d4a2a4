//! Closed-loop load: N clients, each its own tokio task issuing one write at
//! a time, for a warm-up and then a measured window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::{cpu, Put};

/// Deadline of one write during the throughput levels: far above any
/// healthy latency, only there so that a stuck call cannot hang the run.
pub const LOAD_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed write, so that a failing system is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What one concurrency level measured.
#[derive(Debug, Clone)]
pub struct LevelResult {
    /// `kairos` or `etcd`.
    pub system: &'static str,
    /// Concurrent clients.
    pub clients: usize,
    /// HTTP/2 connections they shared.
    pub channels: usize,
    /// Length of the measured window in seconds.
    pub seconds: f64,
    /// Latency of every write acknowledged inside the window, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Writes that failed inside the window.
    pub errors: u64,
    /// The first failure's message, if any.
    pub first_error: Option<String>,
    /// CPU seconds used inside the window (members, bench, whole machine).
    pub cpu: cpu::Sample,
}

impl LevelResult {
    /// Acknowledged writes per second in the window.
    pub fn writes_per_sec(&self) -> f64 {
        self.latencies_us.len() as f64 / self.seconds
    }

    /// Member CPU milliseconds per acknowledged write (all members together).
    pub fn cpu_ms_per_write(&self) -> f64 {
        self.cpu.members * 1000.0 / self.latencies_us.len() as f64
    }

    /// Cores, on average over the window, that other work on the machine used.
    pub fn other_cores(&self) -> f64 {
        self.cpu.other() / self.seconds
    }

    /// Cores, on average over the window, that the load generator used.
    pub fn bench_cores(&self) -> f64 {
        self.cpu.bench / self.seconds
    }

    /// Latency quantile `q` (0..=1) in milliseconds (nearest rank).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies_us.len() as f64).ceil() as usize).clamp(1, self.latencies_us.len());
        self.latencies_us[rank - 1] as f64 / 1000.0
    }
}

/// Runs `clients` clients over `writers` (client k uses connection k mod
/// len) for `warmup`, then measures for `duration`: a write counts when it is
/// acknowledged inside the window, with its full latency. `sample_cpu` is
/// called when the window opens and when it closes.
pub async fn run_level<W: Put>(
    system: &'static str,
    writers: &[W],
    clients: usize,
    seq: Arc<AtomicU64>,
    warmup: Duration,
    duration: Duration,
    sample_cpu: impl Fn() -> cpu::Sample,
) -> LevelResult {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::with_capacity(clients);
    for k in 0..clients {
        let writer = writers[k % writers.len()].clone();
        let seq = Arc::clone(&seq);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < end {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let outcome = writer.put(n).await;
                let done = Instant::now();
                let inside = done >= start && done < end;
                match outcome {
                    Ok(()) if inside => latencies.push((done - sent).as_micros() as u64),
                    Ok(()) => {}
                    Err(e) => {
                        if inside {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    tokio::time::sleep_until(start).await;
    let cpu_at_start = sample_cpu();
    tokio::time::sleep_until(end).await;
    let cpu = sample_cpu().since(&cpu_at_start);
    let mut result = LevelResult {
        system,
        clients,
        channels: writers.len(),
        seconds: duration.as_secs_f64(),
        latencies_us: Vec::new(),
        errors: 0,
        first_error: None,
        cpu,
    };
    for task in tasks {
        match task.await {
            Ok((latencies, errors, first_error)) => {
                result.latencies_us.extend(latencies);
                result.errors += errors;
                if result.first_error.is_none() {
                    result.first_error = first_error;
                }
            }
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert(format!("client task failed: {e}"));
            }
        }
    }
    result.latencies_us.sort_unstable();
    result
}
