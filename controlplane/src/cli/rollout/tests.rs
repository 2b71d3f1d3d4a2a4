//! Flags → requests, and rendering of plans, rollouts and lists, from
//! hand-made protobuf values (no server).

use clap::Parser;
use kairos_fleet_proto::fleet::v1 as pb;
use tonic::Code;

use super::args::RolloutCommand;
use super::plan::{CreateView, PlanView};
use super::status::{ActionView, ListView, RolloutNodeView, RolloutView, StatusView};
use super::{list_request, new_request_id, retry_unavailable, Backoff};
use crate::cli::args::Command;
use crate::cli::error::RpcError;
use crate::cli::output::{render, Format};
use crate::cli::{Cli, CliError};

pub(super) fn parse(args: &[&str]) -> RolloutCommand {
    let mut argv = vec!["kairosctl", "rollout"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}")).command {
        Command::Rollout { command } => command,
        other => panic!("parsed as {other:?}"),
    }
}

fn plan_request(args: &[&str]) -> Result<pb::PlanRolloutRequest, CliError> {
    let mut argv = vec!["plan"];
    argv.extend_from_slice(args);
    match parse(&argv) {
        RolloutCommand::Plan(spec) => spec.plan_request(),
        other => panic!("parsed as {other:?}"),
    }
}

fn spec_of(args: &[&str]) -> pb::RolloutSpec {
    plan_request(args).unwrap_or_else(|e| panic!("{args:?}: {e}")).spec.expect("spec")
}

pub(super) fn rpc(code: Code, message: &str) -> CliError {
    CliError::Rpc(RpcError {
        method: "RolloutService/Test",
        code,
        message: message.into(),
        tried: vec![],
        leader: None,
    })
}

pub(super) fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: 1_700_000_000 + seconds, nanos: 0 })
}

fn minutes(m: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: m * 60, nanos: 0 })
}

pub(super) fn counts(total: u32, healthy: u32, failed: u32, in_flight: u32) -> pb::WaveCounts {
    pb::WaveCounts {
        total,
        healthy,
        failed,
        in_flight,
        pending: total - healthy - failed - in_flight,
        ..pb::WaveCounts::default()
    }
}

fn resolved() -> pb::RolloutStrategy {
    pb::RolloutStrategy {
        waves: vec!["1".into(), "10%".into(), "100%".into()],
        max_unavailable: Some(3),
        health_timeout: minutes(45),
        failure_threshold: Some("5%".into()),
        min_sample: Some(2),
        on_failure: Some(pb::OnFailure::Pause as i32),
        bake: minutes(90),
        maintenance_windows: vec![],
        approve_waves: Some(false),
        urgent: Some(false),
        allow_major: Some(false),
        allow_downgrade: Some(false),
        offline_grace: minutes(15),
    }
}

/// A rollout in `phase` working on wave `current` of three.
pub(super) fn rollout(id: &str, phase: pb::RolloutPhase, current: u32) -> pb::Rollout {
    let wave = |index: u32, phase: pb::WavePhase, c: pb::WaveCounts| pb::WaveStatus {
        index,
        phase: phase as i32,
        counts: Some(c),
        started_at: if phase == pb::WavePhase::Pending { None } else { at(60 * i64::from(index)) },
        ..pb::WaveStatus::default()
    };
    pb::Rollout {
        rollout_id: id.into(),
        spec: Some(pb::RolloutSpec {
            target_release: "v2.4.2".into(),
            target_software_version: None,
            selector: Some(pb::NodeSelector { flavors: vec!["opensuse".into()], ..Default::default() }),
            strategy: Some(pb::RolloutStrategy { bake: minutes(90), ..Default::default() }),
            description: "CHG-1234".into(),
        }),
        status: Some(pb::RolloutStatus {
            phase: phase as i32,
            current_wave: current,
            waves: vec![
                wave(0, pb::WavePhase::Completed, counts(1, 1, 0, 0)),
                wave(1, pb::WavePhase::Running, counts(10, 3, 1, 2)),
                wave(2, pb::WavePhase::Pending, counts(9, 0, 0, 0)),
            ],
            totals: Some(counts(20, 4, 1, 2)),
            change_class: pb::ChangeClass::Minor as i32,
            resolved_strategy: Some(resolved()),
            created_at: at(0),
            started_at: at(1),
            phase_changed_at: at(120),
            refused_nodes: 1,
            ..pb::RolloutStatus::default()
        }),
        created_by: "0123abcd".into(),
        revision: 42,
    }
}

