//! `serve`'s side ports on the embedded default: the plain-text health port
//! answers with the replica's own health statuses, and `/metrics` answers.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use kairos_controlplane::replica::RaftTuning;
use kairos_controlplane::serve::{self, ServeOptions};
use kairos_controlplane::sessions::SessionSettings;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_text_health_port_reports_the_replicas_statuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = ServeOptions {
        data_dir: tmp.path().join("kairos-data"),
        listen: Some(free_addr()),
        replica_id: None,
        join: None,
        raft: RaftTuning::default(),
        sessions: SessionSettings::default(),
        registry_plain_http: Vec::new(),
        metrics_listen: Some(free_addr()),
        health_listen: Some(free_addr()),
    };
    let started = serve::start(&opts).await.expect("serve starts");
    let health = started.health.as_ref().expect("a health port");
    assert!(started.metrics.is_some());

    // No TLS: what a kubelet gRPC probe speaks.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", health.local_addr()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect("plain-text connection");
    let mut client = HealthClient::new(channel);
    for service in ["", "kairos.fleet.v1.RolloutService", "kairos.fleet.v1.NodeService"] {
        let answer = client
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e}"))
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = client.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound);

    // A taken port fails the start before a replica runs.
    let taken = ServeOptions {
        data_dir: tmp.path().join("other"),
        listen: Some(free_addr()),
        health_listen: Some(health.local_addr()),
        metrics_listen: None,
        ..opts.clone()
    };
    let refused = serve::start(&taken).await.err().expect("a taken health port is refused");
    assert!(refused.to_string().contains("--health-listen"), "{refused}");

    started.shutdown().await.expect("shutdown releases the store");
}
