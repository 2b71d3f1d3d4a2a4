//! Tokens, roles and the audit log across real processes: an admin makes
//! viewer and operator tokens with `kairosctl tokens create`, each role may
//! make exactly its calls, a revoked or expired token is refused on every
//! replica, enroll tokens round-trip, and the audit log records every
//! mutation with its actor and never a secret.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kairos_controlplane::security::{generate_token, BootstrapTokens, Role, TokenRecord};
use kairos_fleet_tests::{ok_stdout, wait_for, Cluster};
use serde_json::Value;

/// Fast elections keep the suite short.
const FAST: &[&str] = &["--heartbeat-ms", "50", "--election-timeout-ms", "300"];
/// Exit code of PERMISSION_DENIED and UNAUTHENTICATED (see `kairosctl --help`).
const DENIED: i32 = 4;
const INVALID: i32 = 2;
const NOT_FOUND: i32 = 3;
const RELEASE: &str = "quay.io/kairos/core-opensuse:v1.2.3";

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn json(out: &Output, what: &str) -> Value {
    let stdout = ok_stdout(out, what);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"))
}

/// An operator token: its id, role, secret and the file kairosctl reads it from.
struct Token {
    id: String,
    role: &'static str,
    secret: String,
    file: PathBuf,
}

/// The admin token `init` wrote.
fn init_admin(cluster: &Cluster) -> Token {
    let file = cluster.dir.path().join("admin.token");
    let secret = std::fs::read_to_string(&file).expect("admin.token").trim().to_owned();
    Token { id: secret[4..12].to_owned(), role: "admin", secret, file }
}

/// `kairosctl` with `token`, against replica `id` only.
fn ctl_as(cluster: &Cluster, token: &Token, id: u64, args: &[&str]) -> Output {
    let file = token.file.to_string_lossy().into_owned();
    let mut all = vec!["--token-file", file.as_str()];
    all.extend_from_slice(args);
    cluster.ctl_on(id, &all)
}