fn refusal() -> pb::NodeRefusal {
    pb::NodeRefusal {
        node_id: "node-old".into(),
        rule: pb::RefusalRule::MajorNotAllowed as i32,
        message: "node node-old runs v1.6.0; v2.4.2 is a major upgrade and allow_major is not set".into(),
        way_out: "roll out v1.6.3 first, then v2.4.2 with allow_major".into(),
        change_class: pb::ChangeClass::Major as i32,
        current_release: "v1.6.0".into(),
        current_software_version: String::new(),
    }
}

fn planned(id: &str, online: bool, pinned: &str) -> pb::PlannedNode {
    pb::PlannedNode {
        node_id: id.into(),
        family: Some(pb::ImageFamily {
            flavor: "opensuse".into(),
            flavor_release: "leap-15.5".into(),
            variant: "standard".into(),
            arch: "amd64".into(),
            model: "generic".into(),
            trusted_boot: false,
        }),
        current_release: "v2.3.0".into(),
        current_software_version: "k3sv1.27.6-k3s1".into(),
        target_image_ref: "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1".into(),
        target_image_digest: String::new(),
        change_class: pb::ChangeClass::Minor as i32,
        k3s: Some(pb::K3sMembership { role: pb::K3sRole::Server as i32, cluster_name: "edge".into() }),
        online,
        pinned_by_label: pinned.into(),
    }
}

fn plan_response() -> pb::PlanRolloutResponse {
    pb::PlanRolloutResponse {
        change_class: pb::ChangeClass::Minor as i32,
        resolved_strategy: Some(resolved()),
        waves: vec![
            pb::PlannedWave { index: 0, nodes: vec![planned("node-a", true, "canary")] },
            pb::PlannedWave { index: 1, nodes: vec![planned("node-b", false, ""), planned("node-c", true, "")] },
        ],
        refused: vec![refusal()],
        up_to_date_node_ids: vec!["node-done".into()],
        selected_nodes: 5,
        eligible_nodes: 3,
        warnings: vec!["1 eligible node is offline".into()],
    }
}

// ---- flags → requests ----

#[test]
fn unset_strategy_flags_stay_unset() {
    let spec = spec_of(&["--to", "v2.4.2"]);
    assert_eq!(spec.target_release, "v2.4.2");
    assert_eq!(spec.target_software_version, None);
    assert_eq!(spec.description, "");
    assert_eq!(spec.strategy, Some(pb::RolloutStrategy::default()), "every field unset: class defaults");
    assert_eq!(spec.selector, Some(pb::NodeSelector::default()), "empty selector: the whole fleet");
}

