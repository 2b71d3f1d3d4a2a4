//! `kairosctl rollout ...`: plan, create and steer rollouts through the
//! RolloutService.
//!
//! - [`args`]: the command line, and flags → requests.
//! - [`plan`], [`status`], [`strategy`]: the views printed (`-o table|json|yaml`).
//! - [`watch`]: following a rollout's Watch stream across replica failures;
//!   [`events`] shows its events (lines, JSON lines, progress bars).
//! - [`names`]: enums, durations and times as they read on screen.

pub mod args;
pub mod events;
pub mod names;
pub mod plan;
pub mod status;
pub mod strategy;
pub mod watch;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use pb::rollout_service_client::RolloutServiceClient;
use tonic::Code;

use super::nodes::{ConsistencyArg, ReadMetaView};
use super::output::Format;
use super::{print, CliError, Connection};
use args::{abort_request, approve_request, pause_request, rollout_id, ListArgs, RolloutCommand, SpecArgs};
use plan::{CreateView, PlanView};
use status::{ActionView, ListView, RolloutNodeView, RolloutView, StatusView};

/// Largest page the server serves.
const MAX_PAGE_SIZE: u32 = 1000;

/// How often and how patiently a call is repeated while no replica can
/// serve it. Only calls that are safe to repeat use it.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Wait before the second try.
    pub first: Duration,
    /// Longest wait between tries; each wait doubles up to it.
    pub max: Duration,
    /// Tries in all, at least 1.
    pub tries: u32,
}

/// Retries of `create`: about 15 seconds, enough for a leader election.
pub const CREATE_BACKOFF: Backoff =
    Backoff { first: Duration::from_millis(500), max: Duration::from_secs(4), tries: 6 };

impl Backoff {
    /// The wait after `delay`.
    pub fn next(&self, delay: Duration) -> Duration {
        (delay * 2).min(self.max)
    }
}

/// Runs `call` until it succeeds, fails with a code other than
/// `UNAVAILABLE` or `DEADLINE_EXCEEDED`, or `backoff.tries` are used up.
/// Meant for calls with an idempotency key, where a repeat after a lost
/// answer returns what the first call did.
pub async fn retry_unavailable<T, F, Fut>(backoff: Backoff, mut call: F) -> Result<T, CliError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CliError>>,
{
    let mut delay = backoff.first;
    let mut tries = 1;
    loop {
        match call().await {
            Err(e) if tries < backoff.tries && matches!(e.code(), Some(Code::Unavailable | Code::DeadlineExceeded)) => {
                eprintln!("retrying in {delay:?} with the same request id: {e}");
                tokio::time::sleep(delay).await;
                delay = backoff.next(delay);
                tries += 1;
            }
            result => return result,
        }
    }
}

