//! The Python example client (`examples/python/fleet_client.py`) against a
//! real one-replica control plane with simulated nodes: it lists the nodes
//! kairosctl lists, creates a rollout, watches it and pauses it, and
//! kairosctl sees the pause with the reason the script sent. The client
//! runs with the venv `scripts/test` makes (`target/python-venv`), or the
//! Python named by `KAIROS_FLEET_PYTHON`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use kairos_fleet_tests::json::parse as json;
use kairos_fleet_tests::sim::{add_releases, ca_file, seed_images, Simulator, SimulatorOptions};
use kairos_fleet_tests::{ok_stdout, wait_for, workspace, Cluster};
use serde_json::Value;

/// Simulated nodes (each of another seed image family).
const NODES: usize = 4;

/// The Python interpreter with `examples/python/requirements.txt`
/// installed. Missing is a failure, not a skip: CI must run this test.
fn python() -> PathBuf {
    let path = std::env::var_os("KAIROS_FLEET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/python-venv/bin/python"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test (it creates target/python-venv from examples/python/requirements.txt), \
         or set KAIROS_FLEET_PYTHON to a Python that has those packages",
        path.display()
    );
    path
}

/// `fleet_client.py` pointed at one replica of `cluster` with the admin token.
struct PythonClient {
    python: PathBuf,
    script: PathBuf,
    server: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    stubs_dir: PathBuf,
}

impl PythonClient {
    fn new(cluster: &Cluster, python: PathBuf) -> PythonClient {
        PythonClient {
            python,
            script: workspace().join("examples/python/fleet_client.py"),
            server: format!("https://{}", cluster.addresses[&1]),
            ca_file: ca_file(cluster),
            token_file: cluster.dir.path().join("admin.token"),
            // Generated afresh for this run, so the test checks the stubs
            // the current protos give.
            stubs_dir: cluster.dir.path().join("python-stubs"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .arg("--server")
            .arg(&self.server)
            .arg("--ca-file")
            .arg(&self.ca_file)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--stubs-dir")
            .arg(&self.stubs_dir)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap_or_else(|e| panic!("running fleet_client.py {args:?}: {e}"))
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting fleet_client.py {args:?}: {e}"))
    }
}

/// Node ids kairosctl lists.
fn kairosctl_node_ids(cluster: &Cluster) -> BTreeSet<String> {
    let out = json(&ok_stdout(&cluster.ctl(&["nodes", "list", "--all", "-o", "json"]), "nodes list"));
    let nodes = out.get("nodes").and_then(Value::as_array).or_else(|| out.as_array()).expect("a node list");
    nodes.iter().filter_map(|n| n["node_id"].as_str().map(str::to_string)).collect()
}

/// Hands the lines of a child's stdout over a channel as they come.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads watch lines (JSON events) until one satisfies `stop`; every line
/// read so far.
fn read_until(rx: &Receiver<String>, what: &str, timeout: Duration, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let event = json(&line);
                let done = stop(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("no watch event {what} within {timeout:?}; saw {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the watch ended before an event {what}; saw {seen:#?}"),
        }
    }
}

/// Waits for `child` to exit within `timeout`; kills it otherwise.
fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the watch") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the watch did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_python_client_lists_nodes_creates_watches_and_pauses_a_rollout_that_kairosctl_sees_paused() {
    let started = Instant::now();
    let python = python();
    let mut cluster = Cluster::init(1);
    cluster.form(&["--node-heartbeat-ms", "1000"]);
    let client = PythonClient::new(&cluster, python);
    // Upgrades at the simulator's default pace (2 s a step), so the rollout
    // is still running when the script pauses it.
    let opts = SimulatorOptions { name: "python".into(), ..SimulatorOptions::new(&cluster, NODES) }
        .arg(&["--release", "v1.6.0"]);
    let sim = Simulator::start_with(&cluster, &opts);
    add_releases(&cluster, &seed_images("1.6.0"));
    add_releases(&cluster, &seed_images("1.6.1"));
    let enrolled = wait_for(&format!("{NODES} nodes online"), Duration::from_secs(30), || {
        let report: Value = serde_json::from_slice(&cluster.ctl(&["fleet", "report", "-o", "json"]).stdout).ok()?;
        (report["online_nodes"].as_u64()? == NODES as u64).then(|| kairosctl_node_ids(&cluster))
    });
    assert_eq!(enrolled.len(), NODES, "{}", sim.log_text());