#[test]
fn every_strategy_flag_is_mapped() {
    let spec = spec_of(&[
        "--to",
        "v2.4.2",
        "--software-version",
        "k3sv1.27.6-k3s1",
        "--waves",
        "1, 10%,50%,100%",
        "--max-unavailable",
        "4",
        "--health-timeout",
        "1h30m",
        "--failure-threshold",
        "5%",
        "--min-sample",
        "3",
        "--on-failure",
        "abort",
        "--bake",
        "2h",
        "--offline-grace",
        "20m",
        "--window",
        "Mon-Fri 02:00+3h Europe/Berlin",
        "--window",
        "Sat,Sun 00:00+6h UTC",
        "--approve-waves",
        "--urgent",
        "--allow-major",
        "--allow-downgrade",
        "--description",
        "CHG-1234",
    ]);
    assert_eq!(spec.target_software_version.as_deref(), Some("k3sv1.27.6-k3s1"));
    assert_eq!(spec.description, "CHG-1234");
    let s = spec.strategy.expect("strategy");
    assert_eq!(s.waves, ["1", "10%", "50%", "100%"]);
    assert_eq!((s.max_unavailable, s.min_sample), (Some(4), Some(3)));
    assert_eq!(s.health_timeout, Some(prost_types::Duration { seconds: 5400, nanos: 0 }));
    assert_eq!(s.bake, minutes(120));
    assert_eq!(s.offline_grace, minutes(20));
    assert_eq!(s.failure_threshold.as_deref(), Some("5%"));
    assert_eq!(s.on_failure, Some(pb::OnFailure::Abort as i32));
    assert_eq!(s.maintenance_windows, ["Mon-Fri 02:00+3h Europe/Berlin", "Sat,Sun 00:00+6h UTC"]);
    assert_eq!(
        (s.approve_waves, s.urgent, s.allow_major, s.allow_downgrade),
        (Some(true), Some(true), Some(true), Some(true))
    );
}

#[test]
fn optional_bools_are_set_only_when_given_and_may_be_false() {
    let s = spec_of(&["--to", "v3.0.0", "--approve-waves=false"]).strategy.expect("strategy");
    assert_eq!((s.approve_waves, s.urgent, s.allow_major), (Some(false), None, None));
    let s = spec_of(&["--to", "v3.0.0", "--urgent"]).strategy.expect("strategy");
    assert_eq!((s.approve_waves, s.urgent), (None, Some(true)));
    // `--approve-waves false` would silently read as two things; only `=` takes a value.
    assert!(
        Cli::try_parse_from(["kairosctl", "rollout", "plan", "--to", "v3.0.0", "--approve-waves", "false"]).is_err()
    );
}

#[test]
fn repeated_selector_flags_match_any_of_their_values() {
    let spec = spec_of(&[
        "--to",
        "v2.4.2",
        "--flavor",
        "opensuse",
        "--flavor",
        "ubuntu",
        "--arch",
        "amd64",
        "--arch",
        "arm64",
        "--variant",
        "standard",
        "--model",
        "rpi4",
        "--flavor-release",
        "leap-15.5",
        "--label",
        "site=berlin",
        "-l",
        "tier in (edge,core)",
        "--node",
        "aaa",
        "--node",
        " bbb ",
    ]);
    let sel = spec.selector.expect("selector");
    assert_eq!(sel.flavors, ["opensuse", "ubuntu"]);
    assert_eq!(sel.arches, ["amd64", "arm64"]);
    assert_eq!(
        (sel.variants, sel.models, sel.flavor_releases),
        (vec!["standard".to_owned()], vec!["rpi4".to_owned()], vec!["leap-15.5".to_owned()])
    );
    assert_eq!(sel.node_ids, ["aaa", "bbb"]);
    let labels: Vec<(String, pb::LabelOperator, Vec<String>)> =
        sel.labels.iter().map(|l| (l.key.clone(), l.operator(), l.values.clone())).collect();
    assert_eq!(
        labels,
        [
            ("site".to_owned(), pb::LabelOperator::In, vec!["berlin".to_owned()]),
            ("tier".to_owned(), pb::LabelOperator::In, vec!["edge".to_owned(), "core".to_owned()]),
        ]
    );
}

