use super::*;

fn spec(s: &str) -> ReplicaSpec {
    s.parse().expect(s)
}

#[test]
fn replica_flag_parses_ipv4_names_and_bracketed_ipv6() {
    assert_eq!(spec("1=127.0.0.1:7001"), ReplicaSpec { id: 1, host: "127.0.0.1".into(), port: 7001 });
    assert_eq!(spec("2=CP-2.Example.com:7002").host, "cp-2.example.com");
    let v6 = spec("3=[::1]:7003");
    assert_eq!(
        (v6.host.as_str(), v6.address(), v6.endpoint()),
        ("::1", "[::1]:7003".into(), "https://[::1]:7003".into())
    );
}

#[test]
fn replica_flag_errors_name_the_flag_and_the_rule() {
    for (value, rule) in [
        ("127.0.0.1:7001", "ID=HOST:PORT"),
        ("x=127.0.0.1:7001", "whole number"),
        ("0=127.0.0.1:7001", "at least 1"),
        ("1=127.0.0.1", "needs a port"),
        ("1=127.0.0.1:0", "1 to 65535"),
        ("1=127.0.0.1:70000", "1 to 65535"),
        ("1=::1:7001", "brackets"),
        ("1=[nope]:7001", "IPv6"),
        ("1=0.0.0.0:7001", "not 0.0.0.0"),
        ("1=bad_host:7001", "DNS name"),
    ] {
        let err = value.parse::<ReplicaSpec>().expect_err(value).to_string();
        assert!(err.starts_with("--replica ") && err.contains(rule), "{value}: {err}");
    }
}

#[test]
fn replica_list_needs_unique_ids_and_addresses() {
    assert!(validate_replicas(&[spec("1=h:1"), spec("2=h:2")]).is_ok());
    let err = validate_replicas(&[spec("1=h:1"), spec("1=h:2")]).expect_err("dup id").to_string();
    assert!(err.contains("id 1 is given twice"), "{err}");
    let err = validate_replicas(&[spec("1=h:1"), spec("2=h:1")]).expect_err("dup addr").to_string();
    assert!(err.contains("address h:1 is given twice"), "{err}");
    assert!(validate_replicas(&[]).is_err());
}

#[test]
fn init_writes_credentials_that_load_and_configs_that_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions {
        data_dir: dir.path().join("cluster"),
        replicas: vec![spec("3=127.0.0.1:7003"), spec("1=127.0.0.1:7001")],
        force: false,
    };
    let report = init_cluster(&opts).expect("init");
    assert!(report.files.iter().all(|f| f.exists()), "{:?}", report.files);
    Ca::load(&opts.data_dir).expect("CA loads");

    // The first replica given bootstraps, whatever its id.
    let first = opts.data_dir.join("replica-3");
    let config = ReplicaConfig::load(&first).expect("replica.toml");
    assert!(config.bootstrap);
    assert_eq!(config.initial_members.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 1]);
    let second = opts.data_dir.join("replica-1");
    assert!(!ReplicaConfig::load(&second).expect("replica.toml").bootstrap);
    assert_eq!(BootstrapTokens::load(&second).expect("read"), None, "only the bootstrap replica seeds tokens");
    ReplicaCredentials::load(&second).expect("credentials load");

    let tokens = BootstrapTokens::load(&first).expect("read").expect("present").tokens;
    let token = std::fs::read_to_string(opts.data_dir.join(ADMIN_TOKEN_FILE)).expect("admin.token");
    let found = super::super::token::authenticate(token.trim(), 0, |id| tokens.iter().find(|t| &t.id == id));
    assert_eq!(found.map(|(_, role)| role), Ok(Role::Admin));

    let err = init_cluster(&opts).expect_err("second init").to_string();
    assert!(err.contains("ca.key") && err.contains("--force"), "{err}");
    init_cluster(&InitOptions { force: true, ..opts.clone() }).expect("forced init");
}

#[test]
fn init_never_replaces_keys_next_to_existing_raft_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions { data_dir: dir.path().into(), replicas: vec![spec("1=127.0.0.1:7001")], force: true };
    let store = crate::store::Store::sled_path(&replica_dir(dir.path(), 1));
    std::fs::create_dir_all(&store).expect("mkdir");
    let err = init_cluster(&opts).expect_err("store present").to_string();
    assert!(err.contains(&store.display().to_string()) && err.contains("move that folder away"), "{err}");
    assert!(!dir.path().join("ca.key").exists(), "nothing written");
}

#[test]
fn every_replica_gets_its_own_node_ca_and_an_old_folder_can_be_given_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions {
        data_dir: dir.path().into(),
        replicas: vec![spec("1=127.0.0.1:7001"), spec("2=127.0.0.1:7002")],
        force: false,
    };
    let report = init_cluster(&opts).expect("init");
    let mut subjects = Vec::new();
    for id in [1, 2] {
        let replica = replica_dir(dir.path(), id);
        assert!(report.files.contains(&replica.join(super::super::node_ca::NODE_CA_KEY_FILE)));
        let issuer = NodeIssuer::load(&replica).expect("node CA loads");
        subjects.push(issuer.cert_pem().to_string());
    }
    assert_ne!(subjects[0], subjects[1], "one intermediate per replica");

    // A replica folder from before node CAs: issue_node_ca gives it one.
    let replica = replica_dir(dir.path(), 2);
    for file in [super::super::node_ca::NODE_CA_CERT_FILE, super::super::node_ca::NODE_CA_KEY_FILE] {
        std::fs::remove_file(replica.join(file)).expect("remove");
    }
    assert!(NodeIssuer::load_if_present(&replica).expect("read").is_none());
    let written = issue_node_ca(dir.path(), 2, &replica).expect("issued");
    assert_eq!(written.len(), 2);
    NodeIssuer::load(&replica).expect("loads");

    // A folder of another cluster is refused.
    let other = tempfile::tempdir().expect("tempdir");
    let other_opts = InitOptions { data_dir: other.path().into(), ..opts };
    init_cluster(&other_opts).expect("other init");
    let err = issue_node_ca(dir.path(), 1, &replica_dir(other.path(), 1)).expect_err("other CA").to_string();
    assert!(err.contains("trusts another CA"), "{err}");
}
