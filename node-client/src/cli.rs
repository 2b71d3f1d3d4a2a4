//! The command line of `kairos-node-client`: clap definitions (shared with
//! the tests that check the deploy files against them) and the commands.
//!
//! Exit codes: 0 ok, 1 other failure, 2 usage or configuration error,
//! 3 enrollment refused by the server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use semver::Version;
use tokio::sync::watch;

use crate::agent::{self, AgentUpgrader};
use crate::config::{check_servers, parse_duration, ClientConfig, LogFormat, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR};
use crate::enroll::{enroll, EnrollParams};
use crate::hello::{node_path, pb_identity, read_hostname, LocalHello};
use crate::local::read_local_facts;
use crate::session::{Session, SessionSettings};
use crate::simulate::{parse_start_release, parse_storm_state, run_simulation, SimulateError, SimulateOptions};
use crate::state::{SharedStatusLog, StateDir, STATUS_FILE};
use crate::tls::{endpoint_host, TlsTransport};
use crate::upgrader::ImageFetcher;

/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the server refused enrollment.
pub const EXIT_REFUSED: u8 = 3;
/// Exit code of any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// The Kairos Fleet node client.
#[derive(Debug, Parser)]
#[command(name = "kairos-node-client", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the identity this node would report to the control plane.
    Identity {
        /// Root filesystem to read (`/` on a device).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Enroll this node with a bootstrap token and store its credentials.
    Enroll(EnrollArgs),
    /// Keep a session with the control plane (the service's command).
    Run(RunArgs),
    /// Run many virtual nodes in this process against a control plane (load test).
    Simulate(SimulateArgs),
    /// Pull one image as an upgrade would (registry settings from the
    /// configuration) and print where the verified archive is.
    Pull(PullArgs),
}

/// `pull` options.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. `quay.io/kairos/opensuse:leap-15.6-core-amd64-generic-v3.5.1`.
    pub image: String,
    /// Digest the image must have (`sha256:...`); default: what the tag names.
    #[arg(long, default_value = "")]
    pub digest: String,
    /// Configuration file (its `[registry]` section); a missing file means defaults.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// State dir to pull into (`<dir>/images`); overrides `state_dir` of the configuration.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Platform to pick from an image index: `amd64` or `arm64`; default: this machine's.
    #[arg(long)]
    pub arch: Option<String>,
    /// Registries to reach over plain HTTP, in addition to the configuration's.
    #[arg(long = "plain-http", value_name = "HOST[:PORT]")]
    pub plain_http: Vec<String>,
}

/// `enroll` options.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Endpoint of any replica, e.g. `https://fleet-1.example:7443`.
    #[arg(long)]
    pub server: String,
    /// Enroll token secret (better passed in the environment than on the command line).
    #[arg(long, env = "KAIROS_FLEET_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Where to store key, certificates and enrollment.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Root filesystem to read the identity from.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// CA certificate to trust for the server (the control plane's ca.pem). Required:
    /// this build carries no system root store.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Enroll again although the state dir holds an enrollment (new key pair).
    #[arg(long)]
    pub force: bool,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file; a missing file means defaults.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Root filesystem to read the identity and boot facts from.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// State dir; overrides `state_dir` of the configuration.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// `simulate` options.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Server endpoints, comma-separated; each node connects to a random one.
    #[arg(long, required = true, value_delimiter = ',')]
    pub server: Vec<String>,
    /// Enroll token secret; it must allow --count uses.
    #[arg(long, env = "KAIROS_FLEET_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Number of virtual nodes.
    #[arg(long)]
    pub count: usize,
    /// CA certificate to trust for the servers (the control plane's ca.pem).
    #[arg(long)]
    pub ca_file: PathBuf,
    /// Seed of machine ids and server choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the JSON summary here instead of stdout.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Stop after this long (e.g. 10m); default: until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Send a status storm this long after all nodes are connected
    /// (SIGUSR1 sends it at once, as soon as all are connected).
    #[arg(long, value_parser = parse_duration)]
    pub storm_after: Option<Duration>,
    /// State every node reports in the storm.
    #[arg(long, default_value = "downloading")]
    pub storm_state: String,
    /// Time each simulated upgrade step takes; 0s makes upgrades instant
    /// (the reboot still closes and reopens the stream).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub upgrade_step: Duration,
    /// Enrollments and connection handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Kairos release every virtual node starts on, e.g. v1.5.0 (a v1.x
    /// release before v2.4.0); default: spread over v1.6.0, v1.5.1, v1.5.0.
    #[arg(long, value_parser = parse_release)]
    pub release: Option<Version>,
    /// File of rules making upgrades fail with a fallback boot, one a line:
    /// `*`, `FLAVOR` or `FLAVOR/core|standard`, optionally `@vX.Y.Z` (only
    /// upgrades to that release); `#` comments. Read again at every
    /// upgrade's reboot; a missing file fails nothing.
    #[arg(long)]
    pub fail_file: Option<PathBuf>,
    /// Append one JSON line per desired state, cancel and acknowledged
    /// status update (and stream up/down) of every node to this file.
    #[arg(long)]
    pub history: Option<PathBuf>,
}

