//! `kairos-node-client`: the Kairos Fleet agent on each device.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kairos_node_client::local::read_local_facts;

/// The Kairos Fleet node client.
#[derive(Parser)]
#[command(name = "kairos-node-client", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the identity this node would report to the control plane.
    Identity {
        /// Root filesystem to read (`/` on a device).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Identity { root } => match read_local_facts(&root) {
            Ok(f) => {
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
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
