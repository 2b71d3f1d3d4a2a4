//! Reading kairosctl's `-o json` output in tests.

use std::collections::BTreeMap;

use serde_json::Value;

/// `text` parsed as JSON; panics with the text when it is not.
pub fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The first string under `key` anywhere in `v` (depth first).
pub fn find_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match v {
        Value::Object(map) => {
            map.get(key).and_then(Value::as_str).or_else(|| map.values().find_map(|child| find_str(child, key)))
        }
        Value::Array(items) => items.iter().find_map(|child| find_str(child, key)),
        _ => None,
    }
}

/// The first array under `key` anywhere in `v` (depth first).
pub fn find_array<'a>(v: &'a Value, key: &str) -> Option<&'a Vec<Value>> {
    match v {
        Value::Object(map) => {
            map.get(key).and_then(Value::as_array).or_else(|| map.values().find_map(|child| find_array(child, key)))
        }
        Value::Array(items) => items.iter().find_map(|child| find_array(child, key)),
        _ => None,
    }
}

/// A phase or state name in one spelling: lowercase, `_` for `-` and ` `.
pub fn normalized(s: &str) -> String {
    s.to_ascii_lowercase().replace(['-', ' '], "_")
}

/// The phase of a rollout status (`rollout status -o json`), normalized.
pub fn phase_of(status: &Value) -> String {
    normalized(find_str(status, "phase").unwrap_or_default())
}

/// Node id → state (normalized) of a rollout status with `--nodes`.
pub fn node_states(status: &Value) -> BTreeMap<String, String> {
    find_array(status, "nodes")
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| Some((n["node_id"].as_str()?.to_string(), normalized(n["state"].as_str()?))))
                .collect()
        })
        .unwrap_or_default()
}

/// How many nodes of a rollout status with `--nodes` are healthy.
pub fn healthy_nodes(status: &Value) -> usize {
    node_states(status).values().filter(|state| *state == "healthy").count()
}
