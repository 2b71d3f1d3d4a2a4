//! Counters of one session, or of every virtual node of a simulation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

/// Live counters; cheap to update from many sessions at once.
#[derive(Debug)]
pub struct SessionMetrics {
    connected: watch::Sender<u64>,
    connections: AtomicU64,
    reconnects: AtomicU64,
    heartbeats_sent: AtomicU64,
    heartbeats_acked: AtomicU64,
    statuses_sent: AtomicU64,
    statuses_acked: AtomicU64,
    /// Heartbeat round trips in microseconds.
    rtt: Mutex<Option<Histogram<u64>>>,
}

impl Default for SessionMetrics {
    fn default() -> Self {
        SessionMetrics {
            connected: watch::channel(0).0,
            connections: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            heartbeats_sent: AtomicU64::new(0),
            heartbeats_acked: AtomicU64::new(0),
            statuses_sent: AtomicU64::new(0),
            statuses_acked: AtomicU64::new(0),
            // Three significant digits, growing as needed.
            rtt: Mutex::new(Histogram::new(3).ok()),
        }
    }
}

/// Counts one open stream until dropped.
pub struct ConnectedGuard(Arc<SessionMetrics>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected.send_modify(|c| *c = c.saturating_sub(1));
    }
}

/// A snapshot of [`SessionMetrics`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionStats {
    /// Streams up now.
    pub connected: u64,
    /// Streams that received their NodeConfig, ever.
    pub connections: u64,
    /// Connection attempts after the first, ever.
    pub reconnects: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Heartbeats acknowledged.
    pub heartbeats_acked: u64,
    /// Status updates sent, resends included.
    pub status_updates_sent: u64,
    /// Status updates dropped after a StatusAck.
    pub status_updates_acked: u64,
    /// Median heartbeat round trip, ms.
    pub rtt_p50_ms: f64,
    /// 99th percentile heartbeat round trip, ms.
    pub rtt_p99_ms: f64,
    /// Longest heartbeat round trip, ms.
    pub rtt_max_ms: f64,
}

impl SessionMetrics {
    /// Marks a stream up; it counts as down again when the guard drops.
    pub fn connected(self: &Arc<Self>) -> ConnectedGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connected.send_modify(|c| *c += 1);
        ConnectedGuard(Arc::clone(self))
    }

    /// Follows the number of open streams.
    pub fn watch_connected(&self) -> watch::Receiver<u64> {
        self.connected.subscribe()
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_heartbeat_sent(&self) {
        self.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_status_sent(&self) {
        self.statuses_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_statuses_acked(&self, n: usize) {
        self.statuses_acked.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn record_heartbeat_ack(&self, rtt: Duration) {
        self.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        if let Some(h) = self.rtt.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            // Only fails for values the auto-resizing histogram cannot hold.
            let _ = h.record(micros);
        }
    }

    /// The counters now.
    pub fn stats(&self) -> SessionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (p50, p99, max) = match self.rtt.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            Some(h) if !h.is_empty() => (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()),
            _ => (0, 0, 0),
        };
        let ms = |micros: u64| micros as f64 / 1000.0;
        SessionStats {
            connected: *self.connected.borrow(),
            connections: get(&self.connections),
            reconnects: get(&self.reconnects),
            heartbeats_sent: get(&self.heartbeats_sent),
            heartbeats_acked: get(&self.heartbeats_acked),
            status_updates_sent: get(&self.statuses_sent),
            status_updates_acked: get(&self.statuses_acked),
            rtt_p50_ms: ms(p50),
            rtt_p99_ms: ms(p99),
            rtt_max_ms: ms(max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_gauge_follows_guards_and_rtt_percentiles_are_reported() {
        let metrics = Arc::new(SessionMetrics::default());
        let a = metrics.connected();
        let b = metrics.connected();
        assert_eq!(metrics.stats().connected, 2);
        drop(a);
        assert_eq!(metrics.stats().connected, 1);
        drop(b);
        for ms in 1..=100 {
            metrics.record_heartbeat_ack(Duration::from_millis(ms));
        }
        let stats = metrics.stats();
        assert_eq!((stats.connected, stats.connections, stats.heartbeats_acked), (0, 2, 100));
        assert!((49.0..=51.0).contains(&stats.rtt_p50_ms), "{stats:?}");
        assert!((98.0..=100.1).contains(&stats.rtt_p99_ms), "{stats:?}");
        assert!((99.9..=100.1).contains(&stats.rtt_max_ms), "{stats:?}");
    }
}
