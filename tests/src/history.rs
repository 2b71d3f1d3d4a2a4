//! A checker of the rollout invariants over a recorded history.
//!
//! The history is what simulated nodes saw (`kairos-node-client simulate
//! --history`): every desired state received and every status transition
//! the control plane acknowledged, with the node's wall-clock time. From it
//! and the rollout's final state the checker proves:
//!
//! 1. **In flight**: never more than `max_unavailable` nodes between
//!    receiving a desired state and having their result acknowledged. A
//!    node receives its command after the control plane wrote it and gets
//!    its result acknowledged before the engine reads it, so each node's
//!    interval here lies inside the control plane's: exceeding the bound
//!    here means the control plane exceeded it.
//! 2. **One target**: a rollout never tells a node two different forward
//!    targets, and a generation never names two different desired states.
//! 3. **Nothing acknowledged is lost**: a node whose latest acknowledged
//!    result for its latest generation is HEALTHY ends HEALTHY in the
//!    rollout (FAILED ends FAILED unless retried later).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One line of a simulator's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix milliseconds on the node.
    pub t_ms: u64,
    /// The node.
    pub node: String,
    /// What happened.
    pub kind: Kind,
}

/// What happened to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A desired state arrived.
    Desired {
        /// Its generation.
        generation: u64,
        /// The rollout that wrote it.
        rollout: String,
        /// The image to run.
        image: String,
        /// A rollback's revert.
        rollback: bool,
    },
    /// The control plane acknowledged a status transition.
    Acked {
        /// The state entered (lowercase: `healthy`, `failed`, ...).
        state: String,
        /// The generation it refers to.
        generation: u64,
        /// The rollout it belongs to.
        rollout: String,
    },
    /// Anything else (cancel, connect, ...): counted, not checked.
    Other,
}

/// Parses JSON lines; lines that do not parse are returned as errors by
/// line number (a SIGKILLed writer may leave a torn last line, which is
/// skipped when it is the last).
pub fn parse(text: &str) -> Result<Vec<Record>, String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => return Err(format!("history line {}: {e}: {line}", i + 1)),
        };
        let s = |k: &str| value[k].as_str().unwrap_or_default().to_string();
        let n = |k: &str| value[k].as_u64().unwrap_or(0);
        let kind = match value["kind"].as_str() {
            Some("desired") => Kind::Desired {
                generation: n("generation"),
                rollout: s("rollout"),
                image: s("image"),
                rollback: value["rollback"].as_bool().unwrap_or(false),
            },
            Some("acked") => {
                Kind::Acked { state: s("state").to_lowercase(), generation: n("generation"), rollout: s("rollout") }
            }
            _ => Kind::Other,
        };
        out.push(Record { t_ms: n("t_ms"), node: s("node"), kind });
    }
    Ok(out)
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Records looked at.
    pub operations: usize,
    /// Most nodes in flight at once.
    pub max_in_flight: usize,
    /// Every broken invariant, in words.
    pub violations: Vec<String>,
}

const RESULTS: [&str; 4] = ["healthy", "failed", "rolled_back", "idle"];

