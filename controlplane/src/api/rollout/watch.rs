//! Watch: a task per stream turns the replica's change feed into rollout
//! events.
//!
//! - From 0: the task subscribes to the feed, notes the store revision R,
//!   sends every matching rollout (EXISTING, revision R) and SYNCED, then
//!   every change applied after R.
//! - From a revision: the feed's kept history replays what came after it,
//!   then live changes follow; OUT_OF_RANGE when the history no longer
//!   reaches back that far.
//! - Every change of a rollout's header is one event carrying the whole
//!   rollout with its per-wave counts and what the step decided, in words;
//!   with `include_nodes`, every changed node record is a NODE_CHANGED.
//! - A watcher that falls behind the feed gets RESOURCE_EXHAUSTED naming
//!   the revision to resume from; shutdown ends streams with UNAVAILABLE
//!   and the same advice; a snapshot install ends them with OUT_OF_RANGE.

use std::collections::HashMap;
use std::sync::Arc;

use kairos_fleet_proto::fleet::v1 as pb;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::convert::{node_to_pb, rollout_to_pb};
use crate::engine::records::{self, decode, Header, NodeRecord};
use crate::fleet::model::NodeId;
use crate::nodes::timestamp_ms;
use crate::store::{Applied, KvReader};

/// Events queued for one client before it must keep up.
const QUEUE: usize = 1024;

/// The stream a Watch call answers with.
pub type EventStream = ReceiverStream<Result<pb::RolloutEvent, Status>>;

/// What a watch asks for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// Only this rollout; None = all.
    pub rollout_id: Option<String>,
    /// 0 = snapshot first; otherwise changes after this revision.
    pub resume_revision: u64,
    /// Also send node changes.
    pub include_nodes: bool,
}

/// Starts a watch.
pub fn start(
    reader: KvReader,
    request: WatchRequest,
    stopping: Option<watch::Receiver<bool>>,
) -> Result<EventStream, Status> {
    let feed = reader.feed().clone();
    let current = reader.revision().map_err(|e| Status::internal(e.to_string()))?;
    let (replay, rx, snapshot) = if request.resume_revision == 0 {
        (Vec::new(), feed.subscribe(), true)
    } else {
        let (replay, rx) = feed
            .subscribe_after(request.resume_revision, current)
            .map_err(|e| Status::out_of_range(format!("resume_revision: {e}; watch again from 0")))?;
        (replay, rx, false)
    };
    let (tx, out) = mpsc::channel(QUEUE);
    let watcher = Watcher { reader, request, tx, known: HashMap::new(), sent: 0 };
    tokio::spawn(watcher.run(rx, replay, snapshot, stopping));
    Ok(ReceiverStream::new(out))
}

struct Watcher {
    reader: KvReader,
    request: WatchRequest,
    tx: mpsc::Sender<Result<pb::RolloutEvent, Status>>,
    /// The last header sent per rollout and its revision, to tell what kind
    /// of change came and to drop changes the snapshot already showed.
    known: HashMap<String, (Header, u64)>,
    /// Revision of the last batch fully sent: where to resume.
    sent: u64,
}

enum Stop {
    /// The client went away.
    Gone,
    /// End the stream with this status.
    Fail(Status),
}

