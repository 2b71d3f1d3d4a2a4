//! The kairosctl binary against fake ClusterService and ReleaseService
//! replicas on loopback, over TLS from a test CA: output formats, the
//! bearer token, leader redirects, failover and exit codes; the node and
//! fleet views against a real one-replica cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_controlplane::fleet::image::ImageRef;
use kairos_controlplane::security::{install_crypto_provider, Ca, ReplicaCredentials};
use kairos_fleet_proto::fleet::v1 as pb;
use pb::cluster_service_server::{ClusterService, ClusterServiceServer};
use pb::release_service_server::{ReleaseService, ReleaseServiceServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// Bound on every network step and on each kairosctl run.
const STEP: Duration = Duration::from_secs(30);
const TOKEN: &str = "kft_0123abcd_0123456789abcdef0123456789abcdef";

/// How a fake replica answers.
#[derive(Clone)]
enum Behavior {
    /// Serves every call as leader `id`.
    Leader,
    /// Refuses with UNAVAILABLE naming leader 2 at this port.
    Follower { leader_port: u16 },
    /// Refuses every call as a viewer token calling an admin method.
    Deny,
}

#[derive(Clone)]
struct Fake {
    id: u64,
    port: u16,
    behavior: Behavior,
    /// `authorization` metadata of every call received.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn record<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let auth = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        self.seen.lock().expect("lock").push(auth.to_string());
        match &self.behavior {
            Behavior::Leader => Ok(()),
            Behavior::Follower { leader_port } => Err(Status::unavailable(format!(
                "replica {} is not the leader and cannot forward: leader is 2 at 127.0.0.1:{leader_port}",
                self.id
            ))),
            Behavior::Deny => Err(Status::permission_denied(
                "this call needs role admin but the token has role viewer; ask an admin for a admin token",
            )),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }

    fn replicas(&self) -> Vec<pb::Replica> {
        (1..=3)
            .map(|id| pb::Replica {
                replica_id: id,
                address: format!("127.0.0.1:{}", 7000 + id),
                role: if id == self.id { pb::ReplicaRole::Leader } else { pb::ReplicaRole::Follower } as i32,
                last_log_index: 40 + id,
                applied_index: 40 + id,
                lag: 3 - id,
                reachable: true,
                ..pb::Replica::default()
            })
            .collect()
    }
}

fn release(tag: &str) -> pb::Release {
    pb::Release {
        image_ref: format!("quay.io/kairos/ubuntu:24.04-core-amd64-generic-{tag}"),
        release: tag.to_string(),
        grammar: pb::TagGrammar::V35 as i32,
        support_status: pb::SupportStatus::Current as i32,
        source: "manual".into(),
        ..pb::Release::default()
    }
}

#[tonic::async_trait]
impl ClusterService for Fake {
    async fn status(
        &self,
        r: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.record(&r)?;
        Ok(Response::new(pb::ClusterStatusResponse {
            term: 3,
            leader_id: self.id,
            leader_address: format!("https://127.0.0.1:{}", self.port),
            commit_index: 43,
            replicas: self.replicas(),
            answered_by: self.id,
            from_leader: true,
        }))
    }

    async fn add_replica(&self, r: Request<pb::AddReplicaRequest>) -> Result<Response<pb::AddReplicaResponse>, Status> {
        self.record(&r)?;
        Ok(Response::new(pb::AddReplicaResponse { replicas: self.replicas(), log_index: 44 }))
    }

    async fn remove_replica(
        &self,
        r: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::RemoveReplicaResponse>, Status> {
        self.record(&r)?;
        Err(Status::not_found(format!("replica {} is not a member", r.get_ref().replica_id)))
    }
}

#[tonic::async_trait]
impl ReleaseService for Fake {
    /// Three releases, served two per page.
    async fn list_releases(
        &self,
        r: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        self.record(&r)?;
        let all = [release("v3.5.2"), release("v3.5.1"), release("v3.5.0")];
        let start: usize = r.get_ref().page_token.parse().unwrap_or(0);
        let size = match r.get_ref().page_size {
            0 => 2,
            n => (n as usize).min(2),
        };
        let end = (start + size).min(all.len());
        let next_page_token = if end < all.len() { end.to_string() } else { String::new() };
        Ok(Response::new(pb::ListReleasesResponse { releases: all[start..end].to_vec(), next_page_token }))
    }

    /// Validates with the real image parser, as the server does.
    async fn add_release(&self, r: Request<pb::AddReleaseRequest>) -> Result<Response<pb::AddReleaseResponse>, Status> {
        self.record(&r)?;
        let image_ref = &r.get_ref().image_ref;
        match ImageRef::parse(image_ref) {
            Ok(image) if !image.is_disk_image() => Ok(Response::new(pb::AddReleaseResponse {
                release: Some(pb::Release { image_ref: image_ref.clone(), ..release("v3.5.0") }),
                created: true,
            })),
            Ok(_) => Err(Status::invalid_argument(format!(
                "image_ref {image_ref:?}: a disk image is never an upgrade target"
            ))),
            Err(e) => Err(Status::invalid_argument(format!("image_ref: {e}"))),
        }
    }

    async fn sync_releases(
        &self,
        r: Request<pb::SyncReleasesRequest>,
    ) -> Result<Response<pb::SyncReleasesResponse>, Status> {
        self.record(&r)?;
        Err(Status::unimplemented("not in this fake"))
    }
}

/// A fake replica serving both services with `creds` on 127.0.0.1.
struct Replica {
    fake: Fake,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start(creds: &ReplicaCredentials, id: u64, behavior: Behavior) -> Replica {
        install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let fake = Fake { id, port, behavior, seen: Arc::default() };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = Server::builder()
            .tls_config(creds.server_tls())
            .expect("server tls")
            .add_service(ClusterServiceServer::new(fake.clone()))
            .add_service(ReleaseServiceServer::new(fake.clone()));
        let task = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener);
            let shutdown = async {
                let _ = stopped.await;
            };
            server.serve_with_incoming_shutdown(incoming, shutdown).await.expect("server ran");
        });
        Replica { fake, stop: Some(stop), task }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.fake.port)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(STEP, self.task).await.expect("server stops").expect("server task");
    }
}

