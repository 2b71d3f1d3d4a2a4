//! The README's first command: `kairos-controlplane demo` runs a real
//! single-replica control plane and a simulated fleet to a completed
//! rollout, and what it leaves in its folder is a working cluster.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kairos_fleet_tests::{binary, wait_for};
use serde_json::Value;

const NODES: usize = 32;

fn kairosctl(dir: &Path, args: &[&str]) -> Option<Value> {
    let out = Command::new(binary("kairosctl"))
        .arg("--config")
        .arg(dir.join("kairosctl.toml"))
        .args(args)
        .args(["-o", "json"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running kairosctl: {e}"));
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("kairosctl {args:?} printed no JSON: {e}")))
}

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_pauses_on_the_failing_canary_resumes_after_the_fix_and_completes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let nodes = NODES.to_string();
    let args = ["demo", "--nodes", &nodes, "--upgrade-step", "150ms", "--failing-flavor", "opensuse-arm-rpi"];
    let out = Command::new(binary("kairos-controlplane"))
        .args(args)
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");

    // Its story, in order: a fleet of every flavor, a pause naming the
    // failed canary, the node's own report of its fallback boot, the resume,
    // the completed rollout.
    let steps = [
        "== A simulated fleet of 32 nodes",
        "paused (failure-threshold): wave 0: 1 of 16 nodes failed",
        "FLAVOR          opensuse-arm-rpi",
        "failed (fallback-boot)",
        "$ kairosctl rollout resume ro-000001 --retry-failed",
        &format!("rollout ro-000001 completed: {NODES} nodes: {NODES} healthy"),
        "== The fleet after the rollout",
    ];
    let mut rest = stdout.as_ref();
    for step in steps {
        let at = rest.find(step).unwrap_or_else(|| panic!("{step:?} missing or out of order in:\n{stdout}"));
        rest = &rest[at + step.len()..];
    }
    for flavor in ["alpine-arm-rpi", "alpine-opensuse-leap", "alpine-ubuntu", "opensuse", "ubuntu-22-lts"] {
        assert!(stdout.contains(&format!("\n{flavor} ")), "the report lists {flavor}:\n{stdout}");
    }

    // The folder is a real cluster: serve it again and read what the demo did.
    let log = std::fs::File::create(tmp.path().join("serve.log")).expect("log");
    let child = Command::new(binary("kairos-controlplane"))
        .args(["serve", "--data-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("serve");
    let _serving = Serving(child);
    let rollouts = wait_for("the restarted replica to answer", Duration::from_secs(30), || {
        kairosctl(&dir, &["rollout", "list", "--consistency", "linearizable"])
    });
    let list = rollouts["rollouts"].as_array().expect("rollouts");
    assert_eq!(list.len(), 1, "{rollouts}");
    assert_eq!(list[0]["phase"], "completed", "{rollouts}");
    assert_eq!(list[0]["totals"]["healthy"], NODES as u64, "{rollouts}");

    let nodes = kairosctl(&dir, &["nodes", "list", "--all"]).expect("nodes list");
    let nodes = nodes["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), NODES);
    let on_target = nodes.iter().filter(|n| n["release"] == "v1.5.1").count();
    assert_eq!(on_target, NODES, "every node reports the target release: {nodes:?}");
}
