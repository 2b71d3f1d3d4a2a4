//! The binary's exit codes and signal handling, against a fake control plane.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{Behaviour, FakeServer, Fleet, TOKEN};
use tokio::process::Command;

const NODE: &str = "feedfacefeedfacefeedfacefeedface";
const LIMIT: Duration = Duration::from_secs(20);

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kairos-node-client"));
    command.env_remove("KAIROS_FLEET_TOKEN").env("RUST_LOG", "info").kill_on_drop(true);
    command
}

async fn enroll(url: &str, dir: &Path, token: &str, extra: &[&str]) -> Output {
    let mut command = bin();
    command.arg("enroll").arg("--server").arg(url).arg("--token").arg(token);
    command.arg("--state-dir").arg(dir.join("state")).arg("--root").arg(dir.join("root"));
    command.args(extra);
    tokio::time::timeout(LIMIT, command.output()).await.expect("enroll finishes").expect("runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_exits_2_for_usage_3_for_a_refusal_and_needs_force_to_enroll_again() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    support::node_root(&dir.path().join("root"), NODE);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &fleet.ca_pem).expect("ca");
    let ca = ["--ca-file", ca_file.to_str().expect("utf-8 path")];

    let out = enroll(&server.url, dir.path(), TOKEN, &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--ca-file is required"), "{}", text(&out.stderr));

    let out = enroll(&server.url, dir.path(), "kft_wrong", &ca).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unknown enroll token"), "the server's message: {}", text(&out.stderr));

    let out = enroll(&server.url, dir.path(), TOKEN, &ca).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("enrolled as node {NODE}")), "{}", text(&out.stdout));
    let first_key = std::fs::read_to_string(dir.path().join("state/node.key")).expect("key");

    let out = enroll(&server.url, dir.path(), TOKEN, &ca).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--force"), "{}", text(&out.stderr));

    let forced = [&ca[..], &["--force"]].concat();
    let out = enroll(&server.url, dir.path(), TOKEN, &forced).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let second_key = std::fs::read_to_string(dir.path().join("state/node.key")).expect("key");
    assert_ne!(first_key, second_key, "re-enrolling makes a new key pair");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_without_enrollment_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::node_root(&dir.path().join("root"), NODE);
    let mut command = bin();
    command.arg("run").arg("--config").arg(dir.path().join("absent.toml"));
    command.arg("--root").arg(dir.path().join("root")).arg("--state-dir").arg(dir.path().join("state"));
    let out = tokio::time::timeout(LIMIT, command.output()).await.expect("finishes").expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("holds no enrollment"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_a_session_and_stops_cleanly_on_sigterm() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    *fleet.endpoints.lock().expect("lock") = vec![server.url.clone()];
    let dir = tempfile::tempdir().expect("tempdir");
    support::node_root(&dir.path().join("root"), NODE);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &fleet.ca_pem).expect("ca");
    let out = enroll(&server.url, dir.path(), TOKEN, &["--ca-file", ca_file.to_str().expect("utf-8")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = dir.path().join("node-client.toml");
    std::fs::write(&config, "labels = { site = \"lab-2\" }\nk3s_role = \"server\"\nk3s_cluster = \"c1\"\n")
        .expect("config");

    let mut command = bin();
    command.arg("run").arg("--config").arg(&config).arg("--root").arg(dir.path().join("root"));
    command.arg("--state-dir").arg(dir.path().join("state")).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("run starts");
    let said_hello = |r: &[support::Received]| {
        r.iter()
            .any(|r| r.node == NODE && r.hello().is_some_and(|h| h.labels.get("site").is_some_and(|s| s == "lab-2")))
    };
    assert!(fleet.wait_until(LIMIT, said_hello).await, "the service connected and said hello");
    // A heartbeat means the stream is fully up (NodeConfig received).
    let beat = |r: &[support::Received]| r.iter().any(|r| r.node == NODE && r.heartbeat().is_some());
    assert!(fleet.wait_until(LIMIT, beat).await, "the service heartbeats");

    let pid = Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid fits"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(LIMIT, child.wait()).await.expect("exits after SIGTERM").expect("status");
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");
    let end = tokio::time::Instant::now() + LIMIT;
    while !fleet.closed.lock().expect("lock").iter().any(|(_, node, _)| node == NODE) {
        assert!(tokio::time::Instant::now() < end, "the server sees the stream end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = fleet.closed.lock().expect("lock").clone();
    assert!(closed.iter().any(|(_, node, clean)| node == NODE && *clean), "ended with END_STREAM: {closed:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_runs_for_its_duration_and_writes_the_json_report() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &fleet.ca_pem).expect("ca");
    let report = dir.path().join("report.json");
    let mut command = bin();
    command.args(["simulate", "--server", &server.url, "--count", "5", "--duration", "3s", "--storm-after", "100ms"]);
    command.arg("--ca-file").arg(&ca_file).arg("--report").arg(&report).env("KAIROS_FLEET_TOKEN", TOKEN);
    let out = tokio::time::timeout(LIMIT, command.output()).await.expect("finishes").expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let text_report = std::fs::read_to_string(&report).expect("report");
    assert_eq!(text_report.matches("\"connected\"").count(), 1, "no duplicate keys: {text_report}");
    let json: serde_json::Value = serde_json::from_str(&text_report).expect("JSON");
    assert_eq!(json["count"], 5);
    assert_eq!(json["enrolled"], 5);
    assert_eq!(json["connected"], 5);
    assert!(json["time_to_all_connected_ms"].is_u64(), "{json}");
    assert!(json["duration_ms"].as_u64().is_some_and(|ms| ms >= 3000), "{json}");
    assert_eq!(json["storm"]["nodes"], 5, "{json}");
    assert_eq!(json["storm"]["state"], "downloading", "{json}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_with_a_bad_token_exits_3() {
    let fleet = Fleet::new();
    let server = FakeServer::start(&fleet, 1, Behaviour::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &fleet.ca_pem).expect("ca");
    let mut command = bin();
    command.args(["simulate", "--server", &server.url, "--count", "3", "--token", "kft_wrong"]);
    command.arg("--ca-file").arg(&ca_file);
    let out = tokio::time::timeout(LIMIT, command.output()).await.expect("finishes").expect("runs");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unknown enroll token"), "{}", text(&out.stderr));
    server.shutdown().await;
}
