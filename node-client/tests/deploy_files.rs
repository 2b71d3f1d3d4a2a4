//! The files in deploy/node-client match the binary: their command lines
//! parse with its clap definition, and the example config is valid.

use std::path::{Path, PathBuf};

use clap::Parser;
use kairos_node_client::cli::{Cli, Command};
use kairos_node_client::config::{ClientConfig, K3sRoleSetting, DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR};

fn deploy(file: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node-client").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// The value of the first `key=` line (systemd) or `key="..."` line (OpenRC).
fn value_of<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=')).map(|v| v.trim().trim_matches('"'))
}

/// Parses a `run` command line and checks where it points.
fn check_run_argv(argv: Vec<&str>, source: &str) {
    assert!(argv[0].ends_with("/kairos-node-client"), "{source}: runs {:?}", argv[0]);
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{source}: {argv:?} does not parse:\n{e}"));
    match cli.command {
        Command::Run(run) => {
            assert_eq!(run.config, PathBuf::from(DEFAULT_CONFIG_PATH), "{source}");
            assert_eq!(run.state_dir, Some(PathBuf::from(DEFAULT_STATE_DIR)), "{source}");
            assert_eq!(run.root, PathBuf::from("/"), "{source}");
        }
        other => panic!("{source}: expected `run`, got {other:?}"),
    }
}

#[test]
fn systemd_unit_runs_a_command_the_binary_accepts_and_restarts_forever() {
    let (path, unit) = deploy("kairos-node-client.service");
    let source = path.display().to_string();
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.lines().any(|l| l.trim() == section), "{source}: missing {section}");
    }
    let exec = value_of(&unit, "ExecStart").expect("ExecStart");
    check_run_argv(exec.split_whitespace().collect(), &source);
    assert_eq!(value_of(&unit, "Restart"), Some("always"));
    assert_eq!(value_of(&unit, "StartLimitIntervalSec"), Some("0"));
    assert_eq!(value_of(&unit, "KillSignal"), Some("SIGTERM"));
    assert_eq!(value_of(&unit, "StateDirectory"), Some("kairos-fleet"));
    // The upgrade executor (kairos-agent) runs as a child of the client and
    // inherits its sandbox: root with every capability, block devices,
    // mounts, netlink, writable system paths.
    assert!(value_of(&unit, "User").is_none(), "{source}: the executor must run as root");
    for key in [
        "ProtectSystem",
        "PrivateDevices",
        "CapabilityBoundingSet",
        "NoNewPrivileges",
        "SystemCallFilter",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "ProtectKernelModules",
        "DevicePolicy",
    ] {
        assert!(value_of(&unit, key).is_none(), "{source}: {key} would stop kairos-agent from installing");
    }
    // /etc and /proc stay readable: nothing hides them.
    for key in ["InaccessiblePaths", "ProtectProc", "ProcSubset"] {
        assert!(value_of(&unit, key).is_none(), "{source}: {key} would hide /proc or /etc");
    }
}

#[test]
fn openrc_script_supervises_a_command_the_binary_accepts() {
    let (path, script) = deploy("kairos-node-client.openrc");
    let source = path.display().to_string();
    assert_eq!(script.lines().next(), Some("#!/sbin/openrc-run"));
    assert_eq!(value_of(&script, "supervisor"), Some("supervise-daemon"));
    let command = value_of(&script, "command").expect("command");
    let args = value_of(&script, "command_args").expect("command_args");
    check_run_argv(std::iter::once(command).chain(args.split_whitespace()).collect(), &source);
    assert!(value_of(&script, "respawn_delay").is_some(), "{source}: respawn_delay");
    assert_eq!(value_of(&script, "respawn_max"), Some("0"), "{source}: respawn forever");
    assert!(script.contains(&format!("checkpath --directory --mode 0700 --owner root:root {DEFAULT_STATE_DIR}")));
    let mode = std::fs::metadata(&path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert!(mode.is_ok_and(|m| m & 0o111 != 0), "{source} must be executable");
}

#[test]
fn example_config_is_valid_and_uses_the_default_paths() {
    let (path, text) = deploy("node-client.toml");
    let config = ClientConfig::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(config.k3s_role, K3sRoleSetting::Agent);
    assert_eq!(config.labels.get("fleet.kairos.io/wave").map(String::as_str), Some("canary"));
    assert_eq!(config.upgrade, kairos_node_client::config::UpgradeConfig::default(), "the example shows the defaults");
    // Every commented-out key is a real key too, in the section it is in.
    let lines: Vec<&str> = text.lines().collect();
    let commented: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            lines[i]
                .strip_prefix("# ")
                .and_then(|l| l.split_once(" = "))
                .is_some_and(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        })
        .collect();
    assert!(commented.len() >= 2, "the example shows the optional keys");
    for i in commented {
        let mut probe = lines.clone();
        probe[i] = &lines[i][2..];
        let probe = probe.join("\n");
        let parsed = ClientConfig::parse(&probe);
        assert!(parsed.is_ok(), "{}: commented example {:?} is not valid: {parsed:?}", path.display(), lines[i]);
    }
}

