//! A fake control plane for the node client's tests: NodeService on
//! 127.0.0.1 with TLS from a test CA, client certificates verified, Enroll
//! signing the CSR with the CA, Connect recording every message.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kairos_controlplane::security::{peer_identity, Ca, PeerIdentity, ReplicaCredentials};
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::node_service_server::{NodeService, NodeServiceServer};
use pb::node_message::Body as NodeBody;
use pb::server_message::Body as ServerBody;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};

/// The enroll token the fake accepts.
pub const TOKEN: &str = "kft_test_secret";

/// One message a node sent.
#[derive(Debug, Clone)]
pub struct Received {
    /// Replica that got it.
    pub server: u64,
    /// Node id from the client certificate.
    pub node: String,
    /// The message.
    pub message: pb::NodeMessage,
}

impl Received {
    pub fn hello(&self) -> Option<&pb::Hello> {
        match &self.message.body {
            Some(NodeBody::Hello(h)) => Some(h),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<&pb::StatusUpdate> {
        match &self.message.body {
            Some(NodeBody::Status(s)) => Some(s),
            _ => None,
        }
    }
    pub fn heartbeat(&self) -> Option<&pb::Heartbeat> {
        match &self.message.body {
            Some(NodeBody::Heartbeat(h)) => Some(h),
            _ => None,
        }
    }
}

/// What every fake replica shares: the CA, the record of messages, and the
/// open streams (to push server messages).
pub struct Fleet {
    pub ca: Ca,
    pub ca_pem: String,
    received: Mutex<Vec<(Instant, Received)>>,
    streams: Mutex<HashMap<String, mpsc::Sender<Result<pb::ServerMessage, Status>>>>,
    pub endpoints: Mutex<Vec<String>>,
    pub config: Mutex<pb::NodeConfig>,
    /// Streams the node ended: (server, node, ended cleanly rather than with an error).
    pub closed: Mutex<Vec<(u64, String, bool)>>,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        kairos_fleet_domain::install_crypto_provider();
        let ca = Ca::generate("fake fleet ca").expect("ca");
        let ca_pem = ca.cert_pem().to_string();
        Arc::new(Fleet {
            ca,
            ca_pem,
            received: Mutex::default(),
            streams: Mutex::default(),
            endpoints: Mutex::default(),
            config: Mutex::new(node_config(Duration::from_secs(1), Duration::from_secs(5))),
            closed: Mutex::default(),
        })
    }

    /// Every message so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").iter().map(|(_, r)| r.clone()).collect()
    }

    /// Every message so far with its arrival time.
    pub fn received_at(&self) -> Vec<(Instant, Received)> {
        self.received.lock().expect("lock").clone()
    }

