//! Helpers the kairosctl integration tests share: a temp dir with a CA
//! and a config, running the binary, and a real one-replica cluster.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kairos_controlplane::fleet::image::ImageRef;
use kairos_controlplane::security::{Ca, ReplicaCredentials};
use kairos_fleet_proto::fleet::v1 as pb;
use tokio::net::TcpListener;

/// Bound on every network step and on each kairosctl run.
pub const STEP: Duration = Duration::from_secs(30);
pub const TOKEN: &str = "kft_0123abcd_0123456789abcdef0123456789abcdef";
/// Stored as an operator token by [`fleet_replica`].
pub const OPERATOR_TOKEN: &str = "kft_0123abce_0123456789abcdef0123456789abcdef";
/// Stored as an admin token by [`fleet_replica`].
pub const ADMIN_TOKEN: &str = "kft_0123abcf_0123456789abcdef0123456789abcdef";

/// A temp dir with ca.pem, admin.token and kairosctl.toml (context
/// `default` with `endpoints`), plus the credentials for fake replicas.
pub struct Setup {
    /// The temp dir.
    pub dir: tempfile::TempDir,
    /// Credentials of fake replicas.
    pub creds: ReplicaCredentials,
}

impl Setup {
    pub fn new() -> Setup {
        let ca = Ca::generate("kairosctl-test").expect("ca");
        let creds = ReplicaCredentials::issue(&ca, 1, &["127.0.0.1".into()]).expect("credentials");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write ca");
        std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).expect("write token");
        Setup { dir, creds }
    }

    pub fn config(&self, endpoints: &[String]) -> PathBuf {
        let list: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
        let path = self.dir.path().join("kairosctl.toml");
        let text = format!(
            "current_context = \"default\"\n[contexts.default]\nendpoints = [{}]\nca_file = \"ca.pem\"\ntoken_file = \"admin.token\"\n",
            list.join(", ")
        );
        std::fs::write(&path, text).expect("write config");
        path
    }
}

pub struct Run {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// The result of `kairosctl args`, also printed for the test's log.
    pub fn of(args: &[&str], output: &std::process::Output) -> Run {
        let run = Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!("kairosctl {args:?} -> {:?}\nstdout:\n{}stderr:\n{}", run.code, run.stdout, run.stderr);
        run
    }
}

/// Runs kairosctl with `args` after `--config config`, isolated from the
/// user's environment.
pub async fn kairosctl(config: &Path, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kairosctl"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("KAIROS_CONFIG")
        .env("HOME", config.parent().unwrap_or(Path::new("/")))
        .kill_on_drop(true);
    let output =
        tokio::time::timeout(STEP, command.output()).await.expect("kairosctl finishes").expect("kairosctl runs");
    Run::of(args, &output)
}

/// A loopback port nothing listens on.
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().map(|a: SocketAddr| a.port()).expect("addr")
}

/// The next line of a running kairosctl, as JSON.
pub async fn next_json(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = tokio::time::timeout(STEP, lines.next_line()).await.expect("a line in time").expect("read");
    serde_json::from_str(&line.expect("kairosctl still running")).expect("a JSON line")
}

/// The id of test node `i`.
pub fn fleet_node_id(i: u32) -> String {
    format!("{:08x}{:024x}", 0xabc0_0000_u32 + i, 0)
}

