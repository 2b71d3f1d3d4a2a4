//! `kairos.fleet.v1.FleetService`: read-only views of the enrolled nodes
//! (`nodes/`, `node-sessions/`, `desired/`, see [`crate::nodes`]), with
//! support statuses from the release catalog. Every call needs role viewer.
//!
//! Reads are served from this replica's applied state; `consistency:
//! LINEARIZABLE` (or the `kairos-read-consistency: linearizable` metadata)
//! confirms freshness with the leader first. `ReadMeta.staleness_bound` is
//! zero for linearizable reads and on the leader; on a follower that knows
//! a leader it is the raft election timeout (a follower that stops hearing
//! from its leader for that long starts an election, so it heard from it
//! more recently), which assumes the follower keeps up applying what it
//! hears; it is unset when no bound can be given (no leader known, or a
//! learner, which never times out).
//!
//! - [`filter`]: checking and matching `NodeFilter`;
//! - [`order`]: ListNodes sort keys and page tokens;
//! - [`scan`]: reading nodes from the three key spaces;
//! - [`catalog`]: support status and available patch;
//! - [`report`]: FleetReport counts;
//! - [`watch`]: WatchNodes streams.

pub mod catalog;
pub mod filter;
pub mod order;
pub mod report;
pub mod scan;
pub mod watch;

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;

use kairos_fleet_proto::fleet::v1 as pb;
use kairos_fleet_proto::fleet::v1::fleet_service_server::{FleetService, FleetServiceServer};
use openraft::ServerState;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::auth::authorize;
use super::{read_status, wants_linearizable_read};
use crate::metrics::{Counted, StreamGauges, WatchKind};
use crate::nodes::check_node_id;
use crate::raft::MAX_MESSAGE_BYTES;
use crate::replica::ReplicaClient;
use crate::security::Role;
use crate::sessions::Sessions;
use crate::store::KvReader;
use catalog::Catalog;
use filter::{flavor, release, NodeMatcher};
use order::{page_token, parse_page_token, Order, SortKey};
use report::ReportBuilder;
use scan::{store_status, NodeRow, Scan};
use watch::{EventStream, WatchLimits};

/// Page size when the request asks for 0, and the largest honoured.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// ListNodes and FleetReport calls scanning the fleet at once; more wait.
const MAX_CONCURRENT_SCANS: usize = 4;

/// `FleetService` of one replica.
#[derive(Clone)]
pub struct FleetApi {
    client: ReplicaClient,
    sessions: Option<Sessions>,
    watch_limits: WatchLimits,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
    scans: Arc<Semaphore>,
    streams: Arc<StreamGauges>,
}

impl FleetApi {
    /// The service answering through `client`'s replica.
    pub fn new(client: ReplicaClient) -> Self {
        FleetApi {
            client,
            sessions: None,
            watch_limits: WatchLimits::default(),
            stopping: None,
            scans: Arc::new(Semaphore::new(MAX_CONCURRENT_SCANS)),
            streams: Arc::default(),
        }
    }

    /// The same service, adding what this replica's node sessions know
    /// live (exact last-seen time, download progress) to the nodes whose
    /// streams it holds.
    pub fn with_sessions(self, sessions: Sessions) -> Self {
        FleetApi { sessions: Some(sessions), ..self }
    }

    /// What only the replica holding a node's stream knows: the exact last
    /// time it was heard from and its download progress.
    fn overlay_live(&self, node: &mut pb::Node) {
        let Some(live) = self.sessions.as_ref().and_then(|s| s.live(&node.node_id)) else { return };
        if node.connected_replica_id != self.client.id() {
            return;
        }
        node.last_seen = crate::nodes::timestamp_ms(live.last_seen_ms);
        let transferring = [pb::NodeState::Downloading as i32, pb::NodeState::Verifying as i32];
        if transferring.contains(&node.state) {
            node.progress = live.progress;
        }
    }

    /// The same service, ending its WatchNodes streams (UNAVAILABLE, with
    /// the revision to resume from) once `stopping` turns true or its
    /// sender is dropped.
    pub fn with_shutdown(self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        FleetApi { stopping: Some(stopping), ..self }
    }

