//! FleetService on a one-replica cluster: node records written straight
//! into the store, then listed, filtered, paged, counted and checked for
//! the documented status codes and roles.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kairos_controlplane::nodes::{self, NodeRecord, SessionRecord};
use kairos_controlplane::replica::ReplicaHandle;
use kairos_controlplane::security::token::generate_token;
use kairos_controlplane::security::{Role, TokenRecord};
use kairos_controlplane::serve::TOKENS_PREFIX;
use kairos_controlplane::store::{Op, Request};
use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::common::{add_release, leader_of, tuning, Pki, Slot};

/// Nodes seeded by [`seed`].
pub const SEEDED: usize = 300;
const FLAVORS: [(&str, &str, &str, &str); 3] = [
    ("opensuse", "leap-15.5", "amd64", "generic"),
    ("ubuntu", "22.04", "amd64", "generic"),
    ("alpine-arm-rpi", "", "arm64", "rpi4"),
];
const RELEASES: [&str; 4] = ["v2.4.2", "v2.3.0", "v2.4.3", "v2.4.1"];
const STATES: [pb::NodeState; 5] = [
    pb::NodeState::Idle,
    pb::NodeState::Healthy,
    pb::NodeState::Failed,
    pb::NodeState::Downloading,
    pb::NodeState::Idle,
];

/// The id of seeded node `i`: multiples of 16, so tests can add nodes
/// whose ids sort between seeded ones.
pub fn node_id(i: usize) -> String {
    format!("{:032x}", (i + 1) * 16)
}

/// Stores node record `record` under `id`.
pub async fn put_node(handle: &ReplicaHandle, id: &str, mut record: NodeRecord) {
    record.node_id = id.to_owned();
    record.machine_id = id.to_owned();
    handle.write(Request::put(nodes::node_key(id), record.encode())).await.expect("put node");
}

/// Seeded node `i`: flavors, releases, states, variants and labels cycle.
pub fn record(i: usize) -> NodeRecord {
    let (flavor, flavor_release, arch, model) = FLAVORS[i % 3];
    let release = RELEASES[i % 4];
    let variant = if i % 2 == 0 { "core" } else { "standard" };
    let mut r = NodeRecord {
        node_id: node_id(i),
        machine_id: node_id(i),
        hostname: format!("edge-{i}"),
        identity: Some(pb::NodeIdentity {
            flavor: flavor.into(),
            flavor_release: flavor_release.into(),
            variant: variant.into(),
            arch: arch.into(),
            model: model.into(),
            release: release.into(),
            ..Default::default()
        }),
        family: Some(pb::ImageFamily {
            flavor: flavor.into(),
            flavor_release: flavor_release.into(),
            variant: variant.into(),
            arch: arch.into(),
            model: model.into(),
            trusted_boot: false,
        }),
        state: STATES[i % 5] as i32,
        enrolled_at_ms: 1_700_000_000_000,
        state_changed_at_ms: 1_700_000_000_000 + ((SEEDED - i) as u64) * 1000,
        last_seen_ms: 1_700_000_000_000 + ((i * 7919) % SEEDED) as u64 * 1000,
        current_image_ref: format!("quay.io/kairos/{flavor}:{release}"),
        ..Default::default()
    };
    r.node_labels.insert("site".into(), if i % 2 == 0 { "berlin" } else { "paris" }.into());
    if i % 7 == 0 {
        r.node_labels.insert("gpu".into(), "yes".into());
    }
    if i % 10 == 0 {
        r.enrollment_labels.insert("fleet.kairos.io/tier".into(), "edge".into());
    }
    r
}

/// Seeded node `i` holds a stream on replica 1.
pub fn online(i: usize) -> bool {
    i % 5 == 0
}

pub fn session() -> SessionRecord {
    SessionRecord { replica_id: 1, session_id: 7, connected_at_ms: 1_700_000_500_000 }
}

