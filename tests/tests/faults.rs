//! Fault schedules across hosts: a three-replica control plane as three
//! containers, simulated nodes and real node clients as containers, and a
//! registry container the real nodes pull their upgrade images from. Each
//! schedule runs a rollout (simulated nodes) and a second one (real nodes)
//! while it breaks the cluster, then heals it:
//!
//! - (a) the leader partitioned from the others (`docker network disconnect`);
//! - (b) one follower partitioned from the others;
//! - (c) SIGKILL of the leader, restart; SIGKILL of a follower, restart;
//! - (d) nodes cut off from their replica (a simulator and a real node
//!   taken off the control network; the real node keeps its registry).
//!
//! After healing both rollouts must complete, every node healthy on the
//! target. The simulated nodes' histories are checked with
//! [`history::check`] (one target per node, no generation reused, no
//! acknowledged result lost), the control plane's record of commands and
//! results with [`history::check_recorded`] (never more than
//! `max_unavailable` in flight), and what the real nodes' stand-in
//! `kairos-agent` was asked to install (only the rollout's target). One
//! summary line per schedule is printed.
//!
//! `KAIROS_FAULTS_ROUNDS=N` runs the four schedules N times (default 1),
//! `KAIROS_FAULTS_NODES=N` sets the simulated nodes (default 24, over two
//! simulator containers). Needs Docker and Debian's busybox-static (the
//! real nodes' shell); without them the test fails, it never skips.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kairos_fleet_tests::docker::{host_user, output_text, ContainerSpec, Docker};
use kairos_fleet_tests::history::{self, Record};
use kairos_fleet_tests::json::{find_array, find_str, healthy_nodes, node_states, phase_of};
use kairos_fleet_tests::sim::{node_root, seed_images};
use kairos_fleet_tests::{binary, target_and_profile, workspace};
use serde_json::Value;

/// Replicas of the control plane.
const REPLICAS: [u64; 3] = [1, 2, 3];
/// Simulator containers the simulated nodes are spread over.
const SIMULATORS: usize = 2;
/// Real node clients (`kairos-node-client run`), one container each.
const REAL_NODES: usize = 2;
/// In flight at once: simulated rollout, real rollout.
const SIM_MAX_UNAVAILABLE: usize = 4;
const REAL_MAX_UNAVAILABLE: usize = 1;
/// Short raft and node-liveness timings, so faults are noticed in seconds.
const SERVE_TIMINGS: [&str; 6] =
    ["--heartbeat-ms", "100", "--election-timeout-ms", "500", "--node-heartbeat-ms", "1000"];
/// Each simulated upgrade step.
const UPGRADE_STEP: &str = "300ms";
/// The repository of the real nodes' images (a quay.io mirror in the registry container).
const REAL_REPOSITORY: &str = "kairos/opensuse";
/// How long a fault lasts at least (longer when its condition takes longer).
const FAULT_HOLD: Duration = Duration::from_secs(3);
/// How long `rollout watch` may take to see the end after the rollout completed.
const WATCH_GRACE: Duration = Duration::from_secs(20);
/// Longest wait for a rollout to complete after its schedule healed.
const COMPLETION_TIMEOUT: Duration = Duration::from_secs(120);

/// A number from the environment, or `default`.
fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{name}={text}: a whole number, please")),
        Err(_) => default,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Each node's `[commanded_at, finished_at)` in Unix ms, as the control plane recorded it.
fn recorded_intervals(status: &Value) -> Vec<(u64, u64)> {
    let ms = |v: &Value| v.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_millisecond() as u64);
    find_array(status, "nodes")
        .map(|nodes| nodes.iter().filter_map(|n| Some((ms(&n["commanded_at"])?, ms(&n["finished_at"])?))).collect())
        .unwrap_or_default()
}

/// Lets a fault that began at `since` last [`FAULT_HOLD`] at least (the
/// fault's length, not a check: every check waits for its condition).
fn hold(since: Instant) {
    if let Some(left) = FAULT_HOLD.checked_sub(since.elapsed()) {
        std::thread::sleep(left);
    }
}

/// The image tag of a real node's release.
fn real_tag(release: &str) -> String {
    format!("leap-15.5-standard-amd64-generic-{release}-k3sv1.27.6-k3s1")
}

/// What faults a schedule injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schedule {
    PartitionLeader,
    PartitionFollower,
    KillReplicas,
    CutNodes,
}

impl Schedule {
    const ALL: [Schedule; 4] =
        [Schedule::PartitionLeader, Schedule::PartitionFollower, Schedule::KillReplicas, Schedule::CutNodes];

    fn label(self) -> &'static str {
        match self {
            Schedule::PartitionLeader => "(a) leader partitioned",
            Schedule::PartitionFollower => "(b) follower partitioned",
            Schedule::KillReplicas => "(c) kill -9 leader and follower",
            Schedule::CutNodes => "(d) nodes cut off",
        }
    }
}