/// Parses `--release` (clap names the flag in its error).
fn parse_release(value: &str) -> Result<Version, String> {
    parse_start_release(value).map_err(|e| e.to_string())
}

/// A command's failure: the exit code and what to tell the operator.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code.
    pub code: u8,
    /// The message.
    pub message: String,
}

fn usage(message: impl ToString) -> Failure {
    Failure { code: EXIT_USAGE, message: message.to_string() }
}

fn failure(message: impl ToString) -> Failure {
    Failure { code: EXIT_FAILURE, message: message.to_string() }
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Identity { root } => identity(&root),
        command => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(async move {
                kairos_fleet_domain::install_crypto_provider();
                match command {
                    Command::Enroll(args) => enroll_command(args).await,
                    Command::Run(args) => run_command(args).await,
                    Command::Simulate(args) => simulate_command(args).await,
                    Command::Pull(args) => pull_command(args).await,
                    Command::Identity { .. } => Ok(()),
                }
            }),
            Err(e) => Err(failure(format!("cannot start the async runtime: {e}"))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn identity(root: &Path) -> Result<(), Failure> {
    let f = read_local_facts(root).map_err(usage)?;
    let id = &f.identity;
    println!("machine_id       {}", f.machine_id);
    println!("identity_source  {}", f.identity_source.display());
    println!("family           {}", id.family());
    println!("release          v{}", id.release);
    if let Some(sw) = &id.software {
        println!("software         {sw}");
    }
    println!("boot             {}", f.boot.as_str());
    println!("upgrade_failure  {}", f.upgrade_failure_marker);
    Ok(())
}

fn read_ca_file(path: Option<&Path>) -> Result<String, Failure> {
    let path = path.ok_or_else(|| {
        usage(
            "--ca-file is required: this build has no system root store to verify the server with; \
             pass the control plane's ca.pem (from `kairos-controlplane init`)",
        )
    })?;
    let pem = std::fs::read_to_string(path).map_err(|e| usage(format!("--ca-file {}: {e}", path.display())))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(usage(format!("--ca-file {}: holds no PEM certificate", path.display())));
    }
    Ok(pem)
}

async fn enroll_command(args: EnrollArgs) -> Result<(), Failure> {
    init_logging(LogFormat::Human, "warn");
    let ca_pem = read_ca_file(args.ca_file.as_deref())?;
    endpoint_host(&args.server).map_err(|e| usage(format!("--server: {e}")))?;
    let state = StateDir::new(&args.state_dir);
    let previous = if state.is_enrolled() { Some(state.load_enrollment()) } else { None };
    if let (Some(previous), false) = (&previous, args.force) {
        let who = previous.as_ref().map_or_else(|e| format!("(unreadable: {e})"), |p| format!("as node {}", p.node_id));
        return Err(usage(format!(
            "{} is already enrolled {who}; pass --force to enroll again with a new key pair",
            args.state_dir.display()
        )));
    }
    let facts = read_local_facts(&args.root).map_err(usage)?;
    let params = EnrollParams {
        token: args.token,
        machine_id: facts.machine_id.to_string(),
        identity: pb_identity(&facts.identity, &node_path(&args.root, &facts.identity_source)),
        hostname: read_hostname(&args.root),
    };
    let enrolled = enroll(&args.server, &ca_pem, &params).await.map_err(|e| Failure {
        code: if e.is_refusal() { EXIT_REFUSED } else { EXIT_FAILURE },
        message: e.to_string(),
    })?;
    // The status log's seq belongs to a node id: a new id starts a new log.
    if previous.and_then(Result::ok).is_some_and(|p| p.node_id != enrolled.enrollment.node_id) {
        let _ = std::fs::remove_file(state.file(STATUS_FILE));
    }
    state.store(&enrolled.credentials, &enrolled.enrollment).map_err(failure)?;
    let e = &enrolled.enrollment;
    println!("enrolled as node {}", e.node_id);
    println!("state dir        {}", args.state_dir.display());
    println!("servers          {}", e.server_endpoints.join(", "));
    println!("certificate until {}", e.cert_not_after);
    Ok(())
}

/// Progress of `pull` on stderr, one line per phase and per second.
struct PrintProgress {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl crate::pull::PullObserver for PrintProgress {
    fn phase(&self, state: kairos_fleet_proto::fleet::v1::NodeState) {
        eprintln!("{}", state.as_str_name().trim_start_matches("NODE_STATE_").to_lowercase());
    }

    fn progress(&self, p: kairos_fleet_proto::fleet::v1::Progress) {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) && p.bytes_done < p.bytes_total {
            return;
        }
        *last = Some(std::time::Instant::now());
        eprintln!(
            "  {} / {} bytes, {} / {} layers, {} bytes/s",
            p.bytes_done, p.bytes_total, p.layers_done, p.layers_total, p.bytes_per_second
        );
    }

    fn cancelled(&self) -> Option<String> {
        None
    }
}

async fn pull_command(args: PullArgs) -> Result<(), Failure> {
    let mut config = ClientConfig::load(&args.config).map_err(usage)?;
    config.registry.plain_http.extend(args.plain_http.iter().cloned());
    let state_dir = args.state_dir.clone().unwrap_or(config.state_dir.clone());
    let platform = match args.arch.as_deref() {
        None => crate::pull::Platform::current()
            .ok_or_else(|| usage("--arch: this machine's CPU has no Kairos images; say amd64 or arm64"))?,
        Some("amd64") => crate::pull::Platform::linux_amd64(),
        Some("arm64") => crate::pull::Platform::linux_arm64(),
        Some(other) => return Err(usage(format!("--arch: must be amd64 or arm64, got {other:?}"))),
    };
    std::fs::create_dir_all(&state_dir).map_err(|e| usage(format!("--state-dir {}: {e}", state_dir.display())))?;
    let puller = crate::pull::Puller::new(config.registry.clone(), &state_dir, platform);
    let started = std::time::Instant::now();
    let observer = PrintProgress { last: std::sync::Mutex::new(None) };
    let image = puller
        .pull(&args.image, args.digest.trim(), &observer)
        .await
        .map_err(|e| Failure { code: EXIT_FAILURE, message: format!("{}: {}", e.reason.as_str_name(), e.message) })?;
    let seconds = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "archive": image.archive,
        "manifest_digest": image.manifest_digest,
        "size": image.size,
        "seconds": seconds,
        "bytes_per_second": (image.size as f64 / seconds.max(1e-9)).round(),
    });
    println!("{report}");
    Ok(())
}