    /// The same service with other bounds for WatchNodes streams.
    pub fn with_watch_limits(self, watch_limits: WatchLimits) -> Self {
        FleetApi { watch_limits, ..self }
    }

    /// Counts open WatchNodes streams in `gauges` (for `/metrics`).
    pub fn with_stream_gauges(mut self, gauges: Arc<StreamGauges>) -> Self {
        self.streams = gauges;
        self
    }

    /// The tonic server wrapper with the replica's message limits.
    pub fn into_server(self) -> FleetServiceServer<Self> {
        FleetServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Authorizes a read (role viewer) and tells whether it must be
    /// linearizable: the request's `consistency` field, else the
    /// `kairos-read-consistency` metadata.
    fn admit_read<T>(&self, request: &Request<T>, consistency: i32) -> Result<bool, Status> {
        authorize(self.client.reader(), request, Role::Viewer)?;
        wants_linearizable_read(request, consistency)
    }

    /// Confirms freshness when asked to and returns the read's metadata;
    /// its revision is read before the data, so a watch resuming from it
    /// misses nothing the answer did not show.
    async fn read_meta(&self, linearizable: bool) -> Result<pb::ReadMeta, Status> {
        if linearizable {
            self.client.read_linearizable().await.map_err(read_status)?;
        }
        Ok(pb::ReadMeta {
            replica_id: self.client.id(),
            revision: self.client.reader().revision().map_err(store_status)?,
            staleness_bound: self.staleness_bound(linearizable),
        })
    }

    /// Runs a scan of the fleet off the async workers (a scan of 50k nodes
    /// must not hold up raft's RPCs), at most [`MAX_CONCURRENT_SCANS`] at once.
    async fn scan<T: Send + 'static>(
        &self,
        call: &'static str,
        work: impl FnOnce() -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let _permit = self
            .scans
            .acquire()
            .await
            .map_err(|_| Status::unavailable(format!("{call}: the replica is shutting down")))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Status::internal(format!("{call}: the scan of the fleet failed: {e}")))?
    }

    fn staleness_bound(&self, linearizable: bool) -> Option<prost_types::Duration> {
        let raft = self.client.raft();
        let (state, leader) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            (m.state, m.current_leader)
        };
        if linearizable || state == ServerState::Leader {
            return Some(prost_types::Duration::default());
        }
        if state != ServerState::Follower || leader.is_none() {
            return None;
        }
        let ms = raft.config().election_timeout_max;
        Some(prost_types::Duration {
            seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            // Below 1e9 by construction.
            nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
        })
    }
}

/// A node in the running for a page, ranked by the request's order.
struct Ranked {
    key: SortKey,
    order: Order,
    row: NodeRow,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order.cmp(&self.key, &other.key)
    }
}

/// One page of matching nodes and the count of all of them.
struct Page {
    rows: Vec<NodeRow>,
    last: Option<SortKey>,
    more: bool,
    total: u32,
}

/// Scans every node once, keeping only the `size` first after `after` in
/// `order` (a bounded heap), and counting every match.
fn select_page(
    scan: &mut Scan,
    matcher: &NodeMatcher,
    catalog: &Catalog,
    order: Order,
    after: Option<&SortKey>,
    size: usize,
) -> Result<Page, Status> {
    // One more than the page, to know whether another page follows.
    let keep = size + 1;
    let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(keep + 1);
    let mut total: u32 = 0;
    while let Some(row) = scan.next_row()? {
        if !matcher.matches(&row.facts(catalog)) {
            continue;
        }
        total = total.saturating_add(1);
        let key = order.key(&row.record, row.session.as_ref());
        if after.is_some_and(|after| order.cmp(&key, after) != Ordering::Greater) {
            continue;
        }
        if heap.len() == keep && heap.peek().is_some_and(|worst| order.cmp(&key, &worst.key) == Ordering::Greater) {
            continue;
        }
        heap.push(Ranked { key, order, row });
        if heap.len() > keep {
            heap.pop();
        }
    }
    let mut ranked = heap.into_sorted_vec();
    let more = ranked.len() > size;
    ranked.truncate(size);
    let last = ranked.last().map(|r| r.key.clone());
    Ok(Page { rows: ranked.into_iter().map(|r| r.row).collect(), last, more, total })
}

