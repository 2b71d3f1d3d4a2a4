//! `kairos-controlplane`: the Kairos Fleet control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kairos_controlplane::api::release::parse_registry_host;
use kairos_controlplane::demo::{self, DemoOptions};
use kairos_controlplane::replica::RaftTuning;
use kairos_controlplane::security::bootstrap::{self, InitOptions, InitReport, ReplicaSpec};
use kairos_controlplane::serve::{self, ServeOptions};
use kairos_controlplane::sessions::SessionSettings;

/// The Kairos Fleet control plane.
#[derive(Parser)]
#[command(name = "kairos-controlplane", version, about)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "KAIROS_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-replica control plane in a local folder with a simulated
    /// fleet, and watch a staged patch rollout with a failing canary (no network needed).
    Demo {
        /// Number of simulated nodes (at least one per seed image family: 16).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(16..=5_000))]
        nodes: u32,
        /// Folder of the demo's cluster (an earlier demo's folder is wiped first).
        #[arg(long, default_value = "kairos-demo")]
        data_dir: PathBuf,
        /// Flavor whose standard canary fails until the fix is published.
        #[arg(long, default_value = "alpine-arm-rpi")]
        failing_flavor: String,
        /// Time each simulated upgrade step takes, e.g. 400ms.
        #[arg(long, default_value = "700ms", value_parser = parse_step)]
        upgrade_step: Duration,
        /// After the fleet report, keep the control plane and the fleet running
        /// until Ctrl-C, to explore with kairosctl.
        #[arg(long)]
        keep_serving: bool,
    },
    /// Run a replica: with no flags, a single-replica control plane in ./kairos-data.
    Serve {
        /// A replica folder, a folder `init` wrote (see --replica-id), or a new
        /// folder to initialise as a single-replica cluster.
        #[arg(long, default_value = serve::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Address to bind (default: the replica's address from replica.toml).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<SocketAddr>,
        /// Which replica of an `init` folder to run.
        #[arg(long)]
        replica_id: Option<u64>,
        /// Ask this replica to add us to its cluster once we are up.
        #[arg(long, value_name = "HOST:PORT")]
        join: Option<String>,
        /// raft heartbeat interval in milliseconds.
        #[arg(long, default_value_t = 100)]
        heartbeat_ms: u64,
        /// Lower bound of the raft election timeout in milliseconds (the upper is twice this).
        #[arg(long, default_value_t = 500)]
        election_timeout_ms: u64,
        /// Take a snapshot (and purge the log behind it) every this many log entries.
        #[arg(long, default_value_t = 5000)]
        snapshot_logs: u64,
        /// Log entries kept behind a snapshot for followers that lag a little.
        #[arg(long, default_value_t = 1000)]
        snapshot_keep_logs: u64,
        /// How often nodes send heartbeats, in milliseconds; a node silent for
        /// three intervals counts as gone.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(200..=600_000))]
        node_heartbeat_ms: u64,
        /// Let SyncReleases reach this registry over plain HTTP (repeat for
        /// several); every other registry is reached over HTTPS only.
        #[arg(long = "registry-plain-http", value_name = "HOST[:PORT]", value_parser = parse_registry_host)]
        registry_plain_http: Vec<String>,
        /// Serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_listen: Option<SocketAddr>,
        /// Serve grpc.health.v1 in plain text at HOST:PORT, for probes that
        /// cannot speak TLS (the Kubernetes gRPC probe).
        #[arg(long, value_name = "HOST:PORT")]
        health_listen: Option<SocketAddr>,
    },
    /// Create a new cluster's CA, replica certificates and configs, and the first admin token.
    Init {
        /// Folder to create everything in (one sub-folder per replica).
        #[arg(long)]
        data_dir: PathBuf,
        /// A replica as ID=HOST:PORT (repeat for each; the first one bootstraps the cluster).
        /// HOST must be reachable by peers and clients: it goes into the certificate.
        #[arg(long = "replica", value_name = "ID=HOST:PORT", default_value = "1=127.0.0.1:7001")]
        replicas: Vec<ReplicaSpec>,
        /// Replace an existing CA key (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue (or renew) a replica's node CA, which signs the certificates of
    /// enrolling nodes, with the cluster CA of an `init` folder.
    IssueNodeCa {
        /// The folder `init` wrote (with ca.pem and ca.key).
        #[arg(long)]
        data_dir: PathBuf,
        /// The replica the node CA is for.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        replica_id: u64,
        /// Where to write node-ca.pem and node-ca.key (default: DATA_DIR/replica-<id>).
        #[arg(long)]
        replica_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story on stdout; only trouble goes to the log.
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn,openraft=error",
        _ => "info,openraft=warn,h2=warn,tower=warn",
    };
    init_logging(cli.log_json, default_filter);
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            replica_id,
            join,
            heartbeat_ms,
            election_timeout_ms,
            snapshot_logs,
            snapshot_keep_logs,
            node_heartbeat_ms,
            registry_plain_http,
            metrics_listen,
            health_listen,
        } => {
            let raft = RaftTuning {
                heartbeat_ms,
                election_min_ms: election_timeout_ms,
                election_max_ms: election_timeout_ms * 2,
                snapshot_logs,
                snapshot_keep_logs,
            };
            let sessions = SessionSettings::with_heartbeat(Duration::from_millis(node_heartbeat_ms));
            let opts = ServeOptions {
                data_dir,
                listen,
                replica_id,
                join,
                raft,
                sessions,
                registry_plain_http,
                metrics_listen,
                health_listen,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve::serve(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Init { data_dir, replicas, force } => {
            let opts = InitOptions { data_dir, replicas, force };
            match bootstrap::init_cluster(&opts) {
                Ok(report) => {
                    print_init_report(&opts, &report);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: init failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::IssueNodeCa { data_dir, replica_id, replica_dir } => {
            let replica_dir = replica_dir.unwrap_or_else(|| bootstrap::replica_dir(&data_dir, replica_id));
            match bootstrap::issue_node_ca(&data_dir, replica_id, &replica_dir) {
                Ok(files) => {
                    println!("Issued the node CA of replica {replica_id}:");
                    for file in files {
                        println!("  {}", file.display());
                    }
                    println!("Restart the replica to enroll nodes with it.");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: issue-node-ca failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { nodes, data_dir, failing_flavor, upgrade_step, keep_serving } => {
            let opts = DemoOptions { nodes: nodes as usize, data_dir, failing_flavor, upgrade_step, keep_serving };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(demo::run(&opts, &mut std::io::stdout().lock())) {
                Ok(outcome) if outcome.phase == "completed" => ExitCode::SUCCESS,
                Ok(outcome) => {
                    eprintln!("error: the demo rollout ended {}", outcome.phase);
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: the demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `--upgrade-step`: a duration such as 400ms or 1s, at most a minute.
fn parse_step(text: &str) -> Result<Duration, String> {
    let ms = kairos_controlplane::fleet::strategy::parse_duration("--upgrade-step", text).map_err(|e| e.to_string())?;
    if ms > 60_000 {
        return Err(format!("at most 1m, got {text}"));
    }
    Ok(Duration::from_millis(ms))
}

fn print_init_report(opts: &InitOptions, report: &InitReport) {
    println!("Created a Kairos Fleet cluster in {}:", opts.data_dir.display());
    for file in &report.files {
        println!("  {}", file.display());
    }
    println!();
    println!(
        "Admin token {} is in {} (shown nowhere else; keep it secret).",
        report.admin_token_id,
        bootstrap::ADMIN_TOKEN_FILE
    );
    println!("Keep ca.key offline: it is needed only to issue replica certificates and node CAs.");
    println!();
    println!("Start the replicas (replica {} bootstraps the cluster):", opts.replicas[0].id);
    for (spec, dir) in &report.replica_dirs {
        println!("  kairos-controlplane serve --data-dir {}    # {}", dir.display(), spec.address());
    }
    println!();
    println!("Then talk to it:");
    println!(
        "  KAIROS_CONFIG={} kairosctl cluster status",
        opts.data_dir.join(bootstrap::KAIROSCTL_CONFIG_FILE).display()
    );
}

/// Human-readable logs by default, JSON lines with `--log-json`; the level
/// comes from `RUST_LOG` (default `info`).
/// Logs to stderr: `RUST_LOG` if set, else `default`.
fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
