//! WatchNodes: a task per stream turns the replica's change feed into node
//! events for one filter.
//!
//! ```text
//! change feed ──► watcher task ──(bounded queue of whole batches)──► EventStream ──► client
//! ```
//!
//! - Start from 0: the task subscribes to the feed, notes the store
//!   revision R, scans every node (EXISTING, revision R), sends SYNCED,
//!   then every batch applied after R. The scan may already show some of
//!   those batches; their events come anyway (each carries the full node,
//!   so applying one twice is harmless).
//! - Resume from R: the feed's history replays the batches after R, then
//!   live batches follow; OUT_OF_RANGE when the history no longer reaches
//!   back to R. Without the snapshot the task cannot know which nodes the
//!   client holds, so a changed node that does not match is sent as
//!   REMOVED the first time it is seen (a REMOVED for a node the client
//!   never had is a no-op for it).
//! - Each event carries the node as of its batch (keys the batch did not
//!   touch are read from the local store) and the batch's revision. A node
//!   deleted from the fleet is REMOVED with only its id: the record is gone.
//! - Revisions are the store's (the `ReadMeta.revision` of reads), so a
//!   list's revision is a resume point for a watch.
//! - The queue holds whole batches only, so the revision of the last batch
//!   queued is an exact resume point. A client that lets more than
//!   [`WatchLimits::queued_events`] events pile up gets, after the queued
//!   ones, RESOURCE_EXHAUSTED naming the revision to resume from; so does
//!   a watch that falls behind the feed itself (`Lagged`).
//! - When the replica shuts down, streams end with UNAVAILABLE and the
//!   revision to resume from (on another replica).
//! - When the replica installs a snapshot from the leader (`Reset`), the
//!   changes in between are unknown: the stream ends with OUT_OF_RANGE
//!   asking the client to list (or watch from 0) again.
//! - Catalog changes re-read the catalog for later events; they do not by
//!   themselves send events for nodes whose support status changed.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tonic::Status;

use super::catalog::Catalog;
use super::filter::NodeMatcher;
use super::scan::{store_status, NodeRow, Scan};
use crate::api::release::RELEASES_PREFIX;
use crate::nodes::{self, node_id_of_key, DESIRED_PREFIX, NODES_PREFIX, SESSIONS_PREFIX};
use crate::store::{Applied, Change, KeyValue, KvReader};

/// Bounds of one watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// Events that may wait for the client before the watch is ended.
    pub queued_events: usize,
    /// How long the initial snapshot waits for the client to make room.
    pub snapshot_send_timeout: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits { queued_events: 4096, snapshot_send_timeout: Duration::from_secs(30) }
    }
}

/// Batches the queue holds at most (each holds at least one event).
const QUEUE_BATCHES: usize = 1024;
/// EXISTING events per queued batch during the initial snapshot.
const SNAPSHOT_BATCH: usize = 256;

/// State shared by the watcher task and the stream.
#[derive(Default)]
struct Shared {
    /// Events in the queue.
    queued: AtomicUsize,
    /// How the stream ends once the queue is drained; `None` = cleanly.
    end: Mutex<Option<Status>>,
}

