//! The replicated key-value model, after etcd: every write carries a global
//! revision, every key its create/mod revision and version, and writes go
//! through transactions guarded by compares (compare-and-set).
//!
//! This file holds the request/response types and the pure rules of how a
//! request changes the state (`PendingWrites`); reading and writing sled
//! is the state machine's business.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::error::StoreError;

/// A key's stored value and its revision bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the write that last changed the key.
    pub mod_revision: u64,
    /// Number of puts since the key was created; 1 after the first put.
    pub version: u64,
}

/// One write inside a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Sets `key` to `value`, creating it if absent.
    Put {
        /// Key bytes; keys sort as bytes.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
    },
    /// Removes `key`; a no-op when it does not exist.
    Delete {
        /// Key bytes.
        key: Vec<u8>,
    },
    /// Removes every key starting with `prefix` (all keys when it is empty).
    DeletePrefix {
        /// Prefix bytes.
        prefix: Vec<u8>,
    },
    /// Runs `ops` only if every compare holds; otherwise does nothing. Lets
    /// one request carry many independent compare-and-sets (one per node
    /// of a batch), each succeeding or failing on its own.
    Guarded {
        /// Guards of this op alone.
        compares: Vec<Compare>,
        /// Ops to run when they hold.
        ops: Vec<Op>,
    },
}

impl Op {
    /// A put of `value` at `key`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { key: key.into(), value: value.into() }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Op::Delete { key: key.into() }
    }

    /// A delete of every key under `prefix`.
    pub fn delete_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        Op::DeletePrefix { prefix: prefix.into() }
    }

    /// `ops`, run only when every compare holds.
    pub fn guarded(compares: Vec<Compare>, ops: Vec<Op>) -> Self {
        Op::Guarded { compares, ops }
    }
}

/// How a [`Compare`] relates the key's current field to its operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Current == operand.
    Equal,
    /// Current != operand.
    NotEqual,
    /// Current > operand.
    Greater,
    /// Current < operand.
    Less,
}

/// Which field of a key a [`Compare`] looks at, with the operand.
///
/// A missing key has version, create revision and mod revision 0, so
/// `Version == 0` tests absence; a value compare on a missing key is false.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The key's version.
    Version(u64),
    /// The key's create revision.
    CreateRevision(u64),
    /// The key's mod revision.
    ModRevision(u64),
    /// The key's value, compared as bytes.
    Value(Vec<u8>),
}

/// A guard of a transaction: one key's field against an operand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key to look at.
    pub key: Vec<u8>,
    /// The relation that must hold.
    pub op: CompareOp,
    /// The field and the operand.
    pub target: CompareTarget,
}

impl Compare {
    /// True when `key` exists.
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Greater, target: CompareTarget::Version(0) }
    }

    /// True when `key` does not exist.
    pub fn missing(key: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CompareOp::Equal, target: CompareTarget::Version(0) }
    }

    /// Compares the key's mod revision; `Equal` with the revision a caller
    /// read is the compare-and-set guard (0 for "still absent").
    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Self {
        Compare { key: key.into(), op, target: CompareTarget::ModRevision(revision) }
    }

    /// Compares the key's create revision.
    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Self {
        Compare { key: key.into(), op, target: CompareTarget::CreateRevision(revision) }
    }

    /// Compares the key's version.
    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: u64) -> Self {
        Compare { key: key.into(), op, target: CompareTarget::Version(version) }
    }

    /// Compares the key's value bytes.
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op, target: CompareTarget::Value(value.into()) }
    }

    /// Whether the compare holds for the key's current state.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        let ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(want), Some(kv)) => kv.value.as_slice().cmp(want.as_slice()),
            (CompareTarget::Version(n), kv) => kv.map_or(0, |kv| kv.version).cmp(n),
            (CompareTarget::CreateRevision(n), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(n),
            (CompareTarget::ModRevision(n), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(n),
        };
        match self.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Greater => ordering.is_gt(),
            CompareOp::Less => ordering.is_lt(),
        }
    }
}

/// A write proposed through raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// If every compare holds, run `success`, otherwise run `failure`.
    ///
    /// Ops run in order and see the effects of earlier ops of the same
    /// branch. All changes of one request share one new revision; a request
    /// that changes nothing leaves the revision as it was.
    Txn {
        /// Guards, all of which must hold for `success` to run.
        compares: Vec<Compare>,
        /// Ops to run when every compare holds.
        success: Vec<Op>,
        /// Ops to run otherwise.
        failure: Vec<Op>,
    },
}

