//! Prometheus metrics of a replica, served over plain HTTP at `/metrics`
//! (`serve --metrics-listen HOST:PORT`).
//!
//! Everything is read at scrape time from what the replica already holds —
//! its raft metrics, its copy of the replicated state, its node sessions and
//! the open watch streams — so a scrape shows this replica's view and costs
//! nothing between scrapes. Fleet gauges come from the same scan as
//! `FleetReport`; every replica reports them, so sum or pick one leader's
//! series (`kairos_fleet_raft_is_leader == 1`) in queries.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `kairos_fleet_nodes` | flavor, release, support | enrolled nodes |
//! | `kairos_fleet_nodes_online` | flavor, release, support | of which online |
//! | `kairos_fleet_nodes_by_state` | state | nodes per upgrade state |
//! | `kairos_fleet_rollout_nodes` | rollout, target, state | nodes of a rollout per state (total, pending, in_flight, healthy, failed, deferred, skipped, rolled_back, cancelled) |
//! | `kairos_fleet_rollout_phase` | rollout, phase | 1 for the rollout's phase |
//! | `kairos_fleet_rollout_current_wave` / `_waves` | rollout | wave worked on (0-based) / number of waves |
//! | `kairos_fleet_raft_term`, `_leader_id`, `_is_leader` | | raft role |
//! | `kairos_fleet_raft_last_log_index`, `_commit_index`, `_applied_index` | | log positions |
//! | `kairos_fleet_raft_apply_lag` | | committed entries not yet applied here |
//! | `kairos_fleet_raft_replication_lag` | replica | on the leader: entries a follower is behind |
//! | `kairos_fleet_node_streams` | | node streams held by this replica |
//! | `kairos_fleet_watch_streams` | kind (nodes, rollouts) | open watch streams on this replica |
//!
//! Rollouts are reported while active, plus the [`FINISHED_ROLLOUTS`] most
//! recent finished ones, so the series stay few over a long life.

use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use kairos_fleet_proto::fleet::v1 as pb;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::api::fleet::filter::NodeMatcher;
use crate::api::fleet::fleet_report;
use crate::api::rollout::convert::rollout_to_pb;
use crate::engine::records::{read_headers, Header};
use crate::replica::ReplicaClient;
use crate::sessions::Sessions;
use crate::side_port::SidePort;

/// Finished rollouts reported besides the active ones, newest first.
pub const FINISHED_ROLLOUTS: usize = 10;

/// Content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Open watch streams by kind, counted by the streams themselves.
#[derive(Debug, Default)]
pub struct StreamGauges {
    node_watches: AtomicI64,
    rollout_watches: AtomicI64,
}

/// Which kind of watch a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// `FleetService.WatchNodes`.
    Nodes,
    /// `RolloutService.Watch`.
    Rollouts,
}

impl StreamGauges {
    fn gauge(&self, kind: WatchKind) -> &AtomicI64 {
        match kind {
            WatchKind::Nodes => &self.node_watches,
            WatchKind::Rollouts => &self.rollout_watches,
        }
    }

    /// Open streams of `kind` now.
    pub fn open(&self, kind: WatchKind) -> i64 {
        self.gauge(kind).load(Ordering::Relaxed)
    }

    /// Wraps `stream` so it counts as open until dropped.
    pub fn count<S>(self: &Arc<Self>, kind: WatchKind, stream: S) -> Counted<S> {
        self.gauge(kind).fetch_add(1, Ordering::Relaxed);
        Counted { inner: stream, gauges: Arc::clone(self), kind }
    }
}

/// A stream counted in [`StreamGauges`] while it lives.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    gauges: Arc<StreamGauges>,
    kind: WatchKind,
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.gauges.gauge(self.kind).fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Stream + Unpin> Stream for Counted<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// How long the result of a scan of the fleet and the rollouts serves
/// further scrapes: however many scrapers there are, a replica scans at
/// most once a second for them.
pub const SCAN_REUSE: Duration = Duration::from_secs(1);

/// The fleet report and rollout headers of one scan.
type Scanned = Arc<(pb::FleetReportResponse, Vec<(Header, u64)>)>;

/// What a scrape reads from.
#[derive(Clone)]
pub struct MetricsSource {
    client: ReplicaClient,
    sessions: Sessions,
    streams: Arc<StreamGauges>,
    /// The last scan and when it ended; held during a scan, so scans never
    /// overlap.
    last_scan: Arc<tokio::sync::Mutex<Option<(Instant, Scanned)>>>,
}

impl MetricsSource {
    /// Reads from this replica's client, sessions and stream gauges.
    pub fn new(client: ReplicaClient, sessions: Sessions, streams: Arc<StreamGauges>) -> MetricsSource {
        MetricsSource { client, sessions, streams, last_scan: Arc::default() }
    }

