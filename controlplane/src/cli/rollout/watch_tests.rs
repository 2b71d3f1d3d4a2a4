//! `rollout watch`: event lines, outcomes and exit codes, and resuming
//! across broken streams, against a scripted event source.

use std::collections::VecDeque;
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use tonic::{Code, Status};

use super::events::{serialized, EventView, Lines, Presenter};
use super::tests::{at, rollout, rpc};
use super::watch::{follow, follow_and_finish, EventSource, EventStream, Follow, Follower, Outcome, Reconnect, Step};
use crate::cli::output::Format;
use crate::cli::CliError;

const ID: &str = "r-9";

fn event(kind: pb::RolloutEventKind, revision: u64, phase: pb::RolloutPhase, messages: &[&str]) -> pb::RolloutEvent {
    pb::RolloutEvent {
        kind: kind as i32,
        rollout: Some(rollout(ID, phase, 1)),
        node: None,
        revision,
        time: at(300),
        messages: messages.iter().map(|m| m.to_string()).collect(),
    }
}

fn synced(revision: u64) -> pb::RolloutEvent {
    pb::RolloutEvent { kind: pb::RolloutEventKind::Synced as i32, revision, ..pb::RolloutEvent::default() }
}

fn follower(until: &[pb::RolloutPhase]) -> Follower {
    Follower::new(Follow { rollout_id: ID.into(), nodes: false, until: until.to_vec() })
}

/// Streams handed out in order; records what each open asked for.
#[derive(Default)]
struct Script {
    opens: VecDeque<Result<Vec<Result<pb::RolloutEvent, Status>>, CliError>>,
    fetch: Option<Result<pb::Rollout, CliError>>,
    resumes: Vec<u64>,
    broke: usize,
}

impl EventSource for Script {
    async fn open(&mut self, request: pb::WatchRolloutsRequest) -> Result<EventStream, CliError> {
        assert_eq!(request.rollout_id, ID);
        self.resumes.push(request.resume_revision);
        match self.opens.pop_front() {
            Some(Ok(events)) => Ok(Box::pin(tokio_stream::iter(events))),
            Some(Err(e)) => Err(e),
            None => Err(rpc(Code::PermissionDenied, "script exhausted")),
        }
    }

    fn broke(&mut self) {
        self.broke += 1;
    }

    async fn fetch(&mut self, _rollout_id: &str) -> Result<pb::Rollout, CliError> {
        self.fetch.take().unwrap_or_else(|| Err(rpc(Code::PermissionDenied, "no fetch scripted")))
    }
}

const QUICK: Reconnect =
    Reconnect { first: Duration::ZERO, max: Duration::ZERO, give_up_after: Duration::from_secs(30) };

async fn run(script: &mut Script, until: &[pb::RolloutPhase]) -> (Result<Option<Outcome>, CliError>, String) {
    let mut out = Vec::new();
    let mut f = follower(until);
    let result = follow_and_finish(script, &mut f, &mut Lines::new(&mut out, Format::Table), QUICK).await;
    (result.map(|ended| ended.map(|(outcome, _)| outcome)), String::from_utf8(out).expect("utf-8"))
}

#[test]
fn a_progress_event_is_one_timestamped_line_plus_its_messages() {
    let view = EventView::from(event(
        pb::RolloutEventKind::WaveStarted,
        7,
        pb::RolloutPhase::Running,
        &["wave 1 started: 10 nodes", "node abc timed out in wave 0"],
    ));
    assert_eq!(
        view.lines(),
        "2023-11-14T22:18:20Z wave-started running wave 1 (2/3): 3/10 healthy, 1 failed, 2 in flight; total 4/20 \
         healthy, 1 failed\n    wave 1 started: 10 nodes\n    node abc timed out in wave 0\n"
    );
    assert_eq!(EventView::from(synced(9)).lines(), "", "the end of the snapshot is not worth a line");

    let node = pb::RolloutEvent {
        kind: pb::RolloutEventKind::NodeChanged as i32,
        node: Some(pb::RolloutNode {
            node_id: "abc".into(),
            wave: 0,
            state: pb::RolloutNodeState::Failed as i32,
            failure_reason: pb::FailureReason::FallbackBoot as i32,
            attempt: 2,
            message: "booted COS_PASSIVE".into(),
            ..pb::RolloutNode::default()
        }),
        ..event(pb::RolloutEventKind::NodeChanged, 8, pb::RolloutPhase::Running, &[])
    };
    assert_eq!(
        EventView::from(node).lines(),
        "2023-11-14T22:18:20Z node-changed node abc wave 0: failed (fallback-boot), attempt 2: booted COS_PASSIVE\n"
    );
}

