//! `simulate`: N virtual nodes in one process, each with its own key pair,
//! enrollment, mTLS connection and [`Session`] — the same session code as
//! `run` — with an in-memory status log and a simulated upgrader.
//!
//! Enrollment and connection are each limited to `concurrency` in flight,
//! so thousands of nodes start smoothly. A progress line goes to stderr
//! every [`PROGRESS_EVERY`]; the end (duration elapsed or shutdown) yields
//! a [`SimulationReport`].
//!
//! For rollout tests every node can start on one release, upgrades can be
//! made to fail through a fail file ([`failures`]), and what each node
//! heard and had acknowledged is appended to a history file ([`history`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kairos_fleet_proto::fleet::v1 as pb;
use semver::Version;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout};
use tonic::transport::Channel;

use crate::enroll::{enroll_over, EnrollError, EnrollParams, NodeKey};
use crate::session::{NodeHandle, Session, SessionMetrics, SessionSettings, SessionStats};
use crate::state::{rfc3339_of, SharedStatusLog};
use crate::tls::{enroll_endpoint, TlsTransport};
use history::HistoryWriter;

pub mod failures;
pub mod fleet;
pub mod history;
pub mod storm;
pub mod upgrade;

pub use failures::{FailFile, FailRule, FailRules};
pub use fleet::{check_start_release, machine_id, parse_start_release, virtual_identity, VirtualMachine};
pub use history::{History, HistoryEvent, NodeHistory};
pub use storm::{parse_storm_state, SimStatusLog, StormTracker, STORM_ROLLOUT};
pub use upgrade::{SimulatedUpgrader, UpgradeCounters, UpgradeStats};

/// How often the progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Enrollment attempts per node for errors other than a refusal.
const ENROLL_ATTEMPTS: u32 = 5;
/// File descriptors the process needs besides one per virtual node.
const FD_HEADROOM: u64 = 128;
/// How long sessions get to close their streams at the end.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the history writer gets to write what is queued at the end.
const HISTORY_GRACE: Duration = Duration::from_secs(30);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Server endpoints; each node connects to a random one.
    pub servers: Vec<String>,
    /// Enroll token secret (must allow `count` uses).
    pub token: String,
    /// Number of virtual nodes.
    pub count: usize,
    /// CA certificate(s), PEM, to trust for the servers.
    pub ca_pem: String,
    /// Seed of machine ids and endpoint choice.
    pub seed: u64,
    /// Stop after this long; None = until shutdown.
    pub duration: Option<Duration>,
    /// Status storm this long after all nodes are connected.
    pub storm_after: Option<Duration>,
    /// State of the storm update.
    pub storm_state: pb::NodeState,
    /// Time each simulated upgrade step takes; zero makes upgrades instant.
    pub upgrade_step: Duration,
    /// Enrollments and connection handshakes in flight at once.
    pub concurrency: usize,
    /// Print the progress line to stderr.
    pub progress: bool,
    /// Release every node starts on; None = spread over three releases.
    pub release: Option<Version>,
    /// Rules of which upgrades fail, read again at every upgrade's reboot.
    pub fail_file: Option<PathBuf>,
    /// Append the history (JSON lines) here.
    pub history: Option<PathBuf>,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// Invalid options; names the option.
    #[error("{option}: {rule}")]
    Usage {
        /// The option, e.g. `--count`.
        option: &'static str,
        /// The rule it broke.
        rule: String,
    },
    /// The server refused enrollment (bad or used-up token).
    #[error("{0}")]
    Refused(EnrollError),
}

/// The storm part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// State every node reported.
    pub state: String,
    /// When the storm was sent (RFC 3339).
    pub sent_at: String,
    /// When the storm was sent, Unix milliseconds.
    pub sent_at_ms: u64,
    /// Nodes that reported.
    pub nodes: u64,
    /// Storm updates acknowledged by the end.
    pub acked: u64,
    /// Time from the storm until every storm update was acknowledged.
    pub all_acked_ms: Option<u64>,
}

