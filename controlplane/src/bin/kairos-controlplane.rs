//! `kairos-controlplane`: the Kairos Fleet control plane.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kairos_controlplane::demo::{self, DemoOptions};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
