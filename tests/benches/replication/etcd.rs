//! The etcd side: three `etcd` members on loopback ports with their data in
//! a temporary folder, default raft timings, TLS on client and peer URLs
//! (certificates from a throwaway CA made with our own PKI code), written to
//! with KV.Put and watched with Maintenance.Status.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use kairos_controlplane::security::{client_tls_for_operator, Ca};
use kairos_fleet_tests::free_port;
use tonic::transport::{Channel, Endpoint};

use crate::{workload, Put, System};

/// Client of etcd's v3 API subset compiled by build.rs.
#[allow(clippy::all, missing_docs)]
mod pb {
    tonic::include_proto!("etcdserverpb");
}

const MEMBERS: u64 = 3;
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The first line of `etcd --version`.
pub fn version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version (is etcd-server installed?)", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("etcd (unknown version)").trim().to_string())
}

/// One connection's KV client.
#[derive(Clone)]
pub struct EtcdWriter {
    client: pb::kv_client::KvClient<Channel>,
}

impl Put for EtcdWriter {
    fn put(&self, seq: u64) -> impl std::future::Future<Output = Result<(), String>> + Send {
        let mut client = self.client.clone();
        async move {
            let (key, value) = workload::record(seq).map_err(|e| format!("{e:#}"))?;
            let request = pb::PutRequest { key: key.into_bytes(), value, ..Default::default() };
            client.put(request).await.map(drop).map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    }
}

/// Where one member listens.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    peer: u16,
}

/// A running 3-member etcd cluster; dropping it SIGKILLs every member and
/// removes its folder.
pub struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// PEM of the CA that signed the members' certificates; None = plaintext.
    ca_pem: Option<String>,
    ports: BTreeMap<u64, Ports>,
    children: BTreeMap<u64, Child>,
    /// etcd's member id (from response headers) → our 1-based index.
    index_of: BTreeMap<u64, u64>,
    status_channels: BTreeMap<u64, Channel>,
}

