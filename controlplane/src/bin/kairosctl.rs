//! `kairosctl`: the Kairos Fleet operator CLI.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use kairos_controlplane::fleet::image::ImageRef;
use kairos_controlplane::fleet::matrix::init_system;

/// Operate a Kairos Fleet control plane.
#[derive(Parser)]
#[command(name = "kairosctl", version, about)]
struct Cli {
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Work with Kairos image references.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Parse an image reference and show what the control plane reads from it.
    Inspect {
        /// e.g. quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1
        reference: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Image { command: ImageCommand::Inspect { reference } } => inspect(&reference, cli.output),
    }
}

fn inspect(reference: &str, output: Output) -> ExitCode {
    let image = match ImageRef::parse(reference) {
        Ok(image) => image,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let family = image.family();
    let fields = [
        ("reference", image.to_string()),
        ("grammar", image.grammar().as_str().to_string()),
        ("registry_prefix", image.registry_prefix().to_string()),
        ("flavor", family.flavor.clone()),
        ("flavor_release", family.flavor_release.clone()),
        ("variant", family.variant.to_string()),
        ("arch", family.arch.to_string()),
        ("model", family.model.clone()),
        ("release", format!("v{}", image.release())),
        ("software", image.software().map(|s| s.to_string()).unwrap_or_default()),
        ("trusted_boot", image.trusted_boot().to_string()),
        ("disk_image", image.is_disk_image().to_string()),
        ("upgrade_target", (!image.is_disk_image()).to_string()),
        ("init_system", format!("{:?}", init_system(&family.flavor)).to_lowercase()),
    ];
    match output {
        Output::Json => {
            let map: serde_json::Map<String, serde_json::Value> =
                fields.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone()))).collect();
            println!("{}", serde_json::Value::Object(map));
        }
        Output::Table => {
            for (k, v) in fields {
                println!("{k:<16} {v}");
            }
        }
    }
    ExitCode::SUCCESS
}