#[test]
fn bad_values_name_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--waves", "50%,10%"], "--waves"),
        (&["--waves", "0"], "--waves"),
        (&["--waves", "1,,2"], "--waves"),
        (&["--health-timeout", "10"], "--health-timeout"),
        (&["--health-timeout", "500ms"], "--health-timeout"),
        (&["--health-timeout", "25h"], "--health-timeout"),
        (&["--bake", "8d"], "--bake"),
        (&["--bake", "soon"], "--bake"),
        (&["--offline-grace", "0"], "--offline-grace"),
        (&["--failure-threshold", "100%"], "--failure-threshold"),
        (&["--failure-threshold", "two"], "--failure-threshold"),
        (&["--window", "Someday 02:00+3h UTC"], "--window"),
        (&["--window", "Mon 02:00+3h Mars/Olympus"], "--window"),
        (&["--label", "site in (a"], "--label"),
        (&["--software-version", " "], "--software-version"),
    ];
    for (flags, flag) in cases {
        let mut args = vec!["--to", "v2.4.2"];
        args.extend_from_slice(flags);
        let err = plan_request(&args).expect_err(&format!("{flags:?}"));
        assert_eq!(err.exit_code(), 2, "{flags:?}");
        assert!(err.to_string().starts_with(flag), "{flags:?}: {err}");
    }
    let err = plan_request(&["--to", " "]).expect_err("empty target");
    assert!(err.to_string().starts_with("--to"), "{err}");
    let long = "x".repeat(1025);
    let err = plan_request(&["--to", "v2.4.2", "--description", &long]).expect_err("too long");
    assert!(err.to_string().starts_with("--description"), "{err}");
}

#[test]
fn flags_the_parser_refuses() {
    for args in [
        &["plan"][..],
        &["plan", "--to", "v2", "--max-unavailable", "0"],
        &["plan", "--to", "v2", "--min-sample", "0"],
        &["plan", "--to", "v2", "--on-failure", "retry"],
        &["resume", "r1", "--accept-failures", "--retry-failed"],
        &["list", "--phase", "done"],
        &["watch", "r1", "--until", "paused,finished"],
        &["approve", "r1", "--wave", "-1"],
    ] {
        let mut argv = vec!["kairosctl", "rollout"];
        argv.extend_from_slice(args);
        assert!(Cli::try_parse_from(&argv).is_err(), "{args:?}");
    }
}