/// Faults injected, with their times since the schedule started.
struct Timeline {
    start: Instant,
    events: Vec<String>,
    /// Faults that ended after the simulated rollout had completed: they
    /// tested nothing.
    idle_faults: Vec<String>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline { start: Instant::now(), events: Vec::new(), idle_faults: Vec::new() }
    }

    fn note(&mut self, what: String) {
        self.events.push(format!("+{:.1}s {what}", self.start.elapsed().as_secs_f64()));
    }
}

/// A simulator container and its history file.
struct Simulator {
    container: String,
    history: PathBuf,
    count: usize,
}

/// A real node client's container and files.
struct RealNode {
    container: String,
    machine_id: String,
    dir: PathBuf,
}

impl RealNode {
    /// Lines the stand-in kairos-agent recorded (one per install).
    fn agent_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("agent-args")).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

/// The whole deployment of one test run. Field order is drop order: the
/// containers go before the folder they mount.
struct Fleet {
    docker: Docker,
    dir: tempfile::TempDir,
    control: String,
    image_net: String,
    replicas: BTreeMap<u64, String>,
    /// Replicas taken off the control network or killed right now.
    down: BTreeSet<u64>,
    ctl: String,
    sims: Vec<Simulator>,
    reals: Vec<RealNode>,
}

/// What one schedule found.
struct Outcome {
    line: String,
    violations: Vec<String>,
}

impl Fleet {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> String {
        self.path("kairosctl.toml").display().to_string()
    }

