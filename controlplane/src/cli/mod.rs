//! kairosctl, the operator CLI: its command line, the cluster connection
//! it calls through, and how results and errors are shown.
//!
//! - [`client`]: [`Connection`], TLS channels, bearer token, failover and
//!   leader redirects ([`leader`] holds the hint convention).
//! - [`settings`]: config file + flags → [`ConnectionSettings`];
//!   [`config`]: `kairosctl config ...`, the file's contexts.
//! - [`error`]: [`CliError`], its hint and exit code.
//! - [`output`]: `-o table|json|yaml`; each command module defines the
//!   serde views it prints ([`cluster`], [`releases`], [`sync`], [`image`],
//!   [`tokens`], [`enroll_tokens`], [`audit`], [`nodes`], [`fleet`],
//!   [`rollout`]; [`node_filter`] holds the node filter flags they share).

pub mod args;
pub mod audit;
pub mod client;
pub mod cluster;
pub mod config;
pub mod enroll_tokens;
pub mod error;
pub mod fleet;
pub mod image;
pub mod leader;
pub mod node_filter;
pub mod nodes;
pub mod output;
pub mod releases;
pub mod rollout;
pub mod settings;
pub mod sync;
pub mod tokens;

#[cfg(test)]
mod tests;

use std::io::Write;

use clap::CommandFactory;
use kairos_fleet_proto::fleet::v1 as pb;

pub use args::Cli;
pub use client::Connection;
pub use error::CliError;
pub use leader::LeaderHint;
pub use output::Format;
pub use settings::ConnectionSettings;

use args::{ClusterCommand, Command, ImageCommand, ReleasesCommand};
use output::{render, Render};

/// Runs one parsed command line, writing its result to `out`. Refusals of
/// single items of a multi-item command go to stderr as they are met.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let format = cli.global.output;
    match cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kairosctl", out);
            Ok(())
        }
        Command::Config { command } => config::run(&cli.global, command, format, out),
        Command::Image { command: ImageCommand::Inspect { reference } } => {
            print(out, &image::inspect(&reference)?, format)
        }
        Command::Cluster { command } => {
            let conn = connect(&cli.global)?;
            match command {
                ClusterCommand::Status => print(out, &cluster::status(&conn).await?, format),
                ClusterCommand::AddReplica { id, addr, api_address, learner_only } => {
                    let request = pb::AddReplicaRequest {
                        replica_id: id,
                        address: addr,
                        api_address: api_address.unwrap_or_default(),
                        learner_only,
                    };
                    print(out, &cluster::add_replica(&conn, request).await?, format)
                }
                ClusterCommand::RemoveReplica { id } => print(out, &cluster::remove_replica(&conn, id).await?, format),
            }
        }
        Command::Tokens { command } => tokens::run(&connect(&cli.global)?, command, format, out).await,
        Command::EnrollTokens { command } => enroll_tokens::run(&connect(&cli.global)?, command, format, out).await,
        Command::Audit { command } => audit::run(&connect(&cli.global)?, command, format, out).await,
        Command::Nodes { command } => nodes::run(&connect(&cli.global)?, command, format, out).await,
        Command::Fleet { command } => fleet::run(&connect(&cli.global)?, command, format, out).await,
        Command::Rollout { command } => rollout::run(&connect(&cli.global)?, command, format, out).await,
        Command::Releases { command } => {
            let conn = connect(&cli.global)?;
            match command {
                ReleasesCommand::List(a) => {
                    let filter = pb::ListReleasesRequest {
                        flavor: a.flavor.unwrap_or_default(),
                        flavor_release: a.flavor_release.unwrap_or_default(),
                        variant: a.variant.unwrap_or_default(),
                        arch: a.arch.unwrap_or_default(),
                        model: a.model.unwrap_or_default(),
                        include_prereleases: a.include_prereleases,
                        ..pb::ListReleasesRequest::default()
                    };
                    let query = releases::ListQuery { filter, limit: a.limit };
                    print(out, &releases::list(&conn, query).await?, format)
                }
                ReleasesCommand::Add { refs, dry_run } => add_releases(&conn, &refs, dry_run, format, out).await,
                ReleasesCommand::Sync(a) => {
                    let request = pb::SyncReleasesRequest {
                        registry: a.registry.unwrap_or_default(),
                        organization: a.organization.unwrap_or_default(),
                        repositories: a.repositories,
                        dry_run: a.dry_run,
                        include_prereleases: a.include_prereleases,
                        resolve_digests: a.resolve_digests,
                    };
                    print(out, &sync::sync(&conn, request).await?, format)
                }
            }
        }
    }
}

/// The connection the global flags and config describe.
pub fn connect(global: &args::GlobalArgs) -> Result<Connection, CliError> {
    let cwd = std::env::current_dir().map_err(|e| {
        CliError::usage(format!("cannot read the working directory: {e}"), "run from an existing folder")
    })?;
    let ctx = settings::resolve_context(&global.overrides(), &cwd)?;
    let mut settings = ConnectionSettings::from_context(&ctx)?;
    settings.request_timeout = global.timeout;
    settings.connect_timeout = global.connect_timeout;
    Connection::new(settings)
}

/// `releases add`: prints what was accepted; with a single reference its
/// refusal is the error, with several each refusal is reported on stderr
/// and the exit code is the first one's.
async fn add_releases(
    conn: &Connection,
    refs: &[String],
    dry_run: bool,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut outcome = releases::add(conn, refs, dry_run).await?;
    if refs.len() == 1 && !outcome.refused.is_empty() {
        return Err(outcome.refused.remove(0).1);
    }
    if !outcome.view.added.is_empty() || outcome.refused.is_empty() {
        print(out, &outcome.view, format)?;
    }
    let Some((_, first)) = outcome.refused.first() else {
        return Ok(());
    };
    for (reference, e) in &outcome.refused {
        let report = e.report();
        eprint!("{}", report.replacen("error: ", &format!("error: {reference}: "), 1));
    }
    Err(CliError::Reported {
        summary: format!("references refused: {} of {}", outcome.refused.len(), refs.len()),
        exit_code: first.exit_code(),
    })
}

fn print<T: Render>(out: &mut dyn Write, value: &T, format: Format) -> Result<(), CliError> {
    let text = render(value, format)?;
    match out.write_all(text.as_bytes()) {
        // A closed pipe (`kairosctl ... | head`) means the reader has enough.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e.to_string())),
        _ => Ok(()),
    }
}

/// A protobuf timestamp as RFC 3339; `None` when out of range.
pub(crate) fn timestamp(t: &prost_types::Timestamp) -> Option<String> {
    jiff::Timestamp::new(t.seconds, t.nanos).ok().map(|t| t.to_string())
}
