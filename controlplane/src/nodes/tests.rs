use super::*;
use crate::fleet::identity::NodeIdentity;

const UBUNTU_RELEASE: &str = r#"KAIROS_FLAVOR="ubuntu"
KAIROS_FLAVOR_RELEASE="22.04"
KAIROS_VARIANT="standard"
KAIROS_MODEL="generic"
KAIROS_ARCH="amd64"
KAIROS_RELEASE="v2.4.2"
KAIROS_SOFTWARE_VERSION="v1.27.6+k3s1"
KAIROS_SOFTWARE_VERSION_PREFIX="k3s"
KAIROS_IMAGE_REPO="quay.io/kairos/ubuntu:22.04-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1"
"#;

#[test]
fn wire_identity_round_trips_through_the_release_file_parser() {
    let domain = NodeIdentity::parse(UBUNTU_RELEASE).expect("valid release file");
    let wire = identity_to_pb(&domain, "/etc/kairos-release");
    let back = identity_from_pb(&wire).expect("rendered identity parses");
    assert_eq!(back, domain);
    assert_eq!(wire.software_version, "v1.27.6+k3s1");
    assert_eq!(wire.arch, "amd64");
}

#[test]
fn wire_identity_with_shell_metacharacters_is_refused_naming_the_field() {
    let domain = NodeIdentity::parse(UBUNTU_RELEASE).expect("valid release file");
    let mut wire = identity_to_pb(&domain, "/etc/kairos-release");
    wire.model = "generic\"\nKAIROS_ARCH=\"arm64".into();
    let err = identity_from_pb(&wire).expect_err("injection refused");
    assert_eq!(err.field, "identity.model");
}

#[test]
fn wire_identity_without_a_release_is_refused() {
    let domain = NodeIdentity::parse(UBUNTU_RELEASE).expect("valid release file");
    let mut wire = identity_to_pb(&domain, "/etc/kairos-release");
    wire.release.clear();
    wire.version.clear();
    wire.image_repo.clear();
    let err = identity_from_pb(&wire).expect_err("no release");
    assert!(err.rule.contains("release"), "{err}");
    assert_eq!(err.field, "identity.release");
}

#[test]
fn wire_identity_with_a_bad_value_names_the_wire_field() {
    let domain = NodeIdentity::parse(UBUNTU_RELEASE).expect("valid release file");
    let mut wire = identity_to_pb(&domain, "/etc/kairos-release");
    wire.arch = "sparc".into();
    assert_eq!(identity_from_pb(&wire).expect_err("bad arch").field, "identity.arch");
    let mut wire = identity_to_pb(&domain, "/etc/kairos-release");
    wire.release = "two".into();
    let err = identity_from_pb(&wire).expect_err("bad release");
    assert_eq!(err.field, "identity.release");
    assert!(err.to_string().starts_with("identity.release: KAIROS_RELEASE: release: must be"), "{err}");
}

#[test]
fn node_ids_must_be_machine_ids() {
    assert!(check_node_id("node_id", "0123456789abcdef0123456789abcdef").is_ok());
    let err = check_node_id("node_id", "../etc").expect_err("not hex");
    assert!(err.starts_with("node_id: must be a machine id"), "{err}");
    assert!(check_node_id("node_id", "0123456789ABCDEF0123456789ABCDEF").is_err());
}

#[test]
fn enrollment_labels_win_over_node_labels() {
    let mut r = NodeRecord::default();
    r.node_labels.insert("site".into(), "node-says".into());
    r.node_labels.insert("rack".into(), "7".into());
    r.enrollment_labels.insert("site".into(), "berlin".into());
    let labels = r.labels();
    assert_eq!(labels["site"], "berlin");
    assert_eq!(labels["rack"], "7");
}

#[test]
fn session_records_encode_deterministically_for_value_compares() {
    let s = SessionRecord { replica_id: 2, session_id: 77, connected_at_ms: 1_700_000_000_000 };
    assert_eq!(s.encode(), s.clone().encode());
    let kv = KeyValue { value: s.encode(), create_revision: 1, mod_revision: 1, version: 1 };
    assert_eq!(decode_session("k", &kv).expect("decodes"), s);
}

#[test]
fn timestamps_round_trip_in_milliseconds() {
    assert_eq!(timestamp_ms(0), None);
    let ts = timestamp_ms(1_700_000_000_123);
    assert_eq!(ms_of_timestamp(ts.as_ref()), 1_700_000_000_123);
    assert_eq!(ms_of_timestamp(Some(&prost_types::Timestamp { seconds: -5, nanos: 0 })), 0);
}

#[test]
fn facts_carry_the_parsed_identity_labels_and_k3s_role() {
    let domain = NodeIdentity::parse(UBUNTU_RELEASE).expect("valid release file");
    let mut r = NodeRecord {
        node_id: "0123456789abcdef0123456789abcdef".into(),
        identity: Some(identity_to_pb(&domain, "/etc/kairos-release")),
        k3s: Some(pb::K3sMembership { role: pb::K3sRole::Server as i32, cluster_name: "edge-a".into() }),
        ..Default::default()
    };
    r.enrollment_labels.insert("site".into(), "berlin".into());
    let f = facts(&r).expect("facts");
    assert_eq!(f.family, domain.family());
    assert_eq!(f.release, domain.release);
    assert_eq!(f.software, domain.software);
    assert_eq!(f.labels["site"], "berlin");
    assert!(f.k3s.as_ref().is_some_and(|k| k.is_server() && k.cluster == "edge-a"), "{:?}", f.k3s);
    r.k3s = Some(pb::K3sMembership { role: pb::K3sRole::Unspecified as i32, cluster_name: String::new() });
    assert_eq!(facts(&r).expect("facts").k3s, None, "no role: not in a cluster");
    r.identity = None;
    assert_eq!(facts(&r).expect_err("no identity").field, "identity");
}