    /// kairosctl in the ctl container (on the control network, never faulted).
    fn ctl(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = vec!["kairosctl", "--config", config.as_str(), "--timeout", "5s"];
        all.extend_from_slice(args);
        self.docker.exec(&self.ctl, &all)
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "kairosctl {args:?} failed: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ctl_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-o", "json"]);
        let out = self.ctl(&all);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// `cluster status` as replica `id` answers it.
    fn status_of(&self, id: u64) -> Option<Value> {
        let server = format!("https://replica-{id}:7001");
        self.ctl_json(&["--server", &server, "cluster", "status"])
    }

    /// The leader replica `id` names, if any.
    fn leader_seen_by(&self, id: u64) -> Option<u64> {
        self.status_of(id)?["leader_id"].as_u64().filter(|l| *l != 0)
    }

    /// The leader every reachable replica agrees on, if one of them leads.
    fn agreed_leader(&self) -> Option<u64> {
        let up: Vec<u64> = REPLICAS.iter().copied().filter(|id| !self.down.contains(id)).collect();
        let seen: BTreeSet<Option<u64>> = up.iter().map(|id| self.leader_seen_by(*id)).collect();
        match seen.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(leader)] if up.contains(leader) => Some(*leader),
            _ => None,
        }
    }

    /// Waits until every replica names the same leader and all three are voters.
    fn wait_healthy(&self, what: &str) -> u64 {
        self.wait(what, Duration::from_secs(60), || {
            let leader = self.agreed_leader()?;
            let status = self.status_of(leader)?;
            let voters = status["replicas"]
                .as_array()?
                .iter()
                .filter(|r| r["role"] == "leader" || r["role"] == "follower")
                .count();
            (voters == REPLICAS.len()).then_some(leader)
        })
    }

    /// Polls `check` every 200 ms; on timeout fails with the rollouts and
    /// the containers' recent logs.
    fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn diagnostics(&self) -> String {
        let mut text = String::new();
        let rollouts = self.ctl(&["rollout", "list"]);
        text.push_str(&format!("rollouts:\n{}\n", output_text(&rollouts)));
        let containers = self.replicas.values().chain(self.sims.iter().map(|s| &s.container));
        for container in containers.chain(self.reals.iter().map(|r| &r.container)) {
            text.push_str(&format!("--- {container} (last 30 lines)\n{}\n", self.docker.logs_tail(container, 30)));
        }
        text
    }

    fn rollout_status(&self, id: &str) -> Option<Value> {
        self.ctl_json(&["rollout", "status", id, "--nodes"])
    }

    fn create_rollout(&self, args: &[&str]) -> String {
        let mut all = vec!["rollout", "create"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.ctl_ok(&all);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        find_str(&v, "rollout_id").unwrap_or_else(|| panic!("no rollout_id in {out}")).to_string()
    }

    /// Healthy nodes of a rollout right now (0 when its status cannot be read).
    fn healthy(&self, id: &str) -> usize {
        self.rollout_status(id).map(|s| healthy_nodes(&s)).unwrap_or(0)
    }

    /// An enroll token for `uses` nodes, labelled `site=<site>`.
    fn enroll_token(&self, uses: usize, site: &str) -> String {
        let uses = uses.to_string();
        let label = format!("site={site}");
        let created = self
            .ctl_json(&["enroll-tokens", "create", "--uses", &uses, "--ttl", "1h", "--label", &label])
            .unwrap_or_else(|| panic!("enroll-tokens create failed\n{}", self.diagnostics()));
        created["secret"].as_str().unwrap_or_else(|| panic!("no secret in {created}")).to_string()
    }

    fn online_nodes(&self) -> Option<u64> {
        self.ctl_json(&["fleet", "report"])?["online_nodes"].as_u64()
    }

    fn sim_total(&self) -> usize {
        self.sims.iter().map(|s| s.count).sum()
    }

    fn read_histories(&self, since_ms: u64) -> Vec<Record> {
        let mut records = Vec::new();
        for sim in &self.sims {
            let text = std::fs::read_to_string(&sim.history).unwrap_or_default();
            records.extend(history::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", sim.history.display())));
        }
        records.retain(|r| r.t_ms >= since_ms);
        records
    }

    /// Disconnects replica `id` from the control network.
    fn partition(&mut self, id: u64) {
        self.docker.disconnect(&self.control, &self.replicas[&id]);
        self.down.insert(id);
    }

    /// Connects replica `id` to the control network again, under its name.
    fn heal(&mut self, id: u64) {
        let alias = format!("replica-{id}");
        self.docker.connect(&self.control, &self.replicas[&id], &[alias.as_str()]);
        self.down.remove(&id);
    }

    fn kill9(&mut self, id: u64) {
        self.docker.kill9(&self.replicas[&id]);
        self.down.insert(id);
    }

    fn restart(&mut self, id: u64) {
        self.docker.start(&self.replicas[&id]);
        self.down.remove(&id);
    }

    /// Waits until the replicas other than `old` elect a leader among themselves.
    fn wait_new_leader(&self, old: u64) -> u64 {
        self.wait(&format!("a leader other than replica {old}"), Duration::from_secs(30), || {
            self.agreed_leader().filter(|l| *l != old)
        })
    }

    /// Just before a fault is healed: notes where both rollouts are, and
    /// counts the fault as idle when the simulated rollout had already
    /// completed (the fault then overlapped no rollout work).
    fn before_heal(&self, fault: &str, sim: &str, real: &str, timeline: &mut Timeline) {
        let state = |id: &str| {
            let status = self.rollout_status(id);
            let phase = status.as_ref().map(phase_of).unwrap_or_else(|| "unknown".into());
            let healthy = status.as_ref().map_or(0, healthy_nodes);
            (phase, healthy)
        };
        let ((sim_phase, sim_healthy), (real_phase, real_healthy)) = (state(sim), state(real));
        timeline.note(format!(
            "before healing {fault}: {sim} {sim_phase} ({sim_healthy} healthy), {real} {real_phase} ({real_healthy} healthy)"
        ));
        if sim_phase == "completed" {
            timeline.idle_faults.push(format!("{fault} ended after rollout {sim} had completed"));
        }
    }

    /// Waits until rollout `id` has more than `healthy` healthy nodes or
    /// completed: the cluster makes progress through the fault.
    fn wait_progress(&self, id: &str, healthy: usize) -> usize {
        self.wait(&format!("rollout {id} to move on"), Duration::from_secs(60), || {
            let status = self.rollout_status(id)?;
            let now = healthy_nodes(&status);
            (now > healthy || phase_of(&status) == "completed").then_some(now)
        })
    }

    /// Applies `schedule` while the rollouts run, noting each fault. Each
    /// fault lasts until its condition holds (a new leader elected, the
    /// rollout moved on, the cut-off nodes seen offline) and at least
    /// [`FAULT_HOLD`].
    fn inject(&mut self, schedule: Schedule, sim_rollout: &str, real_rollout: &str, timeline: &mut Timeline) {
        match schedule {
            Schedule::PartitionLeader => {
                let leader = self.wait_healthy("a leader before the partition");
                let healthy = self.healthy(sim_rollout);
                self.partition(leader);
                let since = Instant::now();
                timeline.note(format!("replica-{leader} (leader) disconnected"));
                let new = self.wait_new_leader(leader);
                timeline.note(format!("replica-{new} elected"));
                let now = self.wait_progress(sim_rollout, healthy);
                timeline.note(format!("{now} nodes healthy"));
                hold(since);
                self.before_heal("the leader partition", sim_rollout, real_rollout, timeline);
                self.heal(leader);
                timeline.note(format!("replica-{leader} reconnected"));
            }
            Schedule::PartitionFollower => {
                let leader = self.wait_healthy("a leader before the partition");
                let follower = REPLICAS.iter().copied().find(|id| *id != leader).expect("a follower");
                let healthy = self.healthy(sim_rollout);
                self.partition(follower);
                let since = Instant::now();
                timeline.note(format!("replica-{follower} (follower) disconnected"));
                let now = self.wait_progress(sim_rollout, healthy);
                timeline.note(format!("{now} nodes healthy"));
                hold(since);
                self.before_heal("the follower partition", sim_rollout, real_rollout, timeline);
                self.heal(follower);
                timeline.note(format!("replica-{follower} reconnected"));
            }
            Schedule::KillReplicas => {
                let leader = self.wait_healthy("a leader before the kill");
                self.kill9(leader);
                let since = Instant::now();
                timeline.note(format!("replica-{leader} (leader) SIGKILLed"));
                let new = self.wait_new_leader(leader);
                timeline.note(format!("replica-{new} elected"));
                hold(since);
                self.before_heal("the leader kill", sim_rollout, real_rollout, timeline);
                self.restart(leader);
                timeline.note(format!("replica-{leader} restarted"));
                let leader = self.wait_healthy("the killed leader back as a voter");
                let follower = REPLICAS.iter().copied().find(|id| *id != leader).expect("a follower");
                let healthy = self.healthy(sim_rollout);
                self.kill9(follower);
                let since = Instant::now();
                timeline.note(format!("replica-{follower} (follower) SIGKILLed"));
                let now = self.wait_progress(sim_rollout, healthy);
                timeline.note(format!("{now} nodes healthy"));
                hold(since);
                self.before_heal("the follower kill", sim_rollout, real_rollout, timeline);
                self.restart(follower);
                timeline.note(format!("replica-{follower} restarted"));
            }
            Schedule::CutNodes => {
                let (sim_c, sim_n) = (self.sims[0].container.clone(), self.sims[0].count);
                let (real_c, real_id) = (self.reals[0].container.clone(), self.reals[0].machine_id.clone());
                self.docker.disconnect(&self.control, &sim_c);
                self.docker.disconnect(&self.control, &real_c);
                let since = Instant::now();
                timeline.note(format!("{sim_n} simulated nodes and real node {real_id} cut off"));
                let expected = (self.sim_total() + REAL_NODES - sim_n - 1) as u64;
                self.wait("the control plane to see the cut-off nodes offline", Duration::from_secs(30), || {
                    self.online_nodes().filter(|n| *n <= expected)
                });
                timeline.note("the control plane sees them offline".into());
                hold(since);
                self.before_heal("the cut-off", sim_rollout, real_rollout, timeline);
                self.docker.connect::<&str>(&self.control, &sim_c, &[]);
                self.docker.connect::<&str>(&self.control, &real_c, &[]);
                timeline.note("reconnected".into());
            }
        }
    }

    /// Runs `schedule` over a rollout of the simulated nodes to `sim_release`
    /// and one of the real nodes to `real_release`; checks everything.
    fn run_schedule(&mut self, schedule: Schedule, sim_release: &str, real_release: &str) -> Outcome {
        self.wait_healthy("a healthy cluster before the schedule");
        let mut timeline = Timeline::new();
        let since_ms = unix_ms();
        let calls_before: Vec<usize> = self.reals.iter().map(|r| r.agent_calls().len()).collect();
        let sim_mu = SIM_MAX_UNAVAILABLE.to_string();
        let real_mu = REAL_MAX_UNAVAILABLE.to_string();
        let sim_id = self.create_rollout(&[
            "--to",
            sim_release,
            "--label",
            "site=sim",
            "--waves",
            "1,100%",
            "--max-unavailable",
            &sim_mu,
            "--bake",
            "0s",
        ]);
        let real_id = self.create_rollout(&[
            "--to",
            real_release,
            "--label",
            "site=real",
            "--waves",
            "100%",
            "--max-unavailable",
            &real_mu,
            "--bake",
            "0s",
        ]);
        timeline.note(format!("rollouts {sim_id} and {real_id} created"));
        let config = self.config();
        let watch_out = self.path(&format!("watch-{sim_id}.jsonl"));
        let mut watch = self.docker.exec_spawn(
            &self.ctl,
            &["kairosctl", "--config", config.as_str(), "rollout", "watch", sim_id.as_str(), "-o", "json"],
            &watch_out,
        );
        self.wait("nodes in flight", Duration::from_secs(60), || {
            let status = self.rollout_status(&sim_id)?;
            node_states(&status).values().any(|v| v == "in_flight").then_some(())
        });
        self.inject(schedule, &sim_id, &real_id, &mut timeline);

        let sim_done = self.wait(&format!("rollout {sim_id} completed"), COMPLETION_TIMEOUT, || {
            self.rollout_status(&sim_id).filter(|s| phase_of(s) == "completed")
        });
        let real_done = self.wait(&format!("rollout {real_id} completed"), COMPLETION_TIMEOUT, || {
            self.rollout_status(&real_id).filter(|s| phase_of(s) == "completed")
        });
        timeline.note("both rollouts completed".into());
        let duration = timeline.start.elapsed();

        let mut violations = Vec::new();
        violations.extend(timeline.idle_faults.iter().cloned());
        // Completion: every node of each rollout healthy.
        let sim_states = node_states(&sim_done);
        let real_states = node_states(&real_done);
        if sim_states.len() != self.sim_total() || sim_states.values().any(|s| s != "healthy") {
            violations.push(format!("rollout {sim_id} ended with {sim_states:?}"));
        }
        if real_states.len() != REAL_NODES || real_states.values().any(|s| s != "healthy") {
            violations.push(format!("rollout {real_id} ended with {real_states:?}"));
        }
        // The simulated nodes' history: one target, no generation reused,
        // nothing acknowledged lost.
        let records = self.read_histories(since_ms);
        let sim_verdict = history::check(&records, &sim_id, usize::MAX, &sim_states);
        violations.extend(sim_verdict.violations.iter().cloned());
        // In flight as the control plane recorded it.
        let sim_recorded = history::check_recorded(&recorded_intervals(&sim_done), SIM_MAX_UNAVAILABLE);
        let real_recorded = history::check_recorded(&recorded_intervals(&real_done), REAL_MAX_UNAVAILABLE);
        violations.extend(sim_recorded.violations.iter().map(|v| format!("rollout {sim_id}: {v}")));
        violations.extend(real_recorded.violations.iter().map(|v| format!("rollout {real_id}: {v}")));
        // The real nodes: installed exactly the target, and run it now.
        let target_tag = real_tag(real_release);
        for (node, before) in self.reals.iter().zip(calls_before) {
            let calls = node.agent_calls();
            let new = &calls[before.min(calls.len())..];
            if new.is_empty() || new.iter().any(|c| !c.contains(&target_tag)) {
                violations.push(format!("real node {}: the agent was asked to install {new:?}", node.machine_id));
            }
            let shown = self.ctl_json(&["nodes", "get", &node.machine_id]);
            let release = shown.as_ref().and_then(|v| v["node"]["release"].as_str()).unwrap_or_default();
            if release != real_release {
                violations.push(format!("real node {} runs {release:?}, not {real_release}", node.machine_id));
            }
        }
        // The watch followed the rollout through the faults to its end.
        let watch_deadline = Instant::now() + WATCH_GRACE;
        let watched = loop {
            match watch.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < watch_deadline => std::thread::sleep(Duration::from_millis(200)),
                _ => {
                    let _ = watch.kill();
                    let _ = watch.wait();
                    break None;
                }
            }
        };
        let watch_text = std::fs::read_to_string(&watch_out).unwrap_or_default();
        let events = watch_text.lines().filter(|l| serde_json::from_str::<Value>(l).is_ok()).count();
        let last_phase = watch_text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| phase_of(&v))
            .unwrap_or_default();
        match watched {
            Some(status) if status.success() && last_phase == "completed" => {}
            Some(status) => violations.push(format!(
                "rollout watch {sim_id} ended ({status}) with phase {last_phase:?}: {}",
                std::fs::read_to_string(watch_out.with_extension("jsonl.err")).unwrap_or_default()
            )),
            None => violations.push(format!(
                "rollout watch {sim_id} still ran {WATCH_GRACE:?} after the rollout completed \
                 ({events} events, the last phase {last_phase:?})"
            )),
        }

        let line = format!(
            "{}: faults [{}]; checked {} history records, {} nodes ({} simulated, {} real), {} rollout events; \
             {} invariant violations; most in flight {}/{} simulated, {}/{} real; {:.1} s",
            schedule.label(),
            timeline.events.join(", "),
            sim_verdict.operations,
            sim_states.len() + real_states.len(),
            sim_states.len(),
            real_states.len(),
            events,
            violations.len(),
            sim_recorded.max_in_flight,
            SIM_MAX_UNAVAILABLE,
            real_recorded.max_in_flight,
            REAL_MAX_UNAVAILABLE,
            duration.as_secs_f64(),
        );
        Outcome { line, violations }
    }
}