/// Writes nodes `range` (records, sessions of online ones, a desired state
/// for every sixth), 100 nodes per raft entry.
pub async fn seed(handle: &ReplicaHandle, range: std::ops::Range<usize>) {
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(100) {
        let mut ops = Vec::new();
        for &i in chunk {
            ops.push(Op::put(nodes::node_key(&node_id(i)), record(i).encode()));
            if online(i) {
                ops.push(Op::put(nodes::session_key(&node_id(i)), session().encode()));
            }
            if i % 6 == 0 {
                let desired = pb::DesiredState {
                    generation: 1,
                    rollout_id: "r-1".into(),
                    target_image_ref: "quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.3".into(),
                    target_release: "v2.4.3".into(),
                    ..Default::default()
                };
                ops.push(Op::put(nodes::desired_key(&node_id(i)), prost::Message::encode_to_vec(&desired)));
            }
        }
        handle.write(Request::batch(ops)).await.expect("seed nodes");
    }
}

/// A viewer token stored in the replicated state; returns its secret.
pub async fn viewer_token(handle: &ReplicaHandle) -> String {
    let secret = generate_token().expect("token");
    let record = TokenRecord::new(&secret, Role::Viewer, "fleet tests", "init", 1_000, None);
    let value = serde_json::to_vec(&record).expect("encode token");
    handle.write(Request::put(format!("{TOKENS_PREFIX}{}", secret.id()), value)).await.expect("store token");
    secret.expose().to_owned()
}

/// A TLS channel presenting a certificate with common name `cn`.
pub fn channel_as(pki: &Pki, addr: &str, cn: &str) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(pki.client_tls("127.0.0.1", pki.identity(cn)))
        .expect("client tls")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// A FleetService client presenting an operator certificate (admin).
pub fn fleet_client(pki: &Pki, addr: &str) -> FleetServiceClient<Channel> {
    FleetServiceClient::new(channel_as(pki, addr, "operator"))
}

/// `message` with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    request
}

/// A started one-replica cluster with the release catalog of ubuntu 22.04
/// core v2.4.1 and v2.4.3 (the newest stable release).
pub async fn cluster(root: &std::path::Path) -> (Arc<Pki>, Slot, ReplicaHandle) {
    let pki = Arc::new(Pki::new());
    let slot = Slot::new(1, root);
    let handle = slot.start_with(&pki, true, tuning(), crate::common::seeded_sessions()).await;
    leader_of(&handle).await;
    for patch in [1, 3] {
        let image = format!("quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.{patch}");
        add_release(&pki, &slot.addr(), &image).await.expect("add release");
    }
    (pki, slot, handle)
}

fn ids_where(predicate: impl Fn(usize) -> bool) -> BTreeSet<String> {
    (0..SEEDED).filter(|&i| predicate(i)).map(node_id).collect()
}

fn selector(s: pb::NodeSelector) -> pb::NodeFilter {
    pb::NodeFilter { selector: Some(s), ..Default::default() }
}