/// The JSON summary of a simulation.
#[derive(Debug, Clone, Serialize)]
pub struct SimulationReport {
    /// Virtual nodes asked for.
    pub count: usize,
    /// Nodes enrolled.
    pub enrolled: u64,
    /// Nodes refused or failing enrollment.
    pub enroll_failures: u64,
    /// From start until every node had a stream up.
    pub time_to_all_connected_ms: Option<u64>,
    /// How long the simulation ran.
    pub duration_ms: u64,
    /// Session counters summed over all nodes; `connected` is the number
    /// of nodes with a stream up at the end.
    #[serde(flatten)]
    pub sessions: SessionStats,
    /// The status storm, when one was sent.
    pub storm: Option<StormReport>,
    /// How the virtual nodes' upgrades went.
    pub upgrades: UpgradeStats,
    /// History lines written, when a history was asked for.
    pub history_lines: Option<u64>,
}

/// Checks `/proc/self/limits`: each virtual node holds one connection, so
/// the open-file limit must exceed the count (raising it would need libc).
pub fn check_open_files(count: usize) -> Result<(), SimulateError> {
    let Ok(text) = std::fs::read_to_string("/proc/self/limits") else { return Ok(()) };
    let Some(line) = text.lines().find(|l| l.starts_with("Max open files")) else { return Ok(()) };
    let mut fields = line["Max open files".len()..].split_whitespace();
    let (Some(soft), hard) = (fields.next(), fields.next().unwrap_or("unknown")) else { return Ok(()) };
    let Ok(soft) = soft.parse::<u64>() else { return Ok(()) }; // "unlimited"
    let needed = u64::try_from(count).unwrap_or(u64::MAX).saturating_add(FD_HEADROOM);
    if needed > soft {
        return Err(SimulateError::Usage {
            option: "--count",
            rule: format!(
                "{count} virtual nodes need about {needed} open files (one connection each) but the open-file \
                 limit is {soft} (hard limit {hard}); raise it in this shell with `ulimit -n {needed}` or lower --count"
            ),
        });
    }
    Ok(())
}

/// One virtual node's enrollment: returns its session parts, or why not.
async fn enroll_node(
    machine: &VirtualMachine,
    channel: Channel,
    server: &str,
    token: &str,
) -> Result<crate::enroll::Enrolled, EnrollError> {
    let params = EnrollParams {
        token: token.to_string(),
        machine_id: machine.machine_id.clone(),
        identity: machine.pb_identity(),
        hostname: machine.hostname.clone(),
    };
    let mut attempt = 0;
    loop {
        let key = NodeKey::generate(&machine.machine_id)?;
        match enroll_over(channel.clone(), server, key, &params).await {
            Ok(enrolled) => return Ok(enrolled),
            Err(e) if e.is_refusal() || attempt + 1 >= ENROLL_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::debug!(node = %machine.machine_id, error = %e, "enrollment failed; retrying");
                attempt += 1;
                sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
            }
        }
    }
}

/// Progress counters of the enrollment phase.
#[derive(Default)]
struct EnrollCounts {
    enrolled: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

/// Counters shared by the driver, the virtual nodes and [`Simulation::live`].
#[derive(Default)]
struct Shared {
    metrics: Arc<SessionMetrics>,
    tracker: Arc<StormTracker>,
    upgrades: Arc<UpgradeCounters>,
    counts: EnrollCounts,
}

/// Counters of a running simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveCounts {
    /// Nodes enrolled so far.
    pub enrolled: u64,
    /// Nodes whose enrollment failed.
    pub enroll_failures: u64,
    /// Storm updates acknowledged so far.
    pub storm_acked: u64,
    /// Upgrade counters.
    pub upgrades: UpgradeStats,
    /// Session counters.
    pub sessions: SessionStats,
}

/// A running simulation.
pub struct Simulation {
    shared: Arc<Shared>,
    driver: tokio::task::JoinHandle<Result<SimulationReport, SimulateError>>,
}