/// Images of this run: build-images' three with the run's tag, and two
/// derived with busybox (the real nodes' shell, the ctl container's sleep).
struct Images {
    controlplane: String,
    node_client: String,
    registry: String,
    node_busybox: String,
    ctl_busybox: String,
}

fn build_images(docker: &Docker, scratch: &Path) -> Images {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install Debian's busybox-static (scripts/test does), the shell of the real \
         nodes' stand-in kairos-agent"
    );
    let tag = docker.prefix().to_string();
    let images = Images {
        controlplane: format!("kairos-fleet/controlplane:{tag}"),
        node_client: format!("kairos-fleet/node-client:{tag}"),
        registry: format!("kairos-fleet/registry:{tag}"),
        node_busybox: format!("kairos-fleet-test/node-client-busybox:{tag}"),
        ctl_busybox: format!("kairos-fleet-test/controlplane-busybox:{tag}"),
    };
    for image in [&images.controlplane, &images.node_client, &images.registry] {
        docker.own_image(image);
    }
    let (target_dir, profile) = target_and_profile();
    let out = Command::new(workspace().join("scripts/build-images"))
        .args(["--profile", profile, "--skip-build", "--tag", &tag])
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running scripts/build-images: {e}"));
    assert!(out.status.success(), "scripts/build-images failed: {}", output_text(&out));

    for (name, base, install) in [("node", &images.node_client, true), ("ctl", &images.controlplane, false)] {
        let context = scratch.join(format!("image-{name}"));
        std::fs::create_dir_all(&context).expect("image context");
        std::fs::copy(busybox, context.join("busybox")).expect("copy busybox");
        // The controlplane image runs as its service user; busybox is only
        // the ctl container's `sleep` there, so no applet links are needed.
        let run = if install { "RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n" } else { "" };
        std::fs::write(context.join("Dockerfile"), format!("FROM {base}\nCOPY busybox /bin/busybox\n{run}"))
            .expect("Dockerfile");
        let image = if install { &images.node_busybox } else { &images.ctl_busybox };
        docker.build_image(image, &context);
    }
    images
}

