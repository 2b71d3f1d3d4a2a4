//! How a rollout moves through the fleet: wave sizes, concurrency, health
//! and failure rules, bake times, maintenance windows and approvals.
//!
//! Every field an operator leaves unset takes the default of the change
//! class (patch, minor, major) from the versioning policy; see
//! [`Strategy::defaults_for`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::model::ValueError;
use super::window::MaintenanceWindow;

/// Milliseconds; all durations in the domain are plain milliseconds.
pub type Millis = u64;

/// One minute in milliseconds.
pub const MINUTE: Millis = 60_000;
/// One hour in milliseconds.
pub const HOUR: Millis = 60 * MINUTE;

/// Size of a wave, cumulative: wave `k` brings the rollout up to this many
/// nodes (or this share of the eligible nodes) in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaveSize {
    /// An absolute number of nodes, at least 1.
    Count(u32),
    /// A percentage of the eligible nodes, 1..=100, rounded up.
    Percent(u8),
}

impl WaveSize {
    /// Cumulative node count this size stands for out of `total` eligible nodes.
    pub fn cumulative(self, total: usize) -> usize {
        match self {
            WaveSize::Count(n) => (n as usize).min(total),
            WaveSize::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Count(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for WaveSize {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(WaveSize::Percent(p)),
                _ => Err(ValueError::new("waves", "a percentage must be an integer from 1% to 100%", s)),
            }
        } else {
            match t.parse::<u32>() {
                Ok(n @ 1..) => Ok(WaveSize::Count(n)),
                _ => Err(ValueError::new(
                    "waves",
                    "a wave size must be a node count >= 1 or a percentage such as 10%",
                    s,
                )),
            }
        }
    }
}

/// The wave sizes of a rollout, e.g. `1,10%,50%,100%`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveSpec(pub Vec<WaveSize>);

impl WaveSpec {
    /// Parses a comma-separated list; sizes must not shrink (they are cumulative).
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let sizes = s.split(',').map(str::parse).collect::<Result<Vec<WaveSize>, _>>()?;
        if sizes.is_empty() {
            return Err(ValueError::new("waves", "at least one wave is needed", s));
        }
        if sizes.len() > 64 {
            return Err(ValueError::new("waves", "at most 64 waves", s));
        }
        // Shrinking percentages or counts mean a typo; mixed kinds can only
        // be compared once the fleet size is known, so the planner clamps them.
        for pair in sizes.windows(2) {
            let shrinks = match (pair[0], pair[1]) {
                (WaveSize::Count(a), WaveSize::Count(b)) => b < a,
                (WaveSize::Percent(a), WaveSize::Percent(b)) => b < a,
                _ => false,
            };
            if shrinks {
                return Err(ValueError::new("waves", "wave sizes are cumulative and must not shrink", s));
            }
        }
        Ok(Self(sizes))
    }
}

impl fmt::Display for WaveSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|w| w.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

/// A failure threshold per wave: the wave fails when more nodes than this
/// have failed, once at least `min_sample` nodes of the wave have finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureThreshold {
    /// Tolerate at most this many failed nodes per wave (0 = the first failure trips).
    Count(u32),
    /// Tolerate at most this share of the wave's nodes failing.
    Percent(u8),
}

impl FailureThreshold {
    /// True when `failed` of `wave_size` nodes exceeds the threshold.
    pub fn exceeded(self, failed: usize, wave_size: usize) -> bool {
        match self {
            FailureThreshold::Count(n) => failed > n as usize,
            // failed / size > p / 100, without floating point.
            FailureThreshold::Percent(p) => failed * 100 > wave_size * p as usize,
        }
    }
}

impl FromStr for FailureThreshold {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            match p.trim().parse::<u8>() {
                Ok(p @ 0..=99) => Ok(FailureThreshold::Percent(p)),
                _ => Err(ValueError::new("failure_threshold", "a percentage must be from 0% to 99%", s)),
            }
        } else {
            t.parse::<u32>().map(FailureThreshold::Count).map_err(|_| {
                ValueError::new("failure_threshold", "must be a count such as 0 or 2, or a percentage such as 5%", s)
            })
        }
    }
}

