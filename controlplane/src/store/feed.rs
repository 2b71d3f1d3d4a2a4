//! The change feed: every applied batch of changes, in order, to whoever
//! watches this replica's state (node sessions pushing desired state,
//! `WatchNodes` streams).
//!
//! A bounded broadcast: a subscriber that falls behind by more than
//! [`FEED_CAPACITY`] batches gets `Lagged` and must re-read the state it
//! cares about. A short history lets a watcher resume after a revision it
//! saw, without a gap: publishing and subscribing take the same lock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::kv::KeyValue;

/// Batches a subscriber may fall behind before it gets `Lagged`.
pub const FEED_CAPACITY: usize = 1024;
/// Changes kept for resuming watchers, across all kept batches, weighed in
/// bytes (keys and values) with a floor of one unit per change.
pub const HISTORY_CHANGES: usize = 64 * 1024 * 1024;

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// Its new state; `None` when it was deleted.
    pub kv: Option<KeyValue>,
}

/// What one apply call did to the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Keys changed; `revision` is the store revision after the batch.
    Changes {
        /// Store revision after the batch.
        revision: u64,
        /// Every key the batch changed, in key order.
        changes: Vec<Change>,
    },
    /// The whole state was replaced by a snapshot from the leader:
    /// watchers must re-read everything.
    Reset {
        /// Store revision of the snapshot.
        revision: u64,
    },
}

impl Applied {
    /// The store revision after this batch.
    pub fn revision(&self) -> u64 {
        match self {
            Applied::Changes { revision, .. } | Applied::Reset { revision } => *revision,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Applied::Changes { changes, .. } => {
                changes.iter().map(|c| c.key.len() + c.kv.as_ref().map_or(0, |kv| kv.value.len())).sum::<usize>().max(1)
            }
            Applied::Reset { .. } => 1,
        }
    }
}

/// What a resuming watcher gets: the kept batches after its revision, and
/// a receiver of every later one.
pub type Resumed = (Vec<Arc<Applied>>, broadcast::Receiver<Arc<Applied>>);

/// The feed of one replica's state machine; cheap to clone.
#[derive(Clone)]
pub struct ChangeFeed {
    inner: Arc<Inner>,
}

struct Inner {
    tx: broadcast::Sender<Arc<Applied>>,
    history: Mutex<History>,
}

#[derive(Default)]
struct History {
    batches: VecDeque<Arc<Applied>>,
    weight: usize,
}

/// A resume point older than the kept history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} is older than the change history this replica keeps (from {oldest})")]
pub struct HistoryCompacted {
    /// The revision asked for.
    pub requested: u64,
    /// The oldest revision a watcher can resume after.
    pub oldest: u64,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed::new()
    }
}

impl ChangeFeed {
    /// An empty feed.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(FEED_CAPACITY);
        ChangeFeed { inner: Arc::new(Inner { tx, history: Mutex::new(History::default()) }) }
    }

    fn history(&self) -> MutexGuard<'_, History> {
        // Every update leaves the history consistent, so a poisoned lock is usable.
        self.inner.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publishes an applied batch.
    pub(crate) fn publish(&self, applied: Applied) {
        let applied = Arc::new(applied);
        let mut history = self.history();
        if matches!(*applied, Applied::Reset { .. }) {
            // Nothing before a snapshot install can be resumed from.
            history.batches.clear();
            history.weight = 0;
        }
        history.weight += applied.weight();
        history.batches.push_back(Arc::clone(&applied));
        while history.weight > HISTORY_CHANGES && history.batches.len() > 1 {
            if let Some(old) = history.batches.pop_front() {
                history.weight -= old.weight();
            }
        }
        // No subscribers is fine: nobody is watching.
        let _ = self.inner.tx.send(applied);
    }

    /// Every batch applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.inner.tx.subscribe()
    }

    /// The kept batches applied after `revision`, then every later batch,
    /// without a gap between the two; `HistoryCompacted` when batches after
    /// `revision` are no longer kept.
    pub fn subscribe_after(&self, revision: u64, current_revision: u64) -> Result<Resumed, HistoryCompacted> {
        let history = self.history();
        let rx = self.inner.tx.subscribe();
        if revision >= current_revision {
            return Ok((Vec::new(), rx));
        }
        // The batch before the first kept one must be at or before `revision`.
        let oldest = history.batches.front().map(|b| b.revision());
        match oldest {
            Some(first) if first > revision => {
                let kept: Vec<_> = history.batches.iter().filter(|b| b.revision() > revision).cloned().collect();
                // The first kept batch must directly follow `revision`: it
                // does when its revision is the next one, or when a
                // batch at or before `revision` is still kept.
                let contiguous = history.batches.iter().any(|b| b.revision() <= revision) || first == revision + 1;
                if contiguous && !matches!(kept.first().map(|b| &**b), Some(Applied::Reset { .. })) {
                    Ok((kept, rx))
                } else {
                    Err(HistoryCompacted { requested: revision, oldest: first.saturating_sub(1) })
                }
            }
            Some(_) => Ok((history.batches.iter().filter(|b| b.revision() > revision).cloned().collect(), rx)),
            None => Err(HistoryCompacted { requested: revision, oldest: current_revision }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(revision: u64, keys: &[&str]) -> Applied {
        let changes = keys
            .iter()
            .map(|k| Change {
                key: k.as_bytes().to_vec(),
                kv: Some(KeyValue { value: vec![], create_revision: revision, mod_revision: revision, version: 1 }),
            })
            .collect();
        Applied::Changes { revision, changes }
    }

    #[test]
    fn resume_after_a_kept_revision_replays_exactly_the_later_batches() {
        let feed = ChangeFeed::new();
        for r in 1..=5 {
            feed.publish(changes(r, &["a"]));
        }
        let (replay, mut rx) = feed.subscribe_after(3, 5).expect("kept");
        assert_eq!(replay.iter().map(|b| b.revision()).collect::<Vec<_>>(), vec![4, 5]);
        feed.publish(changes(6, &["b"]));
        assert_eq!(rx.try_recv().expect("live batch").revision(), 6);
    }

    #[test]
    fn resume_before_the_history_is_refused_and_a_reset_clears_it() {
        let feed = ChangeFeed::new();
        feed.publish(changes(10, &["a"]));
        feed.publish(changes(11, &["a"]));
        assert_eq!(feed.subscribe_after(5, 11).err(), Some(HistoryCompacted { requested: 5, oldest: 9 }));
        assert!(feed.subscribe_after(9, 11).is_ok(), "revision 10 directly follows 9");
        feed.publish(Applied::Reset { revision: 20 });
        assert!(feed.subscribe_after(11, 20).is_err(), "nothing before a snapshot install resumes");
        assert!(feed.subscribe_after(20, 20).is_ok(), "the current revision always resumes");
    }

    #[test]
    fn history_is_bounded_by_the_bytes_it_holds() {
        let feed = ChangeFeed::new();
        let value = vec![7u8; 64 * 1024];
        let weight = 1 + value.len();
        for r in 1..=(HISTORY_CHANGES / weight + 10) as u64 {
            let kv = KeyValue { value: value.clone(), create_revision: r, mod_revision: r, version: 1 };
            feed.publish(Applied::Changes { revision: r, changes: vec![Change { key: b"k".to_vec(), kv: Some(kv) }] });
        }
        let history = feed.history();
        assert!(history.weight <= HISTORY_CHANGES, "{}", history.weight);
        assert!(history.weight > HISTORY_CHANGES - weight, "kept as much as fits: {}", history.weight);
    }
}