impl Etcd {
    /// Starts three members and waits until they have elected a leader.
    pub async fn start(bin: &Path, tls: bool) -> anyhow::Result<Etcd> {
        let dir = tempfile::Builder::new().prefix("kairos-bench-etcd").tempdir().context("creating a temp dir")?;
        let ports = (1..=MEMBERS).map(|id| (id, Ports { client: free_port(), peer: free_port() })).collect();
        let ca_pem = if tls { Some(write_certificates(dir.path())?) } else { None };
        let mut etcd = Etcd {
            bin: bin.to_path_buf(),
            dir,
            ca_pem,
            ports,
            children: BTreeMap::new(),
            index_of: BTreeMap::new(),
            status_channels: BTreeMap::new(),
        };
        for id in 1..=MEMBERS {
            etcd.spawn(id)?;
        }
        for id in 1..=MEMBERS {
            let channel = etcd.endpoint(id, STATUS_TIMEOUT)?.connect_lazy();
            etcd.status_channels.insert(id, channel);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while etcd.index_of.len() < MEMBERS as usize || etcd.leader().await.is_none() {
            for id in 1..=MEMBERS {
                if let Some(status) = etcd.status(id).await {
                    let member_id = status.header.map_or(0, |h| h.member_id);
                    etcd.index_of.insert(member_id, id);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("etcd: no leader after 30 s; member logs:\n{}", etcd.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(etcd)
    }

    fn scheme(&self) -> &'static str {
        if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Starts member `id` (also on restart: a data dir that exists makes
    /// etcd ignore the `--initial-*` flags and rejoin with its own state).
    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let scheme = self.scheme();
        let ports = self.ports[&id];
        let url = |port: u16| format!("{scheme}://127.0.0.1:{port}");
        let initial: Vec<String> = self.ports.iter().map(|(m, p)| format!("m{m}={}", url(p.peer))).collect();
        let dir = self.dir.path();
        let log = File::options().create(true).append(true).open(self.log_path(id)).context("opening the etcd log")?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(format!("m{id}"))
            .arg("--data-dir")
            .arg(dir.join(format!("m{id}.etcd")))
            .args(["--listen-client-urls", &url(ports.client), "--advertise-client-urls", &url(ports.client)])
            .args(["--listen-peer-urls", &url(ports.peer), "--initial-advertise-peer-urls", &url(ports.peer)])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", "kairos-bench", "--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]);
        if self.ca_pem.is_some() {
            let file = |name: String| dir.join(name);
            cmd.arg("--cert-file")
                .arg(file(format!("m{id}.pem")))
                .arg("--key-file")
                .arg(file(format!("m{id}.key")))
                .arg("--peer-cert-file")
                .arg(file(format!("m{id}.pem")))
                .arg("--peer-key-file")
                .arg(file(format!("m{id}.key")))
                .arg("--peer-trusted-ca-file")
                .arg(file("ca.pem".into()))
                .arg("--peer-client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the etcd log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.children.insert(id, child);
        Ok(())
    }

    fn endpoint(&self, id: u64, timeout: Duration) -> anyhow::Result<Endpoint> {
        let url = format!("{}://127.0.0.1:{}", self.scheme(), self.ports[&id].client);
        let mut endpoint = Endpoint::from_shared(url.clone()).with_context(|| format!("endpoint {url}"))?;
        if let Some(ca_pem) = &self.ca_pem {
            endpoint = endpoint
                .tls_config(client_tls_for_operator(ca_pem, "127.0.0.1"))
                .with_context(|| format!("TLS for {url}"))?;
        }
        Ok(endpoint.connect_timeout(Duration::from_secs(3)).timeout(timeout))
    }

    async fn status(&self, id: u64) -> Option<pb::StatusResponse> {
        let channel = self.status_channels.get(&id)?.clone();
        let mut client = pb::maintenance_client::MaintenanceClient::new(channel);
        client.status(pb::StatusRequest {}).await.ok().map(tonic::Response::into_inner)
    }

    fn running(&self) -> BTreeSet<u64> {
        self.children.keys().copied().collect()
    }

    /// The last lines of every member's log.
    fn logs(&self) -> String {
        (1..=MEMBERS)
            .map(|id| {
                let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- etcd m{id}\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n"))
            })
            .collect()
    }
}

/// Writes `ca.pem` and `m<i>.pem` / `m<i>.key` (server and client auth,
/// SAN 127.0.0.1) into `dir`; returns the CA PEM.
fn write_certificates(dir: &Path) -> anyhow::Result<String> {
    let ca = Ca::generate("kairos-bench-etcd").context("generating the etcd CA")?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).context("writing ca.pem")?;
    for id in 1..=MEMBERS {
        let issued = ca.issue_replica(id, &["127.0.0.1".to_string()]).context("issuing an etcd certificate")?;
        std::fs::write(dir.join(format!("m{id}.pem")), &issued.cert_pem).context("writing a certificate")?;
        std::fs::write(dir.join(format!("m{id}.key")), &issued.key_pem).context("writing a key")?;
    }
    Ok(ca.cert_pem().to_string())
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl System for Etcd {
    type Writer = EtcdWriter;

    fn name(&self) -> &'static str {
        "etcd"
    }

    fn members(&self) -> Vec<u64> {
        (1..=MEMBERS).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.children.values().map(Child::id).collect()
    }

    fn log_path(&self, member: u64) -> PathBuf {
        self.dir.path().join(format!("etcd-{member}.log"))
    }

    async fn connect(&self, member: u64, timeout: Duration) -> anyhow::Result<EtcdWriter> {
        let channel = self
            .endpoint(member, timeout)?
            .connect()
            .await
            .with_context(|| format!("connecting to etcd member {member}"))?;
        Ok(EtcdWriter { client: pb::kv_client::KvClient::new(channel) })
    }

    async fn leader(&self) -> Option<u64> {
        let running = self.running();
        for &id in &running {
            let Some(status) = self.status(id).await else { continue };
            let Some(&leader) = self.index_of.get(&status.leader) else { continue };
            if !running.contains(&leader) {
                continue;
            }
            // The named leader must name itself.
            let confirmed = self.status(leader).await.is_some_and(|s| {
                s.header.is_some_and(|h| h.member_id == s.leader) && self.index_of.get(&s.leader) == Some(&leader)
            });
            if confirmed {
                return Some(leader);
            }
        }
        None
    }

    fn kill(&mut self, member: u64) {
        if let Some(mut child) = self.children.remove(&member) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self, member: u64) -> anyhow::Result<()> {
        self.spawn(member)
    }

    async fn wait_caught_up(&self, member: u64, timeout: Duration) -> anyhow::Result<()> {
        let leader = self.leader().await.context("no etcd leader to catch up with")?;
        let target = self.status(leader).await.context("leader status")?.raft_index;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let applied = self.status(member).await.filter(|s| s.leader != 0).map(|s| s.raft_applied_index);
            if applied.is_some_and(|a| a >= target) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("etcd m{member} applied {applied:?} of {target} after {timeout:?}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
