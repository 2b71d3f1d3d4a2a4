//! The replicated store: openraft (storage-v2) log storage and a revisioned
//! key-value state machine, both on one sled database per replica.
//!
//! ```text
//! <data dir>/store/            the sled database
//!   tree raft_log              index (big-endian u64) -> entry
//!   tree raft_meta             vote, committed, last_purged
//!   tree state_machine         d<key> -> KeyValue, m/* meta, s/current snapshot
//! ```
//!
//! Entries, votes and state-machine records are encoded by `codec`
//! (a format byte, then postcard).

mod codec;
mod error;
pub mod feed;
pub mod kv;
mod log_store;
mod state_machine;
pub mod types;

use std::path::{Path, PathBuf};

pub use error::{Access, StoreError};
pub use feed::{Applied, Change, ChangeFeed, HistoryCompacted};
pub use kv::{Compare, CompareOp, CompareTarget, KeyValue, Op, OpResult, Request, Response};
pub use log_store::{LogReader, LogStore, MAX_READ_BYTES};
pub use state_machine::{KvReader, SnapshotBuilder, StateMachineStore};
pub use types::{NodeId, Raft, ReplicaNode, TypeConfig};

/// Upper bound of sled's in-memory page cache.
const CACHE_BYTES: u64 = 128 * 1024 * 1024;

/// How long an open waits for a lock still held by this process's last handle.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// sled reports a held file lock as an `Other` IO error whose text names the
/// lock and the OS's WouldBlock; it has no better handle to match on.
fn is_lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// Opens the replicated store of one replica.
pub struct Store;

impl Store {
    /// Where the sled database of the replica whose data dir is `dir` lives.
    pub fn sled_path(dir: &Path) -> PathBuf {
        dir.join("store")
    }

    /// Opens (creating if needed) the store in the replica data dir `dir`.
    ///
    /// One sled database backs both halves, so one fsync covers the log and
    /// the state machine. sled locks the database file: a second open of the
    /// same dir, in this process or another, fails until every handle of the
    /// first (including [`LogReader`]s and [`KvReader`]s) is dropped.
    pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir { path: dir.to_path_buf(), source })?;
        let path = Self::sled_path(dir);
        let config = sled::Config::new()
            .path(&path)
            // sled's default page cache may grow to 1 GiB; the fleet state is
            // tens of MiB, and replicas share hosts with other services.
            .cache_capacity(CACHE_BYTES);
        // sled's background flusher keeps the database (and its file lock)
        // alive for up to one flush interval after the last handle is
        // dropped, so a reopen in the same process may briefly find it held.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                Err(e) => return Err(StoreError::sled(Access::Open, path.display().to_string(), e)),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(|e| StoreError::sled(Access::Open, name, e));
        let log = LogStore::open(tree("raft_log")?, tree("raft_meta")?)?;
        let sm = StateMachineStore::open(tree("state_machine")?)?;
        Ok((log, sm))
    }
}
