//! The rollout engine: on the leader only, it drives every active rollout
//! by reading replicated state and proposing the next step.
//!
//! It is level-triggered. It follows the change feed only to learn *which*
//! nodes and rollouts to look at; what it does is decided from the state
//! they are in (the node's record and session, the rollout's stored state)
//! through the pure state machine in [`crate::fleet::rollout`]. Each step
//! is one guarded transaction ([`transition`]), so a new leader loads the
//! stored rollouts and carries on where they stand: nothing is held only in
//! memory, and a step the old leader did not commit is simply taken again.
//!
//! Operator calls (pause, resume, abort, approve, rollback) run the same
//! transitions on whichever replica takes them; the engine sees the header
//! change and reloads the rollout.

pub mod observe;
pub mod records;
pub mod transition;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinHandle;

use self::records::{Loaded, RecordError};
use self::transition::Pending;
use crate::fleet::model::NodeId;
use crate::fleet::rollout::{Event, Phase};
use crate::fleet::strategy::Millis;
use crate::nodes::{node_id_of_key, NODES_PREFIX, SESSIONS_PREFIX};
use crate::replica::{ReadError, ReplicaClient, WriteError};
use crate::store::{Applied, Request};

/// How long an operator's mark holds the engine's steps on a rollout at
/// most (a call that died leaves its mark behind).
const STEER_HOLD: Duration = Duration::from_millis(records::STEER_HOLD_MS);

/// How long a rollout whose step could not be staged waits before the
/// next try.
const BROKEN_BACKOFF: Duration = Duration::from_secs(5);

/// Shortest sleep between steps when a timer is due.
const MIN_SLEEP: Duration = Duration::from_millis(50);

/// How the engine paces itself.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// After a change arrives, wait this long for more before stepping, so
    /// a burst of node reports becomes one write.
    pub batch_window: Duration,
    /// Look at every node of every active rollout this often, whatever the
    /// change feed said.
    pub rescan_every: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings { batch_window: Duration::from_millis(20), rescan_every: Duration::from_secs(10) }
    }
}

/// The running engine of one replica.
pub struct Engine {
    task: JoinHandle<()>,
}

impl Engine {
    /// Starts the engine; it acts only while this replica leads.
    pub fn start(client: ReplicaClient, settings: EngineSettings) -> Engine {
        Engine { task: tokio::spawn(run(client, Arc::new(settings))) }
    }