/// The stand-in kairos-agent: records its arguments, checks the archive,
/// and rewrites the root's release file to the release the target image
/// names. The reboot: a new boot id, then SIGTERM to the client (PID 1 of
/// its container, which `unless-stopped` starts again, as the machine would).
fn real_node_files(dir: &Path, root: &Path, servers: &[String]) -> PathBuf {
    let agent = dir.join("kairos-agent");
    let agent_text = format!(
        r#"#!/bin/sh
echo "$@" >> "{args}"
archive="$3"
image="$4"
test -s "${{archive#ocifile:}}" || {{ echo "no archive at $archive" >&2; exit 1; }}
release="$(echo "$image" | sed -n 's/.*-generic-\(v[0-9.]*\)-k3s.*/\1/p')"
test -n "$release" || {{ echo "no release in $image" >&2; exit 1; }}
sed -i -e "s/^KAIROS_RELEASE=.*/KAIROS_RELEASE=\"$release\"/" \
  -e "s/generic-v[0-9.]*-k3s/generic-$release-k3s/" "{root}/etc/kairos-release"
"#,
        args = dir.join("agent-args").display(),
        root = root.display(),
    );
    std::fs::write(&agent, agent_text).expect("agent script");
    let reboot = dir.join("reboot");
    let reboot_text = format!(
        "#!/bin/sh\nmkdir -p \"{root}/proc/sys/kernel/random\"\ncat /proc/sys/kernel/random/uuid > \"{root}/proc/sys/kernel/random/boot_id\"\nkill -TERM $PPID\n",
        root = root.display(),
    );
    std::fs::write(&reboot, reboot_text).expect("reboot script");
    let config = dir.join("node-client.toml");
    let quoted: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let config_text = format!(
        r#"state_dir = "{state}"
servers = [{servers}]

[registry]
plain_http = ["registry:5000"]

[registry.mirrors]
"quay.io" = ["registry:5000"]

[upgrade]
command = ["/bin/sh", "{agent}", "upgrade", "--source", "ocifile:{{archive}}", "{{image}}"]
reboot_command = ["/bin/sh", "{reboot}"]
executor_timeout = "60s"
"#,
        state = dir.join("state").display(),
        servers = quoted.join(", "),
        agent = agent.display(),
        reboot = reboot.display(),
    );
    std::fs::write(&config, config_text).expect("node client config");
    config
}

