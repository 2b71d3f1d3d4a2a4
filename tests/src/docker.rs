//! A small harness over the `docker` CLI for tests that spread a cluster
//! over containers: networks, containers (aliases, environment, bind
//! mounts, published ports, restart policy), `exec`, logs, SIGKILL, stop
//! and start, and network partitions by disconnecting a container from a
//! network and connecting it again.
//!
//! Everything a [`Docker`] creates carries its run's name prefix and is
//! removed when it is dropped (containers with their anonymous volumes,
//! then networks, then the images handed to it), so a failing test leaves
//! nothing behind. Without a reachable Docker engine [`Docker::new`]
//! panics: a test that needs it fails, it never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a [`Docker`] removes when dropped.
#[derive(Debug, Default)]
struct Owned {
    containers: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
    /// Images already removed, still checked by [`Docker::leftovers`].
    removed_images: Vec<String>,
}

/// The `docker` CLI for one test run: names things with the run's prefix
/// and removes them all when dropped.
#[derive(Debug)]
pub struct Docker {
    prefix: String,
    owned: Mutex<Owned>,
}

/// A bind mount of a host path into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path on the host.
    pub host: PathBuf,
    /// Path in the container.
    pub container: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

/// How to create a container: `docker create` flags and the command.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Name without the run's prefix (the container is `<prefix>-<name>`).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Host name inside the container.
    pub hostname: Option<String>,
    /// Networks to join with the aliases the container has on each; the
    /// first is joined at creation, the others before the start.
    pub networks: Vec<(String, Vec<String>)>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// `--user` (`uid:gid`); default: the image's.
    pub user: Option<String>,
    /// Container ports to publish on a free port of 127.0.0.1.
    pub publish: Vec<u16>,
    /// `--restart` policy (`unless-stopped`, ...); default: none.
    pub restart: Option<String>,
    /// `--entrypoint`; default: the image's.
    pub entrypoint: Option<String>,
    /// Arguments after the image (the command, or the entrypoint's arguments).
    pub args: Vec<String>,
}

impl ContainerSpec {
    /// A container `name` of `image`, on no network yet.
    pub fn new(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec { name: name.to_string(), image: image.to_string(), ..ContainerSpec::default() }
    }

    /// Joins `network` with `aliases`.
    pub fn network(mut self, network: &str, aliases: &[&str]) -> ContainerSpec {
        self.networks.push((network.to_string(), aliases.iter().map(|a| a.to_string()).collect()));
        self
    }

