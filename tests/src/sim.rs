//! `kairos-node-client simulate` as a child process of a test: virtual
//! nodes with the real session code, enrolled against a [`Cluster`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::{binary, ok_stdout, Cluster};

/// A node's root filesystem: release file (opensuse leap-15.5 standard
/// amd64, v2.4.2 with k3s v1.27.6), machine id, kernel command line.
pub fn node_root(dir: &Path, machine_id: &str) -> PathBuf {
    let root = dir.join(format!("root-{machine_id}"));
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::create_dir_all(root.join("proc")).expect("proc");
    std::fs::write(
        root.join("etc/kairos-release"),
        "KAIROS_FLAVOR=\"opensuse\"\nKAIROS_FLAVOR_RELEASE=\"leap-15.5\"\nKAIROS_VARIANT=\"standard\"\n\
         KAIROS_MODEL=\"generic\"\nKAIROS_ARCH=\"amd64\"\nKAIROS_RELEASE=\"v2.4.2\"\n\
         KAIROS_SOFTWARE_VERSION=\"v1.27.6+k3s1\"\nKAIROS_SOFTWARE_VERSION_PREFIX=\"k3s\"\n\
         KAIROS_IMAGE_REPO=\"quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1\"\n",
    )
    .expect("kairos-release");
    std::fs::write(root.join("etc/machine-id"), format!("{machine_id}\n")).expect("machine-id");
    std::fs::write(root.join("proc/cmdline"), "BOOT_IMAGE=/cOS/vmlinuz console=tty1 root=LABEL=COS_STATE cos-img/filename=/cOS/active.img rd.cos.oemlabel=COS_OEM\n")
        .expect("cmdline");
    root
}

/// An enroll token secret allowing `uses` enrollments, labelled `site=lab`.
pub fn enroll_token(cluster: &Cluster, uses: u32) -> String {
    let out = ok_stdout(
        &cluster.ctl(&["enroll-tokens", "create", "--uses", &uses.to_string(), "--label", "site=lab", "-o", "json"]),
        "enroll-tokens create",
    );
    let created: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    created["secret"].as_str().unwrap_or_else(|| panic!("no secret in {out}")).to_string()
}

/// The cluster's CA certificate.
pub fn ca_file(cluster: &Cluster) -> PathBuf {
    cluster.dir.path().join("ca.pem")
}

/// The gRPC endpoint of replica `id`.
pub fn server(cluster: &Cluster, id: u64) -> String {
    format!("https://{}", cluster.addresses[&id])
}

/// Spawns `cmd` with stdout and stderr going to `log`.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log handle");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

/// A running simulator; killed when dropped.
pub struct Simulator {
    /// The process.
    pub child: Child,
    /// Where it writes its JSON report.
    pub report: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SimulatorOptions {
    /// Virtual nodes.
    pub count: usize,
    /// Replicas the nodes connect to.
    pub servers: Vec<u64>,
    /// Seed of machine ids (simulators of one cluster need different seeds).
    pub seed: u64,
    /// `--duration`, e.g. `10m`.
    pub duration: String,
    /// Any further arguments (`--release`, `--fail-file`, `--history`, ...).
    pub extra: Vec<String>,
    /// File name prefix inside the cluster dir for the report and log.
    pub name: String,
}

impl SimulatorOptions {
    /// `count` nodes on every replica of the cluster, seed 1, for ten minutes.
    pub fn new(cluster: &Cluster, count: usize) -> SimulatorOptions {
        SimulatorOptions {
            count,
            servers: cluster.addresses.keys().copied().collect(),
            seed: 1,
            duration: "10m".into(),
            extra: Vec::new(),
            name: "simulate".into(),
        }
    }

    /// Adds arguments.
    pub fn arg(mut self, args: &[&str]) -> SimulatorOptions {
        self.extra.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

impl Simulator {
    /// Enrolls `count` nodes with a fresh token and keeps them connected to `servers`.
    pub fn start(cluster: &Cluster, servers: &[u64], count: usize, duration: &str) -> Simulator {
        let opts = SimulatorOptions {
            servers: servers.to_vec(),
            duration: duration.to_string(),
            ..SimulatorOptions::new(cluster, count)
        };
        Simulator::start_with(cluster, &opts)
    }

    /// Starts a simulator as `opts` say.
    pub fn start_with(cluster: &Cluster, opts: &SimulatorOptions) -> Simulator {
        let token = enroll_token(cluster, u32::try_from(opts.count).unwrap_or(u32::MAX));
        let report = cluster.dir.path().join(format!("{}.json", opts.name));
        let log = cluster.dir.path().join(format!("{}.log", opts.name));
        let servers: Vec<String> = opts.servers.iter().map(|id| server(cluster, *id)).collect();
        let mut cmd = Command::new(binary("kairos-node-client"));
        cmd.args(["simulate", "--count", &opts.count.to_string(), "--duration", &opts.duration])
            .args(["--seed", &opts.seed.to_string(), "--server", &servers.join(",")])
            .arg("--ca-file")
            .arg(ca_file(cluster))
            .arg("--report")
            .arg(&report)
            .args(&opts.extra)
            .env("KAIROS_FLEET_TOKEN", token);
        Simulator { child: spawn_logged(cmd, &log), report, log }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the simulator (SIGTERM: it writes its report) and reads the report.
    pub fn report(mut self) -> Value {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().expect("simulate exits");
        let log = self.log_text();
        assert!(status.success(), "simulate failed ({status}):\n{log}");
        let text = std::fs::read_to_string(&self.report).unwrap_or_else(|e| panic!("report: {e}\n{log}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report: {e}: {text}"))
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The container images of every seed image family at `release` (e.g.
/// `1.6.1`), standard images with the simulated fleet's k3s line.
pub fn seed_images(release: &str) -> Vec<String> {
    use kairos_controlplane::fleet::image::{ImageRef, RegistryPrefix, TagGrammar};
    use kairos_controlplane::fleet::matrix::seed_families;
    use kairos_controlplane::fleet::model::{K8sDistro, SoftwareVersion, Variant};
    let version = semver::Version::parse(release.trim_start_matches('v')).expect("a semver release");
    let k3s = SoftwareVersion::parse("k3sv1.26.1-k3s1", Some(K8sDistro::K3s)).expect("k3s version");
    seed_families()
        .iter()
        .filter_map(|family| {
            let software = (family.variant == Variant::Standard).then_some(&k3s);
            let grammar = TagGrammar::for_release(&version);
            ImageRef::for_target(&RegistryPrefix::default(), family, grammar, &version, software)
                .ok()
                .map(|r| r.to_string())
        })
        .collect()
}

/// Adds every image of `images` to the cluster's release catalog.
pub fn add_releases(cluster: &Cluster, images: &[String]) {
    for image in images {
        ok_stdout(&cluster.ctl(&["releases", "add", image]), "releases add");
    }
}