/// Lays out and starts everything: images, networks, the replicas, the
/// ctl container, the registry with the real nodes' images, the catalog,
/// the simulators and the real nodes.
fn start_fleet(sim_nodes: usize, releases: usize) -> Fleet {
    let docker = Docker::new("faults");
    let dir = tempfile::Builder::new().prefix("kairos-faults-").tempdir().expect("temp dir");
    let images = build_images(&docker, dir.path());
    let control = docker.create_network("control");
    let image_net = docker.create_network("images");
    let user = host_user();

    let mut init = Command::new(binary("kairos-controlplane"));
    init.arg("init").arg("--data-dir").arg(dir.path());
    for id in REPLICAS {
        init.arg("--replica").arg(format!("{id}=replica-{id}:7001"));
    }
    let out = init.output().expect("kairos-controlplane init");
    assert!(out.status.success(), "init failed: {}", output_text(&out));

    let mut replicas = BTreeMap::new();
    for id in REPLICAS {
        let name = format!("replica-{id}");
        let data = dir.path().join(&name).display().to_string();
        let mut args = vec!["serve", "--data-dir", data.as_str(), "--listen", "0.0.0.0:7001"];
        args.extend_from_slice(&SERVE_TIMINGS);
        if id != 1 {
            args.extend_from_slice(&["--join", "replica-1:7001"]);
        }
        let spec = ContainerSpec::new(&name, &images.controlplane)
            .hostname(&name)
            .network(&control, &[name.as_str()])
            .user(&user)
            .mount_same(dir.path())
            .env("RUST_LOG", "info,openraft=warn,h2=warn,tower=warn")
            .args(&args);
        replicas.insert(id, docker.run(&spec));
    }
    let ctl_spec = ContainerSpec::new("ctl", &images.ctl_busybox)
        .network(&control, &[])
        .user(&user)
        .mount_same(dir.path())
        .entrypoint("/bin/busybox")
        .args(&["sleep", "86400"]);
    let ctl = docker.run(&ctl_spec);
    let mut fleet = Fleet {
        docker,
        dir,
        control,
        image_net,
        replicas,
        down: BTreeSet::new(),
        ctl,
        sims: Vec::new(),
        reals: Vec::new(),
    };
    fleet.wait_healthy("three voters and a leader");

    // The registry: the test pushes through a published port, the nodes
    // pull from it by its alias on the images network.
    let registry_spec =
        ContainerSpec::new("registry", &images.registry).network(&fleet.image_net, &["registry"]).publish(5000);
    let registry = fleet.docker.run(&registry_spec);
    let registry_addr = format!("127.0.0.1:{}", fleet.docker.host_port(&registry, 5000));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    fleet.wait("the registry container to answer", Duration::from_secs(30), || {
        runtime.block_on(kairos_fleet_testkit::registry_answers(&registry_addr)).then_some(())
    });
    let real_releases: Vec<String> = (0..=releases).map(|i| format!("v2.4.{}", 2 + i)).collect();
    for release in &real_releases[1..] {
        let layers = vec![format!("rootfs of {release}").repeat(2048).into_bytes(), vec![7u8; 200_000]];
        runtime.block_on(kairos_fleet_testkit::push_image(
            &registry_addr,
            REAL_REPOSITORY,
            &[&real_tag(release)],
            layers,
            "amd64",
        ));
    }

    // The catalog: every seed family at v1.6.0..v1.6.<releases>, the real
    // nodes' image at every release.
    let mut refs: Vec<String> = (0..=releases).flat_map(|i| seed_images(&format!("1.6.{i}"))).collect();
    refs.extend(real_releases.iter().map(|r| format!("quay.io/{REAL_REPOSITORY}:{}", real_tag(r))));
    let mut args = vec!["releases", "add"];
    args.extend(refs.iter().map(String::as_str));
    fleet.ctl_ok(&args);

    let servers: Vec<String> = REPLICAS.iter().map(|id| format!("https://replica-{id}:7001")).collect();
    let ca = fleet.path("ca.pem").display().to_string();

    let sim_token = fleet.enroll_token(sim_nodes, "sim");
    let per_sim = sim_nodes.div_ceil(SIMULATORS);
    let mut left = sim_nodes;
    for k in 1..=SIMULATORS {
        let count = per_sim.min(left);
        left -= count;
        if count == 0 {
            break;
        }
        let history = fleet.path(&format!("sim-{k}.jsonl"));
        let count_text = count.to_string();
        let seed = (100 + k).to_string();
        let history_text = history.display().to_string();
        let joined = servers.join(",");
        let args = [
            "simulate",
            "--count",
            &count_text,
            "--server",
            &joined,
            "--ca-file",
            &ca,
            "--seed",
            &seed,
            "--release",
            "v1.6.0",
            "--upgrade-step",
            UPGRADE_STEP,
            "--concurrency",
            "8",
            "--history",
            &history_text,
        ];
        let spec = ContainerSpec::new(&format!("sim-{k}"), &images.node_client)
            .network(&fleet.control, &[])
            .user(&user)
            .mount_same(fleet.dir.path())
            .env("KAIROS_FLEET_TOKEN", &sim_token)
            .env("RUST_LOG", "warn")
            .args(&args);
        let container = fleet.docker.run(&spec);
        fleet.sims.push(Simulator { container, history, count });
    }

    let real_token = fleet.enroll_token(REAL_NODES, "real");
    for k in 1..=REAL_NODES {
        let machine_id = format!("{k:02}1e1d1c1b1a19181716151413121110");
        let node_dir = fleet.path(&format!("real-{k}"));
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let root = node_root(&node_dir, &machine_id);
        let config = real_node_files(&node_dir, &root, &servers);
        let state = node_dir.join("state").display().to_string();
        let root_text = root.display().to_string();
        let enroll = ContainerSpec::new(&format!("enroll-{k}"), &images.node_busybox)
            .network(&fleet.control, &[])
            .user(&user)
            .mount_same(fleet.dir.path())
            .env("KAIROS_FLEET_TOKEN", &real_token)
            .args(&["enroll", "--server", &servers[0], "--state-dir", &state, "--root", &root_text, "--ca-file", &ca]);
        let out = fleet.docker.run_to_end(&enroll);
        assert!(out.status.success(), "enrolling real node {k}: {}", output_text(&out));
        let config_text = config.display().to_string();
        let spec = ContainerSpec::new(&format!("real-{k}"), &images.node_busybox)
            .network(&fleet.control, &[])
            .network(&fleet.image_net, &[])
            .user(&user)
            .mount_same(fleet.dir.path())
            .restart("unless-stopped")
            .env("RUST_LOG", "info")
            .args(&["run", "--config", &config_text, "--root", &root_text]);
        let container = fleet.docker.run(&spec);
        fleet.reals.push(RealNode { container, machine_id, dir: node_dir });
    }

    let all = (sim_nodes + REAL_NODES) as u64;
    fleet.wait(&format!("{all} nodes online"), Duration::from_secs(90), || fleet.online_nodes().filter(|n| *n >= all));
    fleet
}

