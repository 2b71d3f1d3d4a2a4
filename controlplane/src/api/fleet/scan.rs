//! Reading nodes from the three key spaces (`nodes/`, `node-sessions/`,
//! `desired/`) and assembling them, one node at a time.
//!
//! A full scan walks the three prefixes side by side in pages of
//! [`SCAN_BATCH`] keys and joins them by node id (all three are sorted by
//! id), so memory stays bounded by one page per prefix however large the
//! fleet. Pages are read one after another: a scan is not a point-in-time
//! view, but each node is read whole from one key per space.

use std::collections::VecDeque;

use kairos_fleet_proto::fleet::v1 as pb;
use tonic::Status;

use super::catalog::Catalog;
use super::filter::{release, Facts};
use crate::nodes::{
    self, decode_desired, decode_node, decode_session, NodeRecord, SessionRecord, DESIRED_PREFIX, NODES_PREFIX,
    SESSIONS_PREFIX,
};
use crate::store::{KeyValue, KvReader, StoreError};

/// Keys read from the store per range call.
pub const SCAN_BATCH: usize = 1000;

/// A store failure as a gRPC status.
pub fn store_status(e: StoreError) -> Status {
    Status::internal(format!("reading the replicated state: {e}"))
}

/// One node as read from the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// The node record.
    pub record: NodeRecord,
    /// Mod revision of `nodes/<id>`.
    pub record_revision: u64,
    /// The session record, while a replica holds the node's stream.
    pub session: Option<SessionRecord>,
    /// Mod revision of the session record (0 when absent).
    pub session_revision: u64,
    /// The desired state, still encoded: only shown nodes need it decoded.
    pub desired: Option<KeyValue>,
}

impl NodeRow {
    /// A row from the three keys' values; `None` when the record is corrupt
    /// (logged). A corrupt session reads as offline, a corrupt desired state
    /// as none.
    pub fn assemble(
        node_id: &str,
        record: &KeyValue,
        session: Option<&KeyValue>,
        desired: Option<KeyValue>,
    ) -> Option<NodeRow> {
        let record_key = nodes::node_key(node_id);
        let parsed = match decode_node(&record_key, record) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(error = %e, "skipping a node record that does not decode");
                return None;
            }
        };
        let session = session.and_then(|kv| match decode_session(&nodes::session_key(node_id), kv) {
            Ok(s) => Some((s, kv.mod_revision)),
            Err(e) => {
                tracing::warn!(error = %e, "reading a session record that does not decode as offline");
                None
            }
        });
        Some(NodeRow {
            record: parsed,
            record_revision: record.mod_revision,
            session_revision: session.as_ref().map_or(0, |(_, r)| *r),
            session: session.map(|(s, _)| s),
            desired,
        })
    }

    /// Reads one node by id; `None` when it is not enrolled (or its record
    /// is corrupt).
    pub fn read(reader: &KvReader, node_id: &str) -> Result<Option<NodeRow>, Status> {
        let Some(record) = reader.get(nodes::node_key(node_id).as_bytes()).map_err(store_status)? else {
            return Ok(None);
        };
        let session = reader.get(nodes::session_key(node_id).as_bytes()).map_err(store_status)?;
        let desired = reader.get(nodes::desired_key(node_id).as_bytes()).map_err(store_status)?;
        Ok(NodeRow::assemble(node_id, &record, session.as_ref(), desired))
    }

    /// Whether a replica holds the node's stream.
    pub fn online(&self) -> bool {
        self.session.is_some()
    }

    /// The node's revision: the newest mod revision of its keys.
    pub fn revision(&self) -> u64 {
        self.record_revision.max(self.session_revision).max(self.desired.as_ref().map_or(0, |kv| kv.mod_revision))
    }

    /// What a filter looks at, with the support status from `catalog`.
    pub fn facts<'a>(&'a self, catalog: &Catalog) -> Facts<'a> {
        Facts { record: &self.record, support: catalog.support(release(&self.record)), online: self.online() }
    }

    /// The API's view of the node.
    pub fn to_node(&self, catalog: &Catalog) -> pb::Node {
        let desired = self.desired.as_ref().and_then(|kv| {
            let key = nodes::desired_key(&self.record.node_id);
            decode_desired(&key, kv).map_err(|e| tracing::warn!(error = %e, "desired state does not decode")).ok()
        });
        let mut node = nodes::to_api_node(&self.record, self.session.as_ref(), desired.as_ref(), self.revision());
        let release = release(&self.record);
        node.support_status = catalog.support(release) as i32;
        node.available_patch = catalog.available_patch(self.record.family.as_ref(), release);
        node
    }
}

