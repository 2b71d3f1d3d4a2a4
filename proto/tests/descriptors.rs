//! The embedded descriptor sets describe the API the product promises, and
//! every element of the public API carries its reference comment.

use std::collections::{BTreeMap, BTreeSet};

use kairos_fleet_proto::{FILE_DESCRIPTOR_SET, RAFT_FILE_DESCRIPTOR_SET};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

const FLEET_PACKAGE: &str = "kairos.fleet.v1";

mod support;
use support::*;

fn decode(bytes: &[u8]) -> FileDescriptorSet {
    FileDescriptorSet::decode(bytes).expect("embedded descriptor set decodes")
}

fn fleet_files(set: &FileDescriptorSet) -> Vec<&FileDescriptorProto> {
    set.file.iter().filter(|f| f.package() == FLEET_PACKAGE).collect()
}

/// `(service name, method name, client streaming, server streaming)` of every RPC in `set`.
fn methods(set: &FileDescriptorSet, package: &str) -> BTreeMap<String, BTreeSet<(String, bool, bool)>> {
    let mut out: BTreeMap<String, BTreeSet<(String, bool, bool)>> = BTreeMap::new();
    for file in set.file.iter().filter(|f| f.package() == package) {
        for service in &file.service {
            let entry = out.entry(service.name().to_string()).or_default();
            for m in &service.method {
                entry.insert((m.name().to_string(), m.client_streaming(), m.server_streaming()));
            }
        }
    }
    out
}

fn unary(names: &[&str]) -> BTreeSet<(String, bool, bool)> {
    names.iter().map(|n| (n.to_string(), false, false)).collect()
}

#[test]
fn public_set_has_the_six_services_with_their_methods() {
    let set = decode(FILE_DESCRIPTOR_SET);
    let got = methods(&set, FLEET_PACKAGE);

    let mut want: BTreeMap<String, BTreeSet<(String, bool, bool)>> = BTreeMap::new();
    let mut node = unary(&["Enroll"]);
    node.insert(("Connect".into(), true, true));
    want.insert("NodeService".into(), node);
    let mut fleet = unary(&["ListNodes", "GetNode", "FleetReport"]);
    fleet.insert(("WatchNodes".into(), false, true));
    want.insert("FleetService".into(), fleet);
    want.insert("ReleaseService".into(), unary(&["ListReleases", "AddRelease", "SyncReleases"]));
    let mut rollout = unary(&["Plan", "Create", "Get", "List", "Pause", "Resume", "Abort", "Approve", "Rollback"]);
    rollout.insert(("Watch".into(), false, true));
    want.insert("RolloutService".into(), rollout);
    want.insert("ClusterService".into(), unary(&["Status", "AddReplica", "RemoveReplica"]));
    want.insert(
        "AdminService".into(),
        unary(&[
            "CreateToken",
            "ListTokens",
            "RevokeToken",
            "CreateEnrollToken",
            "ListEnrollTokens",
            "RevokeEnrollToken",
            "ListAudit",
        ]),
    );
    assert_eq!(got, want);
}

#[test]
fn public_set_carries_well_known_imports_but_not_the_raft_service() {
    let set = decode(FILE_DESCRIPTOR_SET);
    let names: BTreeSet<&str> = set.file.iter().map(|f| f.name()).collect();
    assert!(names.contains("google/protobuf/timestamp.proto"), "{names:?}");
    assert!(names.contains("google/protobuf/duration.proto"), "{names:?}");
    assert!(set.file.iter().all(|f| !f.package().starts_with("kairos.raft")), "{names:?}");
}

#[test]
fn raft_set_has_the_openraft_transport_methods() {
    let set = decode(RAFT_FILE_DESCRIPTOR_SET);
    let got = methods(&set, "kairos.raft.v1");
    let mut want = unary(&["AppendEntries", "Vote", "InstallSnapshot", "ForwardWrite"]);
    want.insert(("StreamSnapshot".into(), true, false));
    assert_eq!(got.get("RaftService"), Some(&want));
}

/// Source locations (descriptor paths) of `file` that have a non-blank leading comment.
fn commented_paths(file: &FileDescriptorProto) -> BTreeSet<Vec<i32>> {
    let info = file.source_code_info.as_ref().expect("protox keeps source info");
    info.location.iter().filter(|l| !l.leading_comments().trim().is_empty()).map(|l| l.path.clone()).collect()
}

