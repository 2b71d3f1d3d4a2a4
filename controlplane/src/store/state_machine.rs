//! The replicated key-value state machine and its snapshots, on one sled tree.
//!
//! Everything lives in tree `state_machine` under three key spaces, so that
//! one sled batch (atomic, also across a crash) can change data, meta and
//! the current snapshot together:
//! - `d` + user key: the encoded [`KeyValue`];
//! - `m/applied`, `m/membership`, `m/revision`, `m/snapshot_seq`: meta;
//! - `s/current`: the current snapshot (meta + data).
//!
//! The state machine is persistent: `apply` fsyncs before it returns, so a
//! restart needs no snapshot replay and `last_applied` never runs ahead of
//! the data it describes.

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot as RaftSnapshot};
use openraft::{EntryPayload, ErrorSubject, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use sled::{Batch, IVec, Tree};

use super::codec::{decode, encode};
use super::error::{printable, Access, StoreError};
use super::feed::{Applied, Change, ChangeFeed};
use super::kv::{KeyValue, KvSource, PendingWrites, Response};
use super::types::{Entry, LogId, Snapshot, SnapshotData, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const DATA: u8 = b'd';
const APPLIED: &[u8] = b"m/applied";
const MEMBERSHIP: &[u8] = b"m/membership";
const REVISION: &[u8] = b"m/revision";
const SNAPSHOT_SEQ: &[u8] = b"m/snapshot_seq";
const CURRENT_SNAPSHOT: &[u8] = b"s/current";

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

fn data_key_name(key: &[u8]) -> String {
    format!("state_machine/d/{}", printable(key))
}

fn meta_name(key: &[u8]) -> String {
    format!("state_machine/{}", printable(key))
}

/// The bytes of a snapshot: the whole key-value state at one log id.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    revision: u64,
    kvs: Vec<(Vec<u8>, KeyValue)>,
}

/// The current snapshot as kept on disk.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// Local, possibly stale, reads of the replicated key-value state.
///
/// Reads go straight to sled. Each read sees whole applied batches, but two
/// reads may see different revisions; callers that need a fresh answer call
/// `Raft::ensure_linearizable` first.
#[derive(Clone)]
pub struct KvReader {
    tree: Tree,
    feed: ChangeFeed,
}

impl KvReader {
    /// The feed of batches this replica applies.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    /// The key's value and revisions, if it exists.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let raw = self.tree.get(data_key(key)).map_err(|e| StoreError::sled(Access::Read, data_key_name(key), e))?;
        raw.map(|bytes| decode(&bytes, || data_key_name(key))).transpose()
    }

    /// Up to `limit` keys starting with `prefix`, in byte order, beginning
    /// after `start_after` (the last key of the previous page) when given.
    /// A page shorter than `limit` is the last one.
    pub fn range(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, KeyValue)>, StoreError> {
        let lower = match start_after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(data_key(after)),
            _ => std::ops::Bound::Included(data_key(prefix)),
        };
        let full_prefix = data_key(prefix);
        let mut out = Vec::new();
        for item in self.tree.range::<Vec<u8>, _>((lower, std::ops::Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| StoreError::sled(Access::Read, data_key_name(prefix), e))?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            let key = k[1..].to_vec();
            let kv = decode(&v, || data_key_name(&key))?;
            out.push((key, kv));
        }
        Ok(out)
    }

    /// Every key starting with `prefix` with its value, in byte order, read
    /// lazily (a few keys at a time, however many there are).
    pub fn scan_prefix(&self, prefix: &[u8]) -> impl Iterator<Item = Result<(Vec<u8>, KeyValue), StoreError>> + '_ {
        let prefix_name = data_key_name(prefix);
        self.tree.scan_prefix(data_key(prefix)).map(move |item| {
            let (k, v) = item.map_err(|e| StoreError::sled(Access::Read, prefix_name.clone(), e))?;
            let key = k[1..].to_vec();
            let kv = decode(&v, || data_key_name(&key))?;
            Ok((key, kv))
        })
    }

    /// The store revision: the number of applied entries that changed data.
    pub fn revision(&self) -> Result<u64, StoreError> {
        Ok(read_meta(&self.tree, REVISION)?.unwrap_or(0))
    }

    /// The id of the last applied log entry, for reporting how stale reads may be.
    pub fn last_applied(&self) -> Result<Option<LogId>, StoreError> {
        Ok(read_meta::<Option<LogId>>(&self.tree, APPLIED)?.flatten())
    }
}