#[test]
fn plain_lines_leave_out_progress_that_changes_no_count_but_json_keeps_every_event() {
    let progress = || EventView::from(event(pb::RolloutEventKind::WaveProgress, 7, pb::RolloutPhase::Running, &[]));
    let mut changed = progress();
    if let Some(r) = changed.rollout.as_mut() {
        r.totals.healthy += 1;
    }
    let events = [progress(), progress(), changed, progress()];
    let mut out = Vec::new();
    let mut lines = Lines::new(&mut out, Format::Table);
    for e in &events {
        assert!(lines.show(e).expect("show"));
    }
    let text = String::from_utf8(out).expect("utf-8");
    assert_eq!(text.lines().count(), 3, "the second event repeats the first: {text}");

    let mut out = Vec::new();
    let mut json = Lines::new(&mut out, Format::Json);
    for e in &events {
        assert!(json.show(e).expect("show"));
    }
    assert_eq!(String::from_utf8(out).expect("utf-8").lines().count(), 4, "scripts get every event");
}

#[test]
fn json_output_is_one_object_per_line() {
    let view =
        EventView::from(event(pb::RolloutEventKind::PhaseChanged, 7, pb::RolloutPhase::AwaitingApproval, &["m"]));
    let line = serialized(&view, Format::Json).expect("json");
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line}");
    let value: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(value["kind"], "phase-changed");
    assert_eq!(value["revision"], 7);
    assert_eq!(value["rollout"]["phase"], "awaiting-approval");
    assert_eq!(value["messages"], serde_json::json!(["m"]));
    assert!(serialized(&view, Format::Yaml).expect("yaml").starts_with("---\n"));
}

#[test]
fn outcomes_map_to_exit_codes() {
    use pb::RolloutPhase::*;
    let cases = [
        (Completed, &[][..], Some(Outcome::Completed), 0),
        (RolledBack, &[], Some(Outcome::RolledBack), 0),
        (Aborted, &[], Some(Outcome::Aborted), 6),
        (Paused, &[Paused][..], Some(Outcome::Reached(Paused)), 0),
        (Aborted, &[Aborted][..], Some(Outcome::Reached(Aborted)), 0),
    ];
    for (phase, until, want, exit) in cases {
        let got = Outcome::of(phase as i32, until);
        assert_eq!(got, want, "{phase:?} until {until:?}");
        assert_eq!(got.map(Outcome::exit_code), Some(exit), "{phase:?}");
    }
    for phase in [Pending, Running, Baking, WaitingWindow, AwaitingApproval, Paused, RollingBack] {
        assert_eq!(Outcome::of(phase as i32, &[]), None, "{phase:?} is not an end");
    }
    let mut aborted = rollout(ID, Aborted, 1);
    aborted.status.as_mut().expect("status").reason_message = "wave 1: 3 of 10 nodes failed, threshold 2".into();
    let view = aborted.into();
    let err = Outcome::Aborted.into_result(&view).expect_err("aborted");
    assert_eq!(err.exit_code(), 6);
    let report = err.report();
    assert!(report.starts_with("error: rollout r-9 was aborted: wave 1: 3 of 10 nodes failed"), "{report}");
    assert!(report.contains("kairosctl rollout rollback r-9"), "{report}");
    assert!(Outcome::Completed.into_result(&view).is_ok());
}

#[test]
fn the_snapshot_revision_counts_only_once_synced() {
    let mut f = follower(&[]);
    assert!(matches!(f.take(event(pb::RolloutEventKind::Existing, 5, pb::RolloutPhase::Running, &[])), Step::Show(_)));
    assert_eq!(f.resume_revision(), 0, "a break now must start from a snapshot again");
    f.stream_ended();
    assert!(matches!(f.take(event(pb::RolloutEventKind::Existing, 6, pb::RolloutPhase::Running, &[])), Step::Show(_)));
    assert!(matches!(f.take(synced(6)), Step::Show(_)));
    assert_eq!(f.resume_revision(), 6);
    f.take(event(pb::RolloutEventKind::WaveProgress, 9, pb::RolloutPhase::Running, &[]));
    assert_eq!(f.request().resume_revision, 9);
    let mut other = event(pb::RolloutEventKind::Created, 10, pb::RolloutPhase::Pending, &[]);
    other.rollout.as_mut().expect("rollout").rollout_id = "r-other".into();
    assert_eq!(f.take(other), Step::Skip);
    f.restart();
    assert_eq!(f.request().resume_revision, 0);
}

