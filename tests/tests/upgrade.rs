//! A real node client through a whole upgrade: a rollout on a replica
//! (separate process), the image pulled from a real local registry (Debian
//! `docker-registry`, as a mirror of quay.io) and handed to a stand-in
//! `kairos-agent`, the reboot (the stand-in reboot stops the client and
//! changes the boot id; the test starts it again), and the outcome reported
//! after it: healthy on the new release, or a fallback boot reported as
//! rolled back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use kairos_fleet_testkit::LocalRegistry;
use kairos_fleet_tests::json::{find_str, parse as json};
use kairos_fleet_tests::sim::{ca_file, enroll_token, node_root, server, spawn_logged};
use kairos_fleet_tests::{binary, ok_stdout, Cluster};
use serde_json::Value;

const MACHINE_ID: &str = "1f1e1d1c1b1a19181716151413121110";
const REPOSITORY: &str = "kairos/opensuse";

fn tag(release: &str) -> String {
    format!("leap-15.5-standard-amd64-generic-{release}-k3sv1.27.6-k3s1")
}

fn upstream(release: &str) -> String {
    format!("quay.io/{REPOSITORY}:{}", tag(release))
}

/// The stand-in `kairos-agent`: records its arguments; on success rewrites
/// the root's release file to the target, in fail mode leaves the fallback
/// marker (as Kairos does when the new image does not boot).
fn agent_script(dir: &Path, root: &Path) -> PathBuf {
    let script = dir.join("kairos-agent");
    let text = format!(
        r#"#!/bin/sh
echo "$@" >> "{args}"
archive="$3"
test -s "${{archive#ocifile:}}" || {{ echo "no archive at $archive" >&2; exit 1; }}
if [ -e "{fail}" ]; then
  mkdir -p "{root}/run/cos" && touch "{root}/run/cos/upgrade_failure"
  exit 0
fi
release="$(cat "{target}")"
sed -i -e "s/^KAIROS_RELEASE=.*/KAIROS_RELEASE=\"$release\"/" \
  -e "s/generic-v[0-9.]*-k3s/generic-$release-k3s/" "{root}/etc/kairos-release"
"#,
        args = dir.join("agent-args").display(),
        fail = dir.join("fail").display(),
        root = root.display(),
        target = dir.join("target-release").display(),
    );
    std::fs::write(&script, text).expect("agent script");
    script
}

/// The stand-in reboot: a new boot id, then the client is stopped (the
/// test starts it again, as the machine would).
fn reboot_script(dir: &Path, root: &Path) -> PathBuf {
    let script = dir.join("reboot");
    let text = format!(
        "#!/bin/sh\nmkdir -p \"{root}/proc/sys/kernel/random\"\ncat /proc/sys/kernel/random/uuid > \"{root}/proc/sys/kernel/random/boot_id\"\ntouch \"{flag}\"\nkill -TERM $PPID\n",
        root = root.display(),
        flag = dir.join("rebooted").display(),
    );
    std::fs::write(&script, text).expect("reboot script");
    script
}

fn config(dir: &Path, registry: &str, agent: &Path, reboot: &Path) -> PathBuf {
    let path = dir.join("node-client.toml");
    let text = format!(
        r#"state_dir = "{state}"

[registry]
plain_http = ["{registry}"]

[registry.mirrors]
"quay.io" = ["{registry}"]

[upgrade]
command = ["/bin/sh", "{agent}", "upgrade", "--source", "ocifile:{{archive}}"]
reboot_command = ["/bin/sh", "{reboot}"]
executor_timeout = "60s"
"#,
        state = dir.join("state").display(),
        agent = agent.display(),
        reboot = reboot.display(),
    );
    std::fs::write(&path, text).expect("node client config");
    path
}

