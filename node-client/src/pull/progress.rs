//! Progress of one phase (DOWNLOADING or VERIFYING), offered to the
//! observer a few times per second at most.

use std::time::{Duration, Instant};

use kairos_fleet_proto::fleet::v1 as pb;

use super::PullObserver;

/// Least time between two progress messages.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Counts bytes and layers of one phase and offers progress.
pub(super) struct Tracker<'a> {
    observer: &'a dyn PullObserver,
    phase: pb::NodeState,
    bytes_done: u64,
    bytes_total: u64,
    layers_done: u32,
    layers_total: u32,
    last_sent: Option<Instant>,
    /// Bytes and time at the start of the current rate window.
    window: (u64, Instant),
    bytes_per_second: u64,
}

impl<'a> Tracker<'a> {
    /// A tracker for `phase` over `bytes_total` bytes in `layers_total` layers.
    pub fn new(observer: &'a dyn PullObserver, phase: pb::NodeState, bytes_total: u64, layers_total: u32) -> Self {
        Tracker {
            observer,
            phase,
            bytes_done: 0,
            bytes_total,
            layers_done: 0,
            layers_total,
            last_sent: None,
            window: (0, Instant::now()),
            bytes_per_second: 0,
        }
    }

    /// Counts `n` more bytes done.
    pub fn add(&mut self, n: u64) {
        self.bytes_done += n;
        self.offer(false);
    }

    /// Takes back `n` bytes counted before (a download that starts over).
    pub fn undo(&mut self, n: u64) {
        self.bytes_done = self.bytes_done.saturating_sub(n);
    }

    /// Counts one more layer done and offers progress.
    pub fn layer_done(&mut self) {
        self.layers_done += 1;
        self.offer(true);
    }

    /// Offers the current progress now.
    pub fn flush(&mut self) {
        self.offer(true);
    }

    fn offer(&mut self, force: bool) {
        let now = Instant::now();
        if !force && self.last_sent.is_some_and(|t| now.duration_since(t) < PROGRESS_INTERVAL) {
            return;
        }
        let elapsed = now.duration_since(self.window.1);
        if elapsed >= PROGRESS_INTERVAL {
            let bytes = self.bytes_done.saturating_sub(self.window.0);
            self.bytes_per_second = (bytes as f64 / elapsed.as_secs_f64()) as u64;
            self.window = (self.bytes_done, now);
        }
        self.last_sent = Some(now);
        let mut progress = pb::Progress {
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
            bytes_per_second: self.bytes_per_second,
            layers_done: self.layers_done,
            layers_total: self.layers_total,
            ..Default::default()
        };
        progress.set_phase(self.phase);
        self.observer.progress(progress);
    }
}
