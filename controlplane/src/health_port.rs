//! A plain-text (h2c) port serving only `grpc.health.v1.Health`
//! (`serve --health-listen HOST:PORT`), with the same statuses as the
//! health service on the TLS port.
//!
//! Probes that cannot speak TLS with the cluster's CA — the kubelet's
//! native gRPC probe among them — check the replica here. The port tells
//! nothing but `SERVING` / `NOT_SERVING` per service name, so it needs no
//! authentication; bind it to the pod or host network only.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

/// The running health port; it stops when dropped.
pub struct HealthPort {
    task: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl HealthPort {
    /// Binds `addr`; done before the replica starts, so a taken port fails
    /// the start before anything runs.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    /// Serves the statuses `reporter` sets on `listener`.
    pub fn start(listener: TcpListener, reporter: HealthReporter) -> std::io::Result<HealthPort> {
        let local_addr = listener.local_addr()?;
        let service = HealthServer::new(HealthService::from_health_reporter(reporter));
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the plain-text health port stopped");
            }
        });
        tracing::info!(%local_addr, "serving grpc.health.v1 in plain text");
        Ok(HealthPort { task, local_addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for HealthPort {
    fn drop(&mut self) {
        self.task.abort();
    }
}