/// A fresh idempotency key for `Create`: 128 random bits in hex.
pub fn new_request_id() -> Result<String, CliError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| CliError::Output(format!("cannot draw a random request id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An answer that should carry the rollout but does not.
fn missing_rollout() -> CliError {
    CliError::Output("the server answered without the rollout".to_owned())
}

/// `rollout plan`.
pub async fn plan(conn: &Connection, args: &SpecArgs) -> Result<PlanView, CliError> {
    let request = args.plan_request()?;
    let answer = conn
        .call("RolloutService/Plan", |channel| {
            let request = request.clone();
            async move { RolloutServiceClient::new(channel).plan(request).await }
        })
        .await?;
    Ok(PlanView::from(answer))
}

/// `rollout create`: one fresh request id, repeated on every retry so the
/// server creates the rollout at most once.
pub async fn create(conn: &Connection, args: &SpecArgs, backoff: Backoff) -> Result<CreateView, CliError> {
    let request = args.create_request(new_request_id()?)?;
    let answer = retry_unavailable(backoff, || {
        conn.call("RolloutService/Create", |channel| {
            let request = request.clone();
            async move { RolloutServiceClient::new(channel).create(request).await }
        })
    })
    .await?;
    if answer.rollout.is_none() {
        return Err(missing_rollout());
    }
    Ok(CreateView::from(answer))
}

/// The `Get` answer for one rollout.
pub async fn get(
    conn: &Connection,
    id: &str,
    include_nodes: bool,
    consistency: ConsistencyArg,
) -> Result<pb::GetRolloutResponse, CliError> {
    let request =
        pb::GetRolloutRequest { rollout_id: rollout_id(id)?, include_nodes, consistency: consistency.to_pb() as i32 };
    let answer = conn
        .call("RolloutService/Get", |channel| {
            let request = request.clone();
            async move { RolloutServiceClient::new(channel).get(request).await }
        })
        .await?;
    if answer.rollout.is_none() {
        return Err(missing_rollout());
    }
    Ok(answer)
}

/// `rollout status`.
pub async fn status(conn: &Connection, args: &args::StatusArgs) -> Result<StatusView, CliError> {
    let answer = get(conn, &args.id, args.nodes, args.consistency).await?;
    Ok(StatusView {
        rollout: answer.rollout.map(RolloutView::from).unwrap_or_default(),
        nodes: answer.nodes.into_iter().map(RolloutNodeView::from).collect(),
        meta: answer.meta.map(ReadMetaView::from),
    })
}

/// The first `List` request of `args`.
pub fn list_request(args: &ListArgs) -> pb::ListRolloutsRequest {
    pb::ListRolloutsRequest {
        phases: args.phase.iter().map(|p| p.to_pb() as i32).collect(),
        page_size: args.limit.map_or(0, |l| l.min(MAX_PAGE_SIZE)),
        page_token: String::new(),
        consistency: args.consistency.to_pb() as i32,
    }
}

/// `rollout list`: every page, or up to `--limit` rollouts.
pub async fn list(conn: &Connection, args: &ListArgs) -> Result<ListView, CliError> {
    let mut request = list_request(args);
    let mut view = ListView { rollouts: Vec::new(), next_page_token: None, meta: None };
    loop {
        let page = conn
            .call("RolloutService/List", |channel| {
                let request = request.clone();
                async move { RolloutServiceClient::new(channel).list(request).await }
            })
            .await?;
        let room = args.limit.map_or(usize::MAX, |l| (l as usize).saturating_sub(view.rollouts.len()));
        view.rollouts.extend(page.rollouts.into_iter().take(room).map(RolloutView::from));
        view.meta = page.meta.map(ReadMetaView::from);
        view.next_page_token = Some(page.next_page_token).filter(|t| !t.is_empty());
        let full = args.limit.is_some_and(|l| view.rollouts.len() >= l as usize);
        let Some(next) = view.next_page_token.clone().filter(|_| !full) else { break };
        if next == request.page_token {
            return Err(CliError::Output(format!(
                "the server returned page token {next:?} twice; stopping after {} rollouts",
                view.rollouts.len()
            )));
        }
        request.page_token = next;
        if let Some(limit) = args.limit {
            request.page_size = (limit - view.rollouts.len() as u32).min(MAX_PAGE_SIZE);
        }
    }
    Ok(view)
}

/// The wave `approve` approves: `--wave`, else the rollout's current wave
/// read from the leader (a stale wave would be refused).
async fn wave_to_approve(conn: &Connection, id: &str, wave: Option<u32>) -> Result<u32, CliError> {
    if let Some(wave) = wave {
        return Ok(wave);
    }
    let answer = get(conn, id, false, ConsistencyArg::Linearizable).await?;
    Ok(answer.rollout.and_then(|r| r.status).map_or(0, |s| s.current_wave))
}

/// The rollout a phase-changing call answered with, as an [`ActionView`].
fn action(verb: String, rollout: Option<pb::Rollout>) -> Result<ActionView, CliError> {
    Ok(ActionView { action: verb, rollout: rollout.map(RolloutView::from).ok_or_else(missing_rollout)? })
}

/// Runs a `rollout` command.
pub async fn run(
    conn: &Connection,
    command: RolloutCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match command {
        RolloutCommand::Plan(args) => print(out, &plan(conn, &args).await?, format),
        RolloutCommand::Create(args) => {
            let created = create(conn, &args.spec, CREATE_BACKOFF).await?;
            print(out, &created, format)?;
            if !args.watch {
                return Ok(());
            }
            let follow = watch::Follow { rollout_id: created.rollout.rollout_id, nodes: false, until: Vec::new() };
            watch::run(conn, follow, format, out).await
        }
        RolloutCommand::List(args) => print(out, &list(conn, &args).await?, format),
        RolloutCommand::Status(args) => print(out, &status(conn, &args).await?, format),
        RolloutCommand::Watch(args) => {
            let follow = watch::Follow {
                rollout_id: rollout_id(&args.id)?,
                nodes: args.nodes,
                until: args.until.iter().map(|p| p.to_pb()).collect(),
            };
            watch::run(conn, follow, format, out).await
        }
        RolloutCommand::Pause { id, reason } => {
            let request = pause_request(&id, reason.as_deref())?;
            let answer = conn
                .call("RolloutService/Pause", |channel| {
                    let request = request.clone();
                    async move { RolloutServiceClient::new(channel).pause(request).await }
                })
                .await?;
            print(out, &action("paused".into(), answer.rollout)?, format)
        }
        RolloutCommand::Resume(args) => {
            let request = args.to_request()?;
            let answer = conn
                .call("RolloutService/Resume", |channel| {
                    let request = request.clone();
                    async move { RolloutServiceClient::new(channel).resume(request).await }
                })
                .await?;
            print(out, &action("resumed".into(), answer.rollout)?, format)
        }
        RolloutCommand::Abort { id, reason } => {
            let request = abort_request(&id, reason.as_deref())?;
            let answer = conn
                .call("RolloutService/Abort", |channel| {
                    let request = request.clone();
                    async move { RolloutServiceClient::new(channel).abort(request).await }
                })
                .await?;
            print(out, &action("aborted".into(), answer.rollout)?, format)
        }
        RolloutCommand::Approve { id, wave, comment } => {
            let wave = wave_to_approve(conn, &id, wave).await?;
            let request = approve_request(&id, wave, comment.as_deref())?;
            let answer = conn
                .call("RolloutService/Approve", |channel| {
                    let request = request.clone();
                    async move { RolloutServiceClient::new(channel).approve(request).await }
                })
                .await?;
            print(out, &action(format!("approved wave {wave} of"), answer.rollout)?, format)
        }
        RolloutCommand::Rollback(args) => {
            let request = args.to_request()?;
            let answer = conn
                .call("RolloutService/Rollback", |channel| {
                    let request = request.clone();
                    async move { RolloutServiceClient::new(channel).rollback(request).await }
                })
                .await?;
            print(out, &action("rolling back".into(), answer.rollout)?, format)
        }
    }
}
