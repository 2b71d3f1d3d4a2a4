//! The kairosctl binary against a real one-replica cluster: every command
//! that reads data prints a JSON and a YAML document with the expected
//! fields and a table with its header; refusals carry the role missing,
//! the server's rule, and the documented exit codes. The config comes
//! from `kairosctl config init`, as an operator would write it.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod kairosctl_support;
use kairosctl_support::*;

/// Writes a config with contexts `viewer` (current, token file),
/// `operator` (token file) and `admin` (inline token) for `url` through
/// `kairosctl config init`.
async fn init_contexts(setup: &Setup, url: &str) -> PathBuf {
    let dir = setup.dir.path();
    let config = dir.join("kairos").join("config.toml");
    let path = |name: &str| dir.join(name).display().to_string();
    let ca = path("ca.pem");
    for (context, token) in [
        ("viewer", vec!["--token-file".to_string(), path("admin.token")]),
        ("operator", vec!["--token-file".to_string(), path("operator.token")]),
        ("admin", vec!["--token".to_string(), ADMIN_TOKEN.to_string()]),
    ] {
        let mut args = vec!["config", "init", "--context", context, "--server", url, "--ca", &ca];
        args.extend(token.iter().map(String::as_str));
        let run = kairosctl(&config, &args).await;
        assert_eq!(run.code, Some(0), "config init {context}: {}", run.stderr);
    }
    config
}

/// Whether a line of `table` starts with the words of `header`.
fn has_header(table: &str, header: &[&str]) -> bool {
    table.lines().any(|line| line.split_whitespace().take(header.len()).eq(header.iter().copied()))
}

/// Runs `args` (in `context`) with `-o json` and `-o yaml`, checks both
/// parse and pass `check`, and that the table form is not empty and has
/// `header`. Returns the JSON document.
async fn read_in_every_format(
    config: &Path,
    context: &str,
    args: &[&str],
    header: &[&str],
    check: impl Fn(&Value),
) -> Value {
    let with = |format: &'static str| [&["--context", context][..], args, &["-o", format]].concat();
    let run = kairosctl(config, &with("json")).await;
    assert_eq!(run.code, Some(0), "{args:?} -o json: {}", run.stderr);
    let json: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{args:?} -o json: {e}"));
    check(&json);
    let run = kairosctl(config, &with("yaml")).await;
    assert_eq!(run.code, Some(0), "{args:?} -o yaml: {}", run.stderr);
    let yaml: Value = serde_yaml_ng::from_str(&run.stdout).unwrap_or_else(|e| panic!("{args:?} -o yaml: {e}"));
    check(&yaml);
    let run = kairosctl(config, &with("table")).await;
    assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
    assert!(has_header(&run.stdout, header), "{args:?}: no {header:?} header in\n{}", run.stdout);
    json
}

fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array().map(|items| items.iter().filter_map(|i| i[field].as_str()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_command_prints_json_yaml_and_a_table() {
    let setup = Setup::new();
    let (replica, url) = fleet_replica(&setup).await;
    let config = init_contexts(&setup, &url).await;
    let first = fleet_node_id(1);

    read_in_every_format(&config, "viewer", &["cluster", "status"], &["ID", "ADDRESS", "ROLE"], |v| {
        assert_eq!((v["leader_id"].as_u64(), v["from_leader"].as_bool()), (Some(1), Some(true)));
        assert_eq!(v["replicas"][0]["role"], "leader");
        assert_eq!(v["replicas"][0]["replica_id"], 1);
    })
    .await;
    read_in_every_format(&config, "viewer", &["nodes", "list"], &["ID", "HOSTNAME", "FLAVOR"], |v| {
        assert_eq!(v["total_size"], 3);
        assert_eq!(strings(&v["nodes"], "hostname"), ["edge-1", "edge-2", "edge-3"]);
        assert_eq!(strings(&v["nodes"], "flavor"), ["ubuntu", "ubuntu", "opensuse"]);
    })
    .await;
    read_in_every_format(&config, "viewer", &["nodes", "get", &first], &["ID", &first], |v| {
        assert_eq!(v["node"]["node_id"], first.as_str());
        assert_eq!((v["node"]["hostname"].as_str(), v["node"]["release"].as_str()), (Some("edge-1"), Some("v2.4.2")));
        assert_eq!(v["node"]["online"], true);
    })
    .await;
    read_in_every_format(&config, "viewer", &["fleet", "report"], &["FLAVOR", "RELEASE", "SUPPORT"], |v| {
        assert_eq!((v["total_nodes"].as_u64(), v["online_nodes"].as_u64()), (Some(3), Some(1)));
        assert_eq!(v["latest_release"], "v2.4.3");
        assert_eq!(strings(&v["by_release"], "flavor"), ["opensuse", "ubuntu"]);
    })
    .await;
    read_in_every_format(&config, "viewer", &["releases", "list"], &["RELEASE", "FLAVOR", "VARIANT"], |v| {
        assert_eq!(strings(&v["releases"], "release"), ["v2.4.3", "v2.4.1"], "newest first");
    })
    .await;
    let plan = ["rollout", "plan", "--to", "v2.4.3", "--waves", "1,100%"];
    read_in_every_format(&config, "viewer", &plan, &["NODE", "FAMILY", "CURRENT"], |v| {
        assert_eq!((v["selected_nodes"].as_u64(), v["change_class"].as_str()), (Some(3), Some("patch")));
        assert_eq!(v["resolved_strategy"]["waves"], serde_json::json!(["1", "100%"]));
        let planned: usize =
            v["waves"].as_array().map_or(0, |w| w.iter().filter_map(|w| w["nodes"].as_array()).map(Vec::len).sum());
        assert_eq!(planned, 2, "both ubuntu nodes");
        let refused = strings(&v["refused"], "node_id");
        assert_eq!(refused, [fleet_node_id(3)], "no opensuse image of v2.4.3 in the catalog");
    })
    .await;

    // A rollout, an enrollment token and their audit entries to read back.
    let create = ["--context", "operator", "rollout", "create", "--to", "v2.4.3", "--flavor", "ubuntu"];
    let run = kairosctl(&config, &[&create[..], &["--description", "patch ubuntu", "-o", "json"]].concat()).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let created: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    let id = created["rollout"]["rollout_id"].as_str().expect("a rollout id").to_string();
    let enroll = ["--context", "admin", "enroll-tokens", "create", "--ttl", "1h", "--label", "site=berlin"];
    assert_eq!(kairosctl(&config, &enroll).await.code, Some(0));

    read_in_every_format(&config, "viewer", &["rollout", "list"], &["ID", "PHASE", "TARGET"], |v| {
        assert_eq!(strings(&v["rollouts"], "rollout_id"), [id.as_str()]);
        assert!(v["rollouts"][0]["target_release"].as_str().is_some_and(|t| t.ends_with("2.4.3")), "{v}");
    })
    .await;
    read_in_every_format(&config, "viewer", &["rollout", "status", &id, "--nodes"], &["ROLLOUT", &id], |v| {
        assert_eq!(v["rollout"]["rollout_id"], id.as_str());
        assert_eq!(
            (v["rollout"]["description"].as_str(), v["rollout"]["change_class"].as_str()),
            (Some("patch ubuntu"), Some("patch"))
        );
        assert_eq!(v["rollout"]["totals"]["total"], 2);
        assert_eq!(v["nodes"].as_array().map(Vec::len), Some(2), "--nodes lists both ubuntu nodes");
    })
    .await;
    read_in_every_format(&config, "admin", &["tokens", "list"], &["ID", "ROLE", "DESCRIPTION"], |v| {
        let mut roles = strings(&v["tokens"], "role");
        roles.sort_unstable();
        assert_eq!(roles, ["admin", "operator", "viewer"]);
        assert!(v["tokens"].as_array().is_some_and(|t| t.iter().all(|t| t.get("secret").is_none())));
    })
    .await;
    read_in_every_format(&config, "admin", &["enroll-tokens", "list"], &["ID", "DESCRIPTION", "EXPIRES"], |v| {
        assert_eq!(v["tokens"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["tokens"][0]["labels"]["site"], "berlin");
        assert_eq!(v["tokens"][0]["uses"], 0);
    })
    .await;
    read_in_every_format(&config, "admin", &["audit", "list"], &["SEQ", "TIME", "ACTOR"], |v| {
        let methods = strings(&v["entries"], "method");
        assert!(methods.iter().any(|m| m.ends_with("RolloutService/Create")), "{methods:?}");
        assert!(methods.iter().any(|m| m.ends_with("CreateEnrollToken")), "{methods:?}");
        assert!(strings(&v["entries"], "outcome").iter().all(|o| !o.is_empty()));
    })
    .await;

    // The config commands read the file init wrote; the inline token stays hidden.
    let view = read_in_every_format(&config, "viewer", &["config", "view"], &["current_context"], |v| {
        assert_eq!(v["current_context"], "viewer");
        assert_eq!(v["contexts"]["admin"]["token"], "REDACTED");
        assert_eq!(v["contexts"]["operator"]["endpoints"][0], url.as_str());
    })
    .await;
    assert!(!view.to_string().contains(ADMIN_TOKEN));
    read_in_every_format(&config, "viewer", &["config", "get-contexts"], &["CURRENT", "NAME", "ENDPOINTS"], |v| {
        assert_eq!(strings(&v["contexts"], "name"), ["admin", "operator", "viewer"]);
        assert_eq!(strings(&v["contexts"], "token"), ["inline", "file", "file"]);
    })
    .await;
    replica.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_role_missing_and_the_rule_with_their_exit_codes() {
    let setup = Setup::new();
    let (replica, url) = fleet_replica(&setup).await;
    let config = init_contexts(&setup, &url).await;

    // A viewer calling operator and admin methods: exit 4, both roles named.
    let add = ["releases", "add", "quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.4"];
    for (args, need) in [
        (&add[..], "operator"),
        (&["rollout", "create", "--to", "v2.4.3"], "operator"),
        (&["tokens", "list"], "admin"),
        (&["audit", "list"], "admin"),
    ] {
        let run = kairosctl(&config, args).await;
        assert_eq!(run.code, Some(4), "{args:?}");
        let message = format!("permission denied: this call needs role {need} but the token has role viewer");
        assert!(run.stderr.contains(&message), "{args:?}: {}", run.stderr);
        let hint = format!("hint: your token's role is viewer; this call needs {need}");
        assert!(run.stderr.contains(&hint), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    // An operator may add a release but not list tokens.
    let run = kairosctl(&config, &[&["--context", "operator"], &add[..]].concat()).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let run = kairosctl(&config, &["--context", "operator", "tokens", "list"]).await;
    assert_eq!(run.code, Some(4));
    assert!(run.stderr.contains("hint: your token's role is operator; this call needs admin"), "{}", run.stderr);

    // A downgrade: FAILED_PRECONDITION, exit 2, the server's rule and way out.
    let run =
        kairosctl(&config, &["--context", "operator", "rollout", "create", "--to", "v2.4.1", "--flavor", "ubuntu"])
            .await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("refused: no selected node can move to v2.4.1"), "{}", run.stderr);
    assert!(run.stderr.contains("v2.4.1 is older than the installed v2.4.2"), "{}", run.stderr);
    assert!(run.stderr.contains("--allow-downgrade"), "the way out: {}", run.stderr);
    // The plan shows the same refusal node by node, as data.
    let run = kairosctl(&config, &["rollout", "plan", "--to", "v2.4.1", "--flavor", "ubuntu", "-o", "json"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(strings(&plan["refused"], "rule"), ["downgrade-not-allowed", "downgrade-not-allowed"]);

    // A bad --waves value is refused before any call, naming the flag.
    let run =
        kairosctl(&config, &["--context", "operator", "rollout", "create", "--to", "v2.4.3", "--waves", "50%,10%"])
            .await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("error: --waves \"50%,10%\": "), "{}", run.stderr);
    assert!(run.stderr.contains("hint: e.g. --waves 1,10%,50%,100%"), "{}", run.stderr);
    // INVALID_ARGUMENT from the server names the field and the rule.
    let run = kairosctl(&config, &["rollout", "plan", "--to", "banana"]).await;
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("refused: spec.target_release: \"banana\" is not a release such as v2.4.2"),
        "{}",
        run.stderr
    );

    // NOT_FOUND: exit 3 with a hint; no rollout was created by the refusals.
    let run = kairosctl(&config, &["rollout", "status", "ro-999999"]).await;
    assert_eq!(run.code, Some(3));
    assert!(run.stderr.contains("rollout ro-999999 does not exist") && run.stderr.contains("hint: "), "{}", run.stderr);
    let run = kairosctl(&config, &["rollout", "list", "-o", "json"]).await;
    let list: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(list["rollouts"], serde_json::json!([]));

    // An unknown context: exit 2, the known ones listed.
    let run = kairosctl(&config, &["--context", "staging", "nodes", "list"]).await;
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("no context named \"staging\"") && run.stderr.contains("known: admin, operator, viewer"),
        "{}",
        run.stderr
    );
    replica.shutdown().await.expect("shutdown");
}
