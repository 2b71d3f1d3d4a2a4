//! The compose deployment (`deploy/compose`) end to end, as an operator runs
//! it: `scripts/build-images` (this build's profile, a tag of this run),
//! `up`, `smoke` and `down`, in a compose project of this run. `down`
//! (with the images) runs at the end whatever happened. Needs a running
//! Docker engine and docker-compose: without them the test fails, it never
//! skips (CI must run it).
//!
//! build-images runs with `--skip-build`: the images hold the binaries this
//! suite built and tests, and no cargo runs inside the suite (a build there
//! could relink binaries that other tests are running).

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};

use kairos_fleet_tests::sim::seed_images;
use kairos_fleet_tests::{target_and_profile, workspace};

/// Simulated nodes: two of each of the 16 seed image families.
const NODES: usize = 32;

/// Longest run of one script (seconds), so a hang fails the test instead
/// of holding the suite.
const SCRIPT_TIMEOUT_SECS: u32 = 240;

/// Output of a command as text, stdout then stderr.
fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A compose project and image tag of this test run; `down --images` when dropped.
struct Deployment {
    project: String,
    tag: String,
}

impl Deployment {
    fn new() -> Deployment {
        let id = std::process::id();
        Deployment { project: format!("kairos-fleet-test-{id}"), tag: format!("test-{id}") }
    }

    /// Runs `program` (a path under the workspace) with the project's settings, under `timeout`.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let (target_dir, _) = target_and_profile();
        Command::new("timeout")
            .arg(SCRIPT_TIMEOUT_SECS.to_string())
            .arg(workspace().join(program))
            .args(args)
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("KAIROS_TAG", &self.tag)
            .env("KAIROS_NODES", NODES.to_string())
            .env("CARGO_TARGET_DIR", target_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// What of the project is left: containers, volumes and networks labelled with it.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        let kinds: [(&[&str], &str); 3] =
            [(&["ps", "-a"], "{{.Names}}"), (&["volume", "ls"], "{{.Name}}"), (&["network", "ls"], "{{.Name}}")];
        for (kind, format) in kinds {
            let out = Command::new("docker")
                .args(kind)
                .args(["--filter", &label, "--format", format])
                .output()
                .unwrap_or_else(|e| panic!("docker {kind:?}: {e}"));
            left.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| format!("{}: {l}", kind[0])));
        }
        left
    }

    /// Images of this run's tag that are still there.
    fn images_left(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
            .unwrap_or_else(|e| panic!("docker image ls: {e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("kairos-fleet/") && l.ends_with(&format!(":{}", self.tag)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let out = self.run("deploy/compose/down", &["--images"]);
        if !out.status.success() {
            eprintln!("deploy/compose/down --images failed ({}):\n{}", out.status, text(&out));
        }
    }
}

fn docker_is_available() {
    let docker = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
    assert!(
        docker.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs a running Docker engine (`docker info` failed: {})",
        docker.map_or_else(|e| e.to_string(), |o| text(&o))
    );
    let compose = Command::new("docker-compose").arg("version").output();
    assert!(
        compose.as_ref().is_ok_and(|o| o.status.success()),
        "this test needs docker-compose (apt-get install docker-compose; scripts/test installs it)"
    );
}

#[test]
fn compose_deployment_forms_a_cluster_enrolls_every_node_completes_a_rollout_and_leaves_nothing() {
    docker_is_available();
    let deployment = Deployment::new();
    let (_, profile) = target_and_profile();

    let built =
        deployment.run("scripts/build-images", &["--profile", profile, "--tag", &deployment.tag, "--skip-build"]);
    let built_text = text(&built);
    assert!(built.status.success(), "build-images failed ({}):\n{built_text}", built.status);
    for image in ["controlplane", "node-client", "registry"] {
        let name = format!("kairos-fleet/{image}:{}", deployment.tag);
        assert!(
            built_text.lines().any(|l| l.starts_with(&name) && l.ends_with("MiB")),
            "{name} not listed:\n{built_text}"
        );
    }

    let up = deployment.run("deploy/compose/up", &[]);
    assert!(up.status.success(), "up failed ({}):\n{}", up.status, text(&up));

    let smoke = deployment.run("deploy/compose/smoke", &[]);
    let report = text(&smoke);
    assert!(smoke.status.success(), "smoke failed ({}):\n{report}", smoke.status);
    let line = |prefix: &str| report.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    let cluster = line("ok: cluster healthy:").unwrap_or_else(|| panic!("no cluster line:\n{report}"));
    assert!(cluster.contains("3 voters") && cluster.contains("all three replicas agree"), "{cluster}");
    assert!(line("ok: metrics:").is_some(), "no metrics line:\n{report}");
    let fleet = line("ok: fleet:").unwrap_or_else(|| panic!("no fleet line:\n{report}"));
    assert!(fleet.contains(&format!("{NODES} nodes enrolled, {NODES} online")), "{fleet}");
    let rollout = line("ok: rollout ").unwrap_or_else(|| panic!("no rollout line:\n{report}"));
    assert!(rollout.contains(&format!("completed: {NODES} of {NODES} nodes on v1.6.1")), "{rollout}");
    assert!(report.contains("smoke: all checks passed"), "{report}");

    let down = deployment.run("deploy/compose/down", &["--images"]);
    assert!(down.status.success(), "down failed ({}):\n{}", down.status, text(&down));
    assert_eq!(deployment.leftovers(), Vec::<String>::new(), "down leaves nothing of the project");
    assert_eq!(deployment.images_left(), Vec::<String>::new(), "down --images removes the images of the tag");
}

#[test]
fn smoke_release_list_is_every_seed_family_at_v1_6_0_and_v1_6_1() {
    let path = workspace().join("deploy/compose/releases.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let listed: BTreeSet<String> =
        text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(str::to_string).collect();
    let want: BTreeSet<String> = seed_images("1.6.0").into_iter().chain(seed_images("1.6.1")).collect();
    assert_eq!(want.len(), 32, "16 seed families at two releases");
    assert_eq!(listed, want, "{} lists the seed images of v1.6.0 and v1.6.1", path.display());
}