/// A temp dir with ca.pem, admin.token and kairosctl.toml (context
/// `default` with `endpoints`), plus the credentials for fake replicas.
struct Setup {
    dir: tempfile::TempDir,
    creds: ReplicaCredentials,
}

impl Setup {
    fn new() -> Setup {
        let ca = Ca::generate("kairosctl-test").expect("ca");
        let creds = ReplicaCredentials::issue(&ca, 1, &["127.0.0.1".into()]).expect("credentials");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write ca");
        std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).expect("write token");
        Setup { dir, creds }
    }

    fn config(&self, endpoints: &[String]) -> PathBuf {
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

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs kairosctl with `args` after `--config config`, isolated from the
/// user's environment.
async fn kairosctl(config: &Path, args: &[&str]) -> Run {
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
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    eprintln!("kairosctl {args:?} -> {:?}\nstdout:\n{}stderr:\n{}", run.code, run.stdout, run.stderr);
    run
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().map(|a: SocketAddr| a.port()).expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_json_shows_the_leader_and_sends_the_token() {
    let setup = Setup::new();
    let leader = Replica::start(&setup.creds, 2, Behavior::Leader).await;
    let config = setup.config(&[leader.url()]);
    let run = kairosctl(&config, &["cluster", "status", "-o", "json"]).await;
    assert_eq!(run.code, Some(0));
    let status: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(status["leader_id"], 2);
    assert_eq!(status["leader_address"], leader.url());
    assert_eq!(status["replicas"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["replicas"][1]["role"], "leader");
    assert_eq!(leader.fake.calls(), [format!("Bearer {TOKEN}")]);

    let run = kairosctl(&config, &["cluster", "status"]).await;
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.starts_with("term 3   leader 2 (https://127.0.0.1:"), "{}", run.stdout);
    let header: Vec<&str> = run.stdout.lines().nth(1).unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["ID", "ADDRESS", "ROLE", "MATCHED", "APPLIED", "LAG", "REACHABLE"]);
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_answer_redirects_to_the_leader() {
    let setup = Setup::new();
    let leader = Replica::start(&setup.creds, 2, Behavior::Leader).await;
    let follower = Replica::start(&setup.creds, 1, Behavior::Follower { leader_port: leader.fake.port }).await;
    let config = setup.config(&[follower.url()]);
    let run = kairosctl(&config, &["cluster", "add-replica", "4", "127.0.0.1:7004", "-o", "yaml"]).await;
    assert_eq!(run.code, Some(0));
    let membership: serde_yaml_ng::Value = serde_yaml_ng::from_str(&run.stdout).expect("one YAML document");
    assert_eq!(membership["log_index"].as_u64(), Some(44));
    assert_eq!(follower.fake.calls().len(), 1, "asked the follower once");
    assert_eq!(leader.fake.calls(), [format!("Bearer {TOKEN}")], "then the leader, with the token");
    follower.stop().await;
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_leader_fails_naming_it() {
    let setup = Setup::new();
    let dead = closed_port().await;
    let follower = Replica::start(&setup.creds, 1, Behavior::Follower { leader_port: dead }).await;
    let config = setup.config(&[follower.url()]);
    let run = kairosctl(&config, &["cluster", "status", "--connect-timeout", "2s"]).await;
    assert_eq!(run.code, Some(5));
    assert!(run.stderr.contains(&format!("replica 2 at 127.0.0.1:{dead}")), "{}", run.stderr);
    assert!(run.stderr.contains(&follower.url()), "names the endpoint tried: {}", run.stderr);
    follower.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_skipped_and_server_flag_overrides_the_context() {
    let setup = Setup::new();
    let leader = Replica::start(&setup.creds, 2, Behavior::Leader).await;
    let dead = format!("https://127.0.0.1:{}", closed_port().await);
    let config = setup.config(&[dead.clone(), leader.url()]);
    let run = kairosctl(&config, &["cluster", "status", "-o", "json"]).await;
    assert_eq!(run.code, Some(0));
    assert_eq!(leader.fake.calls().len(), 1);

    // The context names the leader; --server points at the dead port only.
    let config = setup.config(&[leader.url()]);
    let run = kairosctl(&config, &["cluster", "status", "--server", &dead]).await;
    assert_eq!(run.code, Some(5));
    assert!(run.stderr.contains(&dead), "{}", run.stderr);
    assert_eq!(leader.fake.calls().len(), 1, "the context's endpoint was not called");
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_exits_4_with_the_role_hint() {
    let setup = Setup::new();
    let replica = Replica::start(&setup.creds, 1, Behavior::Deny).await;
    let config = setup.config(&[replica.url()]);
    let run = kairosctl(&config, &["cluster", "add-replica", "4", "127.0.0.1:7004"]).await;
    assert_eq!(run.code, Some(4));
    assert!(run.stderr.contains("hint: your token's role is viewer; this call needs admin"), "{}", run.stderr);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_add_of_a_bad_ref_exits_2_with_the_servers_message() {
    let setup = Setup::new();
    let leader = Replica::start(&setup.creds, 2, Behavior::Leader).await;
    let config = setup.config(&[leader.url()]);
    let run = kairosctl(&config, &["releases", "add", "quay.io/kairos/ubuntu:latest"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("image_ref: ") && run.stderr.contains("latest"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    // Several refs: the good one is added and printed, the bad one reported.
    let good = "quay.io/kairos/ubuntu:24.04-core-amd64-generic-v3.5.0";
    let run = kairosctl(&config, &["releases", "add", good, "quay.io/kairos/ubuntu:latest", "-o", "json"]).await;
    assert_eq!(run.code, Some(2));
    let added: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(added["added"][0]["release"]["image_ref"], good);
    assert!(run.stderr.contains("error: quay.io/kairos/ubuntu:latest: "), "{}", run.stderr);
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_list_follows_page_tokens_up_to_the_limit() {
    let setup = Setup::new();
    let leader = Replica::start(&setup.creds, 2, Behavior::Leader).await;
    let config = setup.config(&[leader.url()]);
    let run = kairosctl(&config, &["releases", "list", "-o", "yaml"]).await;
    assert_eq!(run.code, Some(0));
    let list: serde_yaml_ng::Value = serde_yaml_ng::from_str(&run.stdout).expect("one YAML document");
    let releases: Vec<&str> = list["releases"]
        .as_sequence()
        .map(|s| s.iter().filter_map(|r| r["release"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(releases, ["v3.5.2", "v3.5.1", "v3.5.0"]);
    assert_eq!(leader.fake.calls().len(), 2, "two pages");

    let run = kairosctl(&config, &["releases", "list", "--limit", "1"]).await;
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stdout.lines().count(), 2, "header and one release: {}", run.stdout);
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_exits_3() {
    let setup = Setup::new();
    let leader = Replica::start(&setup.creds, 2, Behavior::Leader).await;
    let config = setup.config(&[leader.url()]);
    let run = kairosctl(&config, &["cluster", "remove-replica", "9"]).await;
    assert_eq!(run.code, Some(3));
    assert!(run.stderr.contains("replica 9 is not a member"), "{}", run.stderr);
    leader.stop().await;
}

#[tokio::test]
async fn completion_bash_prints_a_script() {
    let setup = Setup::new();
    // No config file is needed to print a script.
    let run = kairosctl(&setup.dir.path().join("absent.toml"), &["completion", "bash"]).await;
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.contains("complete -F") && run.stdout.contains("kairosctl"), "{}", run.stdout);
}

/// The next line of a running kairosctl, as JSON.
async fn next_json(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = tokio::time::timeout(STEP, lines.next_line()).await.expect("a line in time").expect("read");
    serde_json::from_str(&line.expect("kairosctl still running")).expect("a JSON line")
}

/// The id of test node `i`.
fn fleet_node_id(i: u32) -> String {
    format!("{:08x}{:024x}", 0xabc0_0000_u32 + i, 0)
}

/// A real one-replica cluster on loopback with `setup`'s credentials, the
/// test token stored as a viewer token, and three nodes: two ubuntu
/// (one online), one opensuse.
async fn fleet_replica(setup: &Setup) -> (kairos_controlplane::replica::ReplicaHandle, String) {
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

    let (id, secret) = TOKEN.trim_start_matches("kft_").split_once('_').expect("test token");
    let token = TokenRecord {
        id: TokenId::parse(id).expect("token id"),
        role: Role::Viewer,
        description: "kairosctl tests".into(),
        hash: hash_secret(secret),
        created_at_ms: 1_000,
        expires_at_ms: None,
        revoked: false,
        created_by: "init".into(),
        revoked_at_ms: None,
    };
    let mut ops = vec![Op::put(format!("tokens/{id}"), serde_json::to_vec(&token).expect("token json"))];
    for (i, flavor, site) in [(1u32, "ubuntu", "berlin"), (2, "ubuntu", "paris"), (3, "opensuse", "berlin")] {
        // Random-looking ids, as machine ids are: distinct in their first 12 digits.
        let node_id = fleet_node_id(i);
        let mut record = NodeRecord {
            node_id: node_id.clone(),
            machine_id: node_id.clone(),
            hostname: format!("edge-{i}"),
            identity: Some(pb::NodeIdentity { release: "v2.4.2".into(), ..Default::default() }),
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
    (handle, format!("https://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_fleet_report_against_a_replica() {
    let setup = Setup::new();
    let (replica, url) = fleet_replica(&setup).await;
    let config = setup.config(&[url]);
    let first = fleet_node_id(1);

    let run = kairosctl(&config, &["nodes", "list"]).await;
    assert_eq!(run.code, Some(0));
    let lines: Vec<&str> = run.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header[..3], ["ID", "HOSTNAME", "FLAVOR"]);
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[..4], [&first[..12], "edge-1", "ubuntu", "22.04"], "ids shortened to 12 digits");
    assert!(lines[1].contains("patch-available") && lines[1].contains(" yes "), "{}", run.stdout);
    assert_eq!(lines.last(), Some(&"3 of 3 matching nodes"));

    let run = kairosctl(&config, &["nodes", "list", "--flavor", "ubuntu", "-l", "site in (paris)", "-o", "json"]).await;
    assert_eq!(run.code, Some(0));
    let list: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(list["total_size"], 1);
    assert_eq!(list["nodes"][0]["hostname"], "edge-2");
    assert_eq!(list["nodes"][0]["state"], "failed");
    assert_eq!(list["nodes"][0]["node_id"].as_str().map(str::len), Some(32), "full ids in JSON");

    // One page at a time: the footer names the token of the next one.
    let run = kairosctl(&config, &["nodes", "list", "--limit", "2", "--sort", "release", "--desc"]).await;
    assert_eq!(run.code, Some(0));
    let token = run.stdout.lines().last().and_then(|l| l.strip_prefix("next page: --page-token ")).expect("a token");
    let args = ["nodes", "list", "--limit", "2", "--sort", "release", "--desc", "--page-token", token];
    let run = kairosctl(&config, &args).await;
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stdout.lines().last(), Some("1 of 3 matching nodes"), "{}", run.stdout);
    let run = kairosctl(&config, &["nodes", "list", "--limit", "1", "--all", "--offline", "-o", "yaml"]).await;
    assert_eq!(run.code, Some(0));
    let list: serde_yaml_ng::Value = serde_yaml_ng::from_str(&run.stdout).expect("one YAML document");
    assert_eq!(list["nodes"].as_sequence().map(Vec::len), Some(2), "both pages of offline nodes");

    let run = kairosctl(&config, &["nodes", "get", &first, "--consistency", "linearizable"]).await;
    assert_eq!(run.code, Some(0));
    assert!(run.stdout.starts_with(&format!("ID              {first}\n")), "{}", run.stdout);
    assert!(run.stdout.contains("patch-available (patch v2.4.3)"), "{}", run.stdout);
    let run = kairosctl(&config, &["nodes", "get", &"e".repeat(32)]).await;
    assert_eq!(run.code, Some(3), "unknown node");
    let run = kairosctl(&config, &["nodes", "get", "edge-1"]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("node_id: must be a machine id"), "{}", run.stderr);
    let run = kairosctl(&config, &["nodes", "list", "--arch", "x86"]).await;
    assert_eq!(run.code, Some(2));
    let refusal = r#"refused: filter.selector.arches[0]: must be amd64 or arm64, got "x86""#;
    assert!(run.stderr.contains(refusal), "{}", run.stderr);

    let run = kairosctl(&config, &["fleet", "report"]).await;
    assert_eq!(run.code, Some(0));
    let expected = "FLAVOR     RELEASE   SUPPORT           NODES   ONLINE\n\
                    opensuse   v2.4.2    patch-available   1       0\n\
                    ubuntu     v2.4.2    patch-available   2       1\n\
                    \n\
                    STATE    NODES   ONLINE\n\
                    idle     2       1\n\
                    failed   1       0\n\
                    \n\
                    total 3   online 1   offline 2   latest release v2.4.3\n";
    assert_eq!(run.stdout, expected);
    let run = kairosctl(&config, &["fleet", "report", "--flavor", "opensuse", "-o", "json"]).await;
    assert_eq!(run.code, Some(0));
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!((report["total_nodes"].as_u64(), report["by_state"][0]["state"].as_str()), (Some(1), Some("idle")));

    // `nodes watch -o json`: a JSON object per line as events arrive, and
    // the stream outlives the per-call timeout.
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_kairosctl"))
        .arg("--config")
        .arg(&config)
        .args(["nodes", "watch", "--flavor", "ubuntu", "-o", "json", "--timeout", "1s"])
        .env_remove("KAIROS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kairosctl runs");
    let stdout = watch.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let kinds = [
        next_json(&mut lines).await["kind"].clone(),
        next_json(&mut lines).await["kind"].clone(),
        next_json(&mut lines).await["kind"].clone(),
    ];
    assert_eq!(kinds, ["existing", "existing", "synced"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = fleet_node_id(2);
    let session = kairos_controlplane::nodes::SessionRecord { replica_id: 1, session_id: 9, connected_at_ms: 1 };
    let connect =
        kairos_controlplane::store::Request::put(kairos_controlplane::nodes::session_key(&second), session.encode());
    replica.write(connect).await.expect("connect node 2");
    let event = next_json(&mut lines).await;
    assert_eq!((event["kind"].as_str(), event["node"]["node_id"].as_str()), (Some("connected"), Some(second.as_str())));
    watch.kill().await.expect("stop the watch");
    replica.shutdown().await.expect("shutdown");
}
