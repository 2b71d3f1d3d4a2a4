//! `rollout watch`: follows one rollout's Watch stream until it ends.
//!
//! Replicas die during rollouts, so the stream is expected to break. When
//! it does, the watch reconnects to the next endpoint and resumes after the
//! last revision it saw; when the replica no longer keeps that history
//! (`OUT_OF_RANGE`) it starts again from a fresh snapshot. A revision from
//! the initial snapshot only counts once the snapshot is complete
//! (`SYNCED`), so a break in the middle of it never skips the rollout.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::time::{Duration, Instant};

use kairos_fleet_proto::fleet::v1 as pb;
use pb::rollout_service_client::RolloutServiceClient;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

use super::events::{Bars, EventView, Lines, Presenter};
use super::status::RolloutView;
use crate::cli::error::{RpcError, EXIT_ROLLOUT_ABORTED};
use crate::cli::nodes::ConsistencyArg;
use crate::cli::output::Format;
use crate::cli::{CliError, Connection};

const METHOD: &str = "RolloutService/Watch";

/// What to follow and when to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    /// The rollout.
    pub rollout_id: String,
    /// Also show each node's transitions.
    pub nodes: bool,
    /// Stop when the rollout enters one of these phases, besides the
    /// terminal ones.
    pub until: Vec<pb::RolloutPhase>,
}

/// How a followed rollout ended, and the exit code each end means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every wave finished: exit 0.
    Completed,
    /// The rollback finished: exit 0.
    RolledBack,
    /// Ended by an abort or a threshold with on-failure abort:
    /// [`EXIT_ROLLOUT_ABORTED`].
    Aborted,
    /// Entered a phase named with `--until`: exit 0.
    Reached(pb::RolloutPhase),
}

impl Outcome {
    /// The end a rollout in `phase` has reached, if any. An `--until`
    /// phase wins, so `--until aborted` waits for an abort and succeeds.
    pub fn of(phase: i32, until: &[pb::RolloutPhase]) -> Option<Outcome> {
        let phase = pb::RolloutPhase::try_from(phase).ok()?;
        if until.contains(&phase) {
            return Some(Outcome::Reached(phase));
        }
        match phase {
            pb::RolloutPhase::Completed => Some(Outcome::Completed),
            pb::RolloutPhase::RolledBack => Some(Outcome::RolledBack),
            pb::RolloutPhase::Aborted => Some(Outcome::Aborted),
            _ => None,
        }
    }

