//! `docs/api.md`, the API reference, is rendered from the comments of the
//! public `.proto` files (the embedded descriptor set keeps them), so it
//! cannot drift from the API: this test renders it and compares. Run with
//! `UPDATE_API_REFERENCE=1` to rewrite the file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use kairos_fleet_proto::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

const PACKAGE: &str = "kairos.fleet.v1";
const UPDATE_COMMAND: &str = "UPDATE_API_REFERENCE=1 cargo test -p kairos-fleet-proto --test api_reference";

mod support;
use support::*;

/// The comments of one file, by descriptor path.
struct Comments(BTreeMap<Vec<i32>, String>);

impl Comments {
    fn of(file: &FileDescriptorProto) -> Comments {
        let locations = file.source_code_info.iter().flat_map(|info| &info.location);
        Comments(
            locations
                .filter_map(|l| {
                    let text = l.leading_comments.as_deref().or(l.trailing_comments.as_deref())?;
                    Some((l.path.clone(), unindent(text)))
                })
                .collect(),
        )
    }

    /// The comment at `path` as paragraphs (lines kept), or "".
    fn block(&self, path: &[i32]) -> &str {
        self.0.get(path).map(String::as_str).unwrap_or_default()
    }

    /// The comment at `path` on one line, fit for a table cell.
    fn cell(&self, path: &[i32]) -> String {
        self.block(path).split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|")
    }
}

/// A proto comment without the space after each `//` and without the
/// blank lines around it.
fn unindent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end()).collect();
    lines.join("\n").trim_matches('\n').to_string()
}

/// `path` with `steps` appended.
fn child(path: &[i32], steps: &[i32]) -> Vec<i32> {
    [path, steps].concat()
}

fn index(i: usize) -> i32 {
    i32::try_from(i).expect("fewer than 2^31 elements")
}

/// A Markdown link to the reference entry of type `full_name`
/// (`.kairos.fleet.v1.Node`); other packages' types are named in full.
fn type_link(full_name: &str) -> String {
    match full_name.strip_prefix(&format!(".{PACKAGE}.")) {
        Some(name) => format!("[`{name}`](#{})", anchor(name)),
        None => format!("`{}`", full_name.trim_start_matches('.')),
    }
}

/// The anchor GitHub gives a heading: lowercase, dots dropped.
fn anchor(heading: &str) -> String {
    heading.to_ascii_lowercase().replace('.', "")
}

fn scalar_name(ty: Type) -> &'static str {
    match ty {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
        Type::Group | Type::Message | Type::Enum => "message",
    }
}

/// The type of `field` as the reference shows it: scalars by name,
/// messages and enums as links, `repeated`, `optional` and `map<K, V>`.
fn field_type(field: &FieldDescriptorProto, msg: &DescriptorProto) -> String {
    let base = |f: &FieldDescriptorProto| match f.r#type() {
        Type::Message | Type::Enum | Type::Group => type_link(f.type_name()),
        scalar => format!("`{}`", scalar_name(scalar)),
    };
    let entry_name = field.type_name().rsplit('.').next().unwrap_or_default();
    let map_entry =
        msg.nested_type.iter().find(|n| n.name() == entry_name && n.options.as_ref().is_some_and(|o| o.map_entry()));
    if let (Some(entry), Label::Repeated) = (map_entry, field.label()) {
        let key = entry.field.iter().find(|f| f.number() == 1).map(base).unwrap_or_default();
        let value = entry.field.iter().find(|f| f.number() == 2).map(base).unwrap_or_default();
        return format!("map<{key}, {value}>");
    }
    match field.label() {
        Label::Repeated => format!("repeated {}", base(field)),
        _ if field.proto3_optional() => format!("optional {}", base(field)),
        _ => base(field),
    }
}