/// The image fetcher `run` upgrades with: pulls into `<state dir>/images`
/// for this machine's platform, as the `[registry]` section says.
pub fn image_fetcher(config: &ClientConfig, state_dir: &std::path::Path) -> Result<Arc<dyn ImageFetcher>, String> {
    let platform = crate::pull::Platform::current().ok_or_else(|| {
        format!("this machine's CPU ({}) has no Kairos images: only amd64 and arm64 do", std::env::consts::ARCH)
    })?;
    Ok(Arc::new(crate::pull::Puller::new(config.registry.clone(), state_dir, platform)))
}

async fn run_command(args: RunArgs) -> Result<(), Failure> {
    let config = ClientConfig::load(&args.config).map_err(usage)?;
    init_logging(config.log_format, "info");
    let state = StateDir::new(args.state_dir.unwrap_or(config.state_dir.clone()));
    if !state.is_enrolled() {
        return Err(usage(format!(
            "{} holds no enrollment: run `kairos-node-client enroll --server URL --token T --ca-file ca.pem` first",
            state.path().display()
        )));
    }
    let enrollment = state.load_enrollment().map_err(usage)?;
    let credentials = state.load_credentials().map_err(usage)?;
    let endpoints = config.servers.clone().unwrap_or_else(|| enrollment.server_endpoints.clone());
    check_servers("servers", &endpoints).map_err(usage)?;
    // Fail at start, not at the first connection, when the node cannot say who it is.
    read_local_facts(&args.root).map_err(usage)?;
    if let Ok(not_after) = enrollment.cert_not_after.parse::<jiff::Timestamp>() {
        if not_after < jiff::Timestamp::now() {
            tracing::error!(%not_after, "the node certificate has expired; enroll again with --force");
        }
    }
    let log = state.status_log().map_err(failure)?;
    let hello = LocalHello {
        root: args.root.clone(),
        labels: config.labels.clone(),
        k3s_role: config.k3s_role,
        k3s_cluster: config.k3s_cluster.clone(),
    };
    let mut settings = SessionSettings::new(enrollment.node_id.clone(), endpoints);
    // Spread nodes over the replicas.
    settings.first_endpoint = fastrand::usize(..settings.endpoints.len());
    let upgrader = AgentUpgrader::new(
        config.upgrade.clone(),
        config.allowed_executors.clone(),
        image_fetcher(&config, state.path()).map_err(usage)?,
        state.clone(),
        args.root.clone(),
    );
    let session = Session::new(
        TlsTransport::new(credentials),
        settings,
        Arc::new(hello),
        SharedStatusLog::new(log),
        Arc::new(upgrader),
    );
    tracing::info!(node = %enrollment.node_id, state_dir = %state.path().display(), "starting");
    // Before the first Hello, so it already carries the upgrade's outcome.
    agent::resume(&state, &args.root, &config.upgrade, &session.handle()).await.map_err(failure)?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        match shutdown_signal().await {
            Ok(signal) => tracing::info!(signal, "stopping"),
            Err(e) => tracing::error!(error = %e, "cannot listen for signals; stopping"),
        }
        let _ = stop.send(true);
    });
    session.run(stopped).await;
    tracing::info!("stopped");
    Ok(())
}