impl Simulation {
    /// Checks `options` and starts the virtual nodes; the simulation ends
    /// when `duration` elapses, `shutdown` turns true, or the server refuses
    /// enrollment.
    pub fn start(options: SimulateOptions, shutdown: watch::Receiver<bool>) -> Result<Simulation, SimulateError> {
        let usage = |option, rule: String| SimulateError::Usage { option, rule };
        if options.count == 0 {
            return Err(usage("--count", "must be at least 1".into()));
        }
        if options.servers.is_empty() {
            return Err(usage("--server", "name at least one endpoint".into()));
        }
        if let Some(release) = &options.release {
            check_start_release(release).map_err(|e| usage("--release", e.to_string()))?;
        }
        check_open_files(options.count)?;
        kairos_fleet_domain::install_crypto_provider();
        // Enrollment needs no client certificate: one shared channel per server.
        let enroll_channels = options
            .servers
            .iter()
            .map(|url| enroll_endpoint(url, &options.ca_pem).map(|e| e.connect_lazy()))
            .collect::<Result<Vec<Channel>, _>>()
            .map_err(|e| usage("--server", e.to_string()))?;
        let history = match &options.history {
            Some(path) => Some(
                History::open(path)
                    .map_err(|e| usage("--history", format!("cannot append to {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let failures = options.fail_file.as_ref().map(|path| {
            let failures = Arc::new(FailFile::new(path));
            // Read once now, so a line that is not a rule shows at the start.
            let rules = failures.rules();
            tracing::info!(file = %path.display(), rules = rules.rules.len(), "fail file");
            failures
        });
        let shared = Arc::new(Shared::default());
        let extras = Extras { history, failures };
        let driver = tokio::spawn(drive(options, enroll_channels, extras, Arc::clone(&shared), shutdown));
        Ok(Simulation { shared, driver })
    }

    /// The counters now.
    pub fn live(&self) -> LiveCounts {
        use std::sync::atomic::Ordering::Relaxed;
        LiveCounts {
            enrolled: self.shared.counts.enrolled.load(Relaxed),
            enroll_failures: self.shared.counts.failed.load(Relaxed),
            storm_acked: self.shared.tracker.acked(),
            upgrades: self.shared.upgrades.stats(),
            sessions: self.shared.metrics.stats(),
        }
    }

    /// Waits for the end and returns the report.
    pub async fn finish(self) -> Result<SimulationReport, SimulateError> {
        self.driver
            .await
            .map_err(|e| SimulateError::Usage { option: "simulate", rule: format!("the driver failed: {e}") })?
    }
}

/// Runs a simulation until `duration` elapses or `shutdown` turns true.
pub async fn run_simulation(
    options: SimulateOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<SimulationReport, SimulateError> {
    Simulation::start(options, shutdown)?.finish().await
}

/// What the rollout-test options opened at the start.
struct Extras {
    history: Option<(History, HistoryWriter)>,
    failures: Option<Arc<FailFile>>,
}

/// Starts every virtual node, prints progress, sends the storm, and
/// stops the nodes at the end.
async fn drive(
    options: SimulateOptions,
    enroll_channels: Vec<Channel>,
    extras: Extras,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SimulationReport, SimulateError> {
    use std::sync::atomic::Ordering::Relaxed;
    let started = Instant::now();
    let enroll_gate = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let connect_gate = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let (stop, stopped) = watch::channel(false);
    let (handles_tx, mut handles_rx) = tokio::sync::mpsc::unbounded_channel::<NodeHandle>();
    let (refused_tx, mut refused_rx) = tokio::sync::mpsc::channel::<EnrollError>(1);
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut tasks = JoinSet::new();
    let (history, history_writer) = extras.history.unzip();
    for index in 0..options.count {
        let server = rng.usize(..options.servers.len());
        let uptime = Duration::from_secs(rng.u64(60..86_400));
        let machine = Arc::new(VirtualMachine::new(options.seed, index, uptime, options.release.as_ref()));
        let (options, channel, shared) = (options.clone(), enroll_channels[server].clone(), Arc::clone(&shared));
        let (history, failures) = (history.clone(), extras.failures.clone());
        let (enroll_gate, connect_gate) = (Arc::clone(&enroll_gate), Arc::clone(&connect_gate));
        let (stopped, handles_tx, refused_tx) = (stopped.clone(), handles_tx.clone(), refused_tx.clone());
        tasks.spawn(async move {
            let url = &options.servers[server];
            let enrolled = {
                let Ok(_permit) = enroll_gate.acquire().await else { return };
                enroll_node(&machine, channel, url, &options.token).await
            };
            let enrolled = match enrolled {
                Ok(enrolled) => enrolled,
                Err(e) => {
                    shared.counts.failed.fetch_add(1, Relaxed);
                    tracing::warn!(node = %machine.machine_id, error = %e, "enrollment failed");
                    if e.is_refusal() {
                        let _ = refused_tx.try_send(e);
                    }
                    return;
                }
            };
            shared.counts.enrolled.fetch_add(1, Relaxed);
            let node_id = enrolled.enrollment.node_id.clone();
            let mut settings = SessionSettings::new(node_id.clone(), options.servers.clone());
            settings.first_endpoint = server;
            let mut upgrader = SimulatedUpgrader::new(Arc::clone(&machine), options.upgrade_step)
                .with_counters(Arc::clone(&shared.upgrades));
            if let Some(failures) = failures {
                upgrader = upgrader.with_failures(failures);
            }
            let node_history = history.map(|h| h.node(&node_id));
            let mut log = SimStatusLog::new(Arc::clone(&shared.tracker));
            if let Some(h) = &node_history {
                log = log.with_history(h.clone());
            }
            let mut session = Session::new(
                TlsTransport::new(enrolled.credentials),
                settings,
                machine,
                SharedStatusLog::new(log),
                Arc::new(upgrader),
            )
            .with_metrics(Arc::clone(&shared.metrics))
            .with_connect_gate(connect_gate);
            if let Some(h) = node_history {
                session = session.with_observer(Arc::new(h));
            }
            let _ = handles_tx.send(session.handle());
            session.run(stopped).await;
        });
    }
    drop((handles_tx, refused_tx, history));

    let count = u64::try_from(options.count).unwrap_or(u64::MAX);
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut connected = shared.metrics.watch_connected();
    let mut storm_acked = shared.tracker.watch_acked();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut all_connected: Option<Duration> = None;
    let mut storm_at: Option<tokio::time::Instant> = None;
    let mut storm: Option<(Instant, StormReport)> = None;
    let mut handles: Vec<NodeHandle> = Vec::with_capacity(options.count);
    let mut refused = None;
    // SIGUSR1 sends the storm now (once every node is connected): how a
    // benchmark fires the storms of several simulators at one moment.
    let mut storm_signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let mut storm_requested = false;
    loop {
        let storm_awaiting_acks = storm.as_ref().filter(|(_, s)| s.all_acked_ms.is_none()).map(|(_, s)| s.nodes);
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => break,
            Some(e) = refused_rx.recv() => {
                refused = Some(e);
                break;
            }
            Some(handle) = handles_rx.recv() => handles.push(handle),
            _ = ticker.tick() => if options.progress {
                let storm = storm.as_ref().map(|(_, s)| (shared.tracker.acked(), s.nodes));
                let upgrades = shared.upgrades.stats();
                let stats = shared.metrics.stats();
                eprintln!("{}", progress_line(started.elapsed(), count, &shared.counts, &stats, storm, &upgrades));
            },
            _ = connected.wait_for(|c| *c >= count), if all_connected.is_none() => {
                all_connected = Some(started.elapsed());
                storm_at = options.storm_after.map(|d| tokio::time::Instant::now() + d);
                if storm_requested {
                    storm_at = Some(tokio::time::Instant::now());
                }
            }
            Some(()) = async { storm_signal.as_mut()?.recv().await }, if storm_signal.is_some() && storm.is_none() => {
                storm_requested = true;
                if all_connected.is_some() {
                    storm_at = Some(tokio::time::Instant::now());
                }
            }
            _ = sleep_until(storm_at.unwrap_or_else(far_future)), if storm_at.is_some() && storm.is_none() => {
                // Nodes connect only after their handle was queued: all are here.
                while let Ok(handle) = handles_rx.try_recv() {
                    handles.push(handle);
                }
                storm = Some(send_storm(&handles, options.storm_state));
            }
            _ = storm_acked.wait_for(|n| storm_awaiting_acks.is_some_and(|nodes| *n >= nodes)),
                if storm_awaiting_acks.is_some() => {
                if let Some((sent, report)) = storm.as_mut() {
                    report.all_acked_ms = Some(millis(sent.elapsed()));
                }
            }
        }
    }
    let stats = shared.metrics.stats();
    let _ = stop.send(true);
    if timeout(STOP_GRACE, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tasks.shutdown().await;
    }
    // Node handles share the nodes' status logs, which hold their history:
    // with them gone, the writer ends once it has written what is queued.
    drop((handles, handles_rx));
    let history = match history_writer {
        Some(writer) => match writer.finish(HISTORY_GRACE).await {
            Some(summary) => {
                if summary.lost > 0 {
                    tracing::error!(lost = summary.lost, "history lines lost to write errors");
                }
                Some(summary.lines)
            }
            None => {
                tracing::error!("the history writer did not finish in time; the history may lack its last lines");
                None
            }
        },
        None => None,
    };
    if let Some(e) = refused {
        return Err(SimulateError::Refused(e));
    }
    let storm = storm.map(|(_, mut report)| {
        report.acked = shared.tracker.acked();
        report
    });
    Ok(SimulationReport {
        count: options.count,
        enrolled: shared.counts.enrolled.load(Relaxed),
        enroll_failures: shared.counts.failed.load(Relaxed),
        time_to_all_connected_ms: all_connected.map(millis),
        duration_ms: millis(started.elapsed()),
        sessions: stats,
        storm,
        upgrades: shared.upgrades.stats(),
        history_lines: history,
    })
}

/// Every node records one storm update now.
fn send_storm(handles: &[NodeHandle], state: pb::NodeState) -> (Instant, StormReport) {
    let sent_at = SystemTime::now();
    let sent = Instant::now();
    let observed_at = prost_types::Timestamp::from(sent_at);
    let mut nodes = 0;
    for handle in handles {
        let mut update = pb::StatusUpdate {
            rollout_id: STORM_ROLLOUT.to_string(),
            observed_at: Some(observed_at),
            message: "simulated status storm".to_string(),
            ..Default::default()
        };
        update.set_state(state);
        match handle.report(update) {
            Ok(_) => nodes += 1,
            Err(e) => tracing::warn!(error = %e, "cannot record the storm update"),
        }
    }
    let report = StormReport {
        state: history::state_name(state),
        sent_at: rfc3339_of(&observed_at).unwrap_or_default(),
        sent_at_ms: sent_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        nodes,
        acked: 0,
        all_acked_ms: None,
    };
    (sent, report)
}

fn progress_line(
    elapsed: Duration,
    count: u64,
    counts: &EnrollCounts,
    stats: &SessionStats,
    storm: Option<(u64, u64)>,
    upgrades: &UpgradeStats,
) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut line = format!(
        "[{:>5}s] enrolled {}/{count} (failed {}) connected {} reconnects {} heartbeats {}/{} rtt p50 {:.1} ms p99 {:.1} ms",
        elapsed.as_secs(),
        counts.enrolled.load(Relaxed),
        counts.failed.load(Relaxed),
        stats.connected,
        stats.reconnects,
        stats.heartbeats_acked,
        stats.heartbeats_sent,
        stats.rtt_p50_ms,
        stats.rtt_p99_ms,
    );
    if let Some((acked, nodes)) = storm {
        line.push_str(&format!(" storm acked {acked}/{nodes}"));
    }
    if upgrades.started > 0 {
        line.push_str(&format!(
            " upgrades {} started {} healthy {} failed {} cancelled",
            upgrades.started, upgrades.healthy, upgrades.failed, upgrades.cancelled
        ));
    }
    line
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_file_limit_check_names_ulimit() {
        // Far beyond any real limit.
        match check_open_files(usize::MAX / 2) {
            Err(SimulateError::Usage { option, rule }) => {
                assert_eq!(option, "--count");
                assert!(rule.contains("ulimit -n"), "{rule}");
            }
            // An unlimited open-file limit is fine too.
            Ok(()) => {}
            Err(other) => panic!("{other}"),
        }
        assert!(check_open_files(1).is_ok());
    }
}
