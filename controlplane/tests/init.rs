//! `kairos-controlplane init` as a user runs it: the built binary, a temp dir.

use std::path::Path;
use std::process::{Command, Output};

use kairos_controlplane::cli_config::CliConfig;
use kairos_controlplane::security::{
    parse_token, BootstrapTokens, Ca, NodeIssuer, ReplicaConfig, ReplicaCredentials, Role,
};

fn init(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kairos-controlplane"))
        .arg("init")
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run kairos-controlplane")
}

const THREE: [&str; 6] =
    ["--replica", "1=127.0.0.1:7001", "--replica", "2=127.0.0.1:7002", "--replica", "3=localhost:7003"];

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn init_creates_a_three_replica_cluster() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let out = init(&dir, &THREE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));

    for file in ["ca.pem", "ca.key", "admin.token", "kairosctl.toml"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    Ca::load(&dir).expect("the CA loads back");
    for id in 1..=3 {
        let replica_dir = dir.join(format!("replica-{id}"));
        ReplicaCredentials::load(&replica_dir).expect("credentials");
        let config = ReplicaConfig::load(&replica_dir).expect("replica.toml");
        assert_eq!(config.id, id);
        assert_eq!(config.bootstrap, id == 1, "only the first replica bootstraps");
        assert_eq!(BootstrapTokens::load(&replica_dir).expect("read").is_some(), id == 1);
        assert!(stdout.contains(&format!("serve --data-dir {}", replica_dir.display())), "{stdout}");
        let node_ca = NodeIssuer::load(&replica_dir).expect("node CA");
        assert!(node_ca.cert_pem().contains("BEGIN CERTIFICATE"));
        #[cfg(unix)]
        assert_eq!(mode(&replica_dir.join("replica.key")), 0o600);
        #[cfg(unix)]
        assert_eq!(mode(&replica_dir.join("node-ca.key")), 0o600);
    }
    assert_eq!(ReplicaConfig::load(&dir.join("replica-3")).expect("replica.toml").listen, "localhost:7003");
    #[cfg(unix)]
    for secret in ["ca.key", "admin.token", "replica-1/bootstrap-tokens.toml"] {
        assert_eq!(mode(&dir.join(secret)), 0o600, "{secret}");
    }

    // The admin token parses, and only its hash is in the bootstrap record.
    let token = std::fs::read_to_string(dir.join("admin.token")).expect("admin.token");
    let (id, secret) = parse_token(token.trim()).expect("token parses");
    let records = BootstrapTokens::load(&dir.join("replica-1")).expect("read").expect("present").tokens;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].id, id);
    assert_eq!(records[0].check(secret, 0), Ok(Role::Admin));
    let seed = std::fs::read_to_string(dir.join("replica-1/bootstrap-tokens.toml")).expect("read");
    assert!(!seed.contains(secret), "the secret never leaves admin.token");

    let config = CliConfig::load(&dir.join("kairosctl.toml")).expect("kairosctl.toml");
    let context = config.context(None).expect("default context");
    assert_eq!(config.current_context, "default");
    assert_eq!(context.endpoints, ["https://127.0.0.1:7001", "https://127.0.0.1:7002", "https://localhost:7003"]);
    assert_eq!(context.ca_path(), Some(dir.join("ca.pem")));
    assert_eq!(context.bearer_token().expect("token file"), Some(token.trim().to_string()));
}

#[test]
fn second_init_without_force_names_ca_key_and_keeps_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    assert!(init(dir, &[]).status.success());
    let key_before = std::fs::read(dir.join("ca.key")).expect("ca.key");

    let again = init(dir, &THREE);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains(&dir.join("ca.key").display().to_string()) && stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(dir.join("ca.key")).expect("ca.key"), key_before, "untouched");
    assert!(!dir.join("replica-2").exists(), "nothing else written either");

    let forced = init(dir, &["--force"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    assert_ne!(std::fs::read(dir.join("ca.key")).expect("ca.key"), key_before, "replaced");
}

#[test]
fn default_init_is_one_local_replica() {
    let tmp = tempfile::tempdir().expect("tempdir");
    assert!(init(tmp.path(), &[]).status.success());
    let config = ReplicaConfig::load(&tmp.path().join("replica-1")).expect("replica.toml");
    assert_eq!((config.id, config.listen.as_str(), config.bootstrap), (1, "127.0.0.1:7001", true));
}

#[test]
fn invalid_replica_flags_fail_with_the_flag_and_the_rule() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (args, rule) in [
        (vec!["--replica", "0=127.0.0.1:7001"], "at least 1"),
        (vec!["--replica", "1=127.0.0.1"], "needs a port"),
        (vec!["--replica", "1=h:7001", "--replica", "1=h:7002"], "id 1 is given twice"),
        (vec!["--replica", "1=h:7001", "--replica", "2=h:7001"], "address h:7001 is given twice"),
    ] {
        let out = init(tmp.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains("--replica") && stderr.contains(rule), "{args:?}: {stderr}");
    }
    assert!(!tmp.path().join("ca.key").exists(), "nothing written on a bad flag");
}

#[test]
fn issue_node_ca_gives_a_replica_folder_its_node_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    assert!(init(dir, &THREE).status.success());
    let replica = dir.join("replica-2");
    for file in ["node-ca.pem", "node-ca.key"] {
        std::fs::remove_file(replica.join(file)).expect("remove");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kairos-controlplane"))
        .args(["issue-node-ca", "--replica-id", "2", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run kairos-controlplane");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&replica.join("node-ca.pem").display().to_string()), "{stdout}");
    NodeIssuer::load(&replica).expect("the new node CA loads");

    let out = Command::new(env!("CARGO_BIN_EXE_kairos-controlplane"))
        .args(["issue-node-ca", "--replica-id", "2", "--data-dir"])
        .arg(dir.join("nowhere"))
        .output()
        .expect("run kairos-controlplane");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("ca.pem"), "{stderr}");
}