    // nodes -o json: one node a line, the same nodes kairosctl lists.
    let out = ok_stdout(&client.run(&["nodes", "-o", "json"]), "fleet_client.py nodes -o json");
    let listed: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(listed.len(), NODES, "{out}");
    let ids: BTreeSet<String> = listed.iter().filter_map(|n| n["node_id"].as_str().map(str::to_string)).collect();
    assert_eq!(ids, enrolled, "{out}");
    assert!(listed.iter().all(|n| n["online"] == Value::Bool(true)), "{out}");
    assert!(listed.iter().all(|n| n["identity"]["release"] == "v1.6.0"), "{out}");
    // nodes: a header and one row a node.
    let table = ok_stdout(&client.run(&["nodes"]), "fleet_client.py nodes");
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("NODE ID"), "{table}");
    assert_eq!(rows.len(), NODES + 1, "{table}");
    assert!(enrolled.iter().all(|id| rows.iter().any(|row| row.starts_with(id.as_str()))), "{table}");

    // create: one node at a time, so the rollout lasts a while.
    let out = ok_stdout(
        &client.run(&["create", "--to", "v1.6.1", "--waves", "1,100%", "--max-unavailable", "1"]),
        "fleet_client.py create",
    );
    let id = out.trim().to_string();
    assert!(id.starts_with("ro-") && !id.contains(char::is_whitespace), "create prints the rollout id: {out:?}");
    let status = json(&ok_stdout(&cluster.ctl(&["rollout", "status", &id, "-o", "json"]), "rollout status"));
    assert_eq!(status["rollout"]["target_release"], "v1.6.1", "{status}");
    assert_eq!(status["rollout"]["resolved_strategy"]["max_unavailable"], 1, "{status}");

    // watch until paused, attached before the pause.
    let mut watch = client.spawn(&["watch", &id, "--until", "paused", "-o", "json"]);
    let events = lines_of(&mut watch);
    let mut seen = read_until(&events, "of a running rollout", Duration::from_secs(20), |e| e["phase"] == "running");
    if !seen.iter().any(|e| e["kind"] == "synced") {
        seen.extend(read_until(&events, "synced", Duration::from_secs(10), |e| e["kind"] == "synced"));
    }

    let reason = "python client test: hold the fleet";
    let out = ok_stdout(&client.run(&["pause", &id, "--reason", reason]), "fleet_client.py pause");
    assert_eq!(out.trim(), format!("{id} paused: {reason}"));

    seen.extend(read_until(&events, "of the paused rollout", Duration::from_secs(20), |e| e["phase"] == "paused"));
    let status = wait_exit(&mut watch, Duration::from_secs(10));
    let stderr = watch.stderr.take().map(std::io::read_to_string).and_then(Result::ok).unwrap_or_default();
    assert!(status.success(), "watch --until paused exits 0 ({status}): {stderr}");
    assert!(seen.iter().all(|e| e["rollout_id"].as_str().is_none_or(|r| r == id)), "{seen:#?}");
    assert_eq!(seen.first().map(|e| e["kind"].clone()), Some("existing".into()), "the watch starts with the rollout");
    let last = seen.last().expect("events");
    assert_eq!(last["reason"], reason, "{last}");
    assert!(last["revision"].as_u64().unwrap_or(0) > seen[0]["revision"].as_u64().unwrap_or(u64::MAX), "{seen:#?}");

    // kairosctl sees the pause, by an operator, with the script's reason.
    let status = json(&ok_stdout(&cluster.ctl(&["rollout", "status", &id, "-o", "json"]), "rollout status"));
    assert_eq!(status["rollout"]["phase"], "paused", "{status}");
    assert_eq!(status["rollout"]["pause_reason"], "operator", "{status}");
    assert_eq!(status["rollout"]["reason_message"], reason, "{status}");
    let kinds: Vec<String> = seen.iter().map(|e| format!("{}/{}", e["kind"], e["phase"])).collect();
    println!("python client watched {}; the test took {:.1} s", kinds.join(" "), started.elapsed().as_secs_f64());
    drop(sim);
}