/// Walks every element of a message, recording `(element name, path)`.
fn walk_message(msg: &DescriptorProto, prefix: &str, path: Vec<i32>, out: &mut Vec<(String, Vec<i32>)>) {
    let name = format!("{prefix}.{}", msg.name());
    out.push((format!("message {name}"), path.clone()));
    for (i, field) in msg.field.iter().enumerate() {
        out.push((format!("field {name}.{}", field.name()), [&path[..], &[MESSAGE_FIELD, i as i32]].concat()));
    }
    for (i, oneof) in msg.oneof_decl.iter().enumerate() {
        // proto3 `optional` fields get a synthetic oneof that has no source.
        if oneof.name().starts_with('_') {
            continue;
        }
        out.push((format!("oneof {name}.{}", oneof.name()), [&path[..], &[MESSAGE_ONEOF_DECL, i as i32]].concat()));
    }
    for (i, nested) in msg.nested_type.iter().enumerate() {
        // Map entry types are synthesized from `map<,>` fields.
        if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        walk_message(nested, &name, [&path[..], &[MESSAGE_NESTED_TYPE, i as i32]].concat(), out);
    }
    for (i, e) in msg.enum_type.iter().enumerate() {
        walk_enum(e, &name, [&path[..], &[MESSAGE_ENUM_TYPE, i as i32]].concat(), out);
    }
}

fn walk_enum(e: &EnumDescriptorProto, prefix: &str, path: Vec<i32>, out: &mut Vec<(String, Vec<i32>)>) {
    let name = format!("{prefix}.{}", e.name());
    out.push((format!("enum {name}"), path.clone()));
    for (i, v) in e.value.iter().enumerate() {
        out.push((format!("value {name}.{}", v.name()), [&path[..], &[ENUM_VALUE, i as i32]].concat()));
    }
}

#[test]
fn every_public_element_has_a_leading_comment() {
    let set = decode(FILE_DESCRIPTOR_SET);
    let mut missing = Vec::new();
    let mut fields = 0;
    for file in fleet_files(&set) {
        let commented = commented_paths(file);
        let mut elements = Vec::new();
        for (i, msg) in file.message_type.iter().enumerate() {
            walk_message(msg, FLEET_PACKAGE, vec![FILE_MESSAGE_TYPE, i as i32], &mut elements);
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            walk_enum(e, FLEET_PACKAGE, vec![FILE_ENUM_TYPE, i as i32], &mut elements);
        }
        for (i, service) in file.service.iter().enumerate() {
            let name = format!("{FLEET_PACKAGE}.{}", service.name());
            elements.push((format!("service {name}"), vec![FILE_SERVICE, i as i32]));
            for (j, m) in service.method.iter().enumerate() {
                elements
                    .push((format!("rpc {name}.{}", m.name()), vec![FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32]));
            }
        }
        fields += elements.iter().filter(|(what, _)| what.starts_with("field ")).count();
        missing.extend(
            elements
                .into_iter()
                .filter(|(_, path)| !commented.contains(path))
                .map(|(what, _)| format!("{}: {what}", file.name())),
        );
    }
    assert!(fields > 300, "walked only {fields} fields; is the walk broken?");
    assert!(missing.is_empty(), "elements without a leading comment:\n{}", missing.join("\n"));
}

/// `NodeOrderBy` → `NODE_ORDER_BY`, `K3sRole` → `K3S_ROLE`.
fn screaming_snake(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn every_enum_starts_with_unspecified_and_prefixes_its_values() {
    let set = decode(FILE_DESCRIPTOR_SET);
    let mut enums: Vec<&EnumDescriptorProto> = Vec::new();
    for file in fleet_files(&set) {
        enums.extend(&file.enum_type);
        let mut stack: Vec<&DescriptorProto> = file.message_type.iter().collect();
        while let Some(msg) = stack.pop() {
            enums.extend(&msg.enum_type);
            stack.extend(&msg.nested_type);
        }
    }
    assert!(enums.len() > 20, "found only {} enums", enums.len());
    for e in enums {
        let prefix = format!("{}_", screaming_snake(e.name()));
        let first = &e.value[0];
        assert_eq!((first.name(), first.number()), (format!("{prefix}UNSPECIFIED").as_str(), 0), "{}", e.name());
        for v in &e.value {
            assert!(v.name().starts_with(&prefix), "{} value {} lacks prefix {prefix}", e.name(), v.name());
        }
    }
}

#[test]
fn every_rollout_strategy_field_has_presence() {
    let set = decode(FILE_DESCRIPTOR_SET);
    let strategy = fleet_files(&set)
        .into_iter()
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == "RolloutStrategy")
        .expect("RolloutStrategy exists");
    for field in &strategy.field {
        // Unset must be distinguishable from a zero value so the change-class
        // default applies: proto3 `optional`, a message (Duration), or a
        // repeated field whose empty value means "default".
        let has_presence =
            field.proto3_optional() || field.r#type() == Type::Message || field.label() == Label::Repeated;
        assert!(has_presence, "RolloutStrategy.{} has no presence", field.name());
    }
}
