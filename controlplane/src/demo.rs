//! The demo: a simulated fleet across every flavor, variant and architecture
//! of the support matrix, upgraded by a staged patch rollout.
//!
//! It runs the real domain — versioning policy, wave planner, rollout state
//! machine — against simulated nodes on simulated time, so a rollout that
//! would take hours on devices plays out in seconds. One image family's
//! canary fails on purpose: the rollout pauses and says why, the operator
//! fixes the image and resumes, and the run ends with the fleet report.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{self, Write};
use std::time::Duration;

use semver::Version;
use sha2::{Digest, Sha256};

use crate::fleet::image::{ImageRef, RegistryPrefix, TagGrammar};
use crate::fleet::matrix::SEED_FLAVORS;
use crate::fleet::model::{ImageFamily, K3sMembership, K3sRole, NodeFacts, NodeId, SoftwareVersion, Target, Variant};
use crate::fleet::planner::plan_waves;
use crate::fleet::policy::{check_move, resolve_destination, ChangeClass, PolicyOptions, ReleaseCatalog};
use crate::fleet::report::FleetReport;
use crate::fleet::rollout::{Action, Event, NodeAssignment, NodeReport, Phase, Rollout, RolloutEvent};
use crate::fleet::strategy::{format_duration, Millis, Strategy, WaveSpec, MINUTE};

/// Settings of a demo run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of simulated nodes (at least 16, one per seed image family).
    pub nodes: usize,
    /// Real time to wait after each printed line, so a person can follow.
    pub pace: Duration,
    /// Flavor id whose standard canary fails until the operator fixes it.
    pub failing_flavor: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self { nodes: 120, pace: Duration::from_millis(60), failing_flavor: "alpine-arm-rpi".into() }
    }
}

/// What the demo ended with, for tests and the exit code.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// Final phase name of the rollout.
    pub phase: &'static str,
    /// Why the rollout paused on its way, if it did.
    pub pause_reason: Option<String>,
    /// Nodes refused by the versioning policy (node, rule).
    pub refused: Vec<(NodeId, String)>,
    /// Nodes on the target release at the end.
    pub upgraded: usize,
    /// The order waves started in, with their sizes.
    pub waves: Vec<usize>,
    /// The fleet report at the end.
    pub report: FleetReport,
}

const FROM: &str = "1.5.0";
const TO: &str = "1.5.1";
const AHEAD: &str = "1.6.0";

struct SimNode {
    facts: NodeFacts,
    image: String,
}

/// Stable pseudo-random number in `0..n` for `(salt, key)`; the demo must
/// replay identically, so no global RNG.
fn pick(salt: &str, key: &str, n: u64) -> u64 {
    let digest = Sha256::new().chain_update(salt).chain_update([0]).chain_update(key).finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b) % n.max(1)
}

fn k3s(v: &str) -> Option<SoftwareVersion> {
    SoftwareVersion::parse(v, None).ok()
}

fn version(s: &str) -> Version {
    // The demo's release constants are valid semver.
    Version::parse(s).unwrap_or_else(|_| Version::new(0, 0, 0))
}