impl Request {
    /// An unconditional put.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Request::batch(vec![Op::put(key, value)])
    }

    /// An unconditional delete.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Request::batch(vec![Op::delete(key)])
    }

    /// Unconditional ops applied atomically at one revision.
    pub fn batch(ops: Vec<Op>) -> Self {
        Request::Txn { compares: Vec::new(), success: ops, failure: Vec::new() }
    }

    /// A guarded transaction.
    pub fn txn(compares: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>) -> Self {
        Request::Txn { compares, success, failure }
    }
}

/// What one executed op did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A put; `prev` is the key's state before it, if it existed.
    Put {
        /// The previous value and revisions.
        prev: Option<KeyValue>,
    },
    /// A delete; `prev` is what was removed, if anything.
    Delete {
        /// The removed value and revisions.
        prev: Option<KeyValue>,
    },
    /// A prefix delete.
    DeletePrefix {
        /// How many keys were removed.
        deleted: u64,
    },
    /// A guarded group of ops.
    Guarded {
        /// Whether the compares held and the ops ran.
        applied: bool,
        /// One result per op when they ran; empty otherwise.
        results: Vec<OpResult>,
    },
}

/// The state machine's answer to one applied log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The store revision after this entry was applied.
    pub revision: u64,
    /// Whether the compares held (the `success` branch ran). True for
    /// entries without compares and for blank/membership entries.
    pub succeeded: bool,
    /// One result per op of the branch that ran, in order.
    pub results: Vec<OpResult>,
}

impl Response {
    /// The answer for an entry that carries no request (blank, membership).
    pub fn unchanged(revision: u64) -> Self {
        Response { revision, succeeded: true, results: Vec::new() }
    }
}

/// Read access to the committed state that an apply call builds upon.
pub(crate) trait KvSource {
    /// The key's current committed state.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError>;
    /// Every committed key starting with `prefix`.
    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError>;
}

/// The changes of one apply call, layered over a [`KvSource`], so a batch of
/// entries is written to disk as one atomic unit.
#[derive(Debug)]
pub(crate) struct PendingWrites {
    /// Current revision, including the pending changes.
    pub(crate) revision: u64,
    /// Key -> new state; `None` marks a deletion.
    pub(crate) writes: BTreeMap<Vec<u8>, Option<KeyValue>>,
}

impl PendingWrites {
    /// Starts from the committed `revision`.
    pub(crate) fn new(revision: u64) -> Self {
        PendingWrites { revision, writes: BTreeMap::new() }
    }

