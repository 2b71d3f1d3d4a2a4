//! `kairos-controlplane demo`: the whole product on one machine, offline.
//!
//! It lays out a single-replica cluster in a local folder (sled store, CA,
//! admin token, a kairosctl config), starts the replica in this process,
//! and starts a simulated fleet of node clients — one per machine, each
//! enrolling with its own key and holding its own mTLS stream, exactly as
//! `kairos-node-client simulate` does — across every flavor, variant and
//! architecture of the support matrix. Then it runs, through kairosctl, a
//! staged patch rollout in which one image family's canary fails: the
//! rollout pauses, the demo shows why, publishes the fix, resumes, and
//! ends with the fleet report. Every step is printed as the kairosctl
//! command an operator would type, followed by its real output.

use std::fmt;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use kairos_node_client::simulate::{SimulateOptions, Simulation};
use semver::Version;
use tokio::sync::watch;

use crate::cli::{self, Cli, CliError};
use crate::fleet::image::{ImageRef, RegistryPrefix, TagGrammar};
use crate::fleet::matrix::{seed_families, SEED_FLAVORS};
use crate::fleet::model::{K8sDistro, SoftwareVersion, Variant};
use crate::replica::RaftTuning;
use crate::security::bootstrap::{self, InitOptions, ReplicaSpec};
use crate::serve::{self, ServeOptions};
use crate::sessions::SessionSettings;

/// The release the simulated fleet starts on.
pub const FROM: &str = "v1.5.0";
/// The patch release the demo rolls out.
pub const TO: &str = "v1.5.1";
/// The k3s line of the standard images.
const K3S: &str = "k3sv1.26.1-k3s1";
/// File in the demo folder that marks it as the demo's own, so a new run
/// may wipe it.
const MARKER_FILE: &str = ".kairos-demo";
/// File of the simulated nodes' failure rules (see `--fail-file` of
/// `kairos-node-client simulate`).
const FAIL_FILE: &str = "fail-rules";

/// Settings of a demo run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of simulated nodes (at least one per seed image family).
    pub nodes: usize,
    /// Folder of the demo's cluster; wiped at the start if an earlier demo
    /// made it, refused if it holds anything else.
    pub data_dir: PathBuf,
    /// Flavor id whose standard canary fails until the fix is published.
    pub failing_flavor: String,
    /// Time each simulated upgrade step (download, install, reboot) takes.
    pub upgrade_step: Duration,
    /// After the report, keep the control plane and the fleet running until
    /// Ctrl-C, for kairosctl to explore.
    pub keep_serving: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            nodes: 120,
            data_dir: PathBuf::from("kairos-demo"),
            failing_flavor: "alpine-arm-rpi".into(),
            upgrade_step: Duration::from_millis(700),
            keep_serving: false,
        }
    }
}

/// What the demo ended with, for tests and the exit code.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// The rollout's id.
    pub rollout_id: String,
    /// Its final phase, e.g. `completed`.
    pub phase: String,
    /// Why it paused on its way (the server's message), if it did.
    pub pause_reason: Option<String>,
    /// Nodes the rollout covered.
    pub total: u64,
    /// Nodes healthy on the target at the end.
    pub healthy: u64,
    /// Nodes enrolled by the simulated fleet.
    pub enrolled: u64,
}

