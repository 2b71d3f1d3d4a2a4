//! Nodes against a real three-replica cluster (separate processes on
//! loopback): the node client enrolls and keeps a session, replicas
//! SIGKILLed under their node streams, and heartbeats that never reach raft.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kairos_fleet_tests::sim::{ca_file, enroll_token, node_root, server, spawn_logged, Simulator};
use kairos_fleet_tests::{binary, ok_stdout, wait_for, Cluster};
use serde_json::Value;

/// Heartbeat interval of the replicas in these tests (liveness: 3x).
const HEARTBEAT_MS: &str = "1000";

fn start_all(cluster: &mut Cluster) {
    cluster.form(&["--node-heartbeat-ms", HEARTBEAT_MS]);
}

fn node_client(args: &[&str]) -> std::process::Output {
    Command::new(binary("kairos-node-client"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running kairos-node-client {args:?}: {e}"))
}

/// Every node kairosctl lists, as JSON.
fn list_nodes(cluster: &Cluster) -> Option<Vec<Value>> {
    let out = cluster.ctl(&["nodes", "list", "--all", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let listed: Value = serde_json::from_slice(&out.stdout).ok()?;
    match listed {
        Value::Array(nodes) => Some(nodes),
        Value::Object(map) => map.get("nodes").and_then(Value::as_array).cloned(),
        _ => None,
    }
}

fn online_via(node: &Value) -> Option<u64> {
    (node["online"].as_bool() == Some(true)).then(|| node["connected_replica_id"].as_u64().unwrap_or(0))
}

fn commit_index(cluster: &Cluster) -> u64 {
    let out = ok_stdout(&cluster.ctl(&["cluster", "status", "-o", "json"]), "cluster status");
    let status: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    status["commit_index"].as_u64().unwrap_or_else(|| panic!("no commit_index in {out}"))
}

#[test]
fn the_node_client_enrolls_connects_and_reports_its_identity() {
    let mut cluster = Cluster::init(3);
    start_all(&mut cluster);
    let token = enroll_token(&cluster, 1);
    let machine_id = "0f0e0d0c0b0a09080706050403020100";
    let root = node_root(cluster.dir.path(), machine_id);
    let state = cluster.dir.path().join("node-state");
    let ca = ca_file(&cluster);
    let enroll = node_client(&[
        "enroll",
        "--server",
        &server(&cluster, 2),
        "--token",
        &token,
        "--root",
        root.to_str().expect("utf-8 path"),
        "--state-dir",
        state.to_str().expect("utf-8 path"),
        "--ca-file",
        ca.to_str().expect("utf-8 path"),
    ]);
    ok_stdout(&enroll, "kairos-node-client enroll");
    // The token allowed one enrollment.
    let again = node_client(&[
        "enroll",
        "--server",
        &server(&cluster, 1),
        "--token",
        &token,
        "--root",
        root.to_str().expect("utf-8 path"),
        "--state-dir",
        cluster.dir.path().join("other-state").to_str().expect("utf-8 path"),
        "--ca-file",
        ca.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(again.status.code(), Some(3), "a used-up token is refused: {}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("used"), "{}", String::from_utf8_lossy(&again.stderr));

    let config = cluster.dir.path().join("node-client.toml");
    std::fs::write(&config, "[labels]\nrack = \"r7\"\nsite = \"node-says\"\n").expect("config");
    let mut cmd = Command::new(binary("kairos-node-client"));
    cmd.arg("run").arg("--config").arg(&config).arg("--root").arg(&root).arg("--state-dir").arg(&state);
    let mut run = spawn_logged(cmd, &cluster.dir.path().join("node-run.log"));
    let node = wait_for("the node online", Duration::from_secs(30), || {
        let out = cluster.ctl(&["nodes", "get", machine_id, "-o", "json"]);
        let node: Value = serde_json::from_slice(&out.stdout).ok()?;
        let node = node.get("node").cloned().unwrap_or(node);
        online_via(&node).map(|_| node)
    });
    let _ = run.kill();
    let _ = run.wait();
    assert_eq!(node["flavor"], "opensuse", "{node}");
    assert_eq!(node["release"], "v2.4.2", "{node}");
    assert_eq!(node["software_version"], "v1.27.6+k3s1", "{node}");
    assert_eq!(node["boot_state"], "active", "from the kernel command line: {node}");
    assert_eq!(node["labels"]["site"], "lab", "enrollment labels win: {node}");
    assert_eq!(node["labels"]["rack"], "r7", "{node}");
}

#[test]
fn nodes_of_a_sigkilled_replica_come_back_online_through_the_others() {
    let mut cluster = Cluster::init(3);
    start_all(&mut cluster);
    let count = 60;
    let sim = Simulator::start(&cluster, &[1, 2, 3], count, "90s");
    let nodes = wait_for("every simulated node online", Duration::from_secs(60), || {
        let nodes = list_nodes(&cluster)?;
        (nodes.len() == count && nodes.iter().all(|n| online_via(n).is_some())).then_some(nodes)
    });
    // The leader dies, with the streams it holds: the nodes must find
    // another replica while the others elect a new leader.
    let mut held = [0usize; 4];
    for node in &nodes {
        held[online_via(node).unwrap_or(0) as usize % 4] += 1;
    }
    let victim = cluster.leader(&[1, 2, 3]).expect("a leader");
    assert!(held[victim as usize] > 0, "the leader holds streams: {held:?}");
    println!(
        "streams per replica before the kill: 1: {}, 2: {}, 3: {}; killing replica {victim} (the leader)",
        held[1], held[2], held[3]
    );
    let killed = Instant::now();
    cluster.kill9(victim);
    let survivors: Vec<u64> = (1..=3u64).filter(|id| *id != victim).collect();
    wait_for("every node online through a surviving replica", Duration::from_secs(60), || {
        let out = cluster.ctl_on(survivors[0], &["nodes", "list", "--all", "-o", "json"]);
        let listed: Value = serde_json::from_slice(&out.stdout).ok()?;
        let nodes = listed.get("nodes").and_then(Value::as_array).cloned().or_else(|| listed.as_array().cloned())?;
        let moved = nodes.iter().filter(|n| online_via(n).is_some_and(|r| survivors.contains(&r))).count();
        (moved == count).then_some(())
    });
    println!(
        "all {count} nodes online through replicas {survivors:?} {:.2} s after replica {victim} was SIGKILLed \
         (node heartbeat {HEARTBEAT_MS} ms)",
        killed.elapsed().as_secs_f64()
    );
    drop(sim);
}

#[test]
fn heartbeats_of_a_thousand_nodes_for_a_minute_add_no_raft_entries() {
    let mut cluster = Cluster::init(3);
    start_all(&mut cluster);
    let count = 1000;
    let sim = Simulator::start(&cluster, &[1, 2, 3], count, "10m");
    wait_for("every simulated node online", Duration::from_secs(180), || {
        let nodes = list_nodes(&cluster)?;
        (nodes.len() == count && nodes.iter().all(|n| online_via(n).is_some())).then_some(())
    });
    // Let the last connect batches and any reconciliation settle.
    let settled = wait_for("the log to settle", Duration::from_secs(30), || {
        let before = commit_index(&cluster);
        std::thread::sleep(Duration::from_secs(3));
        (commit_index(&cluster) == before).then_some(before)
    });
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let after = commit_index(&cluster);
    println!(
        "{count} nodes, heartbeat every {HEARTBEAT_MS} ms, for {:.0} s: raft commit index {settled} -> {after}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(after, settled, "heartbeats added raft entries");
    let nodes = list_nodes(&cluster).expect("list");
    assert!(nodes.iter().all(|n| online_via(n).is_some()), "every node stayed online");
    let report = sim.report();
    let acked = report["heartbeats_acked"].as_u64().unwrap_or(0);
    println!("simulator: {acked} heartbeats acknowledged; summary {report}");
    assert!(acked >= (count as u64) * 50, "about one heartbeat per node per second was answered: {report}");
}