    /// The fleet report and rollout headers: the last scan's when it is
    /// younger than [`SCAN_REUSE`], else a new one.
    async fn scanned(&self) -> Result<Scanned, String> {
        let mut last = self.last_scan.lock().await;
        if let Some((at, scanned)) = last.as_ref() {
            if at.elapsed() < SCAN_REUSE {
                return Ok(Arc::clone(scanned));
            }
        }
        let reader = self.client.reader().clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let matcher = NodeMatcher::new("filter", None).map_err(|s| s.message().to_string())?;
            let report = fleet_report(reader.clone(), &matcher).map_err(|s| s.message().to_string())?;
            let headers = read_headers(&reader).map_err(|e| e.to_string())?;
            Ok::<_, String>(Arc::new((report, headers)))
        })
        .await
        .map_err(|e| format!("the scrape's scan failed: {e}"))??;
        *last = Some((Instant::now(), Arc::clone(&scanned)));
        Ok(scanned)
    }

    /// Every metric, in the Prometheus text format.
    pub async fn render(&self) -> Result<String, String> {
        let mut registry = Registry::with_prefix("kairos_fleet");
        self.raft(&mut registry).await;
        let streams = Gauge::<i64>::default();
        streams.set(i64::try_from(self.sessions.connected()).unwrap_or(i64::MAX));
        registry.register("node_streams", "Node streams held by this replica", streams);
        let watches = Family::<Labels, Gauge>::default();
        for (kind, name) in [(WatchKind::Nodes, "nodes"), (WatchKind::Rollouts, "rollouts")] {
            watches.get_or_create(&vec![("kind", name.to_string())]).set(self.streams.open(kind));
        }
        registry.register("watch_streams", "Open watch streams on this replica", watches);

        let scanned = self.scanned().await?;
        let (report, headers) = scanned.as_ref();
        fleet(&mut registry, report);
        rollouts(&mut registry, headers);

        let mut text = String::new();
        encode(&mut text, &registry).map_err(|e| format!("encoding the metrics: {e}"))?;
        Ok(text)
    }

    async fn raft(&self, registry: &mut Registry) {
        let raft = self.client.raft();
        let m = raft.metrics().borrow().clone();
        let committed = raft.with_raft_state(|st| st.committed.map_or(0, |l| l.index)).await.unwrap_or(0);
        let last_log = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let plain = [
            ("raft_term", "Current raft term", m.current_term),
            ("raft_leader_id", "Replica id of the leader this replica knows (0: none)", m.current_leader.unwrap_or(0)),
            ("raft_is_leader", "1 on the leader", u64::from(m.current_leader == Some(m.id))),
            ("raft_last_log_index", "Last log index on this replica", last_log),
            ("raft_commit_index", "Highest log index known committed", committed),
            ("raft_applied_index", "Last log index applied to this replica's state", applied),
            ("raft_apply_lag", "Committed entries not yet applied on this replica", committed.saturating_sub(applied)),
        ];
        for (name, help, value) in plain {
            let gauge = Gauge::<i64>::default();
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            registry.register(name, help, gauge);
        }
        let lag = Family::<Labels, Gauge>::default();
        if let Some(replication) = &m.replication {
            for (id, matched) in replication {
                let behind = last_log.saturating_sub(matched.as_ref().map_or(0, |l| l.index));
                lag.get_or_create(&vec![("replica", id.to_string())]).set(i64::try_from(behind).unwrap_or(i64::MAX));
            }
        }
        registry.register("raft_replication_lag", "On the leader: log entries each replica is behind", lag);
    }
}

/// A protobuf enum's name without its prefix, lowercase: `NODE_STATE_IDLE` → `idle`.
fn enum_label(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase()
}

fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn fleet(registry: &mut Registry, report: &pb::FleetReportResponse) {
    let nodes = Family::<Labels, Gauge>::default();
    let online = Family::<Labels, Gauge>::default();
    for row in &report.by_release {
        let support = pb::SupportStatus::try_from(row.support_status)
            .map_or_else(|_| row.support_status.to_string(), |s| enum_label(s.as_str_name(), "SUPPORT_STATUS_"));
        let labels = vec![("flavor", row.flavor.clone()), ("release", row.release.clone()), ("support", support)];
        nodes.get_or_create(&labels).set(count(row.nodes));
        online.get_or_create(&labels).set(count(row.online));
    }
    registry.register("nodes", "Enrolled nodes by flavor, release and support status", nodes);
    registry.register("nodes_online", "Online nodes by flavor, release and support status", online);
    let by_state = Family::<Labels, Gauge>::default();
    for row in &report.by_state {
        let state = pb::NodeState::try_from(row.state)
            .map_or_else(|_| row.state.to_string(), |s| enum_label(s.as_str_name(), "NODE_STATE_"));
        by_state.get_or_create(&vec![("state", state)]).set(count(row.nodes));
    }
    registry.register("nodes_by_state", "Enrolled nodes by upgrade state", by_state);
}