    /// The process exit code for this end.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Aborted => EXIT_ROLLOUT_ABORTED,
            Outcome::Completed | Outcome::RolledBack | Outcome::Reached(_) => 0,
        }
    }

    /// `rollout r1 completed: 20 nodes: 18 healthy, 2 failed`.
    pub fn text(self, rollout: &RolloutView) -> String {
        format!("rollout {} {}: {}", rollout.rollout_id, rollout.phase_detail(), rollout.totals.summary())
    }

    /// `Ok` for an end that counts as success, else the error carrying
    /// the exit code.
    pub fn into_result(self, rollout: &RolloutView) -> Result<(), CliError> {
        match self {
            Outcome::Aborted => Err(CliError::RolloutAborted {
                rollout_id: rollout.rollout_id.clone(),
                reason: rollout.reason_message.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// What one event means for the watch.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Show it and go on.
    Show(EventView),
    /// Show it; the rollout has ended (or reached an `--until` phase).
    End(EventView, Outcome, Box<RolloutView>),
    /// The initial state is complete and did not hold the rollout: look it
    /// up (it may be unknown, or newer than this replica's state).
    Missing(EventView),
    /// About another rollout; ignore it.
    Skip,
}

/// The state of a watch: where to resume and what was last seen. Pure, so
/// its rules are tested without a server.
#[derive(Debug, Clone)]
pub struct Follower {
    follow: Follow,
    /// Revision to resume after; 0 = start from a snapshot.
    resume: u64,
    /// Revision of the snapshot being received, committed at SYNCED.
    snapshot: Option<u64>,
    /// Whether the rollout has been seen.
    seen: bool,
}

impl Follower {
    /// A watch of `follow` from a fresh snapshot.
    pub fn new(follow: Follow) -> Follower {
        Follower { follow, resume: 0, snapshot: None, seen: false }
    }

    /// The rollout followed.
    pub fn rollout_id(&self) -> &str {
        &self.follow.rollout_id
    }

    /// The revision a new stream resumes after (0 = fresh snapshot).
    pub fn resume_revision(&self) -> u64 {
        self.resume
    }

    /// The request that (re)opens the stream.
    pub fn request(&self) -> pb::WatchRolloutsRequest {
        pb::WatchRolloutsRequest {
            rollout_id: self.follow.rollout_id.clone(),
            resume_revision: self.resume,
            include_nodes: self.follow.nodes,
        }
    }

    /// The kept history does not reach back far enough: start over.
    pub fn restart(&mut self) {
        self.resume = 0;
        self.snapshot = None;
    }

    /// A stream ended: a snapshot it was sending is incomplete.
    pub fn stream_ended(&mut self) {
        self.snapshot = None;
    }

    /// Takes one event off the stream.
    pub fn take(&mut self, event: pb::RolloutEvent) -> Step {
        let kind = pb::RolloutEventKind::try_from(event.kind).unwrap_or(pb::RolloutEventKind::Unspecified);
        match kind {
            pb::RolloutEventKind::Existing => self.snapshot = Some(self.snapshot.unwrap_or(0).max(event.revision)),
            pb::RolloutEventKind::Synced => {
                let at = self.snapshot.take().unwrap_or(0).max(event.revision);
                self.resume = self.resume.max(at);
                let view = EventView::from(event);
                return if self.seen { Step::Show(view) } else { Step::Missing(view) };
            }
            _ => self.resume = self.resume.max(event.revision),
        }
        let Some(rollout) = &event.rollout else {
            // A node change without the rollout: still ours, the stream is filtered.
            return Step::Show(EventView::from(event));
        };
        if rollout.rollout_id != self.follow.rollout_id {
            return Step::Skip;
        }
        self.seen = true;
        let phase = rollout.status.as_ref().map_or(0, |s| s.phase);
        let view = EventView::from(event);
        match (Outcome::of(phase, &self.follow.until), &view.rollout) {
            (Some(outcome), Some(r)) => {
                let r = Box::new(r.clone());
                Step::End(view, outcome, r)
            }
            _ => Step::Show(view),
        }
    }

    /// Takes the rollout as a lookup found it, as if the stream had sent it.
    pub fn adopt(&mut self, rollout: pb::Rollout) -> Step {
        let event = pb::RolloutEvent {
            kind: pb::RolloutEventKind::Existing as i32,
            rollout: Some(rollout),
            ..pb::RolloutEvent::default()
        };
        // Not a stream revision: keep the resume point where it is.
        let snapshot = self.snapshot;
        let step = self.take(event);
        self.snapshot = snapshot;
        step
    }
}

/// A Watch stream.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RolloutEvent, Status>> + Send>>;

/// Where watch streams come from: the cluster, or a fake in tests.
pub trait EventSource {
    /// Opens a stream.
    fn open(&mut self, request: pb::WatchRolloutsRequest) -> impl Future<Output = Result<EventStream, CliError>>;
    /// The last stream broke: prefer another replica next time.
    fn broke(&mut self);
    /// Reads the rollout directly (linearizable).
    fn fetch(&mut self, rollout_id: &str) -> impl Future<Output = Result<pb::Rollout, CliError>>;
}

/// How a broken watch reconnects.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    /// Wait before the first reconnect; doubles up to `max`.
    pub first: Duration,
    /// Longest wait between reconnects.
    pub max: Duration,
    /// Give up after this long without an event.
    pub give_up_after: Duration,
}

/// Reconnects of `rollout watch`: a minute covers a leader election and a
/// replica restart.
pub const RECONNECT: Reconnect = Reconnect {
    first: Duration::from_millis(200),
    max: Duration::from_secs(2),
    give_up_after: Duration::from_secs(60),
};

/// Codes that mean "this stream or replica is gone, another may serve".
fn stream_broke(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

fn rpc_error(status: &Status) -> CliError {
    RpcError {
        method: METHOD,
        code: status.code(),
        message: status.message().to_owned(),
        tried: Vec::new(),
        leader: None,
    }
    .into()
}

/// The reconnect budget of one watch.
struct Patience {
    reconnect: Reconnect,
    /// The next wait.
    delay: Duration,
    /// Since when no event arrived, while reconnecting.
    down_since: Option<Instant>,
}

impl Patience {
    /// An event arrived: the next failure starts a fresh budget.
    fn progress(&mut self) {
        self.down_since = None;
        self.delay = self.reconnect.first;
    }

    /// How long to wait before the next try, or `error` once the budget is spent.
    fn wait_or_give_up(&mut self, error: CliError) -> Result<Duration, CliError> {
        let since = *self.down_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.reconnect.give_up_after {
            return Err(error);
        }
        let wait = self.delay;
        self.delay = (self.delay * 2).min(self.reconnect.max);
        Ok(wait)
    }
}

/// Follows the rollout until it ends; `None` when the reader went away.
pub async fn follow<S: EventSource, P: Presenter>(
    source: &mut S,
    follower: &mut Follower,
    presenter: &mut P,
    reconnect: Reconnect,
) -> Result<Option<(Outcome, RolloutView)>, CliError> {
    let mut patience = Patience { reconnect, delay: reconnect.first, down_since: None };
    loop {
        let mut stream = match source.open(follower.request()).await {
            Ok(stream) => stream,
            Err(e) if e.code() == Some(Code::OutOfRange) && follower.resume_revision() > 0 => {
                presenter.note(&format!(
                    "revision {} is older than the kept history; starting from the current state",
                    follower.resume_revision()
                ));
                follower.restart();
                continue;
            }
            Err(e) if e.code().is_some_and(stream_broke) => {
                tokio::time::sleep(patience.wait_or_give_up(e)?).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let broke = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    patience.progress();
                    let step = follower.take(event);
                    if let Some(end) = show(step, source, follower, presenter).await? {
                        return Ok(end);
                    }
                }
                Some(Err(status)) if status.code() == Code::OutOfRange => {
                    presenter.note(&format!(
                        "the replica lost the history of this watch ({}); starting over",
                        status.message()
                    ));
                    follower.restart();
                    break None;
                }
                Some(Err(status)) if stream_broke(status.code()) => break Some(rpc_error(&status)),
                Some(Err(status)) => return Err(rpc_error(&status)),
                None => break Some(rpc_error(&Status::unavailable("the replica ended the stream"))),
            }
        };
        follower.stream_ended();
        if let Some(error) = broke {
            presenter.note(&format!(
                "watch interrupted ({error}); resuming after revision {} on the next replica",
                follower.resume_revision()
            ));
            source.broke();
            tokio::time::sleep(patience.wait_or_give_up(error)?).await;
        }
    }
}

/// Shows one step; `Some` when the watch is over (`Some(None)`: the
/// reader went away).
async fn show<S: EventSource, P: Presenter>(
    step: Step,
    source: &mut S,
    follower: &mut Follower,
    presenter: &mut P,
) -> Result<Option<Option<(Outcome, RolloutView)>>, CliError> {
    match step {
        Step::Skip => Ok(None),
        Step::Show(view) => Ok((!presenter.show(&view)?).then_some(None)),
        Step::End(view, outcome, rollout) => {
            if !presenter.show(&view)? {
                return Ok(Some(None));
            }
            Ok(Some(Some((outcome, *rollout))))
        }
        Step::Missing(view) => {
            if !presenter.show(&view)? {
                return Ok(Some(None));
            }
            // NOT_FOUND ends the watch; any other failure waits for events.
            let rollout = match source.fetch(follower.rollout_id()).await {
                Ok(rollout) => rollout,
                Err(e) if e.code() == Some(Code::NotFound) => return Err(e),
                Err(e) => {
                    presenter.note(&format!("not in this replica's state yet, and the lookup failed: {e}"));
                    return Ok(None);
                }
            };
            Box::pin(show(follower.adopt(rollout), source, follower, presenter)).await
        }
    }
}

/// Watch streams from the cluster, through `conn`'s endpoints.
struct Replicas<'a> {
    conn: &'a Connection,
    /// The endpoint serving the current stream.
    serving: Option<String>,
}

impl EventSource for Replicas<'_> {
    async fn open(&mut self, request: pb::WatchRolloutsRequest) -> Result<EventStream, CliError> {
        let stream = self
            .conn
            .call(METHOD, |channel| {
                let request = request.clone();
                async move { RolloutServiceClient::new(channel).watch(request).await }
            })
            .await?;
        self.serving = self.conn.last_answered();
        Ok(Box::pin(stream))
    }

    fn broke(&mut self) {
        if let Some(url) = self.serving.take() {
            self.conn.prefer_after(&url);
        }
    }

    async fn fetch(&mut self, rollout_id: &str) -> Result<pb::Rollout, CliError> {
        let answer = super::get(self.conn, rollout_id, false, ConsistencyArg::Linearizable).await?;
        answer.rollout.ok_or_else(|| CliError::Output("the server answered without the rollout".to_owned()))
    }
}

/// `rollout watch` (and `create --watch`): bars on a terminal, lines
/// otherwise; the exit code tells how the rollout ended.
pub async fn run(conn: &Connection, follow: Follow, format: Format, out: &mut dyn Write) -> Result<(), CliError> {
    let mut source = Replicas { conn, serving: None };
    let mut follower = Follower::new(follow);
    let ended = if format == Format::Table && std::io::stdout().is_terminal() {
        follow_and_finish(&mut source, &mut follower, &mut Bars::new(out), RECONNECT).await?
    } else {
        follow_and_finish(&mut source, &mut follower, &mut Lines::new(out, format), RECONNECT).await?
    };
    match ended {
        Some((outcome, rollout)) => outcome.into_result(&rollout),
        None => Ok(()),
    }
}

/// [`follow`], then shows the outcome.
pub async fn follow_and_finish<S: EventSource, P: Presenter>(
    source: &mut S,
    follower: &mut Follower,
    presenter: &mut P,
    reconnect: Reconnect,
) -> Result<Option<(Outcome, RolloutView)>, CliError> {
    let ended = follow(source, follower, presenter, reconnect).await?;
    if let Some((outcome, rollout)) = &ended {
        presenter.finish(outcome, rollout)?;
    }
    Ok(ended)
}