/// `tokens create --role <role>` through replica `via`; the secret goes to a file.
fn create_token(cluster: &Cluster, via: u64, role: &'static str) -> Token {
    let out = cluster.ctl_on(via, &["tokens", "create", "--role", role, "--description", role, "-o", "json"]);
    let created = json(&out, &format!("tokens create --role {role}"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only now"), "no warning: {}", text(&out));
    assert_eq!(created["token"]["role"], role, "{created}");
    let (id, secret) = (created["token"]["token_id"].as_str(), created["secret"].as_str());
    let (id, secret) = (id.expect("token_id").to_owned(), secret.expect("secret").to_owned());
    assert!(secret.starts_with(&format!("kft_{id}_")), "{created}");
    let file = cluster.dir.path().join(format!("{role}.token"));
    std::fs::write(&file, &secret).expect("write token file");
    Token { id, role, secret, file }
}

/// Runs `args` as `token` on replica `id` until it succeeds (the token
/// may not have reached that replica yet).
fn wait_allowed(cluster: &Cluster, token: &Token, id: u64, args: &[&str]) -> Output {
    wait_for(&format!("{args:?} to be allowed on replica {id}"), Duration::from_secs(10), || {
        let out = ctl_as(cluster, token, id, args);
        out.status.success().then_some(out)
    })
}

/// Asserts exit 4 with a message naming the role the call needs.
fn assert_denied(out: &Output, needs: &str, what: &str) {
    assert_eq!(code(out), DENIED, "{what}: {}", text(out));
    assert!(text(out).contains(&format!("needs role {needs}")), "{what}: {}", text(out));
}

fn leader_of(cluster: &Cluster, id: u64) -> Option<u64> {
    let out = cluster.ctl_on(id, &["cluster", "status", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["leader_id"].as_u64().filter(|&l| l != 0)
}

/// A 3-replica cluster formed by the init admin with `cluster add-replica`.
fn three_replicas() -> Cluster {
    let mut cluster = Cluster::init(3);
    for id in 1..=3 {
        cluster.start_with(id, FAST);
    }
    wait_for("replica 1 to lead", Duration::from_secs(20), || (leader_of(&cluster, 1) == Some(1)).then_some(()));
    for id in 2..=3u64 {
        let addr = cluster.addresses[&id].clone();
        // Retried until the new replica's port is up; adding it again is a no-op.
        wait_for(&format!("replica {id} to be added"), Duration::from_secs(20), || {
            cluster.ctl_on(1, &["cluster", "add-replica", &id.to_string(), &addr]).status.success().then_some(())
        });
    }
    cluster
}

fn one_replica() -> Cluster {
    let mut cluster = Cluster::init(1);
    cluster.start_with(1, FAST);
    wait_for("replica 1 to lead", Duration::from_secs(20), || (leader_of(&cluster, 1) == Some(1)).then_some(()));
    cluster
}

/// Entries of `audit list -o json`, newest first.
fn audit(cluster: &Cluster, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["audit", "list", "-o", "json", "--limit", "1000"];
    args.extend_from_slice(extra);
    let v = json(&cluster.ctl(&args), "audit list");
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// The entry of `method` on `target` by `actor` with `outcome`, if any.
fn find<'a>(entries: &'a [Value], method: &str, target: &str, outcome: &str, actor: &Token) -> Option<&'a Value> {
    let (method, actor) = (format!("/kairos.fleet.v1.{method}"), format!("token:{}", actor.id));
    entries.iter().find(|e| {
        e["method"] == method.as_str()
            && e["target"] == target
            && e["outcome"] == outcome
            && e["actor"] == actor.as_str()
    })
}

fn assert_audited(entries: &[Value], method: &str, target: &str, outcome: &str, actor: &Token) {
    let entry = find(entries, method, target, outcome, actor);
    let entry = entry.unwrap_or_else(|| panic!("no {outcome} {method} on {target} by {} in: {entries:#?}", actor.id));
    assert!(entry["time"].is_string() && entry["replica_id"].as_u64().is_some_and(|r| r > 0), "{entry}");
    assert_eq!(entry["role"], actor.role, "the role at the time of the call: {entry}");
}

fn assert_no_secret(output: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        let part = &secret[secret.len() - 64..];
        assert!(!output.contains(part), "{what} shows a secret: {output}");
    }
}

#[test]
fn each_role_makes_exactly_its_calls_revocation_reaches_every_replica_and_every_mutation_is_audited() {
    let cluster = three_replicas();
    let admin = init_admin(&cluster);
    // Through followers: the writes are forwarded to the leader.
    let viewer = create_token(&cluster, 2, "viewer");
    let operator = create_token(&cluster, 3, "operator");

    // Viewer: reads only.
    wait_allowed(&cluster, &viewer, 3, &["cluster", "status"]);
    ok_stdout(&ctl_as(&cluster, &viewer, 3, &["releases", "list"]), "viewer releases list");
    assert_denied(&ctl_as(&cluster, &viewer, 3, &["releases", "add", RELEASE]), "operator", "viewer releases add");
    // Refused before any registry is contacted (nothing listens on port 9).
    let sync = ["releases", "sync", "--registry", "127.0.0.1:9", "--repo", "opensuse"];
    assert_denied(&ctl_as(&cluster, &viewer, 2, &sync), "operator", "viewer releases sync");
    assert_denied(
        &ctl_as(&cluster, &viewer, 1, &["tokens", "create", "--role", "admin"]),
        "admin",
        "viewer tokens create",
    );
    assert_denied(&ctl_as(&cluster, &viewer, 1, &["audit", "list"]), "admin", "viewer audit list");
    ok_stdout(&ctl_as(&cluster, &viewer, 3, &["nodes", "list"]), "viewer nodes list");
    ok_stdout(&ctl_as(&cluster, &viewer, 2, &["fleet", "report"]), "viewer fleet report");
    assert_denied(
        &ctl_as(&cluster, &viewer, 1, &["enroll-tokens", "create", "--uses", "1"]),
        "admin",
        "viewer enroll-tokens create",
    );

    // Operator: releases, but neither tokens nor membership.
    wait_allowed(&cluster, &operator, 2, &["releases", "add", RELEASE]);
    ok_stdout(&ctl_as(&cluster, &operator, 2, &["cluster", "status"]), "operator cluster status");
    let created = ctl_as(&cluster, &operator, 2, &["tokens", "create", "--role", "viewer"]);
    assert_denied(&created, "admin", "operator tokens create");
    assert_denied(&ctl_as(&cluster, &operator, 1, &["tokens", "list"]), "admin", "operator tokens list");
    assert_denied(
        &ctl_as(&cluster, &operator, 3, &["enroll-tokens", "create", "--uses", "1"]),
        "admin",
        "operator enroll-tokens create",
    );
    ok_stdout(&ctl_as(&cluster, &operator, 3, &["nodes", "list"]), "operator nodes list");
    assert_denied(
        &ctl_as(&cluster, &operator, 1, &["cluster", "remove-replica", "3"]),
        "admin",
        "operator remove-replica",
    );

    // Admin: everything, and not locking itself out.
    let listed = ok_stdout(&ctl_as(&cluster, &admin, 2, &["tokens", "list", "-o", "json"]), "admin tokens list");
    for token in [&admin, &viewer, &operator] {
        assert!(listed.contains(&format!("\"{}\"", token.id)), "{} missing: {listed}", token.id);
    }
    let table = ok_stdout(&ctl_as(&cluster, &admin, 2, &["tokens", "list"]), "admin tokens list table");
    let enroll =
        json(&ctl_as(&cluster, &admin, 3, &["enroll-tokens", "create", "--uses", "2", "-o", "json"]), "enroll");
    let enroll_id = enroll["token"]["token_id"].as_str().unwrap_or_else(|| panic!("no id in {enroll}")).to_string();
    assert_no_secret(&format!("{listed}{table}"), &[&admin.secret, &viewer.secret, &operator.secret], "tokens list");
    let last = ctl_as(&cluster, &admin, 1, &["tokens", "revoke", &admin.id]);
    assert_eq!(code(&last), INVALID, "revoking the last admin token: {}", text(&last));
    assert!(text(&last).contains("last active admin token"), "{}", text(&last));
    assert_eq!(code(&ctl_as(&cluster, &admin, 1, &["tokens", "revoke", "0badc0de"])), NOT_FOUND);

    // Revoked through replica 1, refused on replica 3 once it has applied the change.
    let revoked = json(&ctl_as(&cluster, &admin, 1, &["tokens", "revoke", &operator.id, "-o", "json"]), "revoke");
    assert_eq!(revoked["revoked"], true, "{revoked}");
    for id in [3, 2, 1] {
        let refused = wait_for(&format!("replica {id} to refuse the revoked token"), Duration::from_secs(10), || {
            let out = ctl_as(&cluster, &operator, id, &["releases", "list"]);
            (code(&out) == DENIED).then_some(out)
        });
        assert!(text(&refused).contains(&format!("token {} was revoked", operator.id)), "{}", text(&refused));
    }

    // The audit log; the answering replica may lag the last change by a moment.
    let revocation = format!("token/{}", operator.id);
    let entries = wait_for("the audit log to hold the revocation", Duration::from_secs(10), || {
        let entries = audit(&cluster, &[]);
        find(&entries, "AdminService/RevokeToken", &revocation, "succeeded", &admin).is_some().then_some(entries)
    });
    assert_audited(&entries, "ClusterService/AddReplica", "replica/2", "succeeded", &admin);
    assert_audited(&entries, "ClusterService/AddReplica", "replica/3", "succeeded", &admin);
    assert_audited(&entries, "AdminService/CreateToken", &format!("token/{}", viewer.id), "succeeded", &admin);
    assert_audited(&entries, "AdminService/CreateToken", &format!("token/{}", operator.id), "succeeded", &admin);
    assert_audited(&entries, "ReleaseService/AddRelease", &format!("release/{RELEASE}"), "succeeded", &operator);
    assert_audited(&entries, "AdminService/RevokeToken", &format!("token/{}", operator.id), "succeeded", &admin);
    assert_audited(&entries, "AdminService/RevokeToken", &format!("token/{}", admin.id), "failed", &admin);
    assert_audited(&entries, "AdminService/CreateToken", "", "denied", &viewer);
    assert_audited(&entries, "AdminService/CreateToken", "", "denied", &operator);
    assert_audited(
        &entries,
        "AdminService/CreateEnrollToken",
        &format!("enroll-token/{enroll_id}"),
        "succeeded",
        &admin,
    );
    assert_audited(&entries, "AdminService/CreateEnrollToken", "", "denied", &viewer);
    let sequences: Vec<u64> = entries.iter().filter_map(|e| e["sequence"].as_u64()).collect();
    assert!(sequences.windows(2).all(|w| w[0] > w[1]), "newest first, no repeats: {sequences:?}");
    let raw = serde_json::to_string(&entries).expect("json");
    assert_no_secret(&raw, &[&admin.secret, &viewer.secret, &operator.secret], "the audit log");

    // Filters: by actor and by method.
    let by_operator = audit(&cluster, &["--actor", &operator.id]);
    assert!(
        !by_operator.is_empty() && by_operator.iter().all(|e| e["actor"] == format!("token:{}", operator.id).as_str())
    );
    let adds = audit(&cluster, &["--method", "ReleaseService/AddRelease"]);
    assert_eq!(adds.len(), 1, "{adds:#?}");
}

#[test]
fn an_expired_token_is_refused() {
    let mut cluster = Cluster::init(1);
    // Seed a token that expired an hour ago next to init's admin token: the
    // shortest lifetime CreateToken accepts is a minute, too long to wait for.
    let dir = cluster.replica_dir(1);
    let mut seed = BootstrapTokens::load(&dir).expect("bootstrap tokens").expect("written by init");
    let secret = generate_token().expect("random");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
    let two_hours_ago = now - 2 * 3_600_000;
    let ttl = Some(Duration::from_secs(3600));
    seed.tokens.push(TokenRecord::new(&secret, Role::Admin, "expired", "test", two_hours_ago, ttl));
    seed.save(&dir).expect("save bootstrap tokens");
    cluster.start_with(1, FAST);
    wait_for("replica 1 to lead", Duration::from_secs(20), || (leader_of(&cluster, 1) == Some(1)).then_some(()));

    let file = cluster.dir.path().join("expired.token");
    std::fs::write(&file, secret.expose()).expect("write token file");
    let expired = Token { id: secret.id().to_string(), role: "admin", secret: secret.expose().to_owned(), file };
    let refused = wait_for("the expired token to be seeded and refused", Duration::from_secs(10), || {
        let out = ctl_as(&cluster, &expired, 1, &["cluster", "status"]);
        text(&out).contains("expired").then_some(out)
    });
    assert_eq!(code(&refused), DENIED, "{}", text(&refused));
    assert!(text(&refused).contains(&format!("token {} expired at", expired.id)), "{}", text(&refused));
    let listed = ok_stdout(&cluster.ctl(&["tokens", "list", "-o", "json"]), "tokens list");
    assert!(!listed.contains(&expired.id), "expired tokens are listed only with --all: {listed}");
    let all = ok_stdout(&cluster.ctl(&["tokens", "list", "--all", "-o", "json"]), "tokens list --all");
    assert!(all.contains(&expired.id), "{all}");
    let short = cluster.ctl(&["tokens", "create", "--role", "viewer", "--ttl", "30s"]);
    assert_eq!(code(&short), INVALID, "a TTL under a minute: {}", text(&short));
}

#[test]
fn enroll_tokens_round_trip_through_create_list_and_revoke() {
    let cluster = one_replica();
    let admin = init_admin(&cluster);
    let args = ["enroll-tokens", "create", "--ttl", "2h", "--uses", "3", "--label", "site=berlin"];
    let created = cluster.ctl(&[&args[..], &["--label", "fleet.kairos.io/wave=1", "-o", "json"]].concat());
    let created = json(&created, "enroll-tokens create");
    let id = created["token"]["token_id"].as_str().expect("token_id").to_owned();
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with(&format!("kfe_{id}_")), "{created}");
    let token = &created["token"];
    assert_eq!((token["max_uses"].as_u64(), token["uses"].as_u64()), (Some(3), Some(0)), "{token}");
    assert_eq!(token["labels"]["site"], "berlin", "{token}");
    assert_eq!(token["labels"]["fleet.kairos.io/wave"], "1", "{token}");
    assert_eq!(token["created_by"], admin.id.as_str(), "{token}");

    let listed = ok_stdout(&cluster.ctl(&["enroll-tokens", "list", "-o", "json"]), "enroll-tokens list");
    let table = ok_stdout(&cluster.ctl(&["enroll-tokens", "list"]), "enroll-tokens list table");
    assert!(listed.contains(&id) && table.contains(&id) && table.contains("0/3"), "{listed}\n{table}");
    assert_no_secret(&format!("{listed}{table}"), &[&secret], "enroll-tokens list");

    let revoked = json(&cluster.ctl(&["enroll-tokens", "revoke", &id, "-o", "json"]), "enroll-tokens revoke");
    assert_eq!(revoked["revoked"], true, "{revoked}");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    let listed = ok_stdout(&cluster.ctl(&["enroll-tokens", "list", "-o", "json"]), "list after revoke");
    assert!(!listed.contains(&id), "revoked tokens are listed only with --all: {listed}");
    let all = ok_stdout(&cluster.ctl(&["enroll-tokens", "list", "--all", "-o", "yaml"]), "list --all");
    assert!(all.contains(&id) && all.contains("revoked: true"), "{all}");
    assert_eq!(code(&cluster.ctl(&["enroll-tokens", "revoke", "0badc0de"])), NOT_FOUND);
    let bad = cluster.ctl(&["enroll-tokens", "create", "--ttl", "2h", "--label", "bad key=x"]);
    assert_eq!(code(&bad), INVALID, "{}", text(&bad));

    let entries = audit(&cluster, &["--target", "enroll-token/"]);
    let target = format!("enroll-token/{id}");
    assert_audited(&entries, "AdminService/CreateEnrollToken", &target, "succeeded", &admin);
    assert_audited(&entries, "AdminService/RevokeEnrollToken", &target, "succeeded", &admin);
    assert_no_secret(&serde_json::to_string(&entries).expect("json"), &[&secret], "the audit log");
}

#[test]
fn concurrent_mutations_through_every_replica_get_distinct_dense_audit_sequences() {
    let cluster = three_replicas();
    let writers: Vec<_> = (0..9u64)
        .map(|n| {
            let config = cluster.dir.path().join("kairosctl.toml");
            let server = format!("https://{}", cluster.addresses[&(n % 3 + 1)]);
            std::thread::spawn(move || {
                let image = format!("quay.io/kairos/core-opensuse:v1.9.{n}");
                let out = std::process::Command::new(kairos_fleet_tests::binary("kairosctl"))
                    .args(["--config".as_ref(), config.as_os_str()])
                    .args(["--server", &server, "releases", "add", &image])
                    .output()
                    .expect("run kairosctl");
                assert!(out.status.success(), "releases add {image}: {}", text(&out));
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let entries = wait_for("9 audited AddRelease calls", Duration::from_secs(10), || {
        let entries = audit(&cluster, &["--oldest-first"]);
        let adds = entries.iter().filter(|e| e["method"] == "/kairos.fleet.v1.ReleaseService/AddRelease").count();
        (adds == 9).then_some(entries)
    });
    let sequences: Vec<u64> = entries.iter().filter_map(|e| e["sequence"].as_u64()).collect();
    let dense: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(sequences, dense, "one entry per sequence, none skipped: {entries:#?}");
}