fn label(key: &str, operator: pb::LabelOperator, values: &[&str]) -> pb::LabelRequirement {
    pb::LabelRequirement {
        key: key.into(),
        operator: operator as i32,
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

/// Every page of a listing; checks that each page's total is the same.
async fn list_all(
    client: &mut FleetServiceClient<Channel>,
    mut request: pb::ListNodesRequest,
) -> Result<(Vec<pb::Node>, u32), tonic::Status> {
    let mut nodes = Vec::new();
    loop {
        let page = client.list_nodes(request.clone()).await?.into_inner();
        nodes.extend(page.nodes);
        if page.next_page_token.is_empty() {
            return Ok((nodes, page.total_size));
        }
        request.page_token = page.next_page_token;
    }
}

async fn listed_ids(client: &mut FleetServiceClient<Channel>, filter: pb::NodeFilter) -> BTreeSet<String> {
    let request = pb::ListNodesRequest { filter: Some(filter), page_size: 1000, ..Default::default() };
    let (nodes, total) = list_all(client, request).await.expect("list");
    assert_eq!(total as usize, nodes.len());
    nodes.into_iter().map(|n| n.node_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_nodes_matches_every_filter_kind() {
    use pb::LabelOperator::*;
    let root = tempfile::tempdir().expect("tempdir");
    let (pki, slot, handle) = cluster(root.path()).await;
    seed(&handle, 0..SEEDED).await;
    let mut client = fleet_client(&pki, &slot.addr());
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    assert_eq!(listed_ids(&mut client, pb::NodeFilter::default()).await, ids_where(|_| true));
    let cases: Vec<(&str, pb::NodeFilter, BTreeSet<String>)> = vec![
        (
            "flavors",
            selector(pb::NodeSelector { flavors: strings(&["ubuntu", "alpine-arm-rpi"]), ..Default::default() }),
            ids_where(|i| i % 3 != 0),
        ),
        (
            "flavor_releases",
            selector(pb::NodeSelector { flavor_releases: strings(&["leap-15.5"]), ..Default::default() }),
            ids_where(|i| i % 3 == 0),
        ),
        (
            "variants",
            selector(pb::NodeSelector { variants: strings(&["standard"]), ..Default::default() }),
            ids_where(|i| i % 2 == 1),
        ),
        (
            "arches",
            selector(pb::NodeSelector { arches: strings(&["arm64"]), ..Default::default() }),
            ids_where(|i| i % 3 == 2),
        ),
        (
            "models",
            selector(pb::NodeSelector { models: strings(&["generic"]), ..Default::default() }),
            ids_where(|i| i % 3 != 2),
        ),
        (
            "label in",
            selector(pb::NodeSelector { labels: vec![label("site", In, &["paris"])], ..Default::default() }),
            ids_where(|i| i % 2 == 1),
        ),
        (
            "label not in",
            selector(pb::NodeSelector { labels: vec![label("gpu", NotIn, &["yes"])], ..Default::default() }),
            ids_where(|i| i % 7 != 0),
        ),
        (
            "label exists",
            selector(pb::NodeSelector {
                labels: vec![label("fleet.kairos.io/tier", Exists, &[])],
                ..Default::default()
            }),
            ids_where(|i| i % 10 == 0),
        ),
        (
            "label does not exist",
            selector(pb::NodeSelector { labels: vec![label("gpu", DoesNotExist, &[])], ..Default::default() }),
            ids_where(|i| i % 7 != 0),
        ),
        (
            "node ids",
            selector(pb::NodeSelector {
                node_ids: vec![node_id(3), node_id(250), "f".repeat(32)],
                ..Default::default()
            }),
            [node_id(3), node_id(250)].into_iter().collect(),
        ),
        (
            "releases",
            pb::NodeFilter { releases: strings(&["v2.4.1", "v2.3.0"]), ..Default::default() },
            ids_where(|i| i % 4 == 1 || i % 4 == 3),
        ),
        (
            "states",
            pb::NodeFilter { states: vec![pb::NodeState::Failed as i32], ..Default::default() },
            ids_where(|i| i % 5 == 2),
        ),
        // Latest stable release v2.4.3: v2.4.1 and v2.4.2 have a patch, v2.3.0 is on an old branch.
        (
            "support",
            pb::NodeFilter { support_statuses: vec![pb::SupportStatus::PatchAvailable as i32], ..Default::default() },
            ids_where(|i| i % 4 == 0 || i % 4 == 3),
        ),
        (
            "unsupported",
            pb::NodeFilter {
                support_statuses: vec![pb::SupportStatus::UnsupportedBranch as i32],
                ..Default::default()
            },
            ids_where(|i| i % 4 == 1),
        ),
        ("online", pb::NodeFilter { online: Some(true), ..Default::default() }, ids_where(online)),
        ("offline", pb::NodeFilter { online: Some(false), ..Default::default() }, ids_where(|i| !online(i))),
        (
            "all fields together",
            pb::NodeFilter {
                selector: Some(pb::NodeSelector {
                    flavors: strings(&["ubuntu"]),
                    labels: vec![label("site", In, &["paris"])],
                    ..Default::default()
                }),
                states: vec![pb::NodeState::Idle as i32],
                ..Default::default()
            },
            ids_where(|i| i % 3 == 1 && i % 2 == 1 && (i % 5 == 0 || i % 5 == 4)),
        ),
    ];
    for (name, filter, expected) in cases {
        assert!(!expected.is_empty(), "{name}: the seed must exercise the filter");
        assert_eq!(listed_ids(&mut client, filter).await, expected, "{name}");
    }

    // A node as listed: support status, patch, session and desired state.
    let page = client
        .list_nodes(pb::ListNodesRequest {
            filter: Some(selector(pb::NodeSelector { node_ids: vec![node_id(0)], ..Default::default() })),
            ..Default::default()
        })
        .await
        .expect("list one")
        .into_inner();
    let n = &page.nodes[0];
    assert_eq!(
        (n.support_status(), n.available_patch.as_str()),
        (pb::SupportStatus::PatchAvailable, ""),
        "node 0 is opensuse: no ubuntu patch applies"
    );
    assert!(n.online && n.connected_replica_id == 1 && n.desired_state.is_some(), "{n:?}");
    assert_eq!(n.labels.get("fleet.kairos.io/tier").map(String::as_str), Some("edge"));
    let meta = page.meta.expect("meta");
    assert_eq!(meta.replica_id, 1);
    assert!(meta.revision >= n.revision && n.revision > 0, "{meta:?} {}", n.revision);
    assert_eq!(meta.staleness_bound, Some(prost_types::Duration::default()), "answered by the leader");

    // Bad filters are refused naming the field and the rule.
    let bad = client
        .list_nodes(pb::ListNodesRequest {
            filter: Some(selector(pb::NodeSelector { arches: strings(&["x86"]), ..Default::default() })),
            ..Default::default()
        })
        .await
        .expect_err("bad arch");
    assert_eq!(
        (bad.code(), bad.message()),
        (Code::InvalidArgument, r#"filter.selector.arches[0]: must be amd64 or arm64, got "x86""#)
    );
    let bad = client
        .list_nodes(pb::ListNodesRequest { page_token: "zz".into(), ..Default::default() })
        .await
        .expect_err("bad token");
    assert!(bad.code() == Code::InvalidArgument && bad.message().starts_with("page_token:"), "{bad:?}");
    let bad = client
        .list_nodes(pb::ListNodesRequest { consistency: 9, ..Default::default() })
        .await
        .expect_err("bad consistency");
    assert!(bad.code() == Code::InvalidArgument && bad.message().starts_with("consistency:"), "{bad:?}");
    drop(client);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_return_every_node_once_in_order_while_nodes_are_added() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pki, slot, handle) = cluster(root.path()).await;
    seed(&handle, 0..SEEDED).await;
    let mut client = fleet_client(&pki, &slot.addr());

    // By id: between pages, a node is added just before the cursor (never
    // listed) and one just after it (listed on a later page).
    let mut request = pb::ListNodesRequest { page_size: 37, ..Default::default() };
    let mut seen: Vec<String> = Vec::new();
    let (mut before, mut after) = (Vec::new(), Vec::new());
    loop {
        let page = client.list_nodes(request.clone()).await.expect("page").into_inner();
        assert!(page.nodes.len() <= 37);
        seen.extend(page.nodes.into_iter().map(|n| n.node_id));
        if page.next_page_token.is_empty() {
            break;
        }
        let cursor = u128::from_str_radix(seen.last().expect("a node"), 16).expect("hex id");
        let base = cursor - cursor % 16;
        for (id, list) in [(base - 5, &mut before), (base + 7, &mut after)] {
            let id = format!("{id:032x}");
            put_node(&handle, &id, record(1)).await;
            list.push(id);
        }
        request.page_token = page.next_page_token;
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "strictly in id order, no repeats");
    let seen_set: HashSet<&String> = seen.iter().collect();
    assert!((0..SEEDED).all(|i| seen_set.contains(&node_id(i))), "every seeded node listed");
    assert!(after.iter().all(|id| seen_set.contains(id)), "nodes added after the cursor are listed");
    assert!(!before.iter().any(|id| seen_set.contains(id)), "nodes added before the cursor are not");
    assert_eq!(seen.len(), SEEDED + after.len());
    let extra = SEEDED + before.len() + after.len();

    // Every order, both directions: all pages together are the full sorted list.
    for order_by in
        [pb::NodeOrderBy::Release, pb::NodeOrderBy::Flavor, pb::NodeOrderBy::LastSeen, pb::NodeOrderBy::StateChanged]
    {
        for descending in [false, true] {
            let request =
                pb::ListNodesRequest { page_size: 41, order_by: order_by as i32, descending, ..Default::default() };
            let (paged, total) = list_all(&mut client, request.clone()).await.expect("paged");
            let (whole, _) =
                list_all(&mut client, pb::ListNodesRequest { page_size: 1000, ..request }).await.expect("whole");
            let ids = |nodes: &[pb::Node]| nodes.iter().map(|n| n.node_id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&paged), ids(&whole), "{order_by:?} descending={descending}");
            assert_eq!(total as usize, extra, "{order_by:?}");
            assert_eq!(ids(&paged).into_iter().collect::<HashSet<_>>().len(), extra, "no repeats");
            if order_by == pb::NodeOrderBy::Release {
                let releases: Vec<semver::Version> = paged
                    .iter()
                    .map(|n| {
                        semver::Version::parse(n.identity.as_ref().expect("identity").release.trim_start_matches('v'))
                            .expect("semver")
                    })
                    .collect();
                let sorted = releases.windows(2).all(|w| if descending { w[0] >= w[1] } else { w[0] <= w[1] });
                assert!(sorted, "releases in semver order, descending={descending}");
            }
        }
    }
    // A token only continues the query that returned it.
    let first = client
        .list_nodes(pb::ListNodesRequest { page_size: 5, ..Default::default() })
        .await
        .expect("page")
        .into_inner();
    let other = pb::ListNodesRequest {
        page_size: 5,
        page_token: first.next_page_token,
        order_by: pb::NodeOrderBy::Release as i32,
        ..Default::default()
    };
    let err = client.list_nodes(other).await.expect_err("token of another order");
    assert!(err.code() == Code::InvalidArgument && err.message().contains("another order_by"), "{err:?}");
    drop(client);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_node_and_fleet_report_answer_for_the_seeded_fleet() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pki, slot, handle) = cluster(root.path()).await;
    seed(&handle, 0..SEEDED).await;
    let mut client = fleet_client(&pki, &slot.addr());

    // Node 7: ubuntu 22.04 standard on v2.4.1 → patch available (v2.4.3 is core only: no patch for standard).
    // Node 4: ubuntu 22.04 core on v2.4.2 → patch v2.4.3.
    let got = client
        .get_node(pb::GetNodeRequest { node_id: node_id(4), consistency: pb::ReadConsistency::Linearizable as i32 })
        .await
        .expect("node 4")
        .into_inner();
    let node = got.node.expect("node");
    assert_eq!(
        (node.hostname.as_str(), node.support_status(), node.available_patch.as_str()),
        ("edge-4", pb::SupportStatus::PatchAvailable, "v2.4.3")
    );
    assert_eq!(got.meta.map(|m| m.staleness_bound), Some(Some(prost_types::Duration::default())), "linearizable");
    let standard = client
        .get_node(pb::GetNodeRequest { node_id: node_id(7), ..Default::default() })
        .await
        .expect("node 7")
        .into_inner();
    assert_eq!(standard.node.expect("node").available_patch, "", "no standard image in the catalog");

    let missing = client
        .get_node(pb::GetNodeRequest { node_id: "e".repeat(32), ..Default::default() })
        .await
        .expect_err("unknown");
    assert!(missing.code() == Code::NotFound && missing.message().contains(&"e".repeat(32)), "{missing:?}");
    let malformed = client
        .get_node(pb::GetNodeRequest { node_id: "edge-4".into(), ..Default::default() })
        .await
        .expect_err("malformed");
    assert!(
        malformed.code() == Code::InvalidArgument && malformed.message().starts_with("node_id: must be a machine id"),
        "{malformed:?}"
    );

    let report = client.fleet_report(pb::FleetReportRequest::default()).await.expect("report").into_inner();
    assert_eq!(
        (report.total_nodes as usize, report.online_nodes as usize),
        (SEEDED, (0..SEEDED).filter(|&i| online(i)).count())
    );
    assert_eq!(report.offline_nodes, report.total_nodes - report.online_nodes);
    assert_eq!(report.latest_release, "v2.4.3");
    assert_eq!(report.by_release.len(), 3 * 4, "every flavor × release");
    let rows: Vec<(&str, &str)> =
        report.by_release.iter().take(4).map(|r| (r.flavor.as_str(), r.release.as_str())).collect();
    assert_eq!(
        rows,
        [
            ("alpine-arm-rpi", "v2.4.3"),
            ("alpine-arm-rpi", "v2.4.2"),
            ("alpine-arm-rpi", "v2.4.1"),
            ("alpine-arm-rpi", "v2.3.0")
        ]
    );
    for row in &report.by_release {
        let flavor = FLAVORS.iter().position(|f| f.0 == row.flavor).expect("seeded flavor");
        let release = RELEASES.iter().position(|r| *r == row.release).expect("seeded release");
        let members: Vec<usize> = (0..SEEDED).filter(|i| i % 3 == flavor && i % 4 == release).collect();
        assert_eq!(
            (row.nodes as usize, row.online as usize),
            (members.len(), members.iter().filter(|&&i| online(i)).count()),
            "{row:?}"
        );
        let expected = match row.release.as_str() {
            "v2.4.3" => pb::SupportStatus::Current,
            "v2.3.0" => pb::SupportStatus::UnsupportedBranch,
            _ => pb::SupportStatus::PatchAvailable,
        };
        assert_eq!(row.support_status(), expected, "{row:?}");
    }
    let states: Vec<(pb::NodeState, u32)> = report.by_state.iter().map(|s| (s.state(), s.nodes)).collect();
    assert_eq!(
        states,
        [
            (pb::NodeState::Idle, 120),
            (pb::NodeState::Downloading, 60),
            (pb::NodeState::Healthy, 60),
            (pb::NodeState::Failed, 60)
        ]
    );

    let arm = selector(pb::NodeSelector { arches: vec!["arm64".into()], ..Default::default() });
    let report = client
        .fleet_report(pb::FleetReportRequest { filter: Some(arm), ..Default::default() })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(report.total_nodes, 100);
    assert!(report.by_release.iter().all(|r| r.flavor == "alpine-arm-rpi"));
    drop(client);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_may_read_the_fleet_and_node_certificates_may_not() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pki, slot, handle) = cluster(root.path()).await;
    seed(&handle, 0..10).await;
    let token = viewer_token(&handle).await;
    let addr = slot.addr();
    let mut node_cert = FleetServiceClient::new(channel_as(&pki, &addr, &format!("node-{}", node_id(1))));
    let mut viewer = node_cert.clone();

    let listed = viewer.list_nodes(with_token(pb::ListNodesRequest::default(), &token)).await.expect("viewer lists");
    assert_eq!(listed.into_inner().total_size, 10);
    viewer
        .get_node(with_token(pb::GetNodeRequest { node_id: node_id(1), ..Default::default() }, &token))
        .await
        .expect("viewer gets");
    viewer.fleet_report(with_token(pb::FleetReportRequest::default(), &token)).await.expect("viewer counts");
    let mut events = viewer
        .watch_nodes(with_token(pb::WatchNodesRequest::default(), &token))
        .await
        .expect("viewer watches")
        .into_inner();
    let first = events.message().await.expect("event").expect("an event");
    assert_eq!(first.kind(), pb::NodeEventKind::Existing);
    drop(events);

    let denied = node_cert.list_nodes(pb::ListNodesRequest::default()).await.expect_err("node certificate");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = node_cert.watch_nodes(pb::WatchNodesRequest::default()).await.expect_err("node certificate");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let forged = format!("{}x", &token[..token.len() - 1]);
    let bad =
        viewer.fleet_report(with_token(pb::FleetReportRequest::default(), &forged)).await.expect_err("bad secret");
    assert_eq!(bad.code(), Code::Unauthenticated, "{bad:?}");
    drop((node_cert, viewer));
    handle.shutdown().await.expect("shutdown");
}