    /// Polls `condition` on the received messages every 20 ms until it holds or `limit` passes.
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&[Received]) -> bool) -> bool {
        let end = Instant::now() + limit;
        loop {
            if condition(&self.received()) {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pushes `body` on the newest stream of `node`.
    pub async fn push(&self, node: &str, body: ServerBody) -> bool {
        let tx = self.streams.lock().expect("lock").get(node).cloned();
        match tx {
            Some(tx) => tx.send(Ok(pb::ServerMessage { body: Some(body) })).await.is_ok(),
            None => false,
        }
    }
}

pub fn node_config(heartbeat: Duration, liveness: Duration) -> pb::NodeConfig {
    pb::NodeConfig {
        heartbeat_interval: prost_types::Duration::try_from(heartbeat).ok(),
        liveness_timeout: prost_types::Duration::try_from(liveness).ok(),
        progress_interval: prost_types::Duration::try_from(Duration::from_millis(100)).ok(),
        replica_id: 0,
        server_version: "0.0.0-test".into(),
        ..Default::default()
    }
}

/// How one fake replica behaves.
#[derive(Clone, Copy)]
pub struct Behaviour {
    pub ack_status: bool,
    pub ack_heartbeats: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour { ack_status: true, ack_heartbeats: true }
    }
}

struct Replica {
    id: u64,
    fleet: Arc<Fleet>,
    behaviour: Behaviour,
    killed: watch::Receiver<bool>,
}

type ServerStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for Replica {
    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let req = request.into_inner();
        if req.bootstrap_token != TOKEN {
            return Err(Status::unauthenticated("unknown enroll token"));
        }
        if req.identity.is_none() {
            return Err(Status::invalid_argument("identity: required"));
        }
        let cert = self
            .fleet
            .ca
            .sign_node_csr(&req.csr_pem, &req.machine_id, Duration::from_secs(3600))
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        let not_after = std::time::SystemTime::now() + Duration::from_secs(3600);
        Ok(Response::new(pb::EnrollResponse {
            node_id: req.machine_id,
            certificate_chain_pem: cert,
            ca_bundle_pem: self.fleet.ca_pem.clone(),
            server_endpoints: self.fleet.endpoints.lock().expect("lock").clone(),
            certificate_not_after: Some(prost_types::Timestamp::from(not_after)),
            labels: [("site".to_string(), "lab".to_string())].into_iter().collect(),
        }))
    }

    type ConnectStream = ServerStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let node = match peer_identity(&request) {
            Some(PeerIdentity::Node(node)) => node,
            other => return Err(Status::unauthenticated(format!("a node certificate is required, got {other:?}"))),
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let config = pb::NodeConfig { replica_id: self.id, ..self.fleet.config.lock().expect("lock").clone() };
        tx.send(Ok(pb::ServerMessage { body: Some(ServerBody::Config(config)) })).await.ok();
        self.fleet.streams.lock().expect("lock").insert(node.clone(), tx.clone());
        let (fleet, id, behaviour, mut killed) =
            (Arc::clone(&self.fleet), self.id, self.behaviour, self.killed.clone());
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = async { killed.wait_for(|k| *k).await.is_ok() } => {
                        let _ = tx.send(Err(Status::unavailable("replica shutting down"))).await;
                        break;
                    }
                    message = inbound.message() => match message {
                        Ok(Some(message)) => message,
                        end => {
                            fleet.closed.lock().expect("lock").push((id, node.clone(), end.is_ok()));
                            // Ends our side too: drop every sender of this stream.
                            let mut streams = fleet.streams.lock().expect("lock");
                            if streams.get(&node).is_some_and(|t| t.same_channel(&tx)) {
                                streams.remove(&node);
                            }
                            break;
                        }
                    },
                };
                let reply = match &message.body {
                    Some(NodeBody::Heartbeat(h)) if behaviour.ack_heartbeats => {
                        Some(ServerBody::HeartbeatAck(pb::HeartbeatAck { sequence: h.sequence, server_time: None }))
                    }
                    Some(NodeBody::Status(s)) if behaviour.ack_status => {
                        Some(ServerBody::StatusAck(pb::StatusAck { seq: s.seq }))
                    }
                    _ => None,
                };
                fleet
                    .received
                    .lock()
                    .expect("lock")
                    .push((Instant::now(), Received { server: id, node: node.clone(), message }));
                if let Some(reply) = reply {
                    if tx.send(Ok(pb::ServerMessage { body: Some(reply) })).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One fake replica serving on 127.0.0.1.
pub struct FakeServer {
    pub id: u64,
    pub url: String,
    kill: watch::Sender<bool>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(fleet: &Arc<Fleet>, id: u64, behaviour: Behaviour) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let creds = ReplicaCredentials::issue(&fleet.ca, id, &["127.0.0.1".to_string()]).expect("replica cert");
        let (kill, killed) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let replica = Replica { id, fleet: Arc::clone(fleet), behaviour, killed };
        let router =
            Server::builder().tls_config(creds.server_tls()).expect("tls").add_service(NodeServiceServer::new(replica));
        let task = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeServer { id, url, kill, stop, task }
    }

    /// Ends every stream with UNAVAILABLE and stops listening.
    pub async fn shutdown(self) {
        let _ = self.kill.send(true);
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A root filesystem with a Kairos v2 standard node's files.
pub fn node_root(dir: &Path, machine_id: &str) {
    let release = "KAIROS_FLAVOR=opensuse\nKAIROS_FLAVOR_RELEASE=leap-15.5\nKAIROS_VARIANT=standard\n\
        KAIROS_MODEL=generic\nKAIROS_ARCH=amd64\nKAIROS_RELEASE=v2.4.2\nKAIROS_SOFTWARE_VERSION=v1.27.6+k3s1\n\
        KAIROS_SOFTWARE_VERSION_PREFIX=k3s\n\
        KAIROS_IMAGE_REPO=quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1\n";
    for (path, text) in [
        ("etc/kairos-release", release.to_string()),
        ("etc/machine-id", format!("{machine_id}\n")),
        ("proc/cmdline", "BOOT_IMAGE=/cOS/active.img root=LABEL=COS_STATE cos-img/filename=/cOS/active.img\n".into()),
        ("proc/stat", "cpu  1 2 3\nbtime 1700000000\n".into()),
        ("etc/hostname", "edge-1\n".into()),
    ] {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, text).expect("write");
    }
}