struct Node {
    dir: PathBuf,
    root: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl Node {
    /// Starts `kairos-node-client run` (again, after a stand-in reboot).
    fn start(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(binary("kairos-node-client"));
        cmd.arg("run").arg("--config").arg(&self.config).arg("--root").arg(&self.root);
        let log = self.dir.join(format!("run-{}.log", self.starts));
        self.child = Some(spawn_logged(cmd, &log));
    }

    /// Waits for the stand-in reboot to stop the client, then starts it again.
    fn reboot(&mut self) {
        let flag = self.dir.join("rebooted");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !flag.exists() {
            assert!(std::time::Instant::now() < deadline, "no stand-in reboot within 60 s:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&flag);
        self.start();
    }

    fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.dir.join(format!("run-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn rollout_phase(cluster: &Cluster, id: &str) -> Option<String> {
    let out = cluster.ctl(&["rollout", "status", id, "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(find_str(&v, "phase")?.to_ascii_lowercase().replace('-', "_"))
}

/// Waits for rollout `id` to reach `phase`; on timeout shows the rollout,
/// the node and the node client's logs.
fn wait_phase(cluster: &Cluster, node: &Node, id: &str, phase: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rollout_phase(cluster, id).as_deref() != Some(phase) {
        if std::time::Instant::now() > deadline {
            let status = cluster.ctl(&["rollout", "status", id, "--nodes"]);
            panic!(
                "rollout {id} did not reach {phase}:\n{}\n{}\n{}",
                String::from_utf8_lossy(&status.stdout),
                node_json(cluster),
                node.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node as `kairosctl nodes get` shows it.
fn node_json(cluster: &Cluster) -> Value {
    json(&ok_stdout(&cluster.ctl(&["nodes", "get", MACHINE_ID, "-o", "json"]), "nodes get"))["node"].clone()
}

#[test]
fn a_rollout_takes_a_real_node_client_through_pull_install_reboot_and_reports_a_fallback_as_rolled_back() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let registry = runtime.block_on(LocalRegistry::start());
    let layers = |release: &str| vec![format!("rootfs of {release}").repeat(4096).into_bytes(), vec![7u8; 300_000]];
    for release in ["v2.4.3", "v2.4.4"] {
        runtime.block_on(registry.push(REPOSITORY, &[&tag(release)], layers(release), "amd64"));
    }

    let mut cluster = Cluster::init(1);
    cluster.form(&["--node-heartbeat-ms", "1000"]);
    for release in ["v2.4.2", "v2.4.3", "v2.4.4"] {
        ok_stdout(&cluster.ctl(&["releases", "add", &upstream(release)]), "releases add");
    }
    let dir = cluster.dir.path().join("node");
    std::fs::create_dir_all(&dir).expect("node dir");
    let root = node_root(&dir, MACHINE_ID);
    let agent = agent_script(&dir, &root);
    let reboot = reboot_script(&dir, &root);
    let config = config(&dir, registry.addr(), &agent, &reboot);
    let token = enroll_token(&cluster, 1);
    let ca = ca_file(&cluster);
    let enroll = Command::new(binary("kairos-node-client"))
        .args(["enroll", "--server", &server(&cluster, 1), "--token", &token])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--root")
        .arg(&root)
        .arg("--ca-file")
        .arg(&ca)
        .output()
        .expect("enroll");
    assert!(enroll.status.success(), "enroll: {}", String::from_utf8_lossy(&enroll.stderr));
    let mut node = Node { dir: dir.clone(), root: root.clone(), config, child: None, starts: 0 };
    node.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while node_json(&cluster)["online"] != true {
        assert!(std::time::Instant::now() < deadline, "the node did not come online:\n{}", node.logs());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Success: pull → install → reboot → healthy on v2.4.3.
    std::fs::write(dir.join("target-release"), "v2.4.3").expect("target");
    let out =
        ok_stdout(&cluster.ctl(&["rollout", "create", "--to", "v2.4.3", "--waves", "100%", "-o", "json"]), "create");
    let id = find_str(&json(&out), "rollout_id").map(str::to_string).unwrap_or_else(|| panic!("{out}"));
    node.reboot();
    wait_phase(&cluster, &node, &id, "completed");
    let after = node_json(&cluster);
    assert_eq!(after["release"], "v2.4.3", "{after}\n{}", node.logs());
    let args = std::fs::read_to_string(dir.join("agent-args")).expect("the agent ran");
    assert!(args.contains("upgrade --source ocifile:"), "{args}");

    // Failure: the new image does not boot; the node falls back and says so.
    std::fs::write(dir.join("fail"), "").expect("fail mode");
    std::fs::write(dir.join("target-release"), "v2.4.4").expect("target");
    let out =
        ok_stdout(&cluster.ctl(&["rollout", "create", "--to", "v2.4.4", "--waves", "100%", "-o", "json"]), "create");
    let id = find_str(&json(&out), "rollout_id").map(str::to_string).unwrap_or_else(|| panic!("{out}"));
    node.reboot();
    wait_phase(&cluster, &node, &id, "paused");
    let failed = node_json(&cluster);
    let state = failed["state"].as_str().unwrap_or_default().to_string();
    assert_eq!(state, "rolled-back", "a fallback boot is reported as rolled back: {failed}\n{}", node.logs());
    let status = ok_stdout(&cluster.ctl(&["rollout", "status", &id, "--nodes", "-o", "json"]), "status");
    assert!(status.to_lowercase().contains("fallback"), "the reason names the fallback boot: {status}");
    assert_eq!(failed["release"], "v2.4.3", "the node stays on its old release: {failed}");
}