    fn get(&self, source: &impl KvSource, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        match self.writes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => source.get(key),
        }
    }

    fn live_keys_with_prefix(&self, source: &impl KvSource, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys: BTreeSet<Vec<u8>> = source.keys_with_prefix(prefix)?.into_iter().collect();
        for (key, state) in self.writes.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            if state.is_some() {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Executes `request` against the pending state and returns its response.
    ///
    /// Deterministic: every replica computes the same result from the same
    /// state, which is what keeps replicas identical.
    pub(crate) fn execute(&mut self, source: &impl KvSource, request: &Request) -> Result<Response, StoreError> {
        let Request::Txn { compares, success, failure } = request;
        let mut succeeded = true;
        for compare in compares {
            if !compare.holds(self.get(source, &compare.key)?.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { success } else { failure };
        let next = self.revision + 1;
        let mut changed = false;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(self.run_op(source, op, next, &mut changed)?);
        }
        if changed {
            self.revision = next;
        }
        Ok(Response { revision: self.revision, succeeded, results })
    }

    fn run_op(
        &mut self,
        source: &impl KvSource,
        op: &Op,
        next: u64,
        changed: &mut bool,
    ) -> Result<OpResult, StoreError> {
        Ok(match op {
            Op::Put { key, value } => {
                let prev = self.get(source, key)?;
                let kv = match &prev {
                    Some(p) => KeyValue {
                        value: value.clone(),
                        create_revision: p.create_revision,
                        mod_revision: next,
                        version: p.version + 1,
                    },
                    None => KeyValue { value: value.clone(), create_revision: next, mod_revision: next, version: 1 },
                };
                self.writes.insert(key.clone(), Some(kv));
                *changed = true;
                OpResult::Put { prev }
            }
            Op::Delete { key } => {
                let prev = self.get(source, key)?;
                if prev.is_some() {
                    self.writes.insert(key.clone(), None);
                    *changed = true;
                }
                OpResult::Delete { prev }
            }
            Op::DeletePrefix { prefix } => {
                let keys = self.live_keys_with_prefix(source, prefix)?;
                *changed |= !keys.is_empty();
                let deleted = keys.len() as u64;
                for key in keys {
                    self.writes.insert(key, None);
                }
                OpResult::DeletePrefix { deleted }
            }
            Op::Guarded { compares, ops } => {
                for compare in compares {
                    if !compare.holds(self.get(source, &compare.key)?.as_ref()) {
                        return Ok(OpResult::Guarded { applied: false, results: Vec::new() });
                    }
                }
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    results.push(self.run_op(source, op, next, changed)?);
                }
                OpResult::Guarded { applied: true, results }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory committed state, so the rules are tested without sled.
    struct Mem(BTreeMap<Vec<u8>, KeyValue>);

    impl KvSource for Mem {
        fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
            Ok(self.0.get(key).cloned())
        }
        fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
            Ok(self.0.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
        }
    }

    fn run(pending: &mut PendingWrites, req: Request) -> Response {
        pending.execute(&Mem(BTreeMap::new()), &req).expect("in-memory execute cannot fail")
    }

    #[test]
    fn puts_bump_revision_mod_revision_and_version_but_keep_create_revision() {
        let mut p = PendingWrites::new(0);
        assert_eq!(run(&mut p, Request::put("a", "1")).revision, 1);
        let r = run(&mut p, Request::put("a", "2"));
        assert_eq!(r.revision, 2);
        let Some(OpResult::Put { prev: Some(prev) }) = r.results.first() else { panic!("{r:?}") };
        assert_eq!(prev.value, b"1");
        let now = p.writes[b"a".as_slice()].clone().expect("a exists");
        assert_eq!((now.create_revision, now.mod_revision, now.version), (1, 2, 2));
    }

    #[test]
    fn a_request_that_changes_nothing_keeps_the_revision() {
        let mut p = PendingWrites::new(5);
        let r = run(&mut p, Request::delete("absent"));
        assert_eq!((r.revision, r.results.clone()), (5, vec![OpResult::Delete { prev: None }]));
        let r = run(&mut p, Request::batch(vec![Op::delete_prefix("nodes/")]));
        assert_eq!(r.revision, 5);
    }

    #[test]
    fn compare_on_missing_key_sees_zero_revisions_and_no_value() {
        assert!(Compare::missing("k").holds(None));
        assert!(!Compare::exists("k").holds(None));
        assert!(Compare::mod_revision("k", CompareOp::Equal, 0).holds(None));
        assert!(!Compare::value("k", CompareOp::NotEqual, "x").holds(None));
        let kv = KeyValue { value: b"b".to_vec(), create_revision: 3, mod_revision: 4, version: 2 };
        assert!(Compare::value("k", CompareOp::Greater, "a").holds(Some(&kv)));
        assert!(Compare::version("k", CompareOp::Less, 3).holds(Some(&kv)));
        assert!(Compare::create_revision("k", CompareOp::Equal, 3).holds(Some(&kv)));
    }

    #[test]
    fn ops_in_one_branch_see_earlier_ops_and_share_one_revision() {
        let mut p = PendingWrites::new(0);
        let r = run(
            &mut p,
            Request::batch(vec![Op::put("n/1", "a"), Op::put("n/2", "b"), Op::delete("n/1"), Op::put("n/1", "c")]),
        );
        assert_eq!(r.revision, 1);
        let n1 = p.writes[b"n/1".as_slice()].clone().expect("recreated");
        assert_eq!((n1.create_revision, n1.version, n1.value.as_slice()), (1, 1, b"c".as_slice()));
        let r = run(&mut p, Request::batch(vec![Op::delete_prefix("n/")]));
        assert_eq!(r.results, vec![OpResult::DeletePrefix { deleted: 2 }]);
        assert_eq!(r.revision, 2);
    }

    #[test]
    fn guarded_ops_succeed_or_fail_one_by_one_inside_one_request() {
        let mut p = PendingWrites::new(0);
        run(&mut p, Request::batch(vec![Op::put("n/1", "a"), Op::put("n/2", "b")]));
        let r = run(
            &mut p,
            Request::batch(vec![
                Op::guarded(vec![Compare::mod_revision("n/1", CompareOp::Equal, 1)], vec![Op::put("n/1", "a2")]),
                Op::guarded(vec![Compare::value("n/2", CompareOp::Equal, "stale")], vec![Op::delete("n/2")]),
            ]),
        );
        assert_eq!(r.revision, 2);
        assert!(matches!(r.results[0], OpResult::Guarded { applied: true, .. }), "{r:?}");
        assert_eq!(r.results[1], OpResult::Guarded { applied: false, results: vec![] });
        assert_eq!(p.writes[b"n/1".as_slice()].clone().expect("kept").value, b"a2");
        assert!(p.writes[b"n/2".as_slice()].is_some(), "the failed guard deleted nothing");
        // A request whose every guard fails changes nothing, not even the revision.
        let r =
            run(&mut p, Request::batch(vec![Op::guarded(vec![Compare::missing("n/1")], vec![Op::put("n/1", "x")])]));
        assert_eq!(r.revision, 2);
    }
}