#[test]
fn create_sends_a_fresh_request_id_each_time() {
    let RolloutCommand::Create(args) = parse(&["create", "--to", "v2.4.2", "--watch"]) else { panic!("create") };
    assert!(args.watch);
    let (a, b) = (new_request_id().expect("id"), new_request_id().expect("id"));
    assert_ne!(a, b);
    assert!(a.len() == 32 && a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
    let request = args.spec.create_request(a.clone()).expect("request");
    assert_eq!(request.request_id, a);
    assert_eq!(request.spec.expect("spec").target_release, "v2.4.2");
}

#[tokio::test]
async fn create_retries_unavailable_with_the_same_request_id() {
    let backoff = Backoff { first: std::time::Duration::ZERO, max: std::time::Duration::ZERO, tries: 4 };
    let id = new_request_id().expect("id");
    let mut sent = Vec::new();
    let result = retry_unavailable(backoff, || {
        sent.push(id.clone());
        let n = sent.len();
        async move {
            match n {
                1 => Err(rpc(Code::Unavailable, "leader is 2 at h:1")),
                2 => Err(rpc(Code::DeadlineExceeded, "no answer")),
                _ => Ok(n),
            }
        }
    })
    .await;
    assert_eq!(result.expect("third try"), 3);
    assert!(sent.iter().all(|s| *s == id), "the same idempotency key every time");

    let mut tries = 0;
    let err = retry_unavailable(backoff, || {
        tries += 1;
        async { Err::<(), _>(rpc(Code::FailedPrecondition, "no node is eligible")) }
    })
    .await
    .expect_err("refused");
    assert_eq!((tries, err.exit_code()), (1, 2), "a refusal is not retried");

    let mut tries = 0;
    let err = retry_unavailable(backoff, || {
        tries += 1;
        async { Err::<(), _>(rpc(Code::Unavailable, "no leader")) }
    })
    .await
    .expect_err("gives up");
    assert_eq!((tries, err.exit_code()), (4, 5));
}

#[test]
fn other_commands_map_their_flags() {
    let RolloutCommand::Rollback(args) = parse(&["rollback", "r1", "--reason", "bad image", "--max-unavailable", "2"])
    else {
        panic!("rollback")
    };
    let request = args.to_request().expect("request");
    assert_eq!((request.rollout_id.as_str(), request.reason.as_str()), ("r1", "bad image"));
    let strategy = request.strategy.expect("strategy");
    assert_eq!(strategy.max_unavailable, Some(2));
    assert_eq!(pb::RolloutStrategy { max_unavailable: None, ..strategy }, pb::RolloutStrategy::default());

    let RolloutCommand::Resume(args) = parse(&["resume", "r1", "--retry-failed"]) else { panic!("resume") };
    let request = args.to_request().expect("request");
    assert!(request.retry_failed && !request.accept_failures);

    let RolloutCommand::List(args) = parse(&["list", "--phase", "awaiting-approval", "--phase", "rolled-back"]) else {
        panic!("list")
    };
    let request = list_request(&args);
    assert_eq!(request.phases, [pb::RolloutPhase::AwaitingApproval as i32, pb::RolloutPhase::RolledBack as i32]);
    assert_eq!(request.page_size, 0);

    let RolloutCommand::Watch(args) = parse(&["watch", "r1", "--until", "paused,awaiting-approval", "--nodes"]) else {
        panic!("watch")
    };
    assert_eq!(
        args.until.iter().map(|p| p.to_pb()).collect::<Vec<_>>(),
        [pb::RolloutPhase::Paused, pb::RolloutPhase::AwaitingApproval]
    );
    assert!(args.nodes);

    let RolloutCommand::Approve { wave, .. } = parse(&["approve", "r1"]) else { panic!("approve") };
    assert_eq!(wave, None, "default: the current wave, read with Get");
    assert!(super::args::pause_request(" ", None).is_err(), "an empty id is refused before any call");
}

// ---- rendering ----

#[test]
fn plan_table_shows_class_strategy_waves_refusals_and_warnings() {
    let text = render(&PlanView::from(plan_response()), Format::Table).expect("table");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "change class minor: 3 of 5 selected nodes eligible, 1 refused, 1 up to date");
    assert_eq!(
        lines[1],
        "strategy: waves 1,10%,100%   max unavailable 3   health timeout 45m   failure threshold 5%, min sample 2, \
         on failure pause   bake 1h30m   offline grace 15m   windows any time   approve waves no   urgent no   allow \
         major no   allow downgrade no"
    );
    assert!(text.contains("\nwave 0 (canary): 1 node\nNODE "), "{text}");
    assert!(text.contains("\nwave 1: 2 nodes\n"), "{text}");
    let row = lines.iter().find(|l| l.starts_with("node-a")).expect("node-a row");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "node-a",
            "opensuse/leap-15.5/standard/amd64/generic",
            "v2.3.0/k3sv1.27.6-k3s1",
            "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1",
            "minor",
            "yes",
            "canary"
        ]
    );
    assert!(lines.iter().any(|l| l.starts_with("node-b") && l.contains(" no ") && l.ends_with("-")), "{text}");
    assert!(text.contains("\nrefused: 1 node\n  node-old   major-not-allowed   on v1.6.0, major\n"), "{text}");
    assert!(text.contains("    node node-old runs v1.6.0; v2.4.2 is a major upgrade"), "{text}");
    assert!(text.contains("    way out: roll out v1.6.3 first, then v2.4.2 with allow_major\n"), "{text}");
    assert!(text.contains("\nup to date (skipped): 1 node\n  node-done\n"), "{text}");
    assert!(text.ends_with("\nwarnings:\n  1 eligible node is offline\n"), "{text}");
}

