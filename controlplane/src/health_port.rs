//! A plain-text (h2c) port serving only `grpc.health.v1.Health`
//! (`serve --health-listen HOST:PORT`), with the same statuses as the
//! health service on the TLS port.
//!
//! Probes that cannot speak TLS with the cluster's CA — the kubelet's
//! native gRPC probe among them — check the replica here. The port tells
//! nothing but `SERVING` / `NOT_SERVING` per service name, so it needs no
//! authentication; bind it to the pod or host network only.

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::side_port::SidePort;

/// Serves the statuses `reporter` sets on `listener`.
pub fn serve(listener: TcpListener, reporter: HealthReporter) -> std::io::Result<SidePort> {
    let service = HealthServer::new(HealthService::from_health_reporter(reporter));
    SidePort::spawn(listener, "grpc.health.v1 in plain text", |listener| {
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(TcpListenerStream::new(listener))
    })
}