/// A real one-replica cluster on loopback with `setup`'s credentials: the
/// test token stored as a viewer token, [`OPERATOR_TOKEN`] and
/// [`ADMIN_TOKEN`] with their roles (and in `operator.token` and
/// `root.token`), three nodes: two ubuntu (one online), one opensuse, and
/// ubuntu releases v2.4.1 and v2.4.3 in the catalog.
pub async fn fleet_replica(setup: &Setup) -> (kairos_controlplane::replica::ReplicaHandle, String) {
    use kairos_controlplane::nodes::{self, NodeRecord, SessionRecord};
    use kairos_controlplane::replica::{RaftTuning, ReplicaConfig};
    use kairos_controlplane::security::{hash_secret, Role, TokenId, TokenRecord};
    use kairos_controlplane::store::{Op, Request as Write};

    let port = closed_port().await;
    let creds = Arc::new(ReplicaCredentials {
        ca_pem: setup.creds.ca_pem.clone(),
        cert_pem: setup.creds.cert_pem.clone(),
        key_pem: setup.creds.key_pem.clone(),
    });
    let peer_creds = Arc::clone(&creds);
    let config = ReplicaConfig {
        id: 1,
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        advertise: format!("127.0.0.1:{port}"),
        data_dir: setup.dir.path().join("replica-1"),
        server_tls: creds.server_tls(),
        peer_tls: Arc::new(move |host: &str| peer_creds.client_tls(host)),
        bootstrap: true,
        raft: RaftTuning::default(),
        // The test writes session records itself: the reconciler, which
        // removes records of streams nobody holds, stays idle.
        sessions: kairos_controlplane::sessions::SessionSettings {
            reconcile_every: Duration::from_secs(3600),
            ..Default::default()
        },
        engine: Default::default(),
        node_ca: None,
        registry: Default::default(),
    };
    let handle = kairos_controlplane::replica::Replica::start(config).await.expect("replica starts");
    let raft = handle.raft().clone();
    tokio::time::timeout(STEP, async {
        while raft.metrics().borrow().current_leader.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a leader");

    let mut ops = Vec::new();
    for (token, role, file) in [
        (TOKEN, Role::Viewer, None),
        (OPERATOR_TOKEN, Role::Operator, Some("operator.token")),
        (ADMIN_TOKEN, Role::Admin, Some("root.token")),
    ] {
        let (id, secret) = token.trim_start_matches("kft_").split_once('_').expect("test token");
        let record = TokenRecord {
            id: TokenId::parse(id).expect("token id"),
            role,
            description: format!("kairosctl tests, {}", role.as_str()),
            hash: hash_secret(secret),
            created_at_ms: 1_000,
            expires_at_ms: None,
            revoked: false,
            created_by: "init".into(),
            revoked_at_ms: None,
        };
        ops.push(Op::put(format!("tokens/{id}"), serde_json::to_vec(&record).expect("token json")));
        if let Some(file) = file {
            std::fs::write(setup.dir.path().join(file), token).expect("write token file");
        }
    }
    for (i, flavor, site) in [(1u32, "ubuntu", "berlin"), (2, "ubuntu", "paris"), (3, "opensuse", "berlin")] {
        // Random-looking ids, as machine ids are: distinct in their first 12 digits.
        let node_id = fleet_node_id(i);
        let mut record = NodeRecord {
            node_id: node_id.clone(),
            machine_id: node_id.clone(),
            hostname: format!("edge-{i}"),
            identity: Some(pb::NodeIdentity {
                flavor: flavor.into(),
                flavor_release: "22.04".into(),
                variant: "core".into(),
                model: "generic".into(),
                arch: "amd64".into(),
                release: "v2.4.2".into(),
                image_repo: format!("quay.io/kairos/{flavor}:22.04-core-amd64-generic-v2.4.2"),
                ..Default::default()
            }),
            family: Some(pb::ImageFamily {
                flavor: flavor.into(),
                flavor_release: "22.04".into(),
                variant: "core".into(),
                arch: "amd64".into(),
                model: "generic".into(),
                trusted_boot: false,
            }),
            state: if i == 2 { pb::NodeState::Failed } else { pb::NodeState::Idle } as i32,
            ..Default::default()
        };
        record.node_labels.insert("site".into(), site.into());
        ops.push(Op::put(nodes::node_key(&node_id), record.encode()));
        if i == 1 {
            let session = SessionRecord { replica_id: 1, session_id: 1, connected_at_ms: 1_700_000_000_000 };
            ops.push(Op::put(nodes::session_key(&node_id), session.encode()));
        }
    }
    handle.write(Write::batch(ops)).await.expect("seed");
    let release = pb::AddReleaseRequest {
        image_ref: "quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.3".into(),
        ..Default::default()
    };
    let stored = kairos_controlplane::api::release::ReleaseRecord::manual(
        &ImageRef::upgrade_target(&release.image_ref).expect("release ref"),
        None,
    );
    let value = serde_json::to_vec(&stored).expect("release json");
    handle.write(Write::put(stored.key(), value)).await.expect("catalog");
    // An older release too, for refused downgrades.
    let older = kairos_controlplane::api::release::ReleaseRecord::manual(
        &ImageRef::upgrade_target("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.1").expect("release ref"),
        None,
    );
    let value = serde_json::to_vec(&older).expect("release json");
    handle.write(Write::put(older.key(), value)).await.expect("catalog");
    (handle, format!("https://127.0.0.1:{port}"))
}