/// Checks the history of rollout `rollout` against `max_unavailable` and
/// the final node states (`node id -> lowercase state` as the rollout
/// reports them: `healthy`, `failed`, `pending`, ...).
pub fn check(records: &[Record], rollout: &str, max_unavailable: usize, finals: &BTreeMap<String, String>) -> Verdict {
    let mut records: Vec<&Record> = records.iter().collect();
    records.sort_by_key(|r| r.t_ms);
    let mut verdict = Verdict { operations: records.len(), ..Verdict::default() };

    // 2. One forward target per node; one desired state per generation.
    let mut targets: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut by_generation: BTreeMap<(&str, u64), &str> = BTreeMap::new();
    for r in &records {
        if let Kind::Desired { generation, rollout: ro, image, rollback } = &r.kind {
            if let Some(seen) = by_generation.insert((&r.node, *generation), image) {
                if seen != image {
                    verdict
                        .violations
                        .push(format!("node {}: generation {generation} named two images: {seen} and {image}", r.node));
                }
            }
            if ro == rollout && !rollback {
                targets.entry(&r.node).or_default().insert(image);
            }
        }
    }
    for (node, images) in &targets {
        if images.len() > 1 {
            verdict.violations.push(format!("node {node}: rollout {rollout} gave two targets: {images:?}"));
        }
    }

    // 1. In flight: from the first receipt of a generation to the first
    // acknowledged result for it.
    let mut open: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    let mut closed: BTreeSet<(&str, u64)> = BTreeSet::new();
    for r in &records {
        match &r.kind {
            Kind::Desired { generation, rollout: ro, .. } if ro == rollout => {
                let key = (r.node.as_str(), *generation);
                if !closed.contains(&key) && !open.contains_key(&key) {
                    open.insert(key, r.t_ms);
                    // Per node, only the newest generation is in flight.
                    let older: Vec<(&str, u64)> =
                        open.keys().filter(|(n, g)| *n == r.node && *g < *generation).copied().collect();
                    for k in older {
                        open.remove(&k);
                        closed.insert(k);
                    }
                    let nodes: BTreeSet<&str> = open.keys().map(|(n, _)| *n).collect();
                    if nodes.len() > verdict.max_in_flight {
                        verdict.max_in_flight = nodes.len();
                    }
                    if nodes.len() > max_unavailable {
                        verdict.violations.push(format!(
                            "at {} ms {} nodes were in flight, more than max_unavailable {max_unavailable}",
                            r.t_ms,
                            nodes.len()
                        ));
                    }
                }
            }
            Kind::Acked { state, generation, rollout: ro } if ro == rollout && RESULTS.contains(&state.as_str()) => {
                let key = (r.node.as_str(), *generation);
                if open.remove(&key).is_some() {
                    closed.insert(key);
                }
            }
            _ => {}
        }
    }

    // 3. The latest acknowledged result of each node's latest generation.
    let mut latest_desired: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &records {
        if let Kind::Desired { generation, rollout: ro, .. } = &r.kind {
            if ro == rollout {
                let g = latest_desired.entry(&r.node).or_default();
                *g = (*g).max(*generation);
            }
        }
    }
    let mut last_result: BTreeMap<&str, &str> = BTreeMap::new();
    for r in &records {
        if let Kind::Acked { state, generation, rollout: ro } = &r.kind {
            let latest = latest_desired.get(r.node.as_str()) == Some(generation);
            if ro == rollout && latest && state != "idle" && RESULTS.contains(&state.as_str()) {
                last_result.insert(&r.node, state);
            }
        }
    }
    for (node, acked) in last_result {
        let want = match acked {
            "healthy" => "healthy",
            _ => "failed",
        };
        match finals.get(node).map(String::as_str) {
            Some(got) if got == want || (want == "healthy" && got == "rolled_back") => {}
            got => verdict.violations.push(format!(
                "node {node}: its {acked} result was acknowledged but the rollout ends with it {}",
                got.unwrap_or("missing")
            )),
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(t: u64, node: &str, generation: u64, image: &str) -> Record {
        Record {
            t_ms: t,
            node: node.into(),
            kind: Kind::Desired { generation, rollout: "r".into(), image: image.into(), rollback: false },
        }
    }

    fn acked(t: u64, node: &str, generation: u64, state: &str) -> Record {
        Record {
            t_ms: t,
            node: node.into(),
            kind: Kind::Acked { state: state.into(), generation, rollout: "r".into() },
        }
    }

    fn finals(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let h = vec![
            desired(1, "a", 1, "img"),
            desired(2, "b", 1, "img"),
            acked(3, "a", 1, "healthy"),
            desired(4, "c", 1, "img"),
            // A redelivery after the result does not reopen the node.
            desired(5, "a", 1, "img"),
            acked(6, "b", 1, "healthy"),
            acked(7, "c", 1, "healthy"),
        ];
        let v = check(&h, "r", 2, &finals(&[("a", "healthy"), ("b", "healthy"), ("c", "healthy")]));
        assert_eq!(v.violations, Vec::<String>::new());
        assert_eq!(v.max_in_flight, 2);
        assert_eq!(v.operations, 7);
    }

    #[test]
    fn too_many_in_flight_is_caught() {
        let h = vec![desired(1, "a", 1, "img"), desired(2, "b", 1, "img"), desired(3, "c", 1, "img")];
        let v = check(&h, "r", 2, &BTreeMap::new());
        assert_eq!(v.max_in_flight, 3);
        assert!(v.violations.iter().any(|m| m.contains("more than max_unavailable 2")), "{:?}", v.violations);
    }

    #[test]
    fn two_targets_and_a_reused_generation_are_caught() {
        let h = vec![desired(1, "a", 1, "img-1"), acked(2, "a", 1, "failed"), desired(3, "a", 1, "img-2")];
        let v = check(&h, "r", 5, &finals(&[("a", "failed")]));
        assert!(v.violations.iter().any(|m| m.contains("two targets")), "{:?}", v.violations);
        assert!(v.violations.iter().any(|m| m.contains("generation 1 named two images")), "{:?}", v.violations);
    }

    #[test]
    fn a_lost_acknowledged_result_is_caught() {
        let h = vec![desired(1, "a", 1, "img"), acked(2, "a", 1, "healthy")];
        let v = check(&h, "r", 1, &finals(&[("a", "pending")]));
        assert!(v.violations.iter().any(|m| m.contains("ends with it pending")), "{:?}", v.violations);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_a_torn_middle_line_is_an_error() {
        let text = "{\"t_ms\":1,\"kind\":\"desired\",\"node\":\"a\",\"generation\":1,\"rollout\":\"r\",\"image\":\"i\"}\n{\"t_ms\":2,\"ki";
        assert_eq!(parse(text).map(|r| r.len()), Ok(1));
        let torn = "{\"t_ms\":2,\"ki\n{\"t_ms\":1,\"kind\":\"other\"}\n";
        assert!(parse(torn).is_err());
    }
}

/// Checks invariant 1 as the control plane recorded it: `intervals` are
/// each node's `[commanded_at, finished_at)` of one rollout (Unix ms, from
/// `rollout status --nodes`). Under failover this is the authoritative
/// count: an acknowledgement lost with a dead or partitioned replica is
/// repeated after the reconnect, so a node can look in flight to itself
/// after the control plane has counted its result.
pub fn check_recorded(intervals: &[(u64, u64)], max_unavailable: usize) -> Verdict {
    let most = max_overlap(intervals);
    let mut verdict = Verdict { operations: intervals.len(), max_in_flight: most, violations: Vec::new() };
    if most > max_unavailable {
        verdict.violations.push(format!(
            "the control plane recorded {most} nodes in flight at once, more than max_unavailable {max_unavailable}"
        ));
    }
    for (start, end) in intervals {
        if end < start {
            verdict.violations.push(format!("a node finished at {end} ms, before it was commanded at {start} ms"));
        }
    }
    verdict
}

/// Most intervals `[start, end)` open at once.
pub fn max_overlap(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = intervals.iter().flat_map(|(s, e)| [(*s, 1), (*e, -1)]).collect();
    // An interval ending at t closes before one starting at t opens.
    edges.sort();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

#[cfg(test)]
mod overlap_tests {
    use super::max_overlap;

    #[test]
    fn overlaps_are_counted_and_touching_intervals_are_not() {
        assert_eq!(max_overlap(&[(0, 10), (5, 15), (10, 20)]), 2);
        assert_eq!(max_overlap(&[(0, 10), (10, 20)]), 1);
        assert_eq!(max_overlap(&[]), 0);
    }

    #[test]
    fn recorded_in_flight_beyond_max_unavailable_is_a_violation() {
        use super::check_recorded;
        let ok = check_recorded(&[(0, 10), (10, 20), (5, 12)], 2);
        assert_eq!((ok.max_in_flight, ok.violations.len()), (2, 0));
        let over = check_recorded(&[(0, 10), (1, 11), (2, 12)], 2);
        assert!(over.violations.iter().any(|v| v.contains("3 nodes in flight")), "{:?}", over.violations);
        let backwards = check_recorded(&[(10, 5)], 1);
        assert_eq!(backwards.violations.len(), 1, "{:?}", backwards.violations);
    }
}
