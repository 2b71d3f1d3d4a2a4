//! The raft log, vote, committed pointer and purge marker on sled.
//!
//! Layout: tree `raft_log` maps the big-endian u64 index to an encoded entry
//! (big-endian so sled's byte order is index order); tree `raft_meta` holds
//! `vote`, `committed` and `last_purged`.
//!
//! Durability follows openraft's storage-v2 contract: every write that
//! openraft must not lose (vote, appended entries, truncation, purge marker)
//! is fsynced before it is acknowledged. sled only fsyncs on its own every
//! 500 ms otherwise.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, OptionalSend, RaftLogReader};
use sled::{Batch, Tree};

use super::codec::{decode, encode};
use super::error::{Access, StoreError};
use super::types::{Entry, LogId, LogState, StorageError, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Budget of stored bytes one `limited_get_log_entries` call returns (at
/// least one entry, however large), so one replication RPC stays well below
/// tonic's default 4 MiB message limit even if re-encoded less compactly.
pub const MAX_READ_BYTES: usize = 1024 * 1024;

/// Names a log index in error messages.
fn log_key_name(index: u64) -> String {
    format!("raft_log/{index}")
}

/// The raft log storage of one replica.
pub struct LogStore {
    log: Tree,
    meta: Tree,
}

/// A cheap, cloneable reader of the raft log, used by replication tasks.
#[derive(Clone)]
pub struct LogReader {
    log: Tree,
}

impl LogStore {
    /// Wraps the two trees and completes a purge that a crash interrupted.
    pub(crate) fn open(log: Tree, meta: Tree) -> Result<Self, StoreError> {
        let store = LogStore { log, meta };
        // purge() persists the marker before deleting entries, so after a
        // crash entries at or below the marker may survive; they are
        // garbage and would confuse the "first present entry" logic.
        if let Some(purged) = store.last_purged()? {
            let leftovers = store.remove_range(..=purged.index, "finish interrupted purge")?;
            if leftovers > 0 {
                tracing::warn!(leftovers, purged = %purged, "removed log entries left behind by an interrupted purge");
            }
        }
        Ok(store)
    }

    /// A reader sharing this store's log tree.
    pub fn reader(&self) -> LogReader {
        LogReader { log: self.log.clone() }
    }

    fn meta_get<T: serde::de::DeserializeOwned>(&self, key: &'static [u8]) -> Result<Option<T>, StoreError> {
        let name = || format!("raft_meta/{}", String::from_utf8_lossy(key));
        match self.meta.get(key).map_err(|e| StoreError::sled(Access::Read, name(), e))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes, name).map(Some),
        }
    }

    fn meta_put<T: serde::Serialize>(&self, key: &'static [u8], value: &T) -> Result<(), StoreError> {
        let name = || format!("raft_meta/{}", String::from_utf8_lossy(key));
        let bytes = encode(value, &name())?;
        self.meta.insert(key, bytes).map_err(|e| StoreError::sled(Access::Write, name(), e))?;
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId>, StoreError> {
        self.meta_get(LAST_PURGED)
    }

    /// Removes every entry whose index is in `range`, atomically; returns how many.
    fn remove_range(&self, range: impl RangeBounds<u64>, why: &str) -> Result<usize, StoreError> {
        let mut batch = Batch::default();
        let mut removed = 0;
        for key in self.log.range(index_bounds(&range)).keys() {
            batch.remove(key.map_err(|e| StoreError::sled(Access::Read, format!("raft_log ({why})"), e))?);
            removed += 1;
        }
        self.log.apply_batch(batch).map_err(|e| StoreError::sled(Access::Write, format!("raft_log ({why})"), e))?;
        Ok(removed)
    }

    async fn flush(&self, what: &str) -> Result<(), StoreError> {
        self.log.flush_async().await.map(drop).map_err(|e| StoreError::sled(Access::Flush, what, e))
    }

    fn append_batch(&self, entries: impl IntoIterator<Item = Entry>) -> Result<Option<LogId>, StoreError> {
        let mut batch = Batch::default();
        let mut last = None;
        for entry in entries {
            let index = entry.log_id.index;
            batch.insert(&index.to_be_bytes(), encode(&entry, &log_key_name(index))?);
            last = Some(entry.log_id);
        }
        // One batch: sled recovers a batch all-or-nothing, so a crash never
        // leaves a hole inside one append.
        self.log.apply_batch(batch).map_err(|e| StoreError::sled(Access::Write, "raft_log (append)", e))?;
        Ok(last)
    }
}

/// Maps an index range onto big-endian key bounds.
fn index_bounds(range: &impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let map = |b: Bound<&u64>| match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

/// Reads entries in `range`, stopping after `max_bytes` of stored data (at
/// least one entry is returned when the range holds any).
fn read_entries(log: &Tree, range: impl RangeBounds<u64>, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    for item in log.range(index_bounds(&range)) {
        let (key, value) = item.map_err(|e| StoreError::sled(Access::Read, "raft_log", e))?;
        let index = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes).map_err(|_| StoreError::Corrupt {
            key: format!("raft_log/{}", key.escape_ascii()),
            reason: format!("log key is {} bytes, not 8", key.len()),
        })?;
        let entry: Entry = decode(&value, || log_key_name(index))?;
        if entry.log_id.index != index {
            return Err(StoreError::Corrupt {
                key: log_key_name(index),
                reason: format!("holds the entry of index {}", entry.log_id.index),
            });
        }
        bytes += value.len();
        entries.push(entry);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(entries)
}

fn read_err(e: StoreError) -> StorageError {
    e.into_storage_error(ErrorSubject::Logs)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.log, range, usize::MAX).map_err(read_err)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.log, start..end, MAX_READ_BYTES).map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(&self.log, range, usize::MAX).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let last_purged_log_id = self.last_purged().map_err(read_err)?;
        let last_present = match self.log.last().map_err(|e| read_err(StoreError::sled(Access::Read, "raft_log", e)))? {
            None => None,
            Some((key, value)) => {
                let name = || format!("raft_log/{}", key.escape_ascii());
                Some(decode::<Entry>(&value, name).map_err(read_err)?.log_id)
            }
        };
        Ok(LogState { last_purged_log_id, last_log_id: last_present.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote_err = |e: StoreError| e.into_storage_error(ErrorSubject::Vote);
        self.meta_put(VOTE, vote).map_err(vote_err)?;
        // A vote forgotten after a crash lets this replica vote twice in one
        // term: it must be on disk before we answer.
        self.flush("vote").await.map_err(vote_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.meta_get(VOTE).map_err(|e| e.into_storage_error(ErrorSubject::Vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // No fsync of its own: the state machine fsyncs every apply, so this
        // pointer only saves re-applying after a restart. Whatever flush
        // comes next carries it, and it can never run ahead of the entries
        // it points at, which were written (and are flushed) before it.
        self.meta_put(COMMITTED, &committed).map_err(|e| e.into_storage_error(ErrorSubject::Store))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta_get::<Option<LogId>>(COMMITTED).map_err(|e| e.into_storage_error(ErrorSubject::Store))?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write_err = |e: StoreError| e.into_storage_error(ErrorSubject::Logs);
        let last = self.append_batch(entries).map_err(write_err)?;
        // The entries are readable now; the callback says "persisted", so it
        // waits for the fsync. (openraft 0.9 awaits this callback before it
        // proceeds, so there is no point deferring the flush to a task.)
        let what = last.map_or_else(|| "raft_log (empty append)".to_owned(), |id| log_key_name(id.index));
        match self.flush(&what).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let err = |e: StoreError| e.into_storage_error(ErrorSubject::Log(log_id));
        // One atomic batch: a half-applied truncation could leave a hole.
        self.remove_range(log_id.index.., "truncate").map_err(err)?;
        self.flush("raft_log (truncate)").await.map_err(err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let err = |e: StoreError| e.into_storage_error(ErrorSubject::Log(log_id));
        // Marker first, durably: entries gone without a marker make openraft
        // believe the log starts at index 0 and panic on restart. Entries
        // left behind a marker are harmless and removed at open.
        if self.last_purged().map_err(err)? < Some(log_id) {
            self.meta_put(LAST_PURGED, &log_id).map_err(err)?;
            self.flush("raft_meta/last_purged").await.map_err(err)?;
        }
        self.remove_range(..=log_id.index, "purge").map_err(err)?;
        self.flush("raft_log (purge)").await.map_err(err)
    }
}