fn image_for(family: &ImageFamily, release: &Version, software: Option<&SoftwareVersion>) -> String {
    let prefix = RegistryPrefix::default();
    ImageRef::for_target(&prefix, family, TagGrammar::V1, release, software)
        .map(|r| r.to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

/// Builds the simulated fleet: every seed family, standard nodes grouped in
/// k3s clusters of three servers and two agents, a few nodes on a release
/// ahead of the target that the catalog does not know (refused as
/// downgrades) and one already on the target.
fn build_fleet(count: usize) -> (Vec<SimNode>, ReleaseCatalog) {
    let families: Vec<ImageFamily> =
        SEED_FLAVORS.iter().flat_map(|f| [f.family(Variant::Core), f.family(Variant::Standard)]).collect();
    let software = k3s("k3sv1.26.1-k3s1");
    let mut catalog = ReleaseCatalog::new();
    for fam in &families {
        let sw = if fam.variant == Variant::Standard { software.clone() } else { None };
        for r in [FROM, TO] {
            catalog.add(fam.clone(), version(r), sw.clone());
        }
    }
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count.max(families.len()) {
        let family = families[i % families.len()].clone();
        let digest = Sha256::digest(format!("demo-node-{i}"));
        let id = NodeId::new(digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>());
        let release = match i {
            _ if i == count.saturating_sub(1) => version(TO),
            _ if i >= families.len() && i % 41 == 7 => version(AHEAD),
            _ => version(FROM),
        };
        let sw = if family.variant == Variant::Standard { software.clone() } else { None };
        // Standard nodes of one family form clusters of five: the first
        // three are servers, so the one-server-at-a-time rule has work to do.
        let k3s = (family.variant == Variant::Standard).then(|| {
            let ordinal = i / families.len();
            K3sMembership {
                cluster: format!("{}-c{}", family.flavor, ordinal / 5),
                role: if ordinal % 5 < 3 { K3sRole::Server } else { K3sRole::Agent },
            }
        });
        let mut labels = BTreeMap::new();
        labels.insert("site".to_string(), format!("store-{:02}", i % 7));
        let image = image_for(&family, &release, sw.as_ref());
        nodes.push(SimNode { facts: NodeFacts { id, family, release, software: sw, labels, k3s }, image });
    }
    (nodes, catalog)
}

struct Printer<'a> {
    out: &'a mut dyn Write,
    pace: Duration,
    start: Millis,
}

impl Printer<'_> {
    fn line(&mut self, now: Millis, text: impl AsRef<str>) -> io::Result<()> {
        let t = (now - self.start) / 1000;
        writeln!(self.out, "[{:02}:{:02}:{:02}] {}", t / 3600, t / 60 % 60, t % 60, text.as_ref())?;
        self.out.flush()?;
        if !self.pace.is_zero() {
            std::thread::sleep(self.pace);
        }
        Ok(())
    }

    fn plain(&mut self, text: impl AsRef<str>) -> io::Result<()> {
        writeln!(self.out, "{}", text.as_ref())
    }
}

fn bar(done: usize, total: usize) -> String {
    let width = 24;
    let filled = (done * width).checked_div(total).unwrap_or(width).min(width);
    format!("[{}{}] {done}/{total}", "#".repeat(filled), "-".repeat(width - filled))
}