#[tokio::test]
async fn a_broken_stream_resumes_after_the_last_revision_then_starts_over_when_history_is_gone() {
    let mut script = Script::default();
    script.opens.push_back(Ok(vec![
        Ok(event(pb::RolloutEventKind::Existing, 5, pb::RolloutPhase::Running, &[])),
        Ok(synced(5)),
        Ok(event(pb::RolloutEventKind::WaveProgress, 7, pb::RolloutPhase::Running, &["node a healthy"])),
        // The replica was killed.
        Err(Status::unknown("error reading a body from connection")),
    ]));
    script.opens.push_back(Err(rpc(Code::Unavailable, "none of the 3 endpoints could be reached")));
    script.opens.push_back(Err(rpc(Code::OutOfRange, "resume_revision 7 is older than the kept history")));
    script.opens.push_back(Ok(vec![Ok(event(pb::RolloutEventKind::Existing, 20, pb::RolloutPhase::Completed, &[]))]));
    let (result, out) = run(&mut script, &[]).await;
    assert_eq!(result.expect("ends"), Some(Outcome::Completed));
    assert_eq!(script.resumes, [0, 7, 7, 0]);
    assert_eq!(script.broke, 1, "the next open starts at another replica");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains(" existing running wave 1 (2/3)"), "{out}");
    assert!(lines[1].contains(" wave-progress running ") && lines[2] == "    node a healthy", "{out}");
    assert!(lines[3].contains(" existing completed "), "{out}");
    assert_eq!(lines[4], "rollout r-9 completed: 20 nodes: 4 healthy, 1 failed, 2 in flight, 13 pending");
}

#[tokio::test]
async fn a_stream_that_ends_or_loses_history_midway_is_picked_up_again() {
    let mut script = Script::default();
    script.opens.push_back(Ok(vec![
        Ok(event(pb::RolloutEventKind::Existing, 3, pb::RolloutPhase::Running, &[])),
        Ok(synced(3)),
        Ok(event(pb::RolloutEventKind::PhaseChanged, 4, pb::RolloutPhase::Baking, &[])),
    ]));
    script.opens.push_back(Ok(vec![Err(Status::out_of_range("this replica replaced its state with a snapshot"))]));
    script.opens.push_back(Ok(vec![
        Ok(event(pb::RolloutEventKind::Existing, 30, pb::RolloutPhase::Paused, &[])),
        Ok(synced(30)),
    ]));
    let (result, _) = run(&mut script, &[pb::RolloutPhase::Paused]).await;
    assert_eq!(result.expect("ends"), Some(Outcome::Reached(pb::RolloutPhase::Paused)));
    assert_eq!(script.resumes, [0, 4, 0]);
}

#[tokio::test]
async fn an_unknown_rollout_fails_with_not_found_and_a_lagging_replica_is_bypassed() {
    let mut script = Script::default();
    script.opens.push_back(Ok(vec![Ok(synced(3))]));
    script.fetch = Some(Err(rpc(Code::NotFound, "rollout r-9 not found")));
    let (result, _) = run(&mut script, &[]).await;
    assert_eq!(result.expect_err("not found").exit_code(), 3);

    // The replica has not applied the rollout yet; the leader has, and it is already over.
    let mut script = Script::default();
    script.opens.push_back(Ok(vec![Ok(synced(3))]));
    script.fetch = Some(Ok(rollout(ID, pb::RolloutPhase::Aborted, 1)));
    let (result, out) = run(&mut script, &[]).await;
    assert_eq!(result.expect("ends"), Some(Outcome::Aborted));
    assert!(out.lines().last().is_some_and(|l| l.starts_with("rollout r-9 aborted")), "{out}");
}

#[tokio::test]
async fn refusals_end_the_watch_and_an_outage_ends_it_after_the_budget() {
    let mut script = Script::default();
    script.opens.push_back(Err(rpc(Code::PermissionDenied, "needs role viewer")));
    let (result, _) = run(&mut script, &[]).await;
    assert_eq!(result.expect_err("denied").exit_code(), 4);
    assert_eq!(script.resumes.len(), 1, "not retried");

    let mut script = Script::default();
    for _ in 0..3 {
        script.opens.push_back(Err(rpc(Code::Unavailable, "no replica")));
    }
    let mut out = Vec::new();
    let impatient = Reconnect { give_up_after: Duration::ZERO, ..QUICK };
    let result = follow(&mut script, &mut follower(&[]), &mut Lines::new(&mut out, Format::Table), impatient).await;
    assert_eq!(result.expect_err("gave up").exit_code(), 5);
}