#[test]
fn rollouts_complete_through_partitions_replica_kills_and_cut_off_nodes_without_breaking_an_invariant() {
    let rounds = env_number("KAIROS_FAULTS_ROUNDS", 1).max(1);
    let sim_nodes = env_number("KAIROS_FAULTS_NODES", 24).max(SIMULATORS);
    let started = Instant::now();
    let fleet_releases = rounds * Schedule::ALL.len();
    let mut fleet = start_fleet(sim_nodes, fleet_releases);
    println!(
        "fault suite: 3 replicas, {sim_nodes} simulated nodes in {SIMULATORS} containers, {REAL_NODES} real node \
         clients, {rounds} round(s); set up in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut failures = Vec::new();
    let mut release = 0;
    for round in 1..=rounds {
        for schedule in Schedule::ALL {
            release += 1;
            let outcome = fleet.run_schedule(schedule, &format!("v1.6.{release}"), &format!("v2.4.{}", 2 + release));
            println!("round {round} {}", outcome.line);
            failures.extend(outcome.violations.into_iter().map(|v| format!("{}: {v}", schedule.label())));
        }
    }
    println!("fault suite: {} schedules in {:.1} s", fleet_releases, started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "invariant violations or incomplete rollouts:\n{}", failures.join("\n"));

    // Everything of the run goes, and nothing of it is left behind.
    fleet.docker.remove_all();
    let left = fleet.docker.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn the_docker_harness_partitions_kills_restarts_and_removes_everything_of_its_run_when_dropped() {
    let docker = Docker::new("guard");
    let prefix = docker.prefix().to_string();
    let context = tempfile::tempdir().expect("temp dir");
    std::fs::copy("/bin/busybox", context.path().join("busybox"))
        .expect("/bin/busybox (Debian's busybox-static) to copy into the test image");
    // FROM scratch pulls nothing.
    std::fs::write(context.path().join("Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\n").expect("Dockerfile");
    let image = format!("kairos-fleet-test/busybox:{prefix}");
    docker.build_image(&image, context.path());
    let network = docker.create_network("net");
    let sleeper = ContainerSpec::new("sleeper", &image)
        .network(&network, &["sleeper"])
        .entrypoint("/bin/busybox")
        .args(&["sleep", "600"]);
    let sleeper = docker.run(&sleeper);
    let pinger =
        ContainerSpec::new("pinger", &image).network(&network, &[]).entrypoint("/bin/busybox").args(&["sleep", "600"]);
    let pinger = docker.run(&pinger);
    assert!(docker.is_running(&sleeper));
    let resolves = || docker.exec(&pinger, &["/bin/busybox", "nslookup", "sleeper", "127.0.0.11"]).status.success();
    assert!(resolves(), "the alias resolves on the network");
    docker.disconnect(&network, &sleeper);
    assert!(!resolves(), "a disconnected container's alias no longer resolves");
    docker.connect(&network, &sleeper, &["sleeper"]);
    assert!(resolves(), "the alias resolves again after the reconnect");
    docker.kill9(&sleeper);
    assert!(!docker.is_running(&sleeper));
    docker.start(&sleeper);
    assert!(docker.is_running(&sleeper));
    let echo = docker.exec(&sleeper, &["/bin/busybox", "echo", "still here"]);
    assert_eq!(String::from_utf8_lossy(&echo.stdout).trim(), "still here");

    drop(docker);
    let label = format!("label=kairos-fleet.test={prefix}");
    let listed = |args: &[&str]| {
        let out = Command::new("docker").args(args).output().expect("docker");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(listed(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]), "", "containers left");
    assert_eq!(listed(&["network", "ls", "--filter", &label, "--format", "{{.Name}}"]), "", "networks left");
    assert_eq!(listed(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}", &image]), "", "image left");
}
