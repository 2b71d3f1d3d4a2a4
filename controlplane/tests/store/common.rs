//! Entry builders and store helpers shared by the store tests.

use std::collections::BTreeSet;
use std::path::Path;

use kairos_controlplane::store::types::{Entry, EntryPayload, LogId, Membership};
use kairos_controlplane::store::{LogStore, Request, StateMachineStore, Store};
use openraft::CommittedLeaderId;

/// The log id of `index` written by node 0 in `term`.
pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

/// A normal entry carrying `request`.
pub fn normal(term: u64, index: u64, request: Request) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(request) }
}

/// A blank entry (what a new leader writes first).
pub fn blank(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

/// A membership entry making `voters` the voters.
pub fn membership(term: u64, index: u64, voters: &[u64]) -> Entry {
    let config: BTreeSet<u64> = voters.iter().copied().collect();
    Entry { log_id: log_id(term, index), payload: EntryPayload::Membership(Membership::new(vec![config], None)) }
}

/// Opens the store in `dir`, failing the test with the store's message.
pub fn open(dir: &Path) -> (LogStore, StateMachineStore) {
    match Store::open(dir) {
        Ok(pair) => pair,
        Err(e) => panic!("opening the store in {} failed: {e}", dir.display()),
    }
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// A current-thread tokio runtime for tests that mix sync and async steps.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("build a tokio runtime")
}

/// Opens the raw sled database of a store, to plant faults in it. Waits
/// while the store's last handle still holds the lock (sled's flusher
/// releases it within a flush interval).
pub fn raw_sled(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::open(kairos_controlplane::store::Store::sled_path(dir)) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting for the store lock: {e}");
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => panic!("raw open of {} failed: {e}", dir.display()),
        }
    }
}
