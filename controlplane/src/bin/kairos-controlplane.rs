//! `kairos-controlplane`: the Kairos Fleet control plane.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kairos_controlplane::demo::{self, DemoOptions};
use kairos_controlplane::security::bootstrap::{self, InitOptions, InitReport, ReplicaSpec};

/// The Kairos Fleet control plane.
#[derive(Parser)]
#[command(name = "kairos-controlplane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch a staged patch rollout on a simulated fleet (no network needed).
    Demo {
        /// Number of simulated nodes (at least one per image family: 16).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(16..=100_000))]
        nodes: u32,
        /// Print without pausing between lines.
        #[arg(long)]
        fast: bool,
        /// Flavor whose standard canary fails until the operator fixes it.
        #[arg(long, default_value = "alpine-arm-rpi")]
        failing_flavor: String,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
        Command::Demo { nodes, fast, failing_flavor } => {
            let opts = DemoOptions {
                nodes: nodes as usize,
                pace: if fast { Duration::ZERO } else { DemoOptions::default().pace },
                failing_flavor,
            };
            match demo::run(&opts, &mut std::io::stdout().lock()) {
                Ok(outcome) if outcome.phase == "completed" => ExitCode::SUCCESS,
                Ok(outcome) => {
                    eprintln!("demo rollout ended {}", outcome.phase);
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
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
    println!("Keep ca.key offline: it is needed only to issue replica certificates.");
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