#[test]
fn plan_json_keeps_every_field_with_readable_names() {
    let view = PlanView::from(plan_response());
    let json = render(&view, Format::Json).expect("json");
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(value["change_class"], "minor");
    assert_eq!(value["resolved_strategy"]["health_timeout"], "45m");
    assert_eq!(value["resolved_strategy"]["on_failure"], "pause");
    assert_eq!(value["waves"][1]["nodes"][0]["node_id"], "node-b");
    assert_eq!(value["waves"][0]["nodes"][0]["k3s_role"], "server");
    assert_eq!(value["refused"][0]["rule"], "major-not-allowed");
    assert_eq!(value["refused"][0]["way_out"], "roll out v1.6.3 first, then v2.4.2 with allow_major");
    assert_eq!(serde_json::from_str::<PlanView>(&json).expect("parses back"), view);
    let yaml = render(&view, Format::Yaml).expect("yaml");
    assert_eq!(serde_yaml_ng::from_str::<PlanView>(&yaml).expect("parses back"), view);
}

#[test]
fn an_empty_plan_says_so() {
    let response =
        pb::PlanRolloutResponse { waves: vec![pb::PlannedWave { index: 0, nodes: vec![] }], ..plan_response() };
    let text = render(&PlanView::from(response), Format::Table).expect("table");
    assert!(text.contains("\nno node would be upgraded\n"), "{text}");
}

#[test]
fn create_prints_id_strategy_wave_sizes_and_refusals() {
    let view = CreateView::from(pb::CreateRolloutResponse {
        rollout: Some(rollout("r-17", pb::RolloutPhase::Pending, 0)),
        refused: vec![refusal()],
    });
    let text = render(&view, Format::Table).expect("table");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "created rollout r-17 to v2.4.2: class minor, 20 nodes, phase pending");
    assert!(lines[1].starts_with("strategy: waves 1,10%,100%   max unavailable 3"), "{text}");
    assert_eq!(lines[2], "waves: 0: 1 node   1: 10 nodes   2: 9 nodes");
    assert!(text.contains("refused: 1 node\n  node-old   major-not-allowed"), "{text}");
    let value: serde_json::Value = serde_json::from_str(&render(&view, Format::Json).expect("json")).expect("json");
    assert_eq!(value["rollout"]["rollout_id"], "r-17");
    assert_eq!(value["rollout"]["requested_strategy"], serde_json::json!({ "bake": "1h30m" }), "only what was asked");
}

#[test]
fn status_shows_phase_reason_timers_waves_and_nodes() {
    let mut r = rollout("r-17", pb::RolloutPhase::Paused, 1);
    let status = r.status.as_mut().expect("status");
    status.pause_reason = pb::PauseReason::FailureThreshold as i32;
    status.reason_message = "wave 1: 3 of 10 nodes failed, threshold 2".into();
    status.next_window_at = at(3600);
    let node = pb::RolloutNode {
        node_id: "node-b".into(),
        wave: 1,
        state: pb::RolloutNodeState::Failed as i32,
        failure_reason: pb::FailureReason::HealthTimeout as i32,
        message: "no healthy report within 45m".into(),
        attempt: 2,
        online: true,
        ..pb::RolloutNode::default()
    };
    let view = StatusView { rollout: r.into(), nodes: vec![RolloutNodeView::from(node)], meta: None };
    let text = render(&view, Format::Table).expect("table");
    assert!(text.starts_with("ROLLOUT         r-17\n"), "{text}");
    assert!(
        text.contains("PHASE           paused (failure-threshold): wave 1: 3 of 10 nodes failed, threshold 2\n"),
        "{text}"
    );
    assert!(text.contains("TARGET          v2.4.2\n"), "{text}");
    assert!(text.contains("WAVE            1 (2/3)\n"), "{text}");
    assert!(text.contains("NODES           20 nodes: 4 healthy, 1 failed, 2 in flight, 13 pending\n"), "{text}");
    assert!(text.contains("NEXT WINDOW     2023-11-14T23:13:20Z\n"), "{text}");
    assert!(!text.contains("BAKE UNTIL"), "{text}");
    assert!(text.contains("CREATED         2023-11-14T22:13:20Z by 0123abcd\n"), "{text}");
    assert!(text.contains("REFUSED         1 node at creation\n"), "{text}");
    let wave_header = text.lines().find(|l| l.starts_with("WAVE   PHASE")).expect("wave table");
    assert!(wave_header.contains("IN FLIGHT") && wave_header.ends_with("APPROVED BY"), "{wave_header}");
    let wave1: Vec<&str> = text.lines().find(|l| l.starts_with("1 ")).expect("wave 1").split_whitespace().collect();
    assert_eq!(wave1[..7], ["1", "running", "10", "3", "1", "2", "4"]);
    let node_row = text.lines().find(|l| l.starts_with("node-b")).expect("node row");
    assert!(node_row.contains("failed") && node_row.contains("health-timeout") && node_row.ends_with("within 45m"));

    let value: serde_json::Value = serde_json::from_str(&render(&view, Format::Json).expect("json")).expect("json");
    assert_eq!(value["rollout"]["phase"], "paused");
    assert_eq!(value["rollout"]["pause_reason"], "failure-threshold");
    assert_eq!(value["rollout"]["waves"][1]["counts"]["in_flight"], 2);
    assert_eq!(value["nodes"][0]["failure_reason"], "health-timeout");
    let yaml = render(&view, Format::Yaml).expect("yaml");
    assert_eq!(serde_yaml_ng::from_str::<StatusView>(&yaml).expect("parses back"), view);
}

