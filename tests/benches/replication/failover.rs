//! Leader failover as one client sees it: while the client writes
//! continuously, SIGKILL the leader and measure the time from the kill to
//! the acknowledgement of the first write sent after it. The killed member
//! is restarted and has caught up before the next round.
//!
//! The client is what any careful client of either system does: it writes
//! to the leader; when a write fails or takes longer than the attempt
//! timeout, it pauses 10 ms and sends the next write to the next member.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use crate::{wait_leader, Put, System};

/// Pause after a failed attempt before the next member is tried.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Acknowledged writes before the kill, so the client is in its stride.
const WRITES_BEFORE_KILL: usize = 10;
/// A round whose first write after the kill is not acknowledged by then fails.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// One kill.
#[derive(Debug, Clone)]
pub struct Round {
    /// Member killed (the leader).
    pub killed: u64,
    /// Kill → a survivor that says it leads, seen by polling Status.
    pub elected: Option<Duration>,
    /// Kill → first acknowledged write sent after it; None if none within [`ACK_TIMEOUT`].
    pub to_ack: Option<Duration>,
    /// Restart → the restarted member applied what the leader had committed.
    pub catch_up: Duration,
    /// Failed or timed-out attempts of the client during the round.
    pub failed_attempts: u64,
}

/// Every round of one system.
#[derive(Debug, Clone)]
pub struct FailoverResult {
    /// `kairos` or `etcd`.
    pub system: &'static str,
    /// Rounds in order.
    pub rounds: Vec<Round>,
}

impl FailoverResult {
    /// Kill → ack times of the rounds that got an ack, sorted.
    pub fn to_ack_sorted(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self.rounds.iter().filter_map(|r| r.to_ack).collect();
        all.sort_unstable();
        all
    }

    /// Rounds without an acknowledged write within the timeout.
    pub fn lost_rounds(&self) -> usize {
        self.rounds.iter().filter(|r| r.to_ack.is_none()).count()
    }

    /// Kill → new leader times of the rounds that saw one, sorted.
    pub fn elected_sorted(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self.rounds.iter().filter_map(|r| r.elected).collect();
        all.sort_unstable();
        all
    }

    /// Restart → caught-up times, sorted.
    pub fn catch_up_sorted(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self.rounds.iter().map(|r| r.catch_up).collect();
        all.sort_unstable();
        all
    }
}

/// Writes acknowledged by the background client: (sent, acknowledged).
type Acks = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// Runs `rounds` leader kills on `system`.
pub async fn run<S: System>(
    system: &mut S,
    rounds: usize,
    attempt_timeout: Duration,
    seq: &Arc<AtomicU64>,
) -> anyhow::Result<FailoverResult> {
    let mut result = FailoverResult { system: system.name(), rounds: Vec::new() };
    for round in 0..rounds {
        let leader = wait_leader(&*system).await?;
        let members = system.members();
        let mut writers = Vec::with_capacity(members.len());
        for &m in &members {
            writers.push(system.connect(m, attempt_timeout).await?);
        }
        let first = members.iter().position(|&m| m == leader).unwrap_or(0);
        let acks: Acks = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let client = tokio::spawn(write_continuously(
            writers,
            first,
            attempt_timeout,
            Arc::clone(seq),
            Arc::clone(&acks),
            Arc::clone(&stop),
            Arc::clone(&failed),
        ));

        let warm = wait_until(Duration::from_secs(10), || acked(&acks) >= WRITES_BEFORE_KILL).await;
        if !warm {
            stop.store(true, Ordering::Relaxed);
            let _ = client.await;
            anyhow::bail!("{}: round {round}: the client got no write through before the kill", system.name());
        }
        // Kill at an arbitrary point of the write stream, not right after an ack.
        tokio::time::sleep(jitter(Duration::from_millis(100))).await;
        let killed_at = Instant::now();
        system.kill(leader);
        let first_ack = |acks: &Acks| {
            acks.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(sent, _)| *sent >= killed_at).map(|a| a.1)
        };
        // Meanwhile, ask the survivors every 10 ms who leads, to tell the
        // election apart from the client's way to the new leader.
        let mut elected = None;
        while killed_at.elapsed() < ACK_TIMEOUT {
            if elected.is_none() && system.leader().await.is_some() {
                elected = Some(killed_at.elapsed());
            }
            if elected.is_some() && first_ack(&acks).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let to_ack = first_ack(&acks).map(|at| at - killed_at);
        stop.store(true, Ordering::Relaxed);
        let _ = client.await;

        let restarted_at = Instant::now();
        system.restart(leader)?;
        system
            .wait_caught_up(leader, CATCH_UP_TIMEOUT)
            .await
            .with_context(|| format!("{}: round {round}: restarted member {leader} catching up", system.name()))?;
        let r = Round {
            killed: leader,
            elected,
            to_ack,
            catch_up: restarted_at.elapsed(),
            failed_attempts: failed.load(Ordering::Relaxed),
        };
        eprintln!(
            "{} failover {:>2}: killed {} | new leader seen after {} | first write after the kill acked after {} | {} failed attempts | caught up in {:.0} ms",
            system.name(),
            round + 1,
            r.killed,
            r.elected.map_or("never".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
            r.to_ack.map_or("never".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
            r.failed_attempts,
            r.catch_up.as_secs_f64() * 1e3
        );
        result.rounds.push(r);
    }
    Ok(result)
}

/// The client: one write at a time, to member `current` until an attempt
/// fails, then to the next member.
async fn write_continuously<W: Put>(
    writers: Vec<W>,
    mut current: usize,
    attempt_timeout: Duration,
    seq: Arc<AtomicU64>,
    acks: Acks,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        match tokio::time::timeout(attempt_timeout, writers[current].put(n)).await {
            Ok(Ok(())) => acks.lock().unwrap_or_else(|p| p.into_inner()).push((sent, Instant::now())),
            Ok(Err(_)) | Err(_) => {
                failed.fetch_add(1, Ordering::Relaxed);
                current = (current + 1) % writers.len();
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

fn acked(acks: &Acks) -> usize {
    acks.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// Polls `done` every 2 ms for up to `timeout`; whether it became true.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    done()
}

/// A pseudo-random duration below `max` (from the clock's nanoseconds:
/// no need for a random number generator here).
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    Duration::from_nanos(u64::from(nanos) % max.as_nanos().max(1) as u64)
}