impl Shared {
    fn set_end(&self, status: Status) {
        *self.end.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    fn take_end(&self) -> Option<Status> {
        self.end.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The events of one WatchNodes call, as tonic sends them.
pub struct EventStream {
    rx: mpsc::Receiver<Vec<pb::NodeEvent>>,
    current: std::vec::IntoIter<pb::NodeEvent>,
    shared: Arc<Shared>,
    done: bool,
}

impl Stream for EventStream {
    type Item = Result<pb::NodeEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.current.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => {
                    this.shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
                    this.current = batch.into_iter();
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(this.shared.take_end().map(Err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Why the watcher task stopped.
enum Stop {
    /// The client went away.
    ClientGone,
    /// End the stream with this status after the queued events.
    Fail(Status),
}

/// Which nodes the client holds (matched the filter when last sent).
struct Known {
    /// True after an initial snapshot: every node not listed does not match.
    complete: bool,
    matched: HashMap<String, bool>,
}

impl Known {
    fn maybe_matched(&self, id: &str) -> bool {
        self.matched.get(id).copied().unwrap_or(!self.complete)
    }

    fn set(&mut self, id: &str, matched: bool) {
        if self.complete && !matched {
            self.matched.remove(id);
        } else {
            self.matched.insert(id.to_owned(), matched);
        }
    }
}

/// The keys of one node a batch changed; `Some(None)` = deleted.
#[derive(Default)]
struct Touched {
    record: Option<Option<KeyValue>>,
    session: Option<Option<KeyValue>>,
    desired: Option<Option<KeyValue>>,
}

/// Starts watching; the returned stream ends when the watch fails or the
/// client drops it.
pub fn start(
    reader: KvReader,
    matcher: NodeMatcher,
    resume_revision: u64,
    limits: WatchLimits,
    stopping: Option<watch::Receiver<bool>>,
) -> Result<EventStream, Status> {
    let catalog = Catalog::load(&reader)?;
    let (feed, replay, snapshot) = if resume_revision == 0 {
        // Subscribe before reading the revision: no batch after it is missed.
        let feed = reader.feed().subscribe();
        let revision = reader.revision().map_err(store_status)?;
        (feed, Vec::new(), Some(revision))
    } else {
        let current = reader.revision().map_err(store_status)?;
        let (replay, feed) = reader.feed().subscribe_after(resume_revision, current).map_err(|e| {
            Status::out_of_range(format!(
                "resume_revision: {e}; list the nodes again and watch from the list's meta.revision, or watch with \
                 resume_revision 0"
            ))
        })?;
        (feed, replay, None)
    };
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let shared = Arc::new(Shared::default());
    let watcher = Watcher {
        reader,
        matcher,
        catalog,
        limits,
        tx,
        shared: Arc::clone(&shared),
        stopping,
        known: Known { complete: snapshot.is_some(), matched: HashMap::new() },
        after: snapshot.unwrap_or(resume_revision),
        resumable: snapshot.is_none(),
    };
    tokio::spawn(watcher.run(feed, replay, snapshot));
    Ok(EventStream { rx, current: Vec::new().into_iter(), shared, done: false })
}

struct Watcher {
    reader: KvReader,
    matcher: NodeMatcher,
    catalog: Catalog,
    limits: WatchLimits,
    tx: mpsc::Sender<Vec<pb::NodeEvent>>,
    shared: Arc<Shared>,
    /// Turns true when the replica shuts down.
    stopping: Option<watch::Receiver<bool>>,
    known: Known,
    /// Every batch up to this revision is handled (and its events queued).
    after: u64,
    /// The client has been sent the whole snapshot (or is resuming), so
    /// `after` is a valid resume point for it.
    resumable: bool,
}

impl Watcher {
    async fn run(mut self, feed: broadcast::Receiver<Arc<Applied>>, replay: Vec<Arc<Applied>>, snapshot: Option<u64>) {
        if let Err(Stop::Fail(status)) = self.drive(feed, replay, snapshot).await {
            tracing::debug!(code = ?status.code(), message = status.message(), "node watch ended");
            self.shared.set_end(status);
        }
        // Dropping the sender lets the stream drain the queue, then end.
    }

    async fn drive(
        &mut self,
        mut feed: broadcast::Receiver<Arc<Applied>>,
        replay: Vec<Arc<Applied>>,
        snapshot: Option<u64>,
    ) -> Result<(), Stop> {
        if let Some(revision) = snapshot {
            self.snapshot(revision).await?;
        }
        for batch in replay {
            self.apply(&batch)?;
        }
        loop {
            let received = tokio::select! {
                _ = self.tx.closed() => return Err(Stop::ClientGone),
                () = stopped(&mut self.stopping) => return Err(self.shutting_down()),
                received = feed.recv() => received,
            };
            match received {
                Ok(batch) => self.apply(&batch)?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Err(Stop::Fail(Status::resource_exhausted(format!(
                        "this watch fell {missed} batches behind the replica's changes; {}",
                        self.resume_advice()
                    ))))
                }
                Err(broadcast::error::RecvError::Closed) => return Err(self.shutting_down()),
            }
        }
    }

    /// How the client continues after the stream ends.
    fn resume_advice(&self) -> String {
        if self.resumable {
            format!("watch again with resume_revision {}", self.after)
        } else {
            "watch again from the start (resume_revision 0)".to_owned()
        }
    }

    fn shutting_down(&self) -> Stop {
        Stop::Fail(Status::unavailable(format!(
            "the replica is shutting down; {} (another replica can serve it)",
            self.resume_advice()
        )))
    }

    /// Every matching node as EXISTING, then SYNCED, all at `revision`.
    async fn snapshot(&mut self, revision: u64) -> Result<(), Stop> {
        let mut scan = Scan::new(self.reader.clone(), self.matcher.node_ids());
        let mut batch = Vec::with_capacity(SNAPSHOT_BATCH);
        while let Some(row) = scan.next_row().map_err(Stop::Fail)? {
            if !self.matcher.matches(&row.facts(&self.catalog)) {
                continue;
            }
            self.known.set(&row.record.node_id, true);
            batch.push(event(pb::NodeEventKind::Existing, Some(row.to_node(&self.catalog)), revision));
            if batch.len() == SNAPSHOT_BATCH {
                self.send_waiting(std::mem::take(&mut batch)).await?;
            }
        }
        batch.push(event(pb::NodeEventKind::Synced, None, revision));
        self.send_waiting(batch).await?;
        self.resumable = true;
        Ok(())
    }

    /// Queues a snapshot batch, waiting (bounded) for room.
    async fn send_waiting(&self, batch: Vec<pb::NodeEvent>) -> Result<(), Stop> {
        let len = batch.len();
        self.shared.queued.fetch_add(len, Ordering::AcqRel);
        let mut stopping = self.stopping.clone();
        let sent = tokio::select! {
            sent = tokio::time::timeout(self.limits.snapshot_send_timeout, self.tx.send(batch)) => sent,
            () = stopped(&mut stopping) => return Err(self.shutting_down()),
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(Stop::ClientGone),
            Err(_elapsed) => Err(Stop::Fail(Status::resource_exhausted(format!(
                "the client did not read the initial nodes within {:?}; {}",
                self.limits.snapshot_send_timeout,
                self.resume_advice()
            )))),
        }
    }

    /// Queues a live batch, or ends the watch when the client is too far behind.
    fn send_now(&self, batch: Vec<pb::NodeEvent>) -> Result<(), Stop> {
        let len = batch.len();
        let queued = self.shared.queued.load(Ordering::Acquire);
        let behind = || {
            Stop::Fail(Status::resource_exhausted(format!(
                "the client reads too slowly: more than {} events are waiting for it; {}",
                self.limits.queued_events,
                self.resume_advice()
            )))
        };
        // An empty queue takes any batch, so one huge batch cannot wedge the watch.
        if queued > 0 && queued + len > self.limits.queued_events {
            return Err(behind());
        }
        self.shared.queued.fetch_add(len, Ordering::AcqRel);
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.queued.fetch_sub(len, Ordering::AcqRel);
                Err(behind())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::ClientGone),
        }
    }

    /// Sends the events of one applied batch.
    fn apply(&mut self, applied: &Applied) -> Result<(), Stop> {
        let (revision, changes) = match applied {
            Applied::Reset { revision } => {
                return Err(Stop::Fail(Status::out_of_range(format!(
                    "this replica replaced its state with a snapshot from the leader (revision {revision}); the \
                     changes since revision {} are unknown here: list the nodes again and watch from the list's \
                     meta.revision, or watch with resume_revision 0",
                    self.after
                ))))
            }
            Applied::Changes { revision, changes } => (*revision, changes),
        };
        if revision <= self.after {
            return Ok(());
        }
        if changes.iter().any(|c| c.key.starts_with(RELEASES_PREFIX.as_bytes())) {
            self.catalog = Catalog::load(&self.reader).map_err(Stop::Fail)?;
        }
        let mut events = Vec::new();
        for (id, touched) in touched_nodes(changes) {
            if let Some(event) = self.node_event(&id, touched, revision).map_err(Stop::Fail)? {
                events.push(event);
            }
        }
        if !events.is_empty() {
            self.send_now(events)?;
        }
        self.after = revision;
        Ok(())
    }

    /// The event for one node a batch touched, if the client should see one.
    fn node_event(&mut self, id: &str, touched: Touched, revision: u64) -> Result<Option<pb::NodeEvent>, Status> {
        let created = match &touched.record {
            Some(Some(kv)) => kv.create_revision > self.after,
            _ => false,
        };
        let record = match touched.record {
            Some(Some(kv)) => Some(kv),
            Some(None) => {
                // Deleted: the record is gone, so only its id can be sent.
                if !self.known.maybe_matched(id) {
                    return Ok(None);
                }
                self.known.set(id, false);
                let node = pb::Node { node_id: id.to_owned(), ..pb::Node::default() };
                return Ok(Some(event(pb::NodeEventKind::Removed, Some(node), revision)));
            }
            None => self.reader.get(nodes::node_key(id).as_bytes()).map_err(store_status)?,
        };
        // Sessions and desired states of nodes not enrolled are no fleet news.
        let Some(record) = record else { return Ok(None) };
        let session = match touched.session.clone() {
            Some(session) => session,
            None => self.reader.get(nodes::session_key(id).as_bytes()).map_err(store_status)?,
        };
        let desired = match touched.desired {
            Some(desired) => desired,
            None => self.reader.get(nodes::desired_key(id).as_bytes()).map_err(store_status)?,
        };
        let Some(row) = NodeRow::assemble(id, &record, session.as_ref(), desired) else { return Ok(None) };
        let node = row.to_node(&self.catalog);
        if self.matcher.matches(&row.facts(&self.catalog)) {
            self.known.set(id, true);
            let kind = match (created, &touched.session) {
                (true, _) => pb::NodeEventKind::Enrolled,
                (false, Some(Some(_))) => pb::NodeEventKind::Connected,
                (false, Some(None)) => pb::NodeEventKind::Disconnected,
                (false, None) => pb::NodeEventKind::Changed,
            };
            Ok(Some(event(kind, Some(node), revision)))
        } else if self.known.maybe_matched(id) {
            self.known.set(id, false);
            Ok(Some(event(pb::NodeEventKind::Removed, Some(node), revision)))
        } else {
            Ok(None)
        }
    }
}

/// Resolves once the replica shuts down (never without a signal).
async fn stopped(stopping: &mut Option<watch::Receiver<bool>>) {
    match stopping {
        // A dropped sender means the replica is gone: stop as well.
        Some(rx) => drop(rx.wait_for(|stopping| *stopping).await),
        None => std::future::pending().await,
    }
}

fn event(kind: pb::NodeEventKind, node: Option<pb::Node>, revision: u64) -> pb::NodeEvent {
    pb::NodeEvent { kind: kind as i32, node, revision }
}

/// The nodes a batch touched, by id, with their changed keys.
fn touched_nodes(changes: &[Change]) -> BTreeMap<String, Touched> {
    let mut touched: BTreeMap<String, Touched> = BTreeMap::new();
    for change in changes {
        let Some((prefix, id)) = node_id_of_key(&change.key) else { continue };
        let entry = touched.entry(id.to_owned()).or_default();
        let state = Some(change.kv.clone());
        match prefix {
            NODES_PREFIX => entry.record = state,
            SESSIONS_PREFIX => entry.session = state,
            DESIRED_PREFIX => entry.desired = state,
            _ => {}
        }
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, deleted: bool) -> Change {
        let kv = KeyValue { value: Vec::new(), create_revision: 1, mod_revision: 1, version: 1 };
        Change { key: key.as_bytes().to_vec(), kv: (!deleted).then_some(kv) }
    }

    #[test]
    fn a_batch_groups_its_keys_by_node() {
        let changes = [
            change("desired/b", false),
            change("node-sessions/a", true),
            change("nodes/a", false),
            change("releases/x", false),
            change("tokens/t", false),
        ];
        let touched = touched_nodes(&changes);
        assert_eq!(touched.keys().collect::<Vec<_>>(), ["a", "b"]);
        let a = &touched["a"];
        assert!(matches!(a.record, Some(Some(_))) && matches!(a.session, Some(None)) && a.desired.is_none());
        let b = &touched["b"];
        assert!(b.record.is_none() && b.session.is_none() && matches!(b.desired, Some(Some(_))));
    }

    #[test]
    fn without_a_snapshot_unknown_nodes_may_be_held_by_the_client() {
        let mut resumed = Known { complete: false, matched: HashMap::new() };
        assert!(resumed.maybe_matched("a"));
        resumed.set("a", false);
        assert!(!resumed.maybe_matched("a"));
        let mut fresh = Known { complete: true, matched: HashMap::new() };
        assert!(!fresh.maybe_matched("a"));
        fresh.set("a", true);
        assert!(fresh.maybe_matched("a"));
        fresh.set("a", false);
        assert!(fresh.matched.is_empty(), "a complete view keeps only matching nodes");
    }
}