impl Watcher {
    async fn run(
        mut self,
        mut rx: broadcast::Receiver<Arc<Applied>>,
        replay: Vec<Arc<Applied>>,
        snapshot: bool,
        mut stopping: Option<watch::Receiver<bool>>,
    ) {
        let end = self.drive(&mut rx, replay, snapshot, &mut stopping).await;
        if let Err(Stop::Fail(status)) = end {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    async fn drive(
        &mut self,
        rx: &mut broadcast::Receiver<Arc<Applied>>,
        replay: Vec<Arc<Applied>>,
        snapshot: bool,
        stopping: &mut Option<watch::Receiver<bool>>,
    ) -> Result<(), Stop> {
        let mut after = self.request.resume_revision;
        if snapshot {
            after = self.snapshot().await?;
        }
        self.sent = after;
        for applied in replay {
            self.apply(&applied).await?;
        }
        loop {
            tokio::select! {
                received = rx.recv() => match received {
                    Ok(applied) if applied.revision() <= after => {}
                    Ok(applied) => self.apply(&applied).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Err(Stop::Fail(Status::resource_exhausted(format!(
                            "the watch fell behind the changes; resume with resume_revision {}",
                            self.sent
                        ))))
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = stopped(stopping) => {
                    return Err(Stop::Fail(Status::unavailable(format!(
                        "the replica is shutting down; resume on another replica with resume_revision {}",
                        self.sent
                    ))))
                }
                _ = self.tx.closed() => return Err(Stop::Gone),
            }
        }
    }

    fn wanted(&self, id: &str) -> bool {
        self.request.rollout_id.as_deref().is_none_or(|want| want == id)
    }

    async fn send(&self, event: pb::RolloutEvent) -> Result<(), Stop> {
        self.tx.send(Ok(event)).await.map_err(|_| Stop::Gone)
    }

    async fn snapshot(&mut self) -> Result<u64, Stop> {
        let revision = self.reader.revision().map_err(|e| Stop::Fail(Status::internal(e.to_string())))?;
        let headers = records::read_headers(&self.reader).map_err(|e| Stop::Fail(Status::internal(e.to_string())))?;
        for (header, mod_revision) in headers {
            if !self.wanted(&header.id) {
                continue;
            }
            let event = event(pb::RolloutEventKind::Existing, Some(rollout_to_pb(&header, mod_revision)), revision);
            self.known.insert(header.id.clone(), (header, mod_revision));
            self.send(event).await?;
        }
        self.send(event(pb::RolloutEventKind::Synced, None, revision)).await?;
        Ok(revision)
    }

    async fn apply(&mut self, applied: &Applied) -> Result<(), Stop> {
        let (revision, changes) = match applied {
            Applied::Reset { .. } => {
                return Err(Stop::Fail(Status::out_of_range(
                    "this replica installed a snapshot, so the changes in between are unknown; watch again from 0",
                )))
            }
            Applied::Changes { revision, changes } => (*revision, changes),
        };
        let mut node_events = Vec::new();
        for change in changes {
            let Some(kv) = &change.kv else { continue };
            if let Some(id) = records::parse_header_key(&change.key) {
                if !self.wanted(id) {
                    continue;
                }
                let header: Header = match decode(&records::header_key(id), &kv.value) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(rollout = %id, error = %e, "undecodable rollout header");
                        continue;
                    }
                };
                if self.known.get(id).is_some_and(|(_, seen)| kv.mod_revision <= *seen) {
                    // The snapshot already showed this rollout newer.
                    continue;
                }
                let before = self.known.get(id).map(|(h, _)| h);
                let kind = classify(before, &header, kv.create_revision == kv.mod_revision);
                let mut ev = event(kind, Some(rollout_to_pb(&header, kv.mod_revision)), revision);
                ev.messages.clone_from(&header.messages);
                self.known.insert(id.to_string(), (header, kv.mod_revision));
                self.send(ev).await?;
            } else if self.request.include_nodes {
                let Some((id, node)) = records::parse_node_key(&change.key) else { continue };
                if !self.wanted(id) {
                    continue;
                }
                let key = String::from_utf8_lossy(&change.key).into_owned();
                match decode::<NodeRecord>(&key, &kv.value) {
                    Ok(record) => node_events.push((id.to_string(), node_to_pb(&NodeId::new(node), &record))),
                    Err(e) => tracing::warn!(%key, error = %e, "undecodable rollout node"),
                }
            }
        }
        for (id, node) in node_events {
            let rollout = self.known.get(&id).map(|(h, r)| rollout_to_pb(h, *r));
            let mut ev = event(pb::RolloutEventKind::NodeChanged, rollout, revision);
            ev.node = Some(node);
            self.send(ev).await?;
        }
        self.sent = revision;
        Ok(())
    }
}

/// What kind of change turned `before` into `after`.
fn classify(before: Option<&Header>, after: &Header, created: bool) -> pb::RolloutEventKind {
    let Some(before) = before else {
        return if created { pb::RolloutEventKind::Created } else { pb::RolloutEventKind::PhaseChanged };
    };
    if before.phase.name() != after.phase.name() {
        return pb::RolloutEventKind::PhaseChanged;
    }
    let started = |h: &Header| h.waves.iter().filter(|w| w.started_at.is_some()).count();
    let finished = |h: &Header| h.waves.iter().filter(|w| w.completed_at.is_some()).count();
    if started(after) > started(before) {
        pb::RolloutEventKind::WaveStarted
    } else if finished(after) > finished(before) {
        pb::RolloutEventKind::WaveFinished
    } else {
        pb::RolloutEventKind::WaveProgress
    }
}

fn event(kind: pb::RolloutEventKind, rollout: Option<pb::Rollout>, revision: u64) -> pb::RolloutEvent {
    pb::RolloutEvent {
        kind: kind as i32,
        rollout,
        node: None,
        revision,
        time: timestamp_ms(crate::engine::now_ms()),
        messages: Vec::new(),
    }
}

async fn stopped(stopping: &mut Option<watch::Receiver<bool>>) {
    match stopping {
        Some(rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