    /// Sets the host name.
    pub fn hostname(mut self, hostname: &str) -> ContainerSpec {
        self.hostname = Some(hostname.to_string());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> ContainerSpec {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Bind-mounts `host` at the same path in the container, writable.
    pub fn mount_same(mut self, host: &Path) -> ContainerSpec {
        self.mounts.push(Mount { host: host.to_path_buf(), container: host.to_path_buf(), read_only: false });
        self
    }

    /// Bind-mounts `host` at `container`.
    pub fn mount(mut self, host: &Path, container: &Path, read_only: bool) -> ContainerSpec {
        self.mounts.push(Mount { host: host.to_path_buf(), container: container.to_path_buf(), read_only });
        self
    }

    /// Runs as `user` (`uid:gid`).
    pub fn user(mut self, user: &str) -> ContainerSpec {
        self.user = Some(user.to_string());
        self
    }

    /// Publishes container `port` on a free port of 127.0.0.1 (see [`Docker::host_port`]).
    pub fn publish(mut self, port: u16) -> ContainerSpec {
        self.publish.push(port);
        self
    }

    /// Sets the restart policy.
    pub fn restart(mut self, policy: &str) -> ContainerSpec {
        self.restart = Some(policy.to_string());
        self
    }

    /// Replaces the image's entrypoint.
    pub fn entrypoint(mut self, entrypoint: &str) -> ContainerSpec {
        self.entrypoint = Some(entrypoint.to_string());
        self
    }

    /// Appends arguments.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> ContainerSpec {
        self.args.extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }
}

/// The uid:gid of this process, for containers that write files the test
/// reads and removes.
pub fn host_user() -> String {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective uid and gid.
    let me = std::fs::metadata("/proc/self").unwrap_or_else(|e| panic!("reading /proc/self: {e}"));
    format!("{}:{}", me.uid(), me.gid())
}

/// Output of a command as text, stdout then stderr.
pub fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

impl Docker {
    /// A harness whose names start with `kf-<what>-<pid>-<time>`; panics
    /// when `docker` is missing or its engine does not answer.
    pub fn new(what: &str) -> Docker {
        let info = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        match info {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "the Docker engine does not answer (`docker info` failed: {}); this test needs a running \
                 Docker engine and fails rather than skip",
                output_text(&out).trim()
            ),
            Err(e) => panic!("`docker` cannot be run ({e}); this test needs the Docker CLI and a running engine"),
        }
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() % 1_000_000).unwrap_or(0);
        let docker =
            Docker { prefix: format!("kf-{what}-{}-{stamp}", std::process::id()), owned: Mutex::new(Owned::default()) };
        docker.sweep_dead_runs();
        docker
    }

    /// The run's name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>-<name>`: the name of a thing of this run.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `docker args` and returns its output, whatever the exit code.
    pub fn docker<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running docker: {e}"))
    }

    /// Runs `docker args`, panicking with its output when it fails; returns stdout.
    pub fn docker_ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.docker(args);
        if !out.status.success() {
            let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
            panic!("docker {} failed ({}): {}", shown.join(" "), out.status, output_text(&out).trim());
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates network `<prefix>-<name>` and returns its full name.
    pub fn create_network(&self, name: &str) -> String {
        let full = self.name(name);
        self.owned().networks.push(full.clone());
        self.docker_ok(&["network", "create", "--label", &format!("kairos-fleet.test={}", self.prefix), &full]);
        full
    }

    /// Hands image `reference` to this run: it is removed when the run ends.
    pub fn own_image(&self, reference: &str) {
        self.owned().images.push(reference.to_string());
    }

    /// `docker build` of `context` (its Dockerfile) as `reference`, with the
    /// classic builder (`FROM` a local image pulls nothing); the image is
    /// removed when the run ends.
    pub fn build_image(&self, reference: &str, context: &Path) {
        self.own_image(reference);
        let out = Command::new("docker")
            .args(["build", "--quiet", "--tag", reference])
            .arg(context)
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running docker build: {e}"));
        assert!(out.status.success(), "docker build of {reference} failed: {}", output_text(&out));
    }

    /// Creates the container `spec` describes, joins its networks and starts
    /// it; returns its full name.
    pub fn run(&self, spec: &ContainerSpec) -> String {
        let full = self.create(spec);
        self.docker_ok(&["start", &full]);
        full
    }

    /// Creates the container and joins its networks without starting it.
    pub fn create(&self, spec: &ContainerSpec) -> String {
        let full = self.name(&spec.name);
        self.owned().containers.push(full.clone());
        let mut args: Vec<String> = vec!["create".into(), "--name".into(), full.clone()];
        args.extend(["--label".into(), format!("kairos-fleet.test={}", self.prefix)]);
        if let Some(hostname) = &spec.hostname {
            args.extend(["--hostname".into(), hostname.clone()]);
        }
        if let Some((network, aliases)) = spec.networks.first() {
            args.extend(["--network".into(), network.clone()]);
            for alias in aliases {
                args.extend(["--network-alias".into(), alias.clone()]);
            }
        } else {
            args.extend(["--network".into(), "none".into()]);
        }
        for (key, value) in &spec.env {
            args.extend(["--env".into(), format!("{key}={value}")]);
        }
        for m in &spec.mounts {
            let mode = if m.read_only { ":ro" } else { "" };
            args.extend(["--volume".into(), format!("{}:{}{mode}", m.host.display(), m.container.display())]);
        }
        if let Some(user) = &spec.user {
            args.extend(["--user".into(), user.clone()]);
        }
        for port in &spec.publish {
            args.extend(["--publish".into(), format!("127.0.0.1::{port}")]);
        }
        if let Some(policy) = &spec.restart {
            args.extend(["--restart".into(), policy.clone()]);
        }
        if let Some(entrypoint) = &spec.entrypoint {
            args.extend(["--entrypoint".into(), entrypoint.clone()]);
        }
        args.push(spec.image.clone());
        args.extend(spec.args.iter().cloned());
        self.docker_ok(&args);
        for (network, aliases) in spec.networks.iter().skip(1) {
            self.connect(network, &full, aliases);
        }
        full
    }

    /// Runs a one-shot container (`docker run --rm`) to its end and returns
    /// its output; it is removed when the run ends should it outlive the call.
    pub fn run_to_end(&self, spec: &ContainerSpec) -> Output {
        let full = self.create(spec);
        let out = self.docker(&["start", "--attach", &full]);
        self.docker(&["rm", "--force", &full]);
        out
    }

    /// `docker exec container args...`, whatever its exit code.
    pub fn exec<S: AsRef<str>>(&self, container: &str, args: &[S]) -> Output {
        let mut all = vec!["exec".to_string(), container.to_string()];
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        self.docker(&all)
    }

    /// `docker exec` in the background, stdout to `stdout` and stderr to
    /// `stdout` with `.err` appended (files, so a long stream never fills a pipe).
    pub fn exec_spawn<S: AsRef<str>>(&self, container: &str, args: &[S], stdout: &Path) -> Child {
        let create =
            |path: &Path| std::fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        let mut err_path = stdout.as_os_str().to_owned();
        err_path.push(".err");
        Command::new("docker")
            .arg("exec")
            .arg(container)
            .args(args.iter().map(AsRef::as_ref))
            .stdin(Stdio::null())
            .stdout(create(stdout))
            .stderr(create(Path::new(&err_path)))
            .spawn()
            .unwrap_or_else(|e| panic!("running docker exec in {container}: {e}"))
    }

    /// What the container logged (stdout and stderr), or why that failed.
    pub fn logs(&self, container: &str) -> String {
        output_text(&self.docker(&["logs", container]))
    }

    /// The last `lines` lines the container logged.
    pub fn logs_tail(&self, container: &str, lines: usize) -> String {
        output_text(&self.docker(&["logs", "--tail", &lines.to_string(), container]))
    }

    /// SIGKILLs the container's main process (`docker kill`).
    pub fn kill9(&self, container: &str) {
        self.docker_ok(&["kill", "--signal", "KILL", container]);
    }

    /// Stops the container (SIGTERM, SIGKILL after `grace_secs`).
    pub fn stop(&self, container: &str, grace_secs: u32) {
        self.docker_ok(&["stop", "--time", &grace_secs.to_string(), container]);
    }

    /// Starts a stopped container again, with its command and networks.
    pub fn start(&self, container: &str) {
        self.docker_ok(&["start", container]);
    }

    /// Whether the container is running.
    pub fn is_running(&self, container: &str) -> bool {
        let out = self.docker(&["inspect", "--format", "{{.State.Running}}", container]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    /// Takes the container off `network`: a partition of it from
    /// everything it reached there (its aliases stop resolving).
    pub fn disconnect(&self, network: &str, container: &str) {
        self.docker_ok(&["network", "disconnect", "--force", network, container]);
    }

    /// Joins the container to `network` with `aliases` (aliases are not
    /// kept across a disconnect: give them again).
    pub fn connect<S: AsRef<str>>(&self, network: &str, container: &str, aliases: &[S]) {
        let mut args = vec!["network".to_string(), "connect".to_string()];
        for alias in aliases {
            args.extend(["--alias".to_string(), alias.as_ref().to_string()]);
        }
        args.extend([network.to_string(), container.to_string()]);
        self.docker_ok(&args);
    }

    /// The 127.0.0.1 port container `port` is published on.
    pub fn host_port(&self, container: &str, port: u16) -> u16 {
        let text = self.docker_ok(&["port", container, &format!("{port}/tcp")]);
        text.lines()
            .filter_map(|l| l.rsplit_once(':').and_then(|(_, p)| p.trim().parse().ok()))
            .next()
            .unwrap_or_else(|| panic!("container {container} publishes {port} nowhere: {text}"))
    }

    /// What of this run is still there: containers, networks and images
    /// carrying its prefix or handed to it.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let label = format!("label=kairos-fleet.test={}", self.prefix);
        let queries: [(&str, &[&str], &str); 2] =
            [("container", &["ps", "-a"], "{{.Names}}"), ("network", &["network", "ls"], "{{.Name}}")];
        for (kind, command, format) in queries {
            let mut args: Vec<&str> = command.to_vec();
            args.extend(["--filter", &label, "--format", format]);
            let out = self.docker(&args);
            left.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| format!("{kind} {l}")));
        }
        let images: Vec<String> = {
            let owned = self.owned();
            owned.images.iter().chain(&owned.removed_images).cloned().collect()
        };
        for image in images {
            if self.docker(&["image", "inspect", &image]).status.success() {
                left.push(format!("image {image}"));
            }
        }
        left
    }

    /// Removes everything of the run now (also done when dropped).
    pub fn remove_all(&self) {
        let owned = std::mem::take(&mut *self.owned());
        for chunk in owned.containers.chunks(16) {
            let mut args = vec!["rm", "--force", "--volumes"];
            args.extend(chunk.iter().map(String::as_str));
            let _ = self.docker(&args);
        }
        for network in &owned.networks {
            let _ = self.docker(&["network", "rm", network]);
        }
        // Newest first: a derived image goes before the image it is built on.
        for image in owned.images.iter().rev() {
            let _ = self.docker(&["image", "rm", "--force", image]);
        }
        self.owned().removed_images.extend(owned.images);
    }

    /// Removes what earlier runs left behind when their process died
    /// without dropping its harness (killed by a signal): containers and
    /// networks labelled `kairos-fleet.test` and `kairos-fleet/*` images
    /// tagged `kf-...`, whose run's pid is gone.
    fn sweep_dead_runs(&self) {
        let dead = |prefix: &str| {
            // kf-<what>-<pid>-<stamp>
            let mut fields = prefix.rsplitn(3, '-');
            let (_stamp, pid) = (fields.next(), fields.next());
            prefix.starts_with("kf-")
                && pid.and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
        };
        let label = "{{.Label \"kairos-fleet.test\"}}";
        let queries: [(&[&str], String, &[&str]); 2] = [
            (&["ps", "-a"], format!("{{{{.Names}}}} {label}"), &["rm", "--force", "--volumes"]),
            (&["network", "ls"], format!("{{{{.Name}}}} {label}"), &["network", "rm"]),
        ];
        for (list, format, remove) in queries {
            let mut args: Vec<&str> = list.to_vec();
            args.extend(["--filter", "label=kairos-fleet.test", "--format", &format]);
            let out = self.docker(&args);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((name, prefix)) = line.split_once(' ') {
                    if dead(prefix) {
                        let mut rm: Vec<&str> = remove.to_vec();
                        rm.push(name);
                        let _ = self.docker(&rm);
                    }
                }
            }
        }
        let out = self.docker(&["image", "ls", "kairos-fleet/*", "--format", "{{.Repository}}:{{.Tag}}"]);
        for image in String::from_utf8_lossy(&out.stdout).lines() {
            if image.rsplit_once(':').is_some_and(|(_, tag)| dead(tag)) {
                let _ = self.docker(&["image", "rm", "--force", image]);
            }
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.remove_all();
    }
}