async fn simulate_command(args: SimulateArgs) -> Result<(), Failure> {
    init_logging(LogFormat::Human, "warn");
    let ca_pem = read_ca_file(Some(&args.ca_file))?;
    let storm_state = parse_storm_state(&args.storm_state).map_err(|e| usage(format!("--storm-state {e}")))?;
    for url in &args.server {
        endpoint_host(url).map_err(|e| usage(format!("--server: {e}")))?;
    }
    let options = SimulateOptions {
        servers: args.server,
        token: args.token,
        count: args.count,
        ca_pem,
        seed: args.seed,
        duration: args.duration,
        storm_after: args.storm_after,
        storm_state,
        upgrade_step: args.upgrade_step,
        concurrency: args.concurrency,
        progress: true,
        release: args.release,
        fail_file: args.fail_file,
        history: args.history,
    };
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        if shutdown_signal().await.is_ok() {
            let _ = stop.send(true);
        }
    });
    let report = run_simulation(options, stopped).await.map_err(|e| match e {
        SimulateError::Usage { .. } => usage(e),
        SimulateError::Refused(_) => Failure { code: EXIT_REFUSED, message: e.to_string() },
    })?;
    let json = serde_json::to_string_pretty(&report).map_err(failure)?;
    match &args.report {
        Some(path) => std::fs::write(path, json + "\n").map_err(|e| failure(format!("{}: {e}", path.display())))?,
        None => println!("{json}"),
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT with the signal's name.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        interrupted = tokio::signal::ctrl_c() => interrupted.map(|()| "SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = ["kairos-node-client", "simulate", "--server", "https://a:7443", "--token", "t", "--count", "1"];
        Cli::try_parse_from(base.iter().chain(&["--ca-file", "ca.pem"]).chain(extra))
    }

    #[test]
    fn simulate_takes_the_rollout_test_options() {
        let extra = ["--release", "v1.5.0", "--fail-file", "fail", "--history", "h.jsonl", "--upgrade-step", "0s"];
        let Command::Simulate(args) = parse(&extra).expect("parses").command else { panic!("simulate") };
        assert_eq!(args.release, Some(Version::new(1, 5, 0)));
        assert_eq!((args.fail_file, args.history), (Some("fail".into()), Some("h.jsonl".into())));
        assert_eq!(args.upgrade_step, Duration::ZERO);
        let Command::Simulate(args) = parse(&[]).expect("parses").command else { panic!("simulate") };
        assert_eq!((args.release, args.fail_file, args.history), (None, None, None));
    }

    #[test]
    fn a_bad_release_is_refused_naming_the_flag() {
        for bad in ["1.5", "latest", "v2.5.0"] {
            let error = parse(&["--release", bad]).expect_err(bad).to_string();
            assert!(error.contains("--release") && error.contains(bad), "{error}");
        }
    }
}