/// Keys of one prefix, read page by page in key order.
struct Cursor {
    prefix: &'static str,
    page: VecDeque<(Vec<u8>, KeyValue)>,
    last_key: Option<Vec<u8>>,
    done: bool,
}

impl Cursor {
    fn new(prefix: &'static str) -> Cursor {
        Cursor { prefix, page: VecDeque::new(), last_key: None, done: false }
    }

    fn fill(&mut self, reader: &KvReader) -> Result<(), Status> {
        if !self.page.is_empty() || self.done {
            return Ok(());
        }
        let page = reader.range(self.prefix.as_bytes(), self.last_key.as_deref(), SCAN_BATCH).map_err(store_status)?;
        self.done = page.len() < SCAN_BATCH;
        self.last_key = page.last().map(|(k, _)| k.clone()).or(self.last_key.take());
        self.page = page.into();
        Ok(())
    }

    /// The next key's node id and value.
    fn next(&mut self, reader: &KvReader) -> Result<Option<(String, KeyValue)>, Status> {
        self.fill(reader)?;
        Ok(self.page.pop_front().map(|(key, kv)| (String::from_utf8_lossy(&key[self.prefix.len()..]).into_owned(), kv)))
    }

    /// The value of `node_id`'s key, skipping keys of ids before it.
    fn take(&mut self, reader: &KvReader, node_id: &str) -> Result<Option<KeyValue>, Status> {
        loop {
            self.fill(reader)?;
            let Some((key, _)) = self.page.front() else { return Ok(None) };
            match key[self.prefix.len()..].cmp(node_id.as_bytes()) {
                std::cmp::Ordering::Less => {
                    self.page.pop_front();
                }
                std::cmp::Ordering::Equal => return Ok(self.page.pop_front().map(|(_, kv)| kv)),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }
}

/// Every enrolled node in id order, or only the listed ones.
pub struct Scan {
    reader: KvReader,
    source: Source,
}

enum Source {
    All(Box<Cursors>),
    Ids(std::vec::IntoIter<String>),
}

/// One cursor per key space.
struct Cursors {
    nodes: Cursor,
    sessions: Cursor,
    desired: Cursor,
}

impl Scan {
    /// A scan of every node (`ids` empty) or of the nodes `ids` names.
    pub fn new(reader: KvReader, ids: &[String]) -> Scan {
        let source = if ids.is_empty() {
            Source::All(Box::new(Cursors {
                nodes: Cursor::new(NODES_PREFIX),
                sessions: Cursor::new(SESSIONS_PREFIX),
                desired: Cursor::new(DESIRED_PREFIX),
            }))
        } else {
            let mut ids = ids.to_vec();
            ids.sort();
            ids.dedup();
            Source::Ids(ids.into_iter())
        };
        Scan { reader, source }
    }

    /// The next node, `None` at the end.
    pub fn next_row(&mut self) -> Result<Option<NodeRow>, Status> {
        let reader = &self.reader;
        loop {
            let row = match &mut self.source {
                Source::Ids(ids) => {
                    let Some(id) = ids.next() else { return Ok(None) };
                    NodeRow::read(reader, &id)?
                }
                Source::All(cursors) => {
                    let Some((id, record)) = cursors.nodes.next(reader)? else { return Ok(None) };
                    let session = cursors.sessions.take(reader, &id)?;
                    let desired = cursors.desired.take(reader, &id)?;
                    NodeRow::assemble(&id, &record, session.as_ref(), desired)
                }
            };
            if let Some(row) = row {
                return Ok(Some(row));
            }
        }
    }
}
