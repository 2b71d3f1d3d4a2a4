//! The status codes of the public services on a one-replica cluster, and
//! UNAVAILABLE on a replica that has no leader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::raft::v1::raft_service_client::RaftServiceClient;
use kairos_fleet_proto::raft::v1::{ForwardWriteRequest, VoteRequest};
use tonic::Code;

use crate::common::{add_release, cluster_client, free_port, image, leader_of, release_client, tuning, Pki, Slot};

fn assert_code<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, mentions: &str) -> tonic::Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(mentions), "{mentions:?} not in {:?}", status.message());
            status
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_calls_answer_the_documented_status_codes() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let slot = Slot::new(1, root.path());
    let r1 = slot.start(&pki, true, tuning()).await;
    leader_of(&r1).await;
    let addr = slot.addr();

    let disk = "quay.io/kairos/opensuse:leap-15.6-core-amd64-generic-v3.5.0-img";
    assert_code(add_release(&pki, &addr, disk).await, Code::InvalidArgument, "image_ref");
    assert_code(add_release(&pki, &addr, "quay.io/kairos/ubuntu:latest").await, Code::InvalidArgument, "image_ref");
    let bad_digest = pb::AddReleaseRequest { image_ref: image(1), digest: "md5:abc".into(), dry_run: false };
    assert_code(release_client(&pki, &addr).add_release(bad_digest).await, Code::InvalidArgument, "digest");

    let mut cluster = cluster_client(&pki, &addr);
    let last_voter = cluster.remove_replica(pb::RemoveReplicaRequest { replica_id: 1 }).await;
    assert_code(last_voter, Code::FailedPrecondition, "last voter");
    let unknown = cluster.remove_replica(pb::RemoveReplicaRequest { replica_id: 9 }).await;
    assert_code(unknown, Code::NotFound, "replica 9");
    let zero = pb::AddReplicaRequest { replica_id: 0, address: "127.0.0.1:1".into(), ..Default::default() };
    assert_code(cluster.add_replica(zero).await, Code::InvalidArgument, "replica_id");
    let no_port = pb::AddReplicaRequest { replica_id: 2, address: "fleet-2.example".into(), ..Default::default() };
    assert_code(cluster.add_replica(no_port).await, Code::InvalidArgument, "address");
    let nobody = format!("127.0.0.1:{}", free_port());
    let absent = pb::AddReplicaRequest { replica_id: 2, address: nobody.clone(), ..Default::default() };
    assert_code(cluster.add_replica(absent).await, Code::Unavailable, &nobody);
    // The replica itself, under another id: the probe sees who answers.
    let wrong_id = pb::AddReplicaRequest { replica_id: 2, address: addr.clone(), ..Default::default() };
    assert_code(cluster.add_replica(wrong_id).await, Code::AlreadyExists, "replica 1");

    let nested = pb::SyncReleasesRequest { registry: "quay.io/kairos".into(), ..Default::default() };
    assert_code(release_client(&pki, &addr).sync_releases(nested).await, Code::InvalidArgument, "registry:");
    let mut odd = tonic::Request::new(pb::ListReleasesRequest::default());
    odd.metadata_mut().insert("kairos-read-consistency", "eventually".parse().expect("ascii"));
    assert_code(release_client(&pki, &addr).list_releases(odd).await, Code::InvalidArgument, "kairos-read-consistency");

    // Pagination: newest release first, the token continues where the page ended.
    for patch in [1, 3, 2] {
        add_release(&pki, &addr, &image(patch)).await.expect("AddRelease");
    }
    let first = pb::ListReleasesRequest { page_size: 2, ..Default::default() };
    let first = release_client(&pki, &addr).list_releases(first).await.expect("page 1").into_inner();
    let names: Vec<&str> = first.releases.iter().map(|r| r.release.as_str()).collect();
    assert_eq!(names, ["v2.4.3", "v2.4.2"]);
    assert_eq!(first.releases[0].support_status, pb::SupportStatus::Current as i32);
    assert_eq!(first.releases[1].support_status, pb::SupportStatus::PatchAvailable as i32);
    let next = pb::ListReleasesRequest { page_size: 2, page_token: first.next_page_token, ..Default::default() };
    let next = release_client(&pki, &addr).list_releases(next).await.expect("page 2").into_inner();
    let names: Vec<&str> = next.releases.iter().map(|r| r.release.as_str()).collect();
    assert_eq!((names, next.next_page_token.as_str()), (vec!["v2.4.1"], ""));
    let other_arch = pb::ListReleasesRequest { arch: "arm64".into(), ..Default::default() };
    let other_arch = release_client(&pki, &addr).list_releases(other_arch).await.expect("filtered").into_inner();
    assert!(other_arch.releases.is_empty(), "{other_arch:?}");

    // A replica that was never added to a cluster has no leader to write through.
    let lone = Slot::new(2, root.path());
    let r2 = lone.start(&pki, false, tuning()).await;
    let asked = Instant::now();
    let status = assert_code(add_release(&pki, &lone.addr(), &image(9)).await, Code::Unavailable, "no leader");
    assert!(asked.elapsed() < Duration::from_secs(10), "gave up after {:?}: {status:?}", asked.elapsed());
    // Adding it under another id: the probe sees who answers at the address.
    let wrong = pb::AddReplicaRequest { replica_id: 5, address: lone.addr(), ..Default::default() };
    assert_code(cluster.add_replica(wrong).await, Code::FailedPrecondition, "is replica 2, not replica 5");

    r2.shutdown().await.expect("shutdown 2");
    r1.shutdown().await.expect("shutdown 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_are_refused_to_callers_without_a_replica_certificate() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let slot = Slot::new(1, root.path());
    let r1 = slot.start(&pki, true, tuning()).await;
    leader_of(&r1).await;
    // An operator certificate from the same CA passes TLS but is no replica.
    let mut raft = RaftServiceClient::new(crate::common::channel(&pki, &slot.addr()));
    let vote = raft.vote(VoteRequest { payload: b"{}".to_vec(), encoding: 0 }).await;
    assert_code(vote, Code::PermissionDenied, "replicas only");
    let forward =
        raft.forward_write(ForwardWriteRequest { payload: b"{}".to_vec(), from_replica_id: 7, encoding: 0 }).await;
    assert_code(forward, Code::PermissionDenied, "replicas only");
    r1.shutdown().await.expect("shutdown");
}
