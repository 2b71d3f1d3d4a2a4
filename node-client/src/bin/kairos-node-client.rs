//! `kairos-node-client`: the Kairos Fleet agent on each device.

use std::process::ExitCode;

use clap::Parser;
use kairos_node_client::cli::{execute, Cli};

fn main() -> ExitCode {
    execute(Cli::parse())
}