/// The reference in Markdown.
fn render(set: &FileDescriptorSet) -> String {
    let files: Vec<&FileDescriptorProto> = set.file.iter().filter(|f| f.package() == PACKAGE).collect();
    let mut services = String::new();
    let mut messages = String::new();
    let mut enums = String::new();
    for file in &files {
        let comments = Comments::of(file);
        for (i, service) in file.service.iter().enumerate() {
            render_service(&mut services, file, service, &comments, &[FILE_SERVICE, index(i)]);
        }
        for (i, msg) in file.message_type.iter().enumerate() {
            render_message(&mut messages, &mut enums, file, "", msg, &comments, &[FILE_MESSAGE_TYPE, index(i)]);
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            render_enum(&mut enums, file, "", e, &comments, &[FILE_ENUM_TYPE, index(i)]);
        }
    }
    let mut out = format!(
        "# API reference: `{PACKAGE}`\n\n\
         The public gRPC API of Kairos Fleet, generated from the comments in \
         `proto/kairos/fleet/v1/*.proto`. Do not edit by hand: change the comments, then run\n\
         `{UPDATE_COMMAND}`.\n\n\
         Operator calls authenticate with `authorization: Bearer <token>` metadata over TLS \
         (the cluster CA); nodes with their mTLS client certificate. The Python example in \
         [examples/python](../examples/python/README.md) calls FleetService and RolloutService.\n\n"
    );
    out.push_str(&contents(&files));
    out.push_str("## Services\n\n");
    out.push_str(&services);
    out.push_str("## Messages\n\n");
    out.push_str(&messages);
    out.push_str("## Enums\n\n");
    out.push_str(&enums);
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// Links to every service, message and enum, one line each kind.
fn contents(files: &[&FileDescriptorProto]) -> String {
    let links = |names: Vec<String>| names.iter().map(|n| format!("[{n}](#{})", anchor(n))).collect::<Vec<_>>();
    let mut services = Vec::new();
    let mut messages = Vec::new();
    let mut enums = Vec::new();
    for file in files {
        services.extend(file.service.iter().map(|s| s.name().to_string()));
        let mut stack: Vec<(String, &DescriptorProto)> = file.message_type.iter().map(|m| (String::new(), m)).collect();
        enums.extend(file.enum_type.iter().map(|e| e.name().to_string()));
        while let Some((prefix, msg)) = stack.pop() {
            if msg.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            let name = format!("{prefix}{}", msg.name());
            enums.extend(msg.enum_type.iter().map(|e| format!("{name}.{}", e.name())));
            stack.extend(msg.nested_type.iter().map(|n| (format!("{name}."), n)));
            messages.push(name);
        }
    }
    messages.sort();
    enums.sort();
    format!(
        "**Services:** {}\n\n**Messages:** {}\n\n**Enums:** {}\n\n",
        links(services).join(" · "),
        links(messages).join(" · "),
        links(enums).join(" · ")
    )
}

fn render_service(
    out: &mut String,
    file: &FileDescriptorProto,
    service: &prost_types::ServiceDescriptorProto,
    comments: &Comments,
    path: &[i32],
) {
    let _ = writeln!(out, "### {}\n\n{}\n\nDefined in `{}`.\n", service.name(), comments.block(path), file.name());
    out.push_str("| RPC | Request | Response | Description |\n|---|---|---|---|\n");
    for (i, method) in service.method.iter().enumerate() {
        let stream = |streaming: bool| if streaming { "stream " } else { "" };
        let _ = writeln!(
            out,
            "| `{}` | {}{} | {}{} | {} |",
            method.name(),
            stream(method.client_streaming()),
            type_link(method.input_type()),
            stream(method.server_streaming()),
            type_link(method.output_type()),
            comments.cell(&child(path, &[SERVICE_METHOD, index(i)])),
        );
    }
    out.push('\n');
}

fn render_message(
    out: &mut String,
    enums: &mut String,
    file: &FileDescriptorProto,
    prefix: &str,
    msg: &DescriptorProto,
    comments: &Comments,
    path: &[i32],
) {
    let name = format!("{prefix}{}", msg.name());
    let _ = writeln!(out, "### {name}\n\n{}\n\nDefined in `{}`.\n", comments.block(path), file.name());
    // Real oneofs only: a proto3 `optional` field sits in a synthetic one.
    let oneof_of = |field: &FieldDescriptorProto| {
        field.oneof_index.filter(|_| !field.proto3_optional()).and_then(|i| {
            let i = usize::try_from(i).ok()?;
            Some((i, msg.oneof_decl.get(i)?.name()))
        })
    };
    for (i, oneof) in msg.oneof_decl.iter().enumerate() {
        if msg.field.iter().any(|f| oneof_of(f).is_some_and(|(j, _)| j == i)) {
            let comment = comments.cell(&child(path, &[MESSAGE_ONEOF_DECL, index(i)]));
            let _ = writeln!(out, "Oneof `{}`: {comment} At most one of its fields is set.\n", oneof.name());
        }
    }
    if msg.field.is_empty() {
        out.push_str("No fields.\n\n");
    } else {
        out.push_str("| Field | Number | Type | Description |\n|---|---|---|---|\n");
        for (i, field) in msg.field.iter().enumerate() {
            let mut description = comments.cell(&child(path, &[MESSAGE_FIELD, index(i)]));
            if let Some((_, oneof)) = oneof_of(field) {
                description = format!("Oneof `{oneof}`. {description}");
            }
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {description} |",
                field.name(),
                field.number(),
                field_type(field, msg)
            );
        }
        out.push('\n');
    }
    for (i, nested) in msg.nested_type.iter().enumerate() {
        if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        let nested_path = child(path, &[MESSAGE_NESTED_TYPE, index(i)]);
        render_message(out, enums, file, &format!("{name}."), nested, comments, &nested_path);
    }
    for (i, e) in msg.enum_type.iter().enumerate() {
        render_enum(enums, file, &format!("{name}."), e, comments, &child(path, &[MESSAGE_ENUM_TYPE, index(i)]));
    }
}

