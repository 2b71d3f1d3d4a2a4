//! The Kairos side: a 3-replica cluster formed as an operator would (`init`,
//! `serve`, `kairosctl cluster add-replica`), written to with AddRelease over
//! TLS with the admin bearer token, and watched with ClusterService.Status.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use kairos_controlplane::security::client_tls_for_operator;
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::cluster_service_client::ClusterServiceClient;
use kairos_fleet_proto::fleet::v1::release_service_client::ReleaseServiceClient;
use kairos_fleet_tests::{ok_stdout, Cluster};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::{workload, Put, System};

const REPLICAS: u64 = 3;
/// Deadline of a Status call (leader search, catch-up polling).
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Adds `authorization: Bearer <admin token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type AuthChannel = InterceptedService<Channel, Bearer>;

/// One connection's ReleaseService client.
#[derive(Clone)]
pub struct KairosWriter {
    client: ReleaseServiceClient<AuthChannel>,
}

impl Put for KairosWriter {
    fn put(&self, seq: u64) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let mut client = self.client.clone();
        async move {
            let request =
                pb::AddReleaseRequest { image_ref: workload::image(seq), digest: String::new(), dry_run: false };
            match client.add_release(request).await {
                Ok(answer) if answer.get_ref().created => Ok(()),
                // A no-op would not be a replicated write: the sequence is broken.
                Ok(_) => Err(format!("{} was already in the catalog", workload::image(seq))),
                Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
            }
        }
    }
}

/// A running 3-replica cluster; dropping it SIGKILLs every replica and
/// removes its folder.
pub struct Kairos {
    cluster: Cluster,
    ca_pem: String,
    auth: Bearer,
    running: BTreeSet<u64>,
    /// Lazily connected channels for Status calls, one per replica.
    status_channels: BTreeMap<u64, Channel>,
}

impl Kairos {
    /// Lays out, starts and forms the cluster (replica 1 bootstraps, 2 and
    /// 3 are added through it), with the default raft timings.
    pub async fn start() -> anyhow::Result<Kairos> {
        let mut cluster = Cluster::init(REPLICAS);
        for id in 1..=REPLICAS {
            cluster.start(id);
        }
        let dir = cluster.dir.path().to_path_buf();
        let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).context("reading ca.pem")?;
        let token = std::fs::read_to_string(dir.join("admin.token")).context("reading admin.token")?;
        let header: MetadataValue<Ascii> =
            format!("Bearer {}", token.trim()).parse().context("admin.token is not a valid header value")?;
        let mut kairos = Kairos {
            cluster,
            ca_pem,
            auth: Bearer(header),
            running: (1..=REPLICAS).collect(),
            status_channels: BTreeMap::new(),
        };
        for id in 1..=REPLICAS {
            let channel = kairos.endpoint(id, STATUS_TIMEOUT)?.connect_lazy();
            kairos.status_channels.insert(id, channel);
        }
        kairos.wait("replica 1 to lead", |s| s.from_leader && s.answered_by == 1, &[1]).await?;
        for id in 2..=REPLICAS {
            let addr = kairos.cluster.addresses[&id].clone();
            let out = kairos.cluster.ctl_on(1, &["cluster", "add-replica", &id.to_string(), &addr]);
            ok_stdout(&out, &format!("kairosctl cluster add-replica {id} {addr}"));
        }
        let voters = |s: &pb::ClusterStatusResponse| {
            s.from_leader
                && s.replicas.iter().filter(|r| r.role() != pb::ReplicaRole::Learner && r.reachable).count()
                    == REPLICAS as usize
        };
        kairos.wait("3 voting replicas", voters, &[1]).await?;
        Ok(kairos)
    }

    fn endpoint(&self, id: u64, timeout: Duration) -> anyhow::Result<Endpoint> {
        let url = format!("https://{}", self.cluster.addresses[&id]);
        Ok(Endpoint::from_shared(url.clone())
            .with_context(|| format!("endpoint {url}"))?
            .tls_config(client_tls_for_operator(&self.ca_pem, "127.0.0.1"))
            .with_context(|| format!("TLS for {url}"))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(timeout))
    }

    async fn status(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        let channel = self.status_channels.get(&id)?.clone();
        let mut client = ClusterServiceClient::with_interceptor(channel, self.auth.clone());
        client.status(pb::ClusterStatusRequest {}).await.ok().map(tonic::Response::into_inner)
    }

    /// Polls the Status of `ids` until one answer passes `check` (30 s at most).
    async fn wait(
        &self,
        what: &str,
        check: impl Fn(&pb::ClusterStatusResponse) -> bool,
        ids: &[u64],
    ) -> anyhow::Result<pb::ClusterStatusResponse> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            for &id in ids {
                if let Some(status) = self.status(id).await.filter(|s| check(s)) {
                    return Ok(status);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let logs: String = ids.iter().map(|&id| tail(&self.cluster.log(id), 20)).collect();
                anyhow::bail!("kairos: timed out after 30 s waiting for {what}; replica logs:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n") + "\n"
}

impl System for Kairos {
    type Writer = KairosWriter;

    fn name(&self) -> &'static str {
        "kairos"
    }

    fn members(&self) -> Vec<u64> {
        (1..=REPLICAS).collect()
    }

    fn pids(&self) -> Vec<u32> {
        // The harness keeps its children private; a replica's data folder,
        // unique to this cluster, is on its command line.
        self.running
            .iter()
            .flat_map(|&id| crate::cpu::pids_with_arg(&self.cluster.replica_dir(id).to_string_lossy()))
            .collect()
    }

    fn log_path(&self, member: u64) -> std::path::PathBuf {
        self.cluster.dir.path().join(format!("replica-{member}.log"))
    }

    async fn connect(&self, member: u64, timeout: Duration) -> anyhow::Result<KairosWriter> {
        let channel = self
            .endpoint(member, timeout)?
            .connect()
            .await
            .with_context(|| format!("connecting to kairos replica {member}"))?;
        let client = ReleaseServiceClient::with_interceptor(channel, self.auth.clone());
        Ok(KairosWriter { client })
    }

    async fn leader(&self) -> Option<u64> {
        for &id in &self.running {
            let Some(status) = self.status(id).await else { continue };
            let leader = status.leader_id;
            if leader == 0 || !self.running.contains(&leader) {
                continue;
            }
            // The named leader must say so itself (a stale hint would not).
            if self.status(leader).await.is_some_and(|s| s.from_leader) {
                return Some(leader);
            }
        }
        None
    }

    fn kill(&mut self, member: u64) {
        self.cluster.kill9(member);
        self.running.remove(&member);
    }

    fn restart(&mut self, member: u64) -> anyhow::Result<()> {
        self.cluster.start(member);
        self.running.insert(member);
        Ok(())
    }

    async fn wait_caught_up(&self, member: u64, timeout: Duration) -> anyhow::Result<()> {
        let leader = self.leader().await.context("no leader to catch up with")?;
        let target = self.status(leader).await.context("leader status")?.commit_index;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A replica's own entry carries its exact applied index.
            let applied = self.status(member).await.and_then(|s| {
                (s.leader_id != 0)
                    .then(|| s.replicas.iter().find(|r| r.replica_id == member).map(|r| r.applied_index))
                    .flatten()
            });
            if applied.is_some_and(|a| a >= target) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "kairos replica {member} applied {applied:?} of {target} after {timeout:?}; its log:\n{}",
                    tail(&self.cluster.log(member), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
