//! WatchNodes on a one-replica cluster: the initial snapshot, SYNCED, one
//! event kind per kind of change, resuming from a revision, a resume point
//! older than the kept history, and a client that reads too slowly.

use std::collections::BTreeSet;
use std::time::Duration;

use kairos_controlplane::api::fleet::watch::WatchLimits;
use kairos_controlplane::api::FleetApi;
use kairos_controlplane::nodes;
use kairos_controlplane::store::Request;
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::fleet_service_server::FleetService;
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::common::{leader_of, tuning};
use crate::fleet::{cluster, fleet_client, node_id, put_node, record, seed, session, viewer_token, with_token};

const STEP: Duration = Duration::from_secs(10);

async fn next(stream: &mut Streaming<pb::NodeEvent>) -> pb::NodeEvent {
    match tokio::time::timeout(STEP, stream.message()).await {
        Ok(Ok(Some(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn id_of(event: &pb::NodeEvent) -> &str {
    event.node.as_ref().map_or("", |n| n.node_id.as_str())
}

fn ubuntu() -> pb::NodeFilter {
    pb::NodeFilter {
        selector: Some(pb::NodeSelector { flavors: vec!["ubuntu".into()], ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_the_snapshot_then_each_kind_of_change_and_resumes_from_a_revision() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pki, slot, handle) = cluster(root.path()).await;
    seed(&handle, 0..30).await;
    let mut client = fleet_client(&pki, &slot.addr());
    let watch = |resume_revision| pb::WatchNodesRequest { filter: Some(ubuntu()), resume_revision };
    let mut stream = client.watch_nodes(watch(0)).await.expect("watch").into_inner();

    // Snapshot: every ubuntu node (i % 3 == 1), then SYNCED, all at one revision.
    let mut existing = BTreeSet::new();
    let synced = loop {
        let event = next(&mut stream).await;
        match event.kind() {
            pb::NodeEventKind::Existing => assert!(existing.insert(id_of(&event).to_owned())),
            pb::NodeEventKind::Synced => break event,
            other => panic!("unexpected {other:?} before SYNCED"),
        }
    };
    assert_eq!(existing, (0..30).filter(|i| i % 3 == 1).map(node_id).collect::<BTreeSet<_>>());
    assert!(synced.node.is_none());
    let snapshot_revision = synced.revision;

    // Node 4 is ubuntu and offline; node 3 is opensuse; node 7 and 10 are ubuntu.
    let (n3, n4, n7, n10) = (node_id(3), node_id(4), node_id(7), node_id(10));
    let mut live = Vec::new();
    handle.write(Request::put(nodes::session_key(&n4), session().encode())).await.expect("connect");
    let event = next(&mut stream).await;
    assert_eq!((event.kind(), id_of(&event)), (pb::NodeEventKind::Connected, n4.as_str()));
    assert!(event.node.as_ref().is_some_and(|n| n.online && n.connected_replica_id == 1));
    assert!(event.revision > snapshot_revision);
    live.push(event);

    handle.write(Request::delete(nodes::session_key(&n4))).await.expect("disconnect");
    let event = next(&mut stream).await;
    assert_eq!((event.kind(), id_of(&event)), (pb::NodeEventKind::Disconnected, n4.as_str()));
    assert!(event.node.as_ref().is_some_and(|n| !n.online));
    live.push(event);

    // A change to a node outside the filter sends nothing.
    put_node(&handle, &n3, nodes::NodeRecord { hostname: "renamed".into(), ..record(3) }).await;
    let failed = nodes::NodeRecord { state: pb::NodeState::Failed as i32, ..record(4) };
    put_node(&handle, &n4, failed).await;
    let event = next(&mut stream).await;
    assert_eq!((event.kind(), id_of(&event)), (pb::NodeEventKind::Changed, n4.as_str()));
    assert_eq!(event.node.as_ref().map(|n| n.state()), Some(pb::NodeState::Failed));
    live.push(event);

    let desired = pb::DesiredState { generation: 2, target_release: "v2.4.3".into(), ..Default::default() };
    handle
        .write(Request::put(nodes::desired_key(&n4), prost::Message::encode_to_vec(&desired)))
        .await
        .expect("desired");
    let event = next(&mut stream).await;
    assert_eq!((event.kind(), id_of(&event)), (pb::NodeEventKind::Changed, n4.as_str()));
    assert_eq!(event.node.as_ref().and_then(|n| n.desired_state.as_ref()).map(|d| d.generation), Some(2));
    live.push(event);

    // Node 7 moves to another flavor: it no longer matches.
    let mut moved = record(7);
    if let Some(family) = moved.family.as_mut() {
        family.flavor = "opensuse".into();
    }
    put_node(&handle, &n7, moved).await;
    let event = next(&mut stream).await;
    assert_eq!((event.kind(), id_of(&event)), (pb::NodeEventKind::Removed, n7.as_str()));
    assert_eq!(event.node.as_ref().and_then(|n| n.family.as_ref()).map(|f| f.flavor.as_str()), Some("opensuse"));
    live.push(event);

    let newcomer = format!("{:032x}", 9_999_999);
    put_node(&handle, &newcomer, record(1)).await;
    let event = next(&mut stream).await;
    assert_eq!((event.kind(), id_of(&event)), (pb::NodeEventKind::Enrolled, newcomer.as_str()));
    live.push(event);

    handle.write(Request::delete(nodes::node_key(&n10))).await.expect("remove node 10");
    let event = next(&mut stream).await;
    assert_eq!((event.kind(), id_of(&event)), (pb::NodeEventKind::Removed, n10.as_str()));
    live.push(event);
    drop(stream);

    // Resuming after the snapshot replays the same changes; without the
    // snapshot the server cannot know node 3 was never sent, so it is
    // REMOVED once, which the client ignores.
    let mut resumed = client.watch_nodes(watch(snapshot_revision)).await.expect("resume").into_inner();
    let mut replayed = Vec::new();
    while replayed.len() < live.len() {
        let event = next(&mut resumed).await;
        if id_of(&event) == n3 {
            assert_eq!(event.kind(), pb::NodeEventKind::Removed);
        } else {
            replayed.push(event);
        }
    }
    let summary = |events: &[pb::NodeEvent]| {
        events.iter().map(|e| (e.kind(), id_of(e).to_owned(), e.revision)).collect::<Vec<_>>()
    };
    assert_eq!(summary(&replayed), summary(&live));
    drop(resumed);

    // Resuming after the ENROLLED event sends only what followed it.
    let enrolled = &live[live.len() - 2];
    let mut tail = client.watch_nodes(watch(enrolled.revision)).await.expect("resume").into_inner();
    let event = next(&mut tail).await;
    assert_eq!((event.kind(), id_of(&event)), (pb::NodeEventKind::Removed, n10.as_str()));
    drop(tail);

    // Shutting down ends open watches at once, naming the resume point.
    let last = live.last().map_or(0, |e| e.revision);
    let mut open = client.watch_nodes(watch(last)).await.expect("watch").into_inner();
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(handle.shutdown());
    let err = tokio::time::timeout(STEP, open.message()).await.expect("ends in time").expect_err("ends with a status");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().ends_with(&format!("resume_revision {last} (another replica can serve it)")), "{err:?}");
    drop((open, client));
    stopping.await.expect("shutdown task").expect("shutdown");
    assert!(started.elapsed() < Duration::from_secs(4), "no grace period spent on the stream");

    // After a restart the history is empty: an old revision is OUT_OF_RANGE.
    let handle = slot.start_with(&pki, true, tuning(), crate::common::seeded_sessions()).await;
    leader_of(&handle).await;
    let mut client = fleet_client(&pki, &slot.addr());
    let err = client.watch_nodes(watch(snapshot_revision)).await.expect_err("history is gone");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().starts_with("resume_revision: ") && err.message().contains("list the nodes again"),
        "{err:?}"
    );
    let current = client.list_nodes(pb::ListNodesRequest::default()).await.expect("list").into_inner();
    let revision = current.meta.expect("meta").revision;
    client.watch_nodes(watch(revision)).await.expect("the list's revision resumes");
    drop(client);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reads_too_slowly_is_told_where_to_resume() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pki, slot, handle) = cluster(root.path()).await;
    seed(&handle, 0..5).await;
    let token = viewer_token(&handle).await;
    let limits = WatchLimits { queued_events: 8, snapshot_send_timeout: Duration::from_secs(5) };
    let api = FleetApi::new(handle.client().clone()).with_watch_limits(limits);
    let mut slow =
        api.watch_nodes(with_token(pb::WatchNodesRequest::default(), &token)).await.expect("watch").into_inner();

    // Nobody reads while 20 changes are applied, one batch each.
    let mut revisions = Vec::new();
    for k in 0..20 {
        let renamed = nodes::NodeRecord { hostname: format!("renamed-{k}"), ..record(k % 5) };
        let response =
            handle.write(Request::put(nodes::node_key(&node_id(k % 5)), renamed.encode())).await.expect("change");
        revisions.push(response.revision);
    }
    let last = *revisions.last().expect("changes");
    let mut received = Vec::new();
    let status = loop {
        match tokio::time::timeout(STEP, slow.next()).await.expect("stream ends in time") {
            Some(Ok(event)) => received.push(event),
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status after {} events", received.len()),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let resume: u64 = status
        .message()
        .rsplit("resume_revision ")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume revision in {:?}", status.message()));
    assert!(received.iter().any(|e| e.kind() == pb::NodeEventKind::Synced), "the snapshot came first");
    assert!(received.iter().all(|e| e.revision <= resume), "nothing after the resume point was sent");
    assert!(resume < last, "the watch ended before the last change");

    // Resuming there brings every later change.
    let mut client = fleet_client(&pki, &slot.addr());
    let mut rest = client
        .watch_nodes(pb::WatchNodesRequest { filter: None, resume_revision: resume })
        .await
        .expect("resume")
        .into_inner();
    let mut seen: BTreeSet<u64> = received.iter().map(|e| e.revision).collect();
    while !seen.contains(&last) {
        let event = next(&mut rest).await;
        assert!(event.revision > resume);
        seen.insert(event.revision);
    }
    assert!(revisions.iter().filter(|r| **r > resume).all(|r| seen.contains(r)), "no change was lost");
    drop((rest, slow, client, api));
    handle.shutdown().await.expect("shutdown");
}