/// The rollouts worth reporting: every active one and the most recent
/// finished ones.
fn reported(headers: &[(Header, u64)]) -> Vec<&(Header, u64)> {
    let mut headers: Vec<&(Header, u64)> = headers.iter().collect();
    // Ids are `ro-NNNNNN`, assigned in order; the number may outgrow six digits.
    let number = |id: &str| id.trim_start_matches("ro-").parse::<u64>().unwrap_or(u64::MAX);
    headers.sort_by_key(|(h, _)| (number(&h.id), h.id.clone()));
    let finished = headers.iter().filter(|(h, _)| h.phase.is_terminal()).count();
    let mut skip = finished.saturating_sub(FINISHED_ROLLOUTS);
    headers.retain(|(h, _)| {
        if h.phase.is_terminal() && skip > 0 {
            skip -= 1;
            return false;
        }
        true
    });
    headers
}

fn rollouts(registry: &mut Registry, headers: &[(Header, u64)]) {
    let nodes = Family::<Labels, Gauge>::default();
    let phase = Family::<Labels, Gauge>::default();
    let current = Family::<Labels, Gauge>::default();
    let waves = Family::<Labels, Gauge>::default();
    for (h, revision) in reported(headers) {
        let id = vec![("rollout", h.id.clone())];
        // The counts exactly as GetRollout and kairosctl show them.
        let totals = rollout_to_pb(h, *revision).status.and_then(|s| s.totals).unwrap_or_default();
        let target = h.target.as_ref().map(|t| format!("v{}", t.release)).unwrap_or_default();
        let states = [
            ("total", totals.total),
            ("pending", totals.pending),
            ("in_flight", totals.in_flight),
            ("healthy", totals.healthy),
            ("failed", totals.failed),
            ("deferred", totals.deferred),
            ("skipped", totals.skipped),
            ("rolled_back", totals.rolled_back),
            ("cancelled", totals.cancelled),
        ];
        for (state, n) in states {
            let labels = vec![("rollout", h.id.clone()), ("target", target.clone()), ("state", state.to_string())];
            nodes.get_or_create(&labels).set(count(n));
        }
        phase.get_or_create(&vec![("rollout", h.id.clone()), ("phase", h.phase.name().to_string())]).set(1);
        current.get_or_create(&id).set(count(h.current_wave));
        waves.get_or_create(&id).set(count(h.waves.len()));
    }
    registry.register("rollout_nodes", "Nodes of a rollout by state (total: all of them)", nodes);
    registry.register("rollout_phase", "1 for the phase each rollout is in", phase);
    registry.register("rollout_current_wave", "Wave each rollout works on or waits for (0-based)", current);
    registry.register("rollout_waves", "Number of waves of each rollout", waves);
}

/// Serves `/metrics` from `source` on `listener`.
pub fn serve(listener: TcpListener, source: MetricsSource) -> std::io::Result<SidePort> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { "Kairos Fleet replica: metrics at /metrics\n" }))
        .with_state(source);
    SidePort::spawn(listener, "metrics at /metrics", |listener| axum::serve(listener, app).into_future())
}

async fn scrape(State(source): State<MetricsSource>) -> impl IntoResponse {
    match source.render().await {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT_FORMAT)], text),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], e + "\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_labels_drop_the_prefix() {
        assert_eq!(enum_label("NODE_STATE_IDLE", "NODE_STATE_"), "idle");
        assert_eq!(enum_label("SUPPORT_STATUS_PATCH_AVAILABLE", "SUPPORT_STATUS_"), "patch_available");
    }

    #[tokio::test]
    async fn a_counted_stream_is_open_until_dropped() {
        let gauges = Arc::new(StreamGauges::default());
        let a = gauges.count(WatchKind::Nodes, futures_util::stream::iter([1, 2]));
        let b = gauges.count(WatchKind::Rollouts, futures_util::stream::iter([3]));
        assert_eq!((gauges.open(WatchKind::Nodes), gauges.open(WatchKind::Rollouts)), (1, 1));
        use futures_util::StreamExt;
        assert_eq!(a.collect::<Vec<_>>().await, vec![1, 2]);
        assert_eq!(gauges.open(WatchKind::Nodes), 0, "a finished and dropped stream no longer counts");
        drop(b);
        assert_eq!(gauges.open(WatchKind::Rollouts), 0);
    }
}