    /// Stops it (a step in the middle of its write is abandoned; the next
    /// leader takes it again).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the engine stopped leading for a while.
#[derive(Debug, thiserror::Error)]
enum EngineError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn run(client: ReplicaClient, settings: Arc<EngineSettings>) {
    let mut metrics = client.raft().metrics();
    loop {
        while !client.is_leader() {
            if metrics.changed().await.is_err() {
                return;
            }
        }
        let term = metrics.borrow().current_term;
        tracing::info!(term, "rollout engine leading");
        if let Err(e) = lead(&client, &settings, term).await {
            tracing::warn!(error = %e, "rollout engine paused; it starts over from the stored state");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn still_leading(client: &ReplicaClient, term: u64) -> bool {
    client.is_leader() && client.raft().metrics().borrow().current_term == term
}

/// The rollouts this leader drives.
#[derive(Default)]
struct Driver {
    rollouts: BTreeMap<String, Loaded>,
    /// Which followed rollouts each node is in (an active one, and finished
    /// ones while the node is in flight for them).
    index: BTreeMap<NodeId, BTreeSet<String>>,
    /// Nodes to look at in the next step, per rollout.
    dirty: BTreeMap<String, BTreeSet<NodeId>>,
    /// Rollouts an operator's call has marked, and when this replica saw
    /// the mark (its own clock: the mark's writer may run another clock).
    marks: BTreeMap<String, std::time::Instant>,
    /// Rollouts whose last step could not be staged, and when.
    broken: BTreeMap<String, std::time::Instant>,
}

impl Driver {
    /// Reads every rollout to follow again. A rollout that cannot be read
    /// is logged and left alone; the others go on.
    fn reload_all(&mut self, client: &ReplicaClient) -> Result<(), RecordError> {
        self.rollouts.clear();
        self.index.clear();
        self.dirty.clear();
        // Marks found now count from now.
        let found = records::marked_ids(client.reader())?;
        self.marks.retain(|id, _| found.contains(id));
        for id in found {
            self.marks.entry(id).or_insert_with(std::time::Instant::now);
        }
        for (header, _) in records::read_headers(client.reader())? {
            let in_flight: usize = header.counts.iter().map(|c| c.in_flight).sum();
            if !header.phase.is_terminal() || in_flight > 0 {
                self.reload(client, &header.id);
            }
        }
        Ok(())
    }

    /// Removes the marks of operator calls that died (a cancelled call
    /// leaves its mark), so they hold nobody again.
    async fn clean_marks(&mut self, client: &ReplicaClient) {
        let stale: Vec<String> =
            self.marks.iter().filter(|(_, seen)| seen.elapsed() >= STEER_HOLD).map(|(id, _)| id.clone()).collect();
        for id in stale {
            let key = records::steer_key(&id);
            if let Ok(Some(kv)) = client.reader().get(key.as_bytes()) {
                let guard = vec![crate::store::Compare::mod_revision(
                    key.as_bytes(),
                    crate::store::CompareOp::Equal,
                    kv.mod_revision,
                )];
                let request = Request::txn(guard, vec![crate::store::Op::delete(key.as_bytes())], Vec::new());
                if let Err(e) = client.write(request).await {
                    tracing::debug!(rollout = %id, error = %e, "removing a stale operator mark");
                }
            }
        }
    }

    /// (Re)reads one rollout; every node of it is looked at next step.
    fn reload(&mut self, client: &ReplicaClient, id: &str) {
        for rollouts in self.index.values_mut() {
            rollouts.remove(id);
        }
        self.index.retain(|_, r| !r.is_empty());
        self.dirty.remove(id);
        self.rollouts.remove(id);
        let loaded = match records::load(client.reader(), id) {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(rollout = %id, error = %e, "cannot read the rollout; it is not driven until it can be");
                return;
            }
        };
        // A finished rollout is still followed while nodes it commanded
        // are in flight: their results are recorded, nothing more.
        let terminal = loaded.rollout.is_terminal();
        if terminal && loaded.rollout.in_flight() == 0 {
            return;
        }
        let nodes: BTreeSet<NodeId> = loaded
            .rollout
            .nodes()
            .filter(|(_, e)| !terminal || e.state.is_in_flight())
            .map(|(n, _)| n.clone())
            .collect();
        for n in &nodes {
            self.index.entry(n.clone()).or_default().insert(id.to_string());
        }
        self.dirty.insert(id.to_string(), nodes);
        self.rollouts.insert(id.to_string(), loaded);
    }

    /// Notes what an applied batch touched.
    fn note(&mut self, client: &ReplicaClient, applied: &Applied) -> Result<(), RecordError> {
        let changes = match applied {
            Applied::Changes { changes, .. } => changes,
            Applied::Reset { .. } => return self.reload_all(client),
        };
        let mut reload = BTreeSet::new();
        for change in changes {
            if let Some(id) = records::parse_header_key(&change.key) {
                let ours = match (&change.kv, self.rollouts.get(id)) {
                    (Some(kv), Some(loaded)) => kv.mod_revision == loaded.header_revision,
                    _ => false,
                };
                if !ours {
                    reload.insert(id.to_string());
                }
                continue;
            }
            if let Some(id) = records::parse_steer_key(&change.key) {
                if change.kv.is_some() {
                    self.marks.insert(id.to_string(), std::time::Instant::now());
                } else {
                    // The operator's call is done (or gave up): step again.
                    self.marks.remove(id);
                    if self.rollouts.contains_key(id) {
                        self.dirty.entry(id.to_string()).or_default();
                    }
                }
                continue;
            }
            let Some((prefix, node)) = node_id_of_key(&change.key) else { continue };
            if prefix != NODES_PREFIX && prefix != SESSIONS_PREFIX {
                continue;
            }
            let node = NodeId::new(node);
            for rollout in self.index.get(&node).into_iter().flatten() {
                self.dirty.entry(rollout.clone()).or_default().insert(node.clone());
            }
        }
        for id in reload {
            self.reload(client, &id);
        }
        Ok(())
    }

    /// When the earliest operator mark stops holding a rollout.
    fn marks_expire(&self) -> Option<tokio::time::Instant> {
        self.marks
            .values()
            .filter(|seen| seen.elapsed() < STEER_HOLD)
            .map(|seen| tokio::time::Instant::from_std(*seen + STEER_HOLD))
            .min()
    }

    /// When the earliest rollout timer is due.
    fn next_wakeup(&self) -> Option<Millis> {
        self.rollouts.values().filter_map(|l| l.rollout.next_wakeup()).min()
    }

    /// One step of every rollout that has something to look at or a timer due.
    async fn step(&mut self, client: &ReplicaClient) -> Result<(), EngineError> {
        let now = now_ms();
        let ids: Vec<String> = self.rollouts.keys().cloned().collect();
        for id in ids {
            let due = self.rollouts.get(&id).is_some_and(|l| {
                l.rollout.next_wakeup().is_some_and(|t| t <= now) || l.rollout.phase() == &Phase::Pending
            });
            if !self.dirty.contains_key(&id) && !due {
                continue;
            }
            if self.broken.get(&id).is_some_and(|at| at.elapsed() < BROKEN_BACKOFF) {
                continue;
            }
            self.broken.remove(&id);
            if self.marks.get(&id).is_some_and(|seen| seen.elapsed() < STEER_HOLD) {
                // An operator's call is reading the rollout: keep out of
                // its way; its commit (or the end of its turn) wakes us.
                continue;
            }
            let dirty = self.dirty.remove(&id).unwrap_or_default();
            let Some(loaded) = self.rollouts.get_mut(&id) else { continue };
            let mut pending = Pending::default();
            let reader = client.reader();
            observe::record_nodes(loaded, reader, dirty.iter(), now, &mut pending).map_err(RecordError::Store)?;
            if loaded.rollout.phase() == &Phase::Pending {
                if let Err(e) = transition::apply(loaded, Event::Start { now }, &mut pending) {
                    tracing::warn!(rollout = %id, error = %e, "starting a rollout");
                }
            }
            if let Err(e) = transition::apply(loaded, Event::Tick { now }, &mut pending) {
                tracing::debug!(rollout = %id, error = %e, "tick refused");
            }
            let staged = match transition::stage(loaded, pending, reader, now) {
                Ok(Some(staged)) => staged,
                Ok(None) => continue,
                Err(RecordError::Store(e)) => return Err(RecordError::Store(e).into()),
                Err(e) => {
                    tracing::error!(
                        rollout = %id, error = %e,
                        "cannot stage a step; the rollout waits {BROKEN_BACKOFF:?}, then is read again"
                    );
                    self.broken.insert(id.clone(), std::time::Instant::now());
                    self.reload(client, &id);
                    continue;
                }
            };
            let ops = staged.ops.len();
            let committed = client.write_entry(Request::txn(staged.compares, staged.ops, Vec::new())).await?;
            if committed.response.succeeded {
                let terminal = loaded.rollout.is_terminal() && loaded.rollout.in_flight() == 0;
                loaded.mark_stored(staged.header, staged.waves, staged.changed, committed.response.revision);
                tracing::debug!(rollout = %id, ops, revision = committed.response.revision, "rollout step committed");
                if terminal {
                    self.reload(client, &id);
                }
            } else {
                // Someone else changed the rollout (an operator's call) or a
                // node's desired state: read it again and decide afresh.
                client.wait_applied(committed.log_index, Duration::from_secs(5)).await?;
                tracing::debug!(rollout = %id, "rollout changed under the engine; reloading");
                self.reload(client, &id);
            }
        }
        Ok(())
    }
}

async fn lead(client: &ReplicaClient, settings: &EngineSettings, term: u64) -> Result<(), EngineError> {
    // Everything committed before this replica led must be applied here
    // before it reads: that is the state the last leader left.
    let index = client.read_linearizable().await?;
    client.wait_applied(index, Duration::from_secs(10)).await?;
    let mut feed = client.reader().feed().subscribe();
    let mut driver = Driver::default();
    driver.reload_all(client)?;
    let mut metrics = client.raft().metrics();
    let mut next_rescan = tokio::time::Instant::now() + settings.rescan_every;
    loop {
        if !still_leading(client, term) {
            tracing::info!(term, "rollout engine no longer leading");
            return Ok(());
        }
        driver.step(client).await?;
        let wake = driver
            .next_wakeup()
            .map(|t| {
                let wait = Duration::from_millis(t.saturating_sub(now_ms()));
                tokio::time::Instant::now() + wait
            })
            .map_or(next_rescan, |t| t.min(next_rescan))
            .min(driver.marks_expire().map_or(next_rescan, |t| t.min(next_rescan)))
            // A timer that is already due but changed nothing must not spin.
            .max(tokio::time::Instant::now() + MIN_SLEEP);
        tokio::select! {
            received = feed.recv() => {
                match received {
                    Ok(applied) => driver.note(client, &applied)?,
                    Err(RecvError::Lagged(_)) => driver.reload_all(client)?,
                    Err(RecvError::Closed) => return Ok(()),
                }
                // Gather the rest of the burst into the same step.
                tokio::time::sleep(settings.batch_window).await;
                loop {
                    match feed.try_recv() {
                        Ok(applied) => driver.note(client, &applied)?,
                        Err(TryRecvError::Lagged(_)) => driver.reload_all(client)?,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= next_rescan {
                    driver.clean_marks(client).await;
                    driver.reload_all(client)?;
                    next_rescan = tokio::time::Instant::now() + settings.rescan_every;
                }
            }
            changed = metrics.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}
