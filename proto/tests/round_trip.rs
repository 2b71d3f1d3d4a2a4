//! Generated messages survive an encode/decode round trip with every field intact.

use kairos_fleet_proto::fleet::v1::{
    node_message, server_message, BootState, DesiredState, ExecutorHints, Hello, K3sMembership, K3sRole, NodeIdentity,
    NodeMessage, NodeState, RolloutStrategy, ServerMessage, StatusUpdate,
};
use prost::Message;

fn hello() -> Hello {
    Hello {
        identity: Some(NodeIdentity {
            flavor: "opensuse".into(),
            flavor_release: "leap-15.5".into(),
            variant: "standard".into(),
            model: "generic".into(),
            arch: "amd64".into(),
            release: "v2.4.2".into(),
            version: "v2.4.2-v1.27.6-k3s1".into(),
            software_version: "v1.27.6+k3s1".into(),
            software_version_prefix: "k3s".into(),
            image_repo: "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1".into(),
            trusted_boot: false,
            fips: true,
            image_label: "leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1".into(),
            release_file: "/etc/kairos-release".into(),
        }),
        boot_state: BootState::Passive as i32,
        upgrade_failure: true,
        labels: [("site".to_string(), "berlin".to_string()), ("fleet.kairos.io/wave".into(), "canary".into())]
            .into_iter()
            .collect(),
        k3s: Some(K3sMembership { role: K3sRole::Server as i32, cluster_name: "store-42".into() }),
        client_version: "0.1.0".into(),
        current_image_ref: "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.2-k3sv1.27.6-k3s1".into(),
        current_image_digest: format!("sha256:{}", "a".repeat(64)),
        previous_image_ref: "quay.io/kairos/opensuse:leap-15.5-standard-amd64-generic-v2.4.1-k3sv1.27.6-k3s1".into(),
        previous_image_digest: format!("sha256:{}", "b".repeat(64)),
        hostname: "pos-7".into(),
        boot_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
        last_status: Some(StatusUpdate {
            seq: 7,
            state: NodeState::RolledBack as i32,
            rollout_id: "r-1".into(),
            generation: 3,
            ..Default::default()
        }),
    }
}

#[test]
fn node_message_hello_round_trips() {
    let msg = NodeMessage { body: Some(node_message::Body::Hello(hello())) };
    let bytes = msg.encode_to_vec();
    let back = NodeMessage::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back, msg);
    let Some(node_message::Body::Hello(h)) = back.body else { panic!("not a hello: {back:?}") };
    assert_eq!(h.boot_state(), BootState::Passive);
    assert_eq!(h.k3s.map(|k| k.role()), Some(K3sRole::Server));
    assert_eq!(h.last_status.map(|s| s.state()), Some(NodeState::RolledBack));
}

#[test]
fn server_message_desired_state_round_trips() {
    let msg = ServerMessage {
        body: Some(server_message::Body::DesiredState(DesiredState {
            generation: 4,
            rollout_id: "r-1".into(),
            wave: 1,
            target_image_ref: "quay.io/kairos/ubuntu:22.04-core-amd64-generic-v2.4.3".into(),
            target_release: "v2.4.3".into(),
            deadline: Some(prost_types::Timestamp { seconds: 1_700_003_600, nanos: 0 }),
            executor: Some(ExecutorHints {
                name: String::new(),
                recovery: false,
                timeout: Some(prost_types::Duration { seconds: 900, nanos: 0 }),
            }),
            ..Default::default()
        })),
    };
    assert_eq!(ServerMessage::decode(msg.encode_to_vec().as_slice()).expect("decodes"), msg);
}

#[test]
fn unset_strategy_fields_stay_distinguishable_from_zero() {
    let unset = RolloutStrategy::default();
    assert!(unset.encode_to_vec().is_empty());
    let zero = RolloutStrategy { max_unavailable: Some(0), approve_waves: Some(false), ..Default::default() };
    let back = RolloutStrategy::decode(zero.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back.max_unavailable, Some(0));
    assert_eq!(back.approve_waves, Some(false));
    assert_eq!(back.urgent, None);
}