/// Why the demo could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An option is not usable; the message names it.
    #[error("{0}")]
    Usage(String),
    /// The demo folder could not be prepared.
    #[error("{0}")]
    Folder(String),
    /// The control plane did not start.
    #[error("starting the control plane: {0}")]
    Serve(#[from] serve::ServeError),
    /// The simulated fleet did not start or failed.
    #[error("simulated fleet: {0}")]
    Fleet(String),
    /// A kairosctl step failed.
    #[error("`kairosctl {command}` failed: {error}")]
    Step {
        /// The command, without the connection flags.
        command: String,
        /// Its error and hint.
        error: String,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Checks `opts` before anything is started.
pub fn check(opts: &DemoOptions) -> Result<(), DemoError> {
    let families = seed_families().len();
    if opts.nodes < families {
        return Err(DemoError::Usage(format!(
            "--nodes: at least {families} (one per seed image family), got {}",
            opts.nodes
        )));
    }
    if !SEED_FLAVORS.iter().any(|f| f.id == opts.failing_flavor) {
        let known: Vec<&str> = SEED_FLAVORS.iter().map(|f| f.id).collect();
        return Err(DemoError::Usage(format!(
            "--failing-flavor: {:?} is not a seed flavor (one of {})",
            opts.failing_flavor,
            known.join(", ")
        )));
    }
    Ok(())
}

/// The container images of every seed image family at `release`.
pub fn seed_images(release: &str) -> Vec<String> {
    let Ok(version) = Version::parse(release.trim_start_matches('v')) else { return Vec::new() };
    let k3s = SoftwareVersion::parse(K3S, Some(K8sDistro::K3s)).ok();
    seed_families()
        .iter()
        .filter_map(|family| {
            let software = if family.variant == Variant::Standard { k3s.as_ref() } else { None };
            ImageRef::for_target(&RegistryPrefix::default(), family, TagGrammar::V1, &version, software)
                .ok()
                .map(|r| r.to_string())
        })
        .collect()
}

/// Runs the demo, printing to `out`. Blocks until it ends (and, with
/// `keep_serving`, until Ctrl-C). Whatever happens after the replica has
/// started, the fleet and the replica are stopped cleanly before it returns,
/// so the folder's store is always left flushed.
pub async fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoOutcome, DemoError> {
    check(opts)?;
    let started = Instant::now();
    prepare_folder(&opts.data_dir)?;
    let port = free_port()?;
    let spec: ReplicaSpec = format!("1=127.0.0.1:{port}").parse().map_err(|e| DemoError::Usage(format!("{e}")))?;
    let init = InitOptions { data_dir: opts.data_dir.clone(), replicas: vec![spec], force: false };
    bootstrap::init_cluster(&init).map_err(|e| DemoError::Folder(format!("laying out the cluster: {e}")))?;
    write_file(&opts.data_dir.join(FAIL_FILE), "")?;

    let mut show = Show { out, started };
    show.heading("A single-replica control plane");
    let serve_opts = ServeOptions {
        data_dir: opts.data_dir.clone(),
        listen: None,
        replica_id: Some(1),
        join: None,
        raft: RaftTuning::default(),
        // Nodes heartbeat every 2 s, so one that vanishes shows within seconds.
        sessions: SessionSettings::with_heartbeat(Duration::from_secs(2)),
        registry_plain_http: Vec::new(),
        metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        health_listen: None,
    };
    let started = serve::start(&serve_opts).await?;
    show.note(&format!(
        "replica 1 serves https://127.0.0.1:{port}; its sled store, CA and admin token are in {}",
        opts.data_dir.display()
    ));
    if let Some(m) = &started.metrics {
        show.note(&format!("Prometheus metrics: http://{}/metrics", m.local_addr()));
    }

    let (stop_fleet, stop_rx) = watch::channel(false);
    let mut fleet = None;
    let result = story(opts, &mut show, port, &mut fleet, stop_rx).await;
    if opts.keep_serving && result.is_ok() {
        show.heading("Still running: explore with kairosctl (Ctrl-C ends)");
        let config = opts.data_dir.join(bootstrap::KAIROSCTL_CONFIG_FILE);
        show.note(&format!("export KAIROS_CONFIG={}", config.display()));
        show.note("kairosctl nodes list   kairosctl rollout list   kairosctl rollout status ro-000001 --nodes");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_fleet.send(true);
    if let Some(fleet) = fleet {
        if let Err(e) = fleet.finish().await {
            tracing::warn!(%e, "stopping the simulated fleet");
        }
    }
    if let Err(e) = started.shutdown().await {
        tracing::warn!(%e, "stopping the replica");
    }
    result
}

/// The demo's story, once the replica runs: the catalog, the fleet, the
/// rollout with its failing canary, the report. `fleet` receives the
/// simulated fleet as soon as it starts, for the caller to stop.
async fn story(
    opts: &DemoOptions,
    show: &mut Show<'_>,
    port: u16,
    fleet: &mut Option<Simulation>,
    stop: watch::Receiver<bool>,
) -> Result<DemoOutcome, DemoError> {
    let config = opts.data_dir.join(bootstrap::KAIROSCTL_CONFIG_FILE);
    let fail_file = opts.data_dir.join(FAIL_FILE);
    let ctl = Ctl { config: config.clone() };
    wait_ready(&ctl).await?;
    ctl.show(show, &["cluster", "status"]).await?;

    show.heading("The release catalog");
    let mut images = seed_images(FROM);
    images.extend(seed_images(TO));
    let mut add = vec!["releases", "add"];
    add.extend(images.iter().map(String::as_str));
    show.command(&format!(
        "releases add {} ... ({} images: every seed family at {FROM} and {TO})",
        images.first().map_or("", String::as_str),
        images.len()
    ));
    ctl.run_quiet(&add).await?;
    ctl.show(show, &["releases", "list", "--flavor", "ubuntu"]).await?;

    show.heading(&format!("A simulated fleet of {} nodes", opts.nodes));
    // Headroom: a node whose enrollment answer was lost enrolls again and
    // spends another use.
    let uses = (opts.nodes + opts.nodes / 10 + 4).to_string();
    let created = ctl.json(&["enroll-tokens", "create", "--uses", &uses, "--ttl", "1h"]).await?;
    show.command(&format!("enroll-tokens create --uses {uses} --ttl 1h"));
    let secret = created["secret"].as_str().unwrap_or_default().to_string();
    let ca_pem = std::fs::read_to_string(opts.data_dir.join("ca.pem"))
        .map_err(|e| DemoError::Folder(format!("reading the cluster CA: {e}")))?;
    let sim_opts = SimulateOptions {
        servers: vec![format!("https://127.0.0.1:{port}")],
        token: secret,
        count: opts.nodes,
        ca_pem,
        seed: 7,
        duration: None,
        storm_after: None,
        storm_state: kairos_fleet_proto::fleet::v1::NodeState::Idle,
        upgrade_step: opts.upgrade_step,
        concurrency: 32,
        progress: false,
        release: Version::parse(FROM.trim_start_matches('v')).ok(),
        fail_file: Some(fail_file.clone()),
        history: None,
    };
    let sim = fleet.insert(Simulation::start(sim_opts, stop).map_err(|e| DemoError::Fleet(e.to_string()))?);
    show.note("each node client enrolls with its own key, gets a certificate from the replica's node CA and opens its mTLS stream");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = sim.live();
        if live.enroll_failures > 0 {
            return Err(DemoError::Fleet(format!(
                "{} node(s) could not enroll; the replica's log says why",
                live.enroll_failures
            )));
        }
        if live.enrolled as usize == opts.nodes && live.sessions.connected as usize == opts.nodes {
            break;
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!(
                "{} of {} nodes enrolled and {} connected after two minutes",
                live.enrolled, opts.nodes, live.sessions.connected
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_nodes(&ctl, opts.nodes).await?;
    ctl.show(show, &["fleet", "report"]).await?;

    show.heading(&format!("A staged patch rollout to {TO}"));
    write_file(&fail_file, &format!("{}/standard\n", opts.failing_flavor))?;
    show.note(&format!(
        "the {TO} image of {} standard is broken: a node that boots it falls back to its previous image",
        opts.failing_flavor
    ));
    let max_unavailable = (opts.nodes / 10).max(4).to_string();
    let create = [
        "rollout",
        "create",
        "--to",
        TO,
        "--waves",
        "1,25%,100%",
        "--max-unavailable",
        &max_unavailable,
        "--failure-threshold",
        "0",
        "--bake",
        "3s",
        "--description",
        "demo: patch release",
    ];
    let created = ctl.json(&create).await?;
    show.args(&create);
    let rollout_id = created["rollout"]["rollout_id"].as_str().unwrap_or_default().to_string();
    show.note(&format!(
        "rollout {rollout_id}: wave 0 is a canary of every image family, then a quarter of the fleet, then the rest"
    ));
    ctl.show(show, &["rollout", "watch", &rollout_id, "--until", "paused"]).await?;

    let paused = ctl.json(&["rollout", "status", &rollout_id]).await?;
    let pause_reason = paused["rollout"]["reason_message"].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    if paused["rollout"]["phase"] == "paused" {
        show.heading("The canary failed: the rollout paused");
        ctl.show(show, &["rollout", "status", &rollout_id]).await?;
        let nodes = ctl.json(&["rollout", "status", &rollout_id, "--nodes"]).await?;
        let failed = nodes["nodes"].as_array().into_iter().flatten().find(|n| n["state"] == "failed");
        if let Some(node) = failed.and_then(|n| n["node_id"].as_str()) {
            show.note("the failed canary, as its node client reported it:");
            ctl.show(show, &["nodes", "get", node]).await?;
        }
        show.note("only the canaries were touched; every other node still runs its old image");
        show.heading("Publish the fix, retry the failed canary, resume");
        write_file(&fail_file, "")?;
        show.note(&format!("a fixed {TO} image of {} standard is published", opts.failing_flavor));
        ctl.show(show, &["rollout", "resume", &rollout_id, "--retry-failed"]).await?;
        ctl.show(show, &["rollout", "watch", &rollout_id]).await?;
    }

    show.heading("The fleet after the rollout");
    ctl.show(show, &["fleet", "report"]).await?;
    let end = ctl.json(&["rollout", "status", &rollout_id]).await?;
    let totals = &end["rollout"]["totals"];
    let outcome = DemoOutcome {
        rollout_id: rollout_id.clone(),
        phase: end["rollout"]["phase"].as_str().unwrap_or_default().to_string(),
        pause_reason,
        total: totals["total"].as_u64().unwrap_or(0),
        healthy: totals["healthy"].as_u64().unwrap_or(0),
        enrolled: sim.live().enrolled,
    };
    show.note(&format!(
        "rollout {} {}: {} of {} nodes healthy on {TO}, in {:.0?}",
        outcome.rollout_id,
        outcome.phase,
        outcome.healthy,
        outcome.total,
        show.started.elapsed()
    ));
    if !opts.keep_serving {
        show.note(&format!(
            "the store stays in {0}: `kairos-controlplane serve --data-dir {0}` serves it again, \
             and `KAIROS_CONFIG={1} kairosctl rollout list` reads it",
            opts.data_dir.display(),
            config.display()
        ));
    }
    Ok(outcome)
}

/// Prints the demo's steps with elapsed time.
struct Show<'a> {
    out: &'a mut dyn Write,
    started: Instant,
}

impl Show<'_> {
    fn line(&mut self, text: impl fmt::Display) {
        // A closed pipe only means the reader stopped reading.
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn heading(&mut self, title: &str) {
        let at = self.started.elapsed().as_secs();
        self.line(format_args!("\n== {title}  [{:>2}:{:02}]", at / 60, at % 60));
    }

    fn command(&mut self, command: &str) {
        self.line(format_args!("$ kairosctl {command}"));
    }

    /// Prints `args` as a command line, quoting arguments with blanks.
    fn args(&mut self, args: &[&str]) {
        let words: Vec<String> =
            args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { (*a).to_string() }).collect();
        self.command(&words.join(" "));
    }

    fn note(&mut self, text: &str) {
        self.line(format_args!("# {text}"));
    }
}

/// kairosctl, in this process, with the demo folder's config.
struct Ctl {
    config: PathBuf,
}

impl Ctl {
    fn parse(&self, args: &[&str], json: bool) -> Result<Cli, DemoError> {
        let config = self.config.display().to_string();
        let mut argv = vec!["kairosctl", "--config", config.as_str()];
        argv.extend_from_slice(args);
        if json {
            argv.extend_from_slice(&["-o", "json"]);
        }
        Cli::try_parse_from(&argv).map_err(|e| DemoError::Step { command: args.join(" "), error: e.to_string() })
    }

    async fn call(&self, args: &[&str], json: bool, out: &mut dyn Write) -> Result<(), DemoError> {
        let parsed = self.parse(args, json)?;
        cli::run(parsed, out)
            .await
            .map_err(|e: CliError| DemoError::Step { command: args.join(" "), error: e.report() })
    }

    /// Prints the command and its table output.
    async fn show(&self, show: &mut Show<'_>, args: &[&str]) -> Result<(), DemoError> {
        show.args(args);
        self.call(args, false, show.out).await?;
        let _ = show.out.flush();
        Ok(())
    }

    /// Runs the command, discarding its output.
    async fn run_quiet(&self, args: &[&str]) -> Result<(), DemoError> {
        self.call(args, false, &mut std::io::sink()).await
    }

    /// Runs the command with `-o json` and parses what it printed.
    async fn json(&self, args: &[&str]) -> Result<serde_json::Value, DemoError> {
        let mut buf = Vec::new();
        self.call(args, true, &mut buf).await?;
        serde_json::from_slice(&buf).map_err(|e| DemoError::Step {
            command: args.join(" "),
            error: format!("its JSON output does not parse: {e}"),
        })
    }
}

/// Waits until the replica leads and the bootstrap admin token is in the
/// replicated state.
async fn wait_ready(ctl: &Ctl) -> Result<(), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ctl.json(&["tokens", "list"]).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(DemoError::Timeout(format!("the control plane did not become ready: {e}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until the control plane lists `count` online nodes.
async fn wait_for_nodes(ctl: &Ctl, count: usize) -> Result<(), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = ctl.json(&["nodes", "list", "--online", "--all"]).await?;
        let online = listed["nodes"].as_array().map_or(0, Vec::len);
        if online >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(format!("{online} of {count} nodes online after a minute")));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Makes `dir` an empty folder of the demo's own: an earlier demo's folder
/// is wiped, anything else is refused.
fn prepare_folder(dir: &Path) -> Result<(), DemoError> {
    let folder = |e: std::io::Error| DemoError::Folder(format!("{}: {e}", dir.display()));
    if dir.exists() {
        let is_empty = std::fs::read_dir(dir).map_err(folder)?.next().is_none();
        if dir.join(MARKER_FILE).exists() {
            std::fs::remove_dir_all(dir).map_err(folder)?;
        } else if !is_empty {
            return Err(DemoError::Folder(format!(
                "{} exists and was not made by the demo; pass --data-dir with a new folder",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(folder)?;
    write_file(&dir.join(MARKER_FILE), "made by `kairos-controlplane demo`; the next demo run wipes this folder\n")
}

fn write_file(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(|e| DemoError::Folder(format!("writing {}: {e}", path.display())))
}

/// A free port on 127.0.0.1 for the replica (bound and released).
fn free_port() -> Result<u16, DemoError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DemoError::Folder(format!("finding a free port on 127.0.0.1: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_images_cover_every_family_at_the_release() {
        let images = seed_images(TO);
        assert_eq!(images.len(), seed_families().len());
        assert!(images.iter().all(|i| i.contains("v1.5.1")), "{images:?}");
        assert!(images.iter().any(|i| i.contains("k3sv1.26.1-k3s1")), "standard images carry k3s: {images:?}");
    }

    #[test]
    fn options_are_checked_naming_the_flag() {
        let few = DemoOptions { nodes: 3, ..DemoOptions::default() };
        assert!(check(&few).unwrap_err().to_string().starts_with("--nodes"));
        let unknown = DemoOptions { failing_flavor: "windows".into(), ..DemoOptions::default() };
        let e = check(&unknown).unwrap_err().to_string();
        assert!(e.contains("--failing-flavor") && e.contains("alpine-arm-rpi"), "{e}");
        assert!(check(&DemoOptions::default()).is_ok());
    }

    #[test]
    fn a_folder_the_demo_did_not_make_is_never_wiped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let foreign = tmp.path().join("precious");
        std::fs::create_dir(&foreign).expect("mkdir");
        std::fs::write(foreign.join("data"), "keep").expect("write");
        assert!(prepare_folder(&foreign).is_err());
        assert_eq!(std::fs::read_to_string(foreign.join("data")).expect("kept"), "keep");

        let demo = tmp.path().join("demo");
        prepare_folder(&demo).expect("new folder");
        std::fs::write(demo.join("old"), "from the last run").expect("write");
        prepare_folder(&demo).expect("an earlier demo's folder");
        assert!(!demo.join("old").exists(), "wiped");
        assert!(demo.join(MARKER_FILE).exists());
    }
}
