//! `kairosctl`: the Kairos Fleet operator CLI. The commands live in
//! `kairos_controlplane::cli`; this binary parses, runs, and turns the
//! outcome into output and an exit code (see `cli::error` for the codes).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use kairos_controlplane::cli::{self, error::EXIT_OTHER, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    let mut out = std::io::stdout().lock();
    let result = runtime.block_on(cli::run(cli, &mut out));
    // A closed pipe (`kairosctl ... | head`) is not worth an error.
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}