#[test]
fn status_while_baking_shows_when_the_bake_ends() {
    let mut r = rollout("r-1", pb::RolloutPhase::Baking, 0);
    r.status.as_mut().expect("status").bake_until = at(600);
    let text = render(&StatusView { rollout: r.into(), nodes: vec![], meta: None }, Format::Table).expect("table");
    assert!(
        text.contains("PHASE           baking\n") && text.contains("BAKE UNTIL      2023-11-14T22:23:20Z\n"),
        "{text}"
    );
}

#[test]
fn list_table_has_one_row_per_rollout() {
    let mut approval = rollout("r-2", pb::RolloutPhase::AwaitingApproval, 2);
    approval.spec.as_mut().expect("spec").target_software_version = Some("k3sv1.28.2-k3s1".into());
    let view = ListView {
        rollouts: vec![approval.into(), rollout("r-1", pb::RolloutPhase::Completed, 2).into()],
        next_page_token: None,
        meta: None,
    };
    let text = render(&view, Format::Table).expect("table");
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split("   ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(header, ["ID", "PHASE", "TARGET", "WAVE", "HEALTHY/TOTAL", "FAILED", "IN FLIGHT", "CREATED"]);
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cells,
        ["r-2", "awaiting-approval", "v2.4.2", "k3sv1.28.2-k3s1", "3/3", "4/20", "1", "2", "2023-11-14T22:13:20Z"]
    );
    assert!(lines[2].starts_with("r-1 ") && lines[2].contains(" completed "), "{text}");
    let value: serde_json::Value = serde_json::from_str(&render(&view, Format::Json).expect("json")).expect("json");
    assert_eq!(value["rollouts"][0]["phase"], "awaiting-approval");
    assert_eq!(value["rollouts"][0]["target_software_version"], "k3sv1.28.2-k3s1");
    let empty = ListView { rollouts: vec![], next_page_token: None, meta: None };
    assert_eq!(render(&empty, Format::Table).expect("table"), "no rollouts match\n");
}

#[test]
fn actions_print_the_phase_they_led_to() {
    let view = ActionView {
        action: "approved wave 1 of".into(),
        rollout: RolloutView::from(rollout("r-3", pb::RolloutPhase::Running, 1)),
    };
    assert_eq!(render(&view, Format::Table).expect("table"), "approved wave 1 of rollout r-3: now running\n");
}