impl fmt::Display for FailureThreshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureThreshold::Count(n) => write!(f, "{n}"),
            FailureThreshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What a tripped failure threshold does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop dispatching and wait for an operator (the default: a person decides).
    #[default]
    Pause,
    /// End the rollout; nodes already upgraded stay where they are.
    Abort,
}

impl FromStr for OnFailure {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "pause" => Ok(OnFailure::Pause),
            "abort" => Ok(OnFailure::Abort),
            _ => Err(ValueError::new("on_failure", "must be `pause` or `abort`", s)),
        }
    }
}

/// Labels that pin a node to the first or the last wave.
pub const WAVE_LABEL: &str = "fleet.kairos.io/wave";
/// Value of [`WAVE_LABEL`] that puts a node in the canary wave.
pub const WAVE_LABEL_CANARY: &str = "canary";
/// Value of [`WAVE_LABEL`] that puts a node in the last wave.
pub const WAVE_LABEL_LAST: &str = "last";

/// A complete rollout strategy, every field resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    /// Cumulative wave sizes; wave 0 is the canary wave.
    pub waves: WaveSpec,
    /// At most this many nodes in flight (commanded, not yet healthy or failed) at once.
    pub max_unavailable: u32,
    /// Time from command until the node must report healthy on the target.
    pub health_timeout: Millis,
    /// Failed nodes tolerated per wave.
    pub failure_threshold: FailureThreshold,
    /// The threshold is only judged once this many nodes of the wave finished
    /// (or the whole wave did, if smaller).
    pub min_sample: u32,
    /// What a tripped threshold does.
    pub on_failure: OnFailure,
    /// Wait this long after a wave is healthy before starting the next.
    pub bake: Millis,
    /// New commands are sent only inside one of these windows (empty = any
    /// time); nodes already in flight continue.
    pub windows: Vec<MaintenanceWindow>,
    /// An operator must approve each wave after the first.
    pub approve_waves: bool,
    /// High-score CVE: shorter bake times; canary and threshold stay.
    pub urgent: bool,
    /// How long an offline node may hold up the end of a wave before it is deferred.
    pub offline_grace: Millis,
}

/// Change class as far as defaults are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultsClass {
    /// Patch release or software-only change: fast, small canary.
    Patch,
    /// Minor release: slower, longer bake.
    Minor,
    /// Major release (or downgrade/rollback): approval gate between waves.
    Major,
}

impl Strategy {
    /// The policy's defaults for a change class. `urgent` is recorded here and
    /// applied by [`Strategy::effective_bake`].
    pub fn defaults_for(class: DefaultsClass, urgent: bool) -> Self {
        let (waves, max_unavailable, bake, approve, timeout) = match class {
            DefaultsClass::Patch => ("1,10%,50%,100%", 5, 10 * MINUTE, false, 30 * MINUTE),
            DefaultsClass::Minor => ("1,5%,25%,50%,100%", 3, HOUR, false, 45 * MINUTE),
            DefaultsClass::Major => ("1,5%,20%,50%,100%", 1, 4 * HOUR, true, 60 * MINUTE),
        };
        Strategy {
            // The literals above are valid wave specs.
            waves: WaveSpec::parse(waves).unwrap_or_else(|_| WaveSpec(vec![WaveSize::Percent(100)])),
            max_unavailable,
            health_timeout: timeout,
            failure_threshold: FailureThreshold::Count(0),
            min_sample: 1,
            on_failure: OnFailure::Pause,
            bake,
            windows: Vec::new(),
            approve_waves: approve,
            urgent,
            offline_grace: 15 * MINUTE,
        }
    }

    /// The bake time in force: `urgent` divides it by four, but never below
    /// one minute (unless configured lower). Canary and threshold are untouched.
    pub fn effective_bake(&self) -> Millis {
        if self.urgent {
            (self.bake / 4).max(MINUTE).min(self.bake)
        } else {
            self.bake
        }
    }
}