#[tonic::async_trait]
impl FleetService for FleetApi {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let linearizable = self.admit_read(&request, request.get_ref().consistency)?;
        let req = request.into_inner();
        let matcher = NodeMatcher::new("filter", req.filter.as_ref())?;
        let order = Order::new(req.order_by, req.descending)?;
        let after = parse_page_token(&req.page_token, &order, req.filter.as_ref())?;
        let size = match req.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let meta = self.read_meta(linearizable).await?;
        let reader = self.client.reader().clone();
        let (nodes, next_page_token, total_size) = self
            .scan("ListNodes", move || {
                let catalog = Catalog::load(&reader)?;
                let mut scan = Scan::new(reader, matcher.node_ids());
                let page = select_page(&mut scan, &matcher, &catalog, order, after.as_ref(), size)?;
                let next_page_token = match (&page.last, page.more) {
                    (Some(last), true) => page_token(&order, req.filter.as_ref(), last),
                    _ => String::new(),
                };
                let nodes: Vec<pb::Node> = page.rows.iter().map(|row| row.to_node(&catalog)).collect();
                Ok((nodes, next_page_token, page.total))
            })
            .await?;
        let mut nodes = nodes;
        for node in &mut nodes {
            self.overlay_live(node);
        }
        Ok(Response::new(pb::ListNodesResponse { nodes, next_page_token, total_size, meta: Some(meta) }))
    }

    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::GetNodeResponse>, Status> {
        let linearizable = self.admit_read(&request, request.get_ref().consistency)?;
        let node_id = request.into_inner().node_id;
        check_node_id("node_id", &node_id).map_err(Status::invalid_argument)?;
        let meta = self.read_meta(linearizable).await?;
        let reader = self.client.reader();
        let row = NodeRow::read(reader, &node_id)?
            .ok_or_else(|| Status::not_found(format!("node_id: no node {node_id} is enrolled in the fleet")))?;
        let catalog = Catalog::load(reader)?;
        let mut node = row.to_node(&catalog);
        self.overlay_live(&mut node);
        Ok(Response::new(pb::GetNodeResponse { node: Some(node), meta: Some(meta) }))
    }

    type WatchNodesStream = Counted<EventStream>;

    async fn watch_nodes(
        &self,
        request: Request<pb::WatchNodesRequest>,
    ) -> Result<Response<Self::WatchNodesStream>, Status> {
        authorize(self.client.reader(), &request, Role::Viewer)?;
        let req = request.into_inner();
        let matcher = NodeMatcher::new("filter", req.filter.as_ref())?;
        let stream = watch::start(
            self.client.reader().clone(),
            matcher,
            req.resume_revision,
            self.watch_limits,
            self.stopping.clone(),
        )?;
        Ok(Response::new(self.streams.count(WatchKind::Nodes, stream)))
    }

    async fn fleet_report(
        &self,
        request: Request<pb::FleetReportRequest>,
    ) -> Result<Response<pb::FleetReportResponse>, Status> {
        let linearizable = self.admit_read(&request, request.get_ref().consistency)?;
        let req = request.into_inner();
        let matcher = NodeMatcher::new("filter", req.filter.as_ref())?;
        let meta = self.read_meta(linearizable).await?;
        let reader = self.client.reader().clone();
        let mut report = self.scan("FleetReport", move || fleet_report(reader, &matcher)).await?;
        report.meta = Some(meta);
        Ok(Response::new(report))
    }
}

/// The fleet report of the nodes `matcher` selects, from this replica's
/// state (blocking: it scans every node record).
pub fn fleet_report(reader: KvReader, matcher: &NodeMatcher) -> Result<pb::FleetReportResponse, Status> {
    let catalog = Catalog::load(&reader)?;
    let mut scan = Scan::new(reader, matcher.node_ids());
    let mut builder = ReportBuilder::default();
    while let Some(row) = scan.next_row()? {
        let facts = row.facts(&catalog);
        if matcher.matches(&facts) {
            let record = &row.record;
            builder.add(flavor(record), release(record), facts.support, record.state, facts.online);
        }
    }
    Ok(builder.finish(catalog.latest_release()))
}
