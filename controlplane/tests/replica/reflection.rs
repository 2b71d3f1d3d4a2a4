//! Server reflection on the public port: the public services are listed
//! and resolvable (so grpcurl and friends work without the .proto files),
//! the replica-only raft service is not.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

use kairos_controlplane::sessions::SessionSettings;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::common::{tuning, Pki, Slot};

async fn ask(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> Result<MessageResponse, tonic::Status> {
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut answers = client.server_reflection_info(tokio_stream::iter([request])).await?.into_inner();
    let answer = answers.next().await.expect("one answer")?;
    Ok(answer.message_response.expect("a response"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_public_services_only() {
    let pki = Arc::new(Pki::new());
    let root = tempfile::tempdir().expect("tempdir");
    let node = Slot::new(1, root.path());
    // As in production: client certificates optional, so tools that only
    // trust the CA (grpcurl -cacert ca.pem) get in.
    let mut config = node.config(&pki, true, tuning(), SessionSettings::default());
    config.server_tls = pki.server_tls(1).client_auth_optional(true);
    let handle = node.start_config(config).await;
    let anonymous = Endpoint::from_shared(format!("https://{}", node.addr()))
        .expect("endpoint")
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem())).domain_name("127.0.0.1"))
        .expect("tls")
        .connect_lazy();
    let mut client = ServerReflectionClient::new(anonymous);

    let MessageResponse::ListServicesResponse(list) =
        ask(&mut client, MessageRequest::ListServices(String::new())).await.expect("list")
    else {
        panic!("not a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["NodeService", "FleetService", "ReleaseService", "RolloutService", "ClusterService", "AdminService"]
    {
        assert!(names.contains(&format!("kairos.fleet.v1.{service}")), "{service} listed: {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("kairos.raft")), "the raft service stays unlisted: {names:?}");

    let symbol = MessageRequest::FileContainingSymbol("kairos.fleet.v1.RolloutService".into());
    let MessageResponse::FileDescriptorResponse(files) = ask(&mut client, symbol).await.expect("describe") else {
        panic!("no descriptor for RolloutService");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    let unknown = MessageRequest::FileContainingSymbol("kairos.raft.v1.RaftService".into());
    let refused = ask(&mut client, unknown).await.expect_err("the raft service is not described");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    handle.shutdown().await.expect("shutdown");
}
