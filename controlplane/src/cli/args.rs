//! kairosctl's command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

use super::audit::AuditCommand;
use super::config::ConfigCommand;
use super::enroll_tokens::EnrollTokensCommand;
use super::fleet::FleetCommand;
use super::nodes::NodesCommand;
use super::output::Format;
use super::rollout::args::RolloutCommand;
use super::settings::{parse_timeout, Overrides};
use super::tokens::TokensCommand;
use crate::cli_config::CONFIG_ENV;

/// Operate a Kairos Fleet control plane.
#[derive(Debug, Parser)]
#[command(name = "kairosctl", version, propagate_version = true)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection and output flags, accepted before or after the command.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Config file with contexts [default: $XDG_CONFIG_HOME/kairos/config.toml, else ~/.config/kairos/config.toml]
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Context to use instead of the config's current_context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Replica endpoint https://HOST:PORT, replacing the context's endpoints (repeat for several).
    #[arg(long = "server", global = true, value_name = "URL")]
    pub servers: Vec<String>,
    /// Cluster CA certificate (PEM), replacing the context's ca_file.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// File holding the bearer token, replacing the context's token.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Timeout of each call to a replica, e.g. 30s, 500ms, 2m.
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Timeout of opening a connection to a replica.
    #[arg(long, global = true, value_name = "DURATION", default_value = "3s", value_parser = parse_timeout)]
    pub connect_timeout: Duration,
}

impl GlobalArgs {
    /// The config-file overrides these flags make.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            context: self.context.clone(),
            servers: self.servers.clone(),
            ca: self.ca.clone(),
            token_file: self.token_file.clone(),
        }
    }
}

/// kairosctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Control-plane replicas: membership and replication health.
    Cluster {
        /// The cluster command.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Enrolled nodes: list, show one, watch changes (needs viewer).
    Nodes {
        /// The nodes command.
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Fleet-wide views (needs viewer).
    Fleet {
        /// The fleet command.
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Rollouts: plan, create, follow and steer upgrades in waves.
    Rollout {
        /// The rollout command.
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// The release catalog: upgrade images rollouts may target.
    Releases {
        /// The releases command.
        #[command(subcommand)]
        command: ReleasesCommand,
    },
    /// Operator tokens: create, list, revoke (needs admin).
    Tokens {
        /// The tokens command.
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Bootstrap tokens nodes enroll with (needs admin).
    EnrollTokens {
        /// The enroll-tokens command.
        #[command(subcommand)]
        command: EnrollTokensCommand,
    },
    /// The audit log of every mutating call (needs admin).
    Audit {
        /// The audit command.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Work with Kairos image references (offline).
    Image {
        /// The image command.
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// kairosctl's own config file: contexts to init, view, switch and delete (offline).
    Config {
        /// The config command.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script, e.g. `source <(kairosctl completion bash)`.
    Completion {
        /// The shell.
        shell: Shell,
    },
}

/// `kairosctl cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Replication state of every replica, as the leader sees it.
    Status,
    /// Add a replica: a learner first, then a voter once caught up (needs admin).
    AddReplica {
        /// Raft node id of the new replica, at least 1.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// Address other replicas reach it at, HOST:PORT.
        addr: String,
        /// Its public API address, e.g. https://fleet-4.example:7443.
        #[arg(long, value_name = "URL")]
        api_address: Option<String>,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner_only: bool,
    },
    /// Remove a replica from the membership (needs admin).
    RemoveReplica {
        /// Raft node id of the replica.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
    },
}

/// `kairosctl releases ...`.
#[derive(Debug, Subcommand)]
pub enum ReleasesCommand {
    /// List known upgrade images, newest release first.
    List(ListArgs),
    /// Add upgrade images by reference, e.g. quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0 (needs operator).
    Add {
        /// Image references with tag; append @sha256:... to pin a digest.
        #[arg(required = true, value_name = "REF")]
        refs: Vec<String>,
        /// Validate only; store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Add every upgrade image a registry lists (needs operator).
    Sync(SyncArgs),
}

/// Filters of `releases list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Flavor id, e.g. ubuntu or opensuse-arm-rpi.
    #[arg(long)]
    pub flavor: Option<String>,
    /// Flavor release, e.g. 22.04.
    #[arg(long)]
    pub flavor_release: Option<String>,
    /// core or standard.
    #[arg(long)]
    pub variant: Option<String>,
    /// amd64 or arm64.
    #[arg(long)]
    pub arch: Option<String>,
    /// Board model, e.g. generic or rpi.
    #[arg(long)]
    pub model: Option<String>,
    /// Include pre-releases.
    #[arg(long)]
    pub include_prereleases: bool,
    /// Show at most N releases [default: all, page by page].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

/// Options of `releases sync`.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// Registry host[:port] [default: quay.io].
    #[arg(long)]
    pub registry: Option<String>,
    /// Organisation in the registry [default: kairos].
    #[arg(long = "org", value_name = "ORG")]
    pub organization: Option<String>,
    /// Repository to list (repeat for several) [default: those of every known flavor].
    #[arg(long = "repo", value_name = "REPO")]
    pub repositories: Vec<String>,
    /// Report what would be added; store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also add pre-releases.
    #[arg(long)]
    pub include_prereleases: bool,
    /// Resolve and store each new image's digest.
    #[arg(long)]
    pub resolve_digests: bool,
}

/// `kairosctl image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Parse an image reference and show what the control plane reads from it.
    Inspect {
        /// e.g. quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1
        reference: String,
    },
}