fn render_enum(
    out: &mut String,
    file: &FileDescriptorProto,
    prefix: &str,
    e: &EnumDescriptorProto,
    comments: &Comments,
    path: &[i32],
) {
    let _ = writeln!(out, "### {prefix}{}\n\n{}\n\nDefined in `{}`.\n", e.name(), comments.block(path), file.name());
    out.push_str("| Value | Number | Description |\n|---|---|---|\n");
    for (i, value) in e.value.iter().enumerate() {
        let comment = comments.cell(&child(path, &[ENUM_VALUE, index(i)]));
        let _ = writeln!(out, "| `{}` | {} | {comment} |", value.name(), value.number());
    }
    out.push('\n');
}

fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md")
}

#[test]
fn docs_api_md_is_the_reference_rendered_from_the_proto_comments() {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("embedded descriptor set decodes");
    let rendered = render(&set);
    let path = reference_path();
    if std::env::var_os("UPDATE_API_REFERENCE").is_some() {
        std::fs::write(&path, &rendered).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == rendered,
        "{} is not the reference the proto comments give (first difference at line {}); run `{UPDATE_COMMAND}`",
        path.display(),
        first_difference(&on_disk, &rendered),
    );
}

/// The 1-based number of the first line where `a` and `b` differ.
fn first_difference(a: &str, b: &str) -> usize {
    let mut lines = a.lines().zip(b.lines());
    lines.position(|(x, y)| x != y).unwrap_or_else(|| a.lines().count().min(b.lines().count())) + 1
}

#[test]
fn the_reference_has_every_service_rpc_message_field_and_enum() {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("embedded descriptor set decodes");
    let rendered = render(&set);
    let watch =
        "| `Watch` | [`WatchRolloutsRequest`](#watchrolloutsrequest) | stream [`RolloutEvent`](#rolloutevent) |";
    assert!(rendered.contains(watch), "server streaming is marked: {watch}");
    assert!(rendered.contains("| `Connect` | stream [`NodeMessage`](#nodemessage) | stream "), "bidi streaming");
    assert!(rendered.contains("| `labels` | 8 | map<`string`, `string`> |"), "map fields");
    assert!(rendered.contains("| `max_unavailable` | 2 | optional `uint32` |"), "proto3 optional fields");
    assert!(rendered.contains("`google.protobuf.Timestamp`"), "well-known types are named in full");
    assert!(!rendered.contains("### Timestamp"), "google.protobuf files are not documented");
    assert!(rendered.contains("| `ROLLOUT_PHASE_PAUSED` | 6 | Stopped by an operator or by a tripped failure"));
    for file in set.file.iter().filter(|f| f.package() == PACKAGE) {
        for service in &file.service {
            assert!(rendered.contains(&format!("### {}\n", service.name())), "{}", service.name());
            for method in &service.method {
                let row = format!("| `{}` | ", method.name());
                assert!(rendered.contains(&row), "{}.{} has its row", service.name(), method.name());
            }
        }
        for msg in &file.message_type {
            assert!(rendered.contains(&format!("### {}\n", msg.name())), "{}", msg.name());
            for field in &msg.field {
                let row = format!("| `{}` | {} | ", field.name(), field.number());
                assert!(rendered.contains(&row), "{}.{} has its row", msg.name(), field.name());
            }
        }
        for e in &file.enum_type {
            assert!(rendered.contains(&format!("### {}\n", e.name())), "{}", e.name());
        }
    }
}
