//! The kairosctl binary against fake ClusterService and ReleaseService
//! replicas on loopback, over TLS from a test CA: output formats, the
//! bearer token, leader redirects, failover and exit codes; the node and
//! fleet views against a real one-replica cluster.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kairos_controlplane::fleet::image::ImageRef;
use kairos_controlplane::security::{install_crypto_provider, ReplicaCredentials};
use kairos_fleet_proto::fleet::v1 as pb;
use pb::cluster_service_server::{ClusterService, ClusterServiceServer};
use pb::release_service_server::{ReleaseService, ReleaseServiceServer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

mod kairosctl_support;
use kairosctl_support::*;

/// How a fake replica answers.
#[derive(Clone)]
enum Behavior {
    /// Serves every call as leader `id`.
    Leader,
    /// Refuses with UNAVAILABLE naming leader 2 at this port.
    Follower { leader_port: u16 },
    /// Refuses every call as a viewer token calling an admin method.
    Deny,
    /// Refuses with UNAVAILABLE as the real server does when it cannot
    /// forward (`api::unavailable`): leader 2 at this port named in the
    /// message (`leader: replica 2 at ...`) and in the metadata.
    ServerFollower { leader_port: u16 },
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
            Behavior::ServerFollower { leader_port } => Err(kairos_controlplane::api::unavailable(
                format!("replica {} cannot forward the call: the leader is unreachable", self.id),
                &kairos_controlplane::replica::LeaderHint {
                    id: Some(2),
                    addr: Some(format!("127.0.0.1:{leader_port}")),
                },
            )),
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
async fn follower_that_cannot_forward_names_the_leader_replica_in_the_servers_phrasing() {
    let setup = Setup::new();
    // The leader it names is up: kairosctl retries there and succeeds.
    let leader = Replica::start(&setup.creds, 2, Behavior::Leader).await;
    let follower = Replica::start(&setup.creds, 1, Behavior::ServerFollower { leader_port: leader.fake.port }).await;
    let config = setup.config(&[follower.url()]);
    let run = kairosctl(&config, &["cluster", "status", "-o", "json"]).await;
    assert_eq!(run.code, Some(0));
    assert_eq!(leader.fake.calls().len(), 1, "redirected to the leader");
    follower.stop().await;

    // The leader it names is down: the error names replica 2 and its address.
    let dead = closed_port().await;
    let follower = Replica::start(&setup.creds, 1, Behavior::ServerFollower { leader_port: dead }).await;
    let config = setup.config(&[follower.url()]);
    let run = kairosctl(&config, &["cluster", "status", "--connect-timeout", "2s"]).await;
    assert_eq!(run.code, Some(5));
    let named = format!("leader: replica 2 at 127.0.0.1:{dead}");
    assert!(
        run.stderr.contains(&format!("the leader, replica 2 at 127.0.0.1:{dead}, is unreachable")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.lines().any(|l| l.starts_with("hint: ") && l.contains(&named)), "{}", run.stderr);
    follower.stop().await;
    leader.stop().await;
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