/// Parses durations such as `500ms`, `90s`, `10m`, `1h30m`, `2d` into milliseconds.
pub fn parse_duration(field: &'static str, s: &str) -> Result<Millis, ValueError> {
    let err = || ValueError::new(field, "must be a duration such as 30s, 10m, 1h30m or 2d", s);
    let t = s.trim();
    if t.is_empty() {
        return Err(err());
    }
    if t == "0" {
        return Ok(0);
    }
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse().map_err(|_| err());
    }
    let mut total: Millis = 0;
    let mut num = String::new();
    let mut saw_unit = false;
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: Millis = num.parse().map_err(|_| err())?;
        num.clear();
        let unit = match c {
            's' => 1_000,
            'm' => MINUTE,
            'h' => HOUR,
            'd' => 24 * HOUR,
            _ => return Err(err()),
        };
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
        saw_unit = true;
    }
    if !num.is_empty() || !saw_unit {
        return Err(err());
    }
    Ok(total)
}

/// Renders milliseconds in the shortest form [`parse_duration`] accepts.
pub fn format_duration(ms: Millis) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let mut out = String::new();
    let mut rest = ms / 1_000;
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if rest >= secs {
            out.push_str(&format!("{}{unit}", rest / secs));
            rest %= secs;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_spec_parses_counts_and_percentages() {
        let w = WaveSpec::parse("1,10%,50%,100%").unwrap();
        assert_eq!(w.0, vec![WaveSize::Count(1), WaveSize::Percent(10), WaveSize::Percent(50), WaveSize::Percent(100)]);
        assert_eq!(w.to_string(), "1,10%,50%,100%");
    }

    #[test]
    fn wave_spec_rejects_zero_overflow_and_shrinking_sizes() {
        for bad in ["", "0", "101%", "0%", "50%,10%", "10,5", "x", "1,,2"] {
            let e = WaveSpec::parse(bad).unwrap_err();
            assert_eq!(e.field, "waves", "{bad}");
        }
    }

    #[test]
    fn percent_wave_rounds_up_so_small_fleets_still_progress() {
        assert_eq!(WaveSize::Percent(10).cumulative(5), 1);
        assert_eq!(WaveSize::Percent(50).cumulative(5), 3);
        assert_eq!(WaveSize::Percent(100).cumulative(5), 5);
        assert_eq!(WaveSize::Count(10).cumulative(5), 5);
    }

    #[test]
    fn failure_threshold_trips_only_when_exceeded() {
        assert!(!FailureThreshold::Count(0).exceeded(0, 10));
        assert!(FailureThreshold::Count(0).exceeded(1, 10));
        assert!(!FailureThreshold::Percent(10).exceeded(1, 10));
        assert!(FailureThreshold::Percent(10).exceeded(2, 10));
        assert!("100%".parse::<FailureThreshold>().is_err());
    }

    #[test]
    fn defaults_differ_by_class_and_urgent_keeps_canary_and_threshold() {
        let patch = Strategy::defaults_for(DefaultsClass::Patch, false);
        let minor = Strategy::defaults_for(DefaultsClass::Minor, false);
        let major = Strategy::defaults_for(DefaultsClass::Major, false);
        assert!(patch.bake < minor.bake && minor.bake < major.bake);
        assert!(major.approve_waves && !patch.approve_waves);
        let urgent = Strategy::defaults_for(DefaultsClass::Minor, true);
        assert!(urgent.effective_bake() < minor.effective_bake());
        assert_eq!(urgent.waves.0[0], WaveSize::Count(1), "canary stays");
        assert_eq!(urgent.failure_threshold, minor.failure_threshold);
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("bake", "1h30m").unwrap(), 90 * MINUTE);
        assert_eq!(parse_duration("bake", "45s").unwrap(), 45_000);
        assert_eq!(format_duration(90 * MINUTE), "1h30m");
        for ms in [0, 250, 1_000, 61_000, 26 * HOUR] {
            assert_eq!(parse_duration("bake", &format_duration(ms)).unwrap(), ms);
        }
        for bad in ["", "10", "m", "5y", "1h30"] {
            assert_eq!(parse_duration("bake", bad).unwrap_err().field, "bake", "{bad}");
        }
    }
}