#[test]
fn enroll_and_simulate_command_lines_parse() {
    let enroll = ["kairos-node-client", "enroll", "--server", "https://f:7443", "--token", "t", "--ca-file", "ca.pem"];
    assert!(matches!(Cli::try_parse_from(enroll).map(|c| c.command), Ok(Command::Enroll(_))));
    let simulate = [
        "kairos-node-client",
        "simulate",
        "--server",
        "https://a:1,https://b:2",
        "--token",
        "t",
        "--count",
        "10",
        "--ca-file",
        "ca.pem",
        "--duration",
        "1m",
        "--storm-after",
        "10s",
        "--upgrade-step",
        "500ms",
    ];
    match Cli::try_parse_from(simulate).map(|c| c.command) {
        Ok(Command::Simulate(s)) => {
            assert_eq!(s.server, ["https://a:1", "https://b:2"]);
            assert_eq!(s.duration, Some(std::time::Duration::from_secs(60)));
            assert_eq!(s.storm_state, "downloading");
        }
        other => panic!("{other:?}"),
    }
    let err = Cli::try_parse_from([
        "kairos-node-client",
        "enroll",
        "--server",
        "x",
        "--token",
        "t",
        "--insecure-skip-verify",
    ]);
    assert!(err.is_err(), "there is no way to skip server verification");
}

/// The files and commands of deploy/cloud-config/node-client.yaml.
fn cloud_config() -> (PathBuf, serde_yaml_ng::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cloud-config/node-client.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.starts_with("#cloud-config\n"), "{}: Kairos reads it only with this first line", path.display());
    let doc = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, doc)
}

/// Every step of every stage.
fn cloud_config_steps(doc: &serde_yaml_ng::Value) -> Vec<&serde_yaml_ng::Value> {
    let stages = doc["stages"].as_mapping().expect("stages");
    stages.values().flat_map(|steps| steps.as_sequence().expect("a list of steps")).collect()
}

#[test]
fn cloud_config_writes_a_valid_config_and_the_deploy_unit_and_enrolls_with_a_command_the_binary_accepts() {
    let (path, doc) = cloud_config();
    let source = path.display().to_string();
    let steps = cloud_config_steps(&doc);
    let file = |target: &str| {
        steps
            .iter()
            .filter_map(|s| s["files"].as_sequence())
            .flatten()
            .find(|f| f["path"].as_str() == Some(target))
            .and_then(|f| f["content"].as_str())
            .unwrap_or_else(|| panic!("{source}: writes no {target}"))
            .to_string()
    };
    let config = ClientConfig::parse(&file(DEFAULT_CONFIG_PATH)).unwrap_or_else(|e| panic!("{source}: {e}"));
    assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    for (target, deployed) in [
        ("/etc/systemd/system/kairos-node-client.service", "kairos-node-client.service"),
        ("/etc/init.d/kairos-node-client", "kairos-node-client.openrc"),
    ] {
        assert_eq!(file(target), deploy(deployed).1, "{source}: {target} is deploy/node-client/{deployed}");
    }
    let binds = doc["install"]["bind_mounts"].as_sequence().expect("install.bind_mounts");
    assert!(binds.iter().any(|b| b.as_str() == Some(DEFAULT_STATE_DIR)), "{source}: the state dir persists");

    let enroll = steps
        .iter()
        .filter_map(|s| s["commands"].as_sequence())
        .flatten()
        .filter_map(|c| c.as_str())
        .find(|c| c.contains(" enroll"))
        .unwrap_or_else(|| panic!("{source}: no enroll command"));
    let mut argv: Vec<&str> = enroll.split_whitespace().collect();
    argv.extend(["--token", "kfe_from_the_environment"]);
    match Cli::try_parse_from(&argv).map(|c| c.command) {
        Ok(Command::Enroll(e)) => {
            assert_eq!(e.state_dir, PathBuf::from(DEFAULT_STATE_DIR), "{source}");
            assert_eq!(e.ca_file, Some(PathBuf::from("/etc/kairos-fleet/ca.pem")), "{source}");
        }
        other => panic!("{source}: {argv:?} is not an enroll command line: {other:?}"),
    }
}
