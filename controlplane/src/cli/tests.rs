//! Command line parsing and output rendering.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kairos_fleet_proto::fleet::v1 as pb;

use super::args::{ClusterCommand, Command, ReleasesCommand};
use super::cluster::{ClusterStatusView, MembershipView};
use super::output::{render, Format};
use super::releases::{AddReleasesView, AddedReleaseView, ReleaseListView, ReleaseView};
use super::sync::SyncView;
use super::Cli;

fn parse(args: &[&str]) -> Cli {
    Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn status_response() -> pb::ClusterStatusResponse {
    let replica = |id: u64, role: pb::ReplicaRole, lag: u64| pb::Replica {
        replica_id: id,
        address: format!("10.0.0.{id}:7000"),
        api_address: format!("https://10.0.0.{id}:7443"),
        role: role as i32,
        last_log_index: 42 - lag,
        applied_index: 42 - lag,
        lag,
        reachable: lag == 0,
        last_contact: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
    };
    pb::ClusterStatusResponse {
        term: 7,
        leader_id: 1,
        leader_address: "https://10.0.0.1:7443".into(),
        commit_index: 42,
        replicas: vec![
            replica(1, pb::ReplicaRole::Leader, 0),
            replica(2, pb::ReplicaRole::Follower, 0),
            replica(3, pb::ReplicaRole::Learner, 12),
        ],
        answered_by: 1,
        from_leader: true,
    }
}

fn release() -> pb::Release {
    pb::Release {
        image_ref: "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1".into(),
        digest: String::new(),
        family: Some(pb::ImageFamily {
            flavor: "opensuse".into(),
            flavor_release: "leap-15.5".into(),
            variant: "standard".into(),
            arch: "amd64".into(),
            model: "generic".into(),
            trusted_boot: false,
        }),
        release: "v2.4.2".into(),
        software_version: "v1.27.6+k3s1".into(),
        software_distro: "k3s".into(),
        prerelease: false,
        trusted_boot: false,
        grammar: pb::TagGrammar::V2 as i32,
        support_status: pb::SupportStatus::PatchAvailable as i32,
        added_at: None,
        source: "manual".into(),
    }
}

#[test]
fn global_flags_parse_before_or_after_the_command() {
    let cli =
        parse(&["kairosctl", "cluster", "status", "-o", "yaml", "--server", "https://a:1", "--server", "https://b:1"]);
    assert_eq!(cli.global.output, Format::Yaml);
    assert_eq!(cli.global.servers, ["https://a:1", "https://b:1"]);
    assert!(matches!(cli.command, Command::Cluster { command: ClusterCommand::Status }));
    let cli = parse(&[
        "kairosctl",
        "--context",
        "prod",
        "--config",
        "/etc/k.toml",
        "--ca",
        "ca.pem",
        "--token-file",
        "t",
        "--timeout",
        "5s",
        "releases",
        "list",
        "--flavor",
        "ubuntu",
        "--limit",
        "3",
    ]);
    let o = cli.global.overrides();
    assert_eq!(o.context.as_deref(), Some("prod"));
    assert_eq!(o.config, Some(PathBuf::from("/etc/k.toml")));
    assert_eq!((o.ca, o.token_file), (Some("ca.pem".into()), Some("t".into())));
    assert_eq!(cli.global.timeout, Duration::from_secs(5));
    assert_eq!(cli.global.connect_timeout, Duration::from_secs(3));
    match cli.command {
        Command::Releases { command: ReleasesCommand::List(a) } => {
            assert_eq!((a.flavor.as_deref(), a.limit), (Some("ubuntu"), Some(3)));
        }
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn bad_arguments_are_refused_by_the_parser() {
    for args in [
        &["kairosctl", "cluster", "add-replica", "0", "h:1"][..],
        &["kairosctl", "cluster", "remove-replica", "x"],
        &["kairosctl", "releases", "add"],
        &["kairosctl", "releases", "list", "--limit", "0"],
        &["kairosctl", "cluster", "status", "--timeout", "soon"],
        &["kairosctl", "cluster", "status", "-o", "xml"],
        &["kairosctl", "completion", "tcsh"],
    ] {
        assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
    }
}

#[test]
fn cluster_status_renders_as_table_json_and_yaml() {
    let view = ClusterStatusView::from(status_response());
    let table = render(&view, Format::Table).expect("table");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "term 7   leader 1 (https://10.0.0.1:7443)   commit index 42");
    assert!(lines[1].starts_with("ID ") && lines[1].ends_with("REACHABLE"), "{table}");
    assert!(lines[1].contains("ADDRESS") && lines[1].contains("MATCHED") && lines[1].contains("LAG"), "{table}");
    assert!(lines[4].contains("learner") && lines[4].contains("12") && lines[4].ends_with("no"), "{table}");

    let json = render(&view, Format::Json).expect("json");
    let back: ClusterStatusView = serde_json::from_str(&json).expect("json parses back");
    assert_eq!(back, view);
    assert_eq!(back.replicas[0].last_contact.as_deref(), Some("2023-11-14T22:13:20Z"));
    let yaml = render(&view, Format::Yaml).expect("yaml");
    let back: ClusterStatusView = serde_yaml_ng::from_str(&yaml).expect("yaml parses back");
    assert_eq!(back, view);
}

#[test]
fn release_views_round_trip_through_json_and_yaml() {
    let list = ReleaseListView { releases: vec![ReleaseView::from(release())] };
    assert_eq!(list.releases[0].grammar, "v2");
    assert_eq!(list.releases[0].support_status, "patch-available");
    let json = render(&list, Format::Json).expect("json");
    assert_eq!(serde_json::from_str::<ReleaseListView>(&json).expect("parse"), list);
    let yaml = render(&list, Format::Yaml).expect("yaml");
    assert_eq!(serde_yaml_ng::from_str::<ReleaseListView>(&yaml).expect("parse"), list);
    let table = render(&list, Format::Table).expect("table");
    assert!(table.contains("opensuse leap-15.5") && table.contains("v1.27.6+k3s1"), "{table}");

    let added = AddReleasesView { added: vec![AddedReleaseView { release: list.releases[0].clone(), created: true }] };
    let yaml = render(&added, Format::Yaml).expect("yaml");
    assert_eq!(serde_yaml_ng::from_str::<AddReleasesView>(&yaml).expect("parse"), added);
    assert!(render(&added, Format::Table).expect("table").lines().next().is_some_and(|h| h.ends_with("CREATED")));

    let membership = MembershipView { log_index: 9, replicas: ClusterStatusView::from(status_response()).replicas };
    let json = render(&membership, Format::Json).expect("json");
    assert_eq!(serde_json::from_str::<MembershipView>(&json).expect("parse"), membership);
    let sync = SyncView::from(pb::SyncReleasesResponse {
        added: vec![release()],
        skipped: vec![pb::SkippedTag {
            image_ref: "quay.io/kairos/opensuse:latest".into(),
            reason: pb::SkipReason::NotARelease as i32,
            detail: "not a release tag".into(),
        }],
        already_known: 3,
        tags_seen: 5,
        dry_run: true,
    });
    assert_eq!(sync.skipped[0].reason, "not-a-release");
    let yaml = render(&sync, Format::Yaml).expect("yaml");
    assert_eq!(serde_yaml_ng::from_str::<SyncView>(&yaml).expect("parse"), sync);
}

#[test]
fn empty_lists_say_so_in_table_form() {
    let table = render(&ReleaseListView { releases: vec![] }, Format::Table).expect("table");
    assert_eq!(table, "no releases match\n");
    let json = render(&ReleaseListView { releases: vec![] }, Format::Json).expect("json");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&json).expect("json")["releases"], serde_json::json!([]));
}