/// Runs the demo, writing what happens to `out`.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> io::Result<DemoOutcome> {
    let start: Millis = 1_764_403_200_000; // a Saturday 08:00 UTC; time is simulated.
    let mut p = Printer { out, pace: opts.pace, start };
    let (mut nodes, catalog) = build_fleet(opts.nodes);
    let target = Target { release: version(TO), software: None };
    let rollout_id = "demo-patch-1-5-1";

    p.plain(format!(
        "Kairos Fleet demo: {} simulated nodes across {} flavors, core and standard, amd64 and arm64 (rpi)",
        nodes.len(),
        SEED_FLAVORS.len()
    ))?;
    p.plain(format!("Rollout {rollout_id}: every node to Kairos v{TO}\n"))?;

    // Versioning policy: who may move, and how big the move is.
    let mut eligible = Vec::new();
    let mut refused = Vec::new();
    let mut class = ChangeClass::Same;
    let mut assignments = Vec::new();
    for n in &nodes {
        let decision = resolve_destination(&n.facts, &target, &catalog)
            .and_then(|dest| check_move(&n.facts, &dest, PolicyOptions::default(), &catalog).map(|c| (dest, c)));
        match decision {
            Ok((_, ChangeClass::Same)) => {}
            Ok((dest, c)) => {
                class = class.max(c);
                assignments.push(NodeAssignment {
                    id: n.facts.id.clone(),
                    target_image: image_for(&dest.family, &dest.release, dest.software.as_ref()),
                    previous_image: n.image.clone(),
                    k3s: n.facts.k3s.clone(),
                    online: true,
                });
                eligible.push(n.facts.clone());
            }
            Err(r) => {
                p.plain(format!("  refused {}", r))?;
                refused.push((r.node.clone(), r.rule.to_string()));
            }
        }
    }
    let mut strategy = Strategy::defaults_for(class.defaults_class(), false);
    strategy.waves = WaveSpec::parse("1,10%,50%,100%").map_err(io::Error::other)?;
    strategy.max_unavailable = 8;
    strategy.bake = 5 * MINUTE;
    let plan = plan_waves(rollout_id, &eligible, &strategy.waves);
    p.plain(format!(
        "  change class {class}: waves {}, max {} in flight, bake {}, health timeout {}, pause on first failure",
        strategy.waves,
        strategy.max_unavailable,
        format_duration(strategy.bake),
        format_duration(strategy.health_timeout)
    ))?;
    for (i, w) in plan.waves.iter().enumerate() {
        p.plain(format!(
            "  wave {i}: {} nodes{}",
            w.nodes.len(),
            if i == 0 { " (a canary per image family)" } else { "" }
        ))?;
    }
    p.plain("")?;

    let mut rollout = Rollout::new(rollout_id, strategy, &plan, assignments, start)
        .map_err(io::Error::other)?
        .with_target(target.clone());
    let by_id: BTreeMap<NodeId, usize> = nodes.iter().enumerate().map(|(i, n)| (n.facts.id.clone(), i)).collect();
    let failing = |id: &NodeId, nodes: &[SimNode]| {
        by_id.get(id).is_some_and(|&i| {
            nodes[i].facts.family.flavor == opts.failing_flavor && nodes[i].facts.family.variant == Variant::Standard
        })
    };
    let mut fixed = false;
    let mut pause_reason = None;
    let mut waves_started = Vec::new();
    // Simulated node reports, earliest first.
    let mut queue: BinaryHeap<Reverse<(Millis, u64, NodeId, u8)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut now = start;
    let mut actions = rollout.apply(Event::Start { now }).map_err(io::Error::other)?;
    let mut attempts: BTreeMap<NodeId, u32> = BTreeMap::new();
    loop {
        for action in actions.drain(..) {
            match action {
                Action::Command { node, .. } | Action::Revert { node, .. } => {
                    let attempt = attempts.entry(node.clone()).or_default();
                    *attempt += 1;
                    let key = format!("{node}/{attempt}");
                    let download = 20_000 + pick("download", &key, 60_000);
                    let install = download + 30_000 + pick("install", &key, 60_000);
                    let reboot = install + 45_000 + pick("reboot", &key, 60_000);
                    for (at, stage) in [(download, 0u8), (install, 1), (reboot, 2)] {
                        seq += 1;
                        queue.push(Reverse((now + at, seq, node.clone(), stage)));
                    }
                }
                Action::Cancel { .. } => {}
                Action::Emit(ev) => {
                    if let RolloutEvent::WaveStarted { nodes: n, .. } = ev {
                        waves_started.push(n);
                    }
                    describe(&mut p, now, &rollout, &ev)?;
                }
            }
        }
        if rollout.is_terminal() {
            break;
        }
        if let Phase::Paused { reason } = rollout.phase() {
            let reason = reason.clone();
            p.line(now, format!("PAUSED: {reason}"))?;
            pause_reason.get_or_insert(reason);
            if fixed {
                break;
            }
            now += 20 * MINUTE;
            p.line(
                now,
                format!(
                    "operator: the {} standard image failed its health check; a fixed image is published, resuming \
                     and retrying the failed canary",
                    opts.failing_flavor
                ),
            )?;
            fixed = true;
            actions = rollout
                .apply(Event::Resume { accept_failures: true, retry_failed: true, now })
                .map_err(io::Error::other)?;
            continue;
        }
        // Next thing to happen: a node report or a timer of the rollout.
        let next_report = queue.peek().map(|Reverse((t, ..))| *t);
        let next_tick = rollout.next_wakeup();
        let event = match (next_report, next_tick) {
            (Some(r), t) if t.is_none_or(|t| r <= t) => {
                let Some(Reverse((at, _, node, stage))) = queue.pop() else { break };
                now = now.max(at);
                let status = match stage {
                    0 => NodeReport::Installing,
                    1 => NodeReport::Rebooting,
                    _ if failing(&node, &nodes) && !fixed => NodeReport::Failed {
                        reason: "fallback boot: /run/cos/upgrade_failure present, booted COS_PASSIVE".into(),
                    },
                    _ => {
                        if let Some(&i) = by_id.get(&node) {
                            nodes[i].facts.release = target.release.clone();
                        }
                        NodeReport::Healthy
                    }
                };
                Event::NodeStatus { node, status, now }
            }
            (_, Some(t)) => {
                now = now.max(t);
                Event::Tick { now }
            }
            _ => break,
        };
        actions = rollout.apply(event).map_err(io::Error::other)?;
    }

    let report = FleetReport::build(nodes.iter().map(|n| (&n.facts.family, &n.facts.release)), &catalog);
    p.plain("")?;
    p.plain(format!("Rollout {rollout_id} ended {} after {}", rollout.phase().name(), format_duration(now - start)))?;
    p.plain("\nFleet report (nodes per flavor, release and support status):")?;
    p.plain(format!("  {:<24} {:<9} {:<20} {:>5}", "FLAVOR", "RELEASE", "STATUS", "NODES"))?;
    for row in &report.rows {
        p.plain(format!("  {:<24} v{:<8} {:<20} {:>5}", row.flavor, row.release.to_string(), row.status, row.nodes))?;
    }
    let upgraded = nodes.iter().filter(|n| n.facts.release == target.release).count();
    Ok(DemoOutcome { phase: rollout.phase().name(), pause_reason, refused, upgraded, waves: waves_started, report })
}