impl KvSource for KvReader {
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        KvReader::get(self, key)
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tree
            .scan_prefix(data_key(prefix))
            .keys()
            .map(|k| k.map(|k| k[1..].to_vec()).map_err(|e| StoreError::sled(Access::Read, data_key_name(prefix), e)))
            .collect()
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(tree: &Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    let raw = tree.get(key).map_err(|e| StoreError::sled(Access::Read, meta_name(key), e))?;
    raw.map(|bytes| decode(&bytes, || meta_name(key))).transpose()
}

/// The raft state machine of one replica.
pub struct StateMachineStore {
    reader: KvReader,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    revision: u64,
    snapshot_seq: u64,
    /// Serializes writers of the current-snapshot slot: a snapshot build
    /// finishing after a newer snapshot was installed must not replace it.
    snapshot_slot: Arc<Mutex<()>>,
}

/// Builds a snapshot from a copy of the state taken when it was created, so
/// it can run while the state machine keeps applying entries.
pub struct SnapshotBuilder {
    tree: Tree,
    snapshot_slot: Arc<Mutex<()>>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    seq: u64,
    data: Result<Vec<u8>, StoreError>,
}

fn lock(slot: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The mutex guards no data, so a poisoned lock carries no broken state.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sm_err(e: StoreError) -> StorageError {
    e.into_storage_error(ErrorSubject::StateMachine)
}

async fn flush(tree: &Tree, what: &str) -> Result<(), StoreError> {
    tree.flush_async().await.map(drop).map_err(|e| StoreError::sled(Access::Flush, what, e))
}

fn put_meta<T: Serialize>(batch: &mut Batch, key: &[u8], value: &T) -> Result<(), StoreError> {
    batch.insert(key, encode(value, &meta_name(key))?);
    Ok(())
}

impl StateMachineStore {
    /// Loads the applied state kept in `tree`.
    pub(crate) fn open(tree: Tree) -> Result<Self, StoreError> {
        let last_applied = read_meta::<Option<LogId>>(&tree, APPLIED)?.flatten();
        let membership = read_meta(&tree, MEMBERSHIP)?.unwrap_or_default();
        let revision = read_meta(&tree, REVISION)?.unwrap_or(0);
        let snapshot_seq = read_meta(&tree, SNAPSHOT_SEQ)?.unwrap_or(0);
        Ok(StateMachineStore {
            reader: KvReader { tree, feed: ChangeFeed::new() },
            last_applied,
            membership,
            revision,
            snapshot_seq,
            snapshot_slot: Arc::new(Mutex::new(())),
        })
    }

    /// A reader of the key-value state; take it before handing the store to raft.
    pub fn reader(&self) -> KvReader {
        self.reader.clone()
    }

    fn tree(&self) -> &Tree {
        &self.reader.tree
    }

    /// Copies and encodes the whole state as a snapshot payload.
    fn export(&self) -> Result<Vec<u8>, StoreError> {
        let mut kvs = Vec::new();
        for item in self.tree().scan_prefix([DATA]) {
            let (k, v) = item.map_err(|e| StoreError::sled(Access::Read, "state_machine/d (snapshot)", e))?;
            let key = k[1..].to_vec();
            let kv: KeyValue = decode(&v, || data_key_name(&key))?;
            kvs.push((key, kv));
        }
        encode(&SnapshotPayload { revision: self.revision, kvs }, "snapshot payload")
    }

    fn read_current_snapshot(tree: &Tree) -> Result<Option<StoredSnapshot>, StoreError> {
        let raw: Option<IVec> =
            tree.get(CURRENT_SNAPSHOT).map_err(|e| StoreError::sled(Access::Read, meta_name(CURRENT_SNAPSHOT), e))?;
        raw.map(|bytes| decode(&bytes, || meta_name(CURRENT_SNAPSHOT))).transpose()
    }

    /// Replaces the whole state with `payload` and makes it the current snapshot.
    fn replace_with_snapshot(&mut self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StoreError> {
        let payload: SnapshotPayload =
            decode(&data, || format!("snapshot {} (last log {:?})", meta.snapshot_id, meta.last_log_id))?;
        let mut batch = Batch::default();
        // Clear and refill in the same batch: readers and a crash see either
        // the old state or the new one, never a mix.
        for key in self.tree().scan_prefix([DATA]).keys() {
            batch.remove(key.map_err(|e| StoreError::sled(Access::Read, "state_machine/d (install)", e))?);
        }
        for (key, kv) in &payload.kvs {
            batch.insert(data_key(key), encode(kv, &data_key_name(key))?);
        }
        put_meta(&mut batch, APPLIED, &meta.last_log_id)?;
        put_meta(&mut batch, MEMBERSHIP, &meta.last_membership)?;
        put_meta(&mut batch, REVISION, &payload.revision)?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        batch.insert(CURRENT_SNAPSHOT, encode(&stored, &meta_name(CURRENT_SNAPSHOT))?);
        {
            let _slot = lock(&self.snapshot_slot);
            self.tree()
                .apply_batch(batch)
                .map_err(|e| StoreError::sled(Access::Write, format!("snapshot {}", meta.snapshot_id), e))?;
        }
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.revision = payload.revision;
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = std::mem::replace(&mut self.data, Ok(Vec::new())).map_err(sm_err)?;
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, self.seq),
            None => format!("none-{}", self.seq),
        };
        let meta =
            SnapshotMeta { last_log_id: self.last_applied, last_membership: self.membership.clone(), snapshot_id };
        let snap_err = |e: StoreError| e.into_storage_error(ErrorSubject::Snapshot(Some(meta.signature())));
        let stored = StoredSnapshot { meta: meta.clone(), data };
        let mut batch = Batch::default();
        {
            let _slot = lock(&self.snapshot_slot);
            // The sequence number is persisted (never lowered) even when the
            // snapshot is not kept, so a snapshot id is never handed out twice.
            let kept_seq: u64 = read_meta(&self.tree, SNAPSHOT_SEQ).map_err(snap_err)?.unwrap_or(0);
            put_meta(&mut batch, SNAPSHOT_SEQ, &kept_seq.max(self.seq)).map_err(snap_err)?;
            let current = StateMachineStore::read_current_snapshot(&self.tree).map_err(snap_err)?;
            // Only a snapshot at least as new as the kept one replaces it: an
            // install may have overtaken this build.
            if current.is_none_or(|c| c.meta.last_log_id <= meta.last_log_id) {
                batch.insert(CURRENT_SNAPSHOT, encode(&stored, &meta_name(CURRENT_SNAPSHOT)).map_err(snap_err)?);
            }
            self.tree
                .apply_batch(batch)
                .map_err(|e| snap_err(StoreError::sled(Access::Write, meta_name(CURRENT_SNAPSHOT), e)))?;
        }
        flush(&self.tree, "snapshot").await.map_err(snap_err)?;
        Ok(RaftSnapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut pending = PendingWrites::new(self.revision);
        let mut last_applied = self.last_applied;
        let mut membership = self.membership.clone();
        let mut responses = Vec::new();
        for entry in entries {
            let apply_err = |e: StoreError| e.into_storage_error(ErrorSubject::Apply(entry.log_id));
            last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::unchanged(pending.revision)),
                EntryPayload::Normal(ref request) => {
                    responses.push(pending.execute(&self.reader, request).map_err(apply_err)?);
                }
                EntryPayload::Membership(ref m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    responses.push(Response::unchanged(pending.revision));
                }
            }
        }
        let Some(last) = last_applied.filter(|_| !responses.is_empty()) else {
            return Ok(responses);
        };
        let apply_err = |e: StoreError| e.into_storage_error(ErrorSubject::Apply(last));
        // Data, last_applied, membership and revision in one batch, so a
        // crash can never leave last_applied pointing past (or behind) the
        // data, which would apply an entry twice or skip it.
        let mut batch = Batch::default();
        for (key, state) in &pending.writes {
            match state {
                Some(kv) => batch.insert(data_key(key), encode(kv, &data_key_name(key)).map_err(apply_err)?),
                None => batch.remove(data_key(key)),
            }
        }
        put_meta(&mut batch, APPLIED, &last_applied).map_err(apply_err)?;
        put_meta(&mut batch, MEMBERSHIP, &membership).map_err(apply_err)?;
        put_meta(&mut batch, REVISION, &pending.revision).map_err(apply_err)?;
        self.tree().apply_batch(batch).map_err(|e| {
            apply_err(StoreError::sled(Access::Write, format!("state_machine (apply up to {last})"), e))
        })?;
        flush(self.tree(), "state_machine (apply)").await.map_err(apply_err)?;
        self.last_applied = last_applied;
        self.membership = membership;
        let changed = pending.revision != self.revision;
        self.revision = pending.revision;
        if changed {
            let changes = pending.writes.into_iter().map(|(key, kv)| Change { key, kv }).collect();
            self.reader.feed.publish(Applied::Changes { revision: self.revision, changes });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            tree: self.tree().clone(),
            snapshot_slot: Arc::clone(&self.snapshot_slot),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            seq: self.snapshot_seq,
            data: self.export(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapshotData>) -> Result<(), StorageError> {
        let snap_err = |e: StoreError| e.into_storage_error(ErrorSubject::Snapshot(Some(meta.signature())));
        let bytes = snapshot.get_ref().len();
        self.replace_with_snapshot(meta, snapshot.into_inner()).map_err(snap_err)?;
        flush(self.tree(), "installed snapshot").await.map_err(snap_err)?;
        self.reader.feed.publish(Applied::Reset { revision: self.revision });
        tracing::info!(snapshot = ?meta.signature(), bytes, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = {
            let _slot = lock(&self.snapshot_slot);
            Self::read_current_snapshot(self.tree()).map_err(|e| e.into_storage_error(ErrorSubject::Snapshot(None)))?
        };
        Ok(stored.map(|s| RaftSnapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}
