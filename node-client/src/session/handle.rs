//! The session's outbound side as others see it: the upgrader and the
//! simulator record status, offer progress and restart the stream through
//! a [`NodeHandle`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kairos_fleet_proto::fleet::v1 as pb;
use tokio::sync::{watch, Notify};
use tokio::time::timeout;

use crate::state::{SharedStatusLog, StateError};

/// What the session and those reporting through it share.
pub(super) struct Events {
    /// Something to send: a new status, progress, or a restart request.
    pub(super) wake: Notify,
    /// Newest progress not yet sent.
    pub(super) progress: Mutex<Option<pb::Progress>>,
    /// A requested stream restart and the downtime before reconnecting.
    pub(super) restart: Mutex<Option<Duration>>,
    /// Counts streams that received their NodeConfig.
    pub(super) epoch: watch::Sender<u64>,
}

/// A handle to a session's outbound side: record status, offer progress,
/// restart the stream. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) log: SharedStatusLog,
    pub(super) events: Arc<Events>,
}

impl NodeHandle {
    /// The session's status log.
    pub fn log(&self) -> &SharedStatusLog {
        &self.log
    }

    /// Records `update` durably (it gets the next seq) and wakes the session
    /// to send it; it is resent on every new stream until acknowledged.
    pub fn report(&self, update: pb::StatusUpdate) -> Result<pb::StatusUpdate, StateError> {
        let update = self.log.record(update)?;
        self.events.wake.notify_one();
        Ok(update)
    }

    /// Offers progress; only the newest is kept.
    pub fn progress(&self, progress: pb::Progress) {
        *self.events.progress.lock().unwrap_or_else(PoisonError::into_inner) = Some(progress);
        self.events.wake.notify_one();
    }

    /// Closes the current stream, waits `downtime`, reconnects; resolves
    /// once a new stream is up (true) or after `limit` (false).
    pub async fn restart_stream(&self, downtime: Duration, limit: Duration) -> bool {
        let mut epoch = self.events.epoch.subscribe();
        let before = *epoch.borrow_and_update();
        *self.events.restart.lock().unwrap_or_else(PoisonError::into_inner) = Some(downtime);
        self.events.wake.notify_one();
        let up = matches!(timeout(limit, epoch.wait_for(|e| *e > before)).await, Ok(Ok(_)));
        up
    }

    /// Number of streams that got their NodeConfig so far; changes on each.
    pub fn streams(&self) -> watch::Receiver<u64> {
        self.events.epoch.subscribe()
    }
}