#[test]
fn image_inspect_renders_in_every_format() {
    let view = super::image::inspect("quay.io/kairos/alpine:3.19-core-arm64-rpi4-v3.5.0").expect("parses");
    assert_eq!((view.flavor.as_str(), view.init_system.as_str()), ("alpine", "openrc"));
    let yaml = render(&view, Format::Yaml).expect("yaml");
    assert_eq!(serde_yaml_ng::from_str::<super::image::ImageView>(&yaml).expect("parse"), view);
    let err = super::image::inspect("quay.io/kairos/alpine:latest").expect_err("no grammar");
    assert_eq!(err.exit_code(), 2);
}

#[tokio::test]
async fn completion_prints_a_script_for_each_shell() {
    let shells = [
        ("bash", "complete -F"),
        ("zsh", "#compdef kairosctl"),
        ("fish", "complete -c kairosctl"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[kairosctl]"),
    ];
    for (shell, marker) in shells {
        let mut out = Vec::new();
        super::run(parse(&["kairosctl", "completion", shell]), &mut out).await.expect("completion");
        let script = String::from_utf8(out).expect("utf-8");
        assert!(script.contains(marker), "{shell} lacks {marker:?}: {script}");
        for word in ["add-replica", "rollout", "config", "use-context", "get-contexts"] {
            assert!(script.contains(word), "{shell} script does not complete {word:?}");
        }
    }
}

#[test]
fn config_subcommands_parse_with_the_global_flags() {
    use super::config::ConfigCommand;
    let cli = parse(&[
        "kairosctl",
        "config",
        "init",
        "--context",
        "lab",
        "--server",
        "https://a:1",
        "--server",
        "https://b:1",
        "--ca",
        "ca.pem",
        "--token",
        "kft_0123abcd_s",
        "--force",
    ]);
    assert_eq!(cli.global.context.as_deref(), Some("lab"));
    assert_eq!(cli.global.servers, ["https://a:1", "https://b:1"]);
    match cli.command {
        Command::Config { command: ConfigCommand::Init { token, force } } => {
            assert_eq!((token.as_deref(), force), (Some("kft_0123abcd_s"), true));
        }
        other => panic!("parsed as {other:?}"),
    }
    let cli = parse(&["kairosctl", "config", "use-context", "prod", "-o", "json"]);
    assert!(matches!(cli.command, Command::Config { command: ConfigCommand::UseContext { name } } if name == "prod"));
    assert!(Cli::try_parse_from(["kairosctl", "config", "use-context"]).is_err(), "the name is required");
    assert!(Cli::try_parse_from(["kairosctl", "config", "delete-context"]).is_err(), "the name is required");
}
