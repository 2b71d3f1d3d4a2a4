//! Shared helpers for the cross-crate tests of Kairos Fleet: find the
//! workspace binaries, lay out a cluster with `kairos-controlplane init`,
//! start, stop and SIGKILL replicas as real processes, and run `kairosctl`
//! against them.
#![deny(missing_docs)]

pub mod docker;
pub mod history;
pub mod json;
pub mod sim;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Path of a workspace binary (`kairos-controlplane`, `kairosctl`, ...),
/// built next to the running test executable. `scripts/test` builds every
/// binary before the suite runs.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("locating the test executable: {e}"));
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap_or_else(|| panic!("unexpected test path {exe:?}"));
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests
/// that start the listener right away).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding a free port: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("reading the bound port: {e}"))
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A control-plane cluster laid out by `kairos-controlplane init` in a
/// temporary folder, whose replicas run as child processes.
pub struct Cluster {
    /// The folder `init` wrote to.
    pub dir: tempfile::TempDir,
    /// Replica id → its public address (host:port).
    pub addresses: BTreeMap<u64, String>,
    children: BTreeMap<u64, Child>,
}

impl Cluster {
    /// Runs `kairos-controlplane init` for `replicas` replicas on free loopback ports.
    pub fn init(replicas: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        let addresses: BTreeMap<u64, String> =
            (1..=replicas).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        let mut cmd = Command::new(binary("kairos-controlplane"));
        cmd.arg("init").arg("--data-dir").arg(dir.path());
        for (id, addr) in &addresses {
            cmd.arg("--replica").arg(format!("{id}={addr}"));
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("running init: {e}"));
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        Cluster { dir, addresses, children: BTreeMap::new() }
    }

    /// The data folder of replica `id`.
    pub fn replica_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("replica-{id}"))
    }

    /// Starts replica `id` (`serve --data-dir`); its output goes to
    /// `replica-<id>.log` in the cluster folder, appended across restarts.
    pub fn start(&mut self, id: u64) {
        self.start_with(id, &[]);
    }

    /// Starts replica `id` with extra `serve` flags.
    pub fn start_with(&mut self, id: u64, extra: &[&str]) {
        let log_path = self.dir.path().join(format!("replica-{id}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log_path.display()));
        let err = log.try_clone().unwrap_or_else(|e| panic!("cloning the log handle: {e}"));
        let child = Command::new(binary("kairos-controlplane"))
            .arg("serve")
            .arg("--data-dir")
            .arg(self.replica_dir(id))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting replica {id}: {e}"));
        self.children.insert(id, child);
    }

    /// SIGKILLs replica `id` and reaps it.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to replica `id` and waits up to `timeout` for a clean exit;
    /// returns whether it exited successfully in time (it is SIGKILLed otherwise).
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> bool {
        let Some(mut child) = self.children.remove(&id) else { return false };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether replica `id` is running (started and not exited).
    pub fn is_running(&mut self, id: u64) -> bool {
        self.children.get_mut(&id).is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `kairosctl` with this cluster's config and returns its output.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(binary("kairosctl"))
            .arg("--config")
            .arg(self.dir.path().join("kairosctl.toml"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running kairosctl {args:?}: {e}"))
    }

    /// Starts `kairosctl` in the background (e.g. `rollout watch`), its
    /// output piped; the caller waits for it.
    pub fn ctl_spawn(&self, args: &[&str]) -> Child {
        Command::new(binary("kairosctl"))
            .arg("--config")
            .arg(self.dir.path().join("kairosctl.toml"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting kairosctl {args:?}: {e}"))
    }

    /// Runs `kairosctl` against one replica only (`--server`).
    pub fn ctl_on(&self, id: u64, args: &[&str]) -> Output {
        let server = format!("https://{}", self.addresses[&id]);
        let mut all = vec!["--server", server.as_str()];
        all.extend_from_slice(args);
        self.ctl(&all)
    }

    /// `kairosctl cluster status -o json` answered by replica `id`.
    pub fn status_json(&self, id: u64) -> Option<serde_json::Value> {
        let out = self.ctl_on(id, &["cluster", "status", "-o", "json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// The leader one of `ids` names, if it is one of `ids`.
    pub fn leader(&self, ids: &[u64]) -> Option<u64> {
        ids.iter().find_map(|&id| {
            let v = self.status_json(id)?;
            let leader = v["leader_id"].as_u64()?;
            (leader != 0 && ids.contains(&leader)).then_some(leader)
        })
    }

    /// Voters (not learners) replica `id` reports.
    pub fn voters(&self, id: u64) -> usize {
        self.status_json(id)
            .and_then(|v| v["replicas"].as_array().map(|r| r.iter().filter(|x| x["role"] != "learner").count()))
            .unwrap_or(0)
    }

    /// Starts every replica with `extra` serve flags and forms the cluster:
    /// replica 1 bootstraps and leads, the others are added through it.
    pub fn form(&mut self, extra: &[&str]) {
        let ids: Vec<u64> = self.addresses.keys().copied().collect();
        for id in &ids {
            self.start_with(*id, extra);
        }
        wait_for("replica 1 to lead", Duration::from_secs(20), || self.leader(&[1]));
        for id in ids.iter().filter(|id| **id != 1) {
            let addr = self.addresses[id].clone();
            let out = self.ctl_on(1, &["cluster", "add-replica", &id.to_string(), &addr]);
            ok_stdout(&out, &format!("add-replica {id}"));
        }
        wait_for("every replica a voter", Duration::from_secs(20), || (self.voters(1) == ids.len()).then_some(()));
    }

    /// The log of replica `id` so far (for failure messages).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("replica-{id}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.kill9(id);
        }
    }
}

/// Stdout of a command as text, asserting it succeeded (stderr in the message otherwise).
pub fn ok_stdout(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The workspace root (this crate is `tests/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate sits in the workspace").to_path_buf()
}

/// The target dir and cargo profile (`dev` or `release`) this test was
/// built with: where scripts/build-images finds the binaries the suite built.
pub fn target_and_profile() -> (PathBuf, &'static str) {
    let profile_dir = binary("kairos-controlplane").parent().expect("a profile dir").to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => "release",
        _ => "dev",
    };
    (profile_dir.parent().expect("a target dir").to_path_buf(), profile)
}
