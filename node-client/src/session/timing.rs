//! How long to wait: reconnect backoff, and the per-stream intervals the
//! server sets in NodeConfig (guarded against values that would break the
//! session).

use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;

/// Shortest heartbeat interval honoured (node.proto: 1 second to 10 minutes).
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest heartbeat interval honoured.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(600);
/// Heartbeat interval when the server sends none.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Progress interval when the server sends none.
pub const DEFAULT_PROGRESS: Duration = Duration::from_secs(1);
/// Shortest progress interval honoured.
pub const MIN_PROGRESS: Duration = Duration::from_millis(100);

/// Exponential backoff with full jitter: attempt `n` waits a uniformly
/// random time between zero and `min(max, initial * 2^n)`, so a fleet that
/// lost its server does not come back in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry.
    pub initial: Duration,
    /// Ceiling of every retry.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The ceiling of attempt `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.initial.saturating_mul(2u32.saturating_pow(attempt.min(31))).min(self.max)
    }

    /// A random delay for attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=ceiling))
    }
}

/// The intervals of one stream, from its NodeConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTiming {
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Time without a HeartbeatAck after which the node reconnects.
    pub liveness_timeout: Duration,
    /// Minimum time between Progress messages.
    pub progress_interval: Duration,
}

impl StreamTiming {
    /// The server's settings, with missing values defaulted and the heartbeat
    /// clamped to 1 s..10 min. The liveness timeout defaults to three
    /// heartbeats and is at least one and a half: shorter would drop
    /// healthy streams between two heartbeats.
    pub fn from_config(config: &pb::NodeConfig) -> StreamTiming {
        let get =
            |d: &Option<prost_types::Duration>| d.and_then(|d| Duration::try_from(d).ok()).filter(|d| !d.is_zero());
        let heartbeat_interval =
            get(&config.heartbeat_interval).unwrap_or(DEFAULT_HEARTBEAT).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT);
        let floor = heartbeat_interval.mul_f64(1.5);
        let liveness_timeout = get(&config.liveness_timeout).unwrap_or(heartbeat_interval * 3).max(floor);
        let progress_interval = get(&config.progress_interval).unwrap_or(DEFAULT_PROGRESS).max(MIN_PROGRESS);
        StreamTiming { heartbeat_interval, liveness_timeout, progress_interval }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pd(secs: i64, nanos: i32) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds: secs, nanos })
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap_and_delays_stay_below_it() {
        let backoff = Backoff::default();
        assert_eq!(backoff.ceiling(0), Duration::from_millis(500));
        assert_eq!(backoff.ceiling(1), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(5), Duration::from_secs(16));
        assert_eq!(backoff.ceiling(6), Duration::from_secs(30));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(30));
        let mut rng = fastrand::Rng::with_seed(7);
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        // Full jitter spreads over the whole range, not just near the ceiling.
        assert!(delays.iter().any(|d| *d < Duration::from_secs(1)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(3)));
    }

    #[test]
    fn timing_honours_the_server_within_guards() {
        let config = pb::NodeConfig {
            heartbeat_interval: pd(5, 0),
            liveness_timeout: pd(20, 0),
            progress_interval: pd(2, 0),
            ..Default::default()
        };
        let t = StreamTiming::from_config(&config);
        assert_eq!(t.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(t.liveness_timeout, Duration::from_secs(20));
        assert_eq!(t.progress_interval, Duration::from_secs(2));

        let t = StreamTiming::from_config(&pb::NodeConfig::default());
        assert_eq!(t.heartbeat_interval, DEFAULT_HEARTBEAT);
        assert_eq!(t.liveness_timeout, DEFAULT_HEARTBEAT * 3);

        let silly = pb::NodeConfig {
            heartbeat_interval: pd(0, 1_000),
            liveness_timeout: pd(0, 5),
            progress_interval: pd(-1, 0),
            ..Default::default()
        };
        let t = StreamTiming::from_config(&silly);
        assert_eq!(t.heartbeat_interval, MIN_HEARTBEAT);
        assert_eq!(t.liveness_timeout, Duration::from_millis(1500));
        assert_eq!(t.progress_interval, DEFAULT_PROGRESS);
    }
}