fn describe(p: &mut Printer<'_>, now: Millis, rollout: &Rollout, ev: &RolloutEvent) -> io::Result<()> {
    match ev {
        RolloutEvent::WaveStarted { wave, nodes } => p.line(now, format!("wave {wave} started: {nodes} nodes")),
        RolloutEvent::WaveCompleted { wave, healthy, failed, deferred } => {
            let c = rollout.counts_for_wave(*wave);
            p.line(
                now,
                format!(
                    "wave {wave} done {}  healthy {healthy}, failed {failed}, deferred {deferred}",
                    bar(c.healthy, c.total)
                ),
            )
        }
        RolloutEvent::Baking { wave, until } => {
            p.line(now, format!("baking wave {wave} for {}", format_duration(until.saturating_sub(now))))
        }
        RolloutEvent::ThresholdTripped { wave, failed, threshold } => {
            let names: Vec<String> = failed.iter().map(|n| n.to_string()).collect();
            p.line(now, format!("wave {wave}: failure threshold {threshold} exceeded by {}", names.join(", ")))
        }
        RolloutEvent::Resumed { retried } => p.line(now, format!("resumed, retrying {} node(s)", retried.len())),
        RolloutEvent::Completed => p.line(now, "all waves healthy: rollout completed"),
        RolloutEvent::Started => p.line(now, "rollout started"),
        RolloutEvent::Paused { .. } => Ok(()),
        other => p.line(now, format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_pauses_on_the_failing_canary_then_completes() {
        let opts = DemoOptions { nodes: 64, pace: Duration::ZERO, ..Default::default() };
        let mut out = Vec::new();
        let outcome = run(&opts, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(outcome.phase, "completed", "{text}");
        let reason = outcome.pause_reason.expect("the failing canary pauses the rollout");
        assert!(reason.contains("threshold") || reason.contains("failed"), "{reason}");
        assert!(!outcome.refused.is_empty(), "nodes ahead of the target are refused");
        assert!(outcome.refused.iter().all(|(_, rule)| rule == "downgrade-not-allowed"));
        assert_eq!(outcome.upgraded + outcome.refused.len(), 64);
        assert!(outcome.waves[0] >= 16, "a canary per image family: {:?}", outcome.waves);
        assert!(text.contains("Fleet report"));
    }
}
