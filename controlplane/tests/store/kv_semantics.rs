//! The etcd-like key-value rules, applied through the sled state machine.

use kairos_controlplane::store::types::Entry;
use kairos_controlplane::store::{Compare, CompareOp, KvReader, Op, OpResult, Request, Response, StateMachineStore};
use openraft::storage::RaftStateMachine;

use crate::common::{blank, membership, normal, open, runtime, tempdir};

/// Applies `requests` as consecutive normal entries starting at `first`.
fn apply_requests(sm: &mut StateMachineStore, first: u64, requests: Vec<Request>) -> Vec<Response> {
    let entries: Vec<Entry> = requests.into_iter().enumerate().map(|(i, r)| normal(1, first + i as u64, r)).collect();
    runtime().block_on(sm.apply(entries)).expect("apply")
}

fn value(reader: &KvReader, key: &str) -> Option<Vec<u8>> {
    reader.get(key.as_bytes()).expect("read").map(|kv| kv.value)
}

#[test]
fn revision_increases_once_per_entry_that_writes() {
    let dir = tempdir();
    let (_log, mut sm) = open(dir.path());
    let reader = sm.reader();
    let entries = vec![
        membership(1, 1, &[1]),
        normal(1, 2, Request::put("a", "1")),
        normal(1, 3, Request::batch(vec![Op::put("b", "1"), Op::put("c", "1")])),
        blank(1, 4),
        normal(1, 5, Request::delete("missing")),
        normal(1, 6, Request::put("a", "2")),
        normal(1, 7, Request::delete("b")),
    ];
    let responses = runtime().block_on(sm.apply(entries)).expect("apply");
    let revisions: Vec<u64> = responses.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, vec![0, 1, 2, 2, 2, 3, 4]);
    assert_eq!(reader.revision().expect("revision"), 4);

    let a = reader.get(b"a").expect("read").expect("a exists");
    assert_eq!((a.create_revision, a.mod_revision, a.version, a.value.as_slice()), (1, 3, 2, b"2".as_slice()));
    let c = reader.get(b"c").expect("read").expect("c exists");
    assert_eq!((c.create_revision, c.mod_revision, c.version), (2, 2, 1));
    assert_eq!(value(&reader, "b"), None);
    assert_eq!(responses[6].results, vec![OpResult::Delete { prev: Some(kv_b(2)) }]);
}

fn kv_b(rev: u64) -> kairos_controlplane::store::KeyValue {
    kairos_controlplane::store::KeyValue { value: b"1".to_vec(), create_revision: rev, mod_revision: rev, version: 1 }
}

#[test]
fn txn_takes_success_branch_only_when_every_compare_holds() {
    let dir = tempdir();
    let (_log, mut sm) = open(dir.path());
    let reader = sm.reader();
    let cas = |expected_rev: u64, value: &str| {
        Request::txn(
            vec![Compare::mod_revision("nodes/1", CompareOp::Equal, expected_rev)],
            vec![Op::put("nodes/1", value)],
            vec![Op::put("conflicts/nodes/1", value)],
        )
    };
    let r = apply_requests(
        &mut sm,
        1,
        vec![
            cas(0, "v1"),   // absent key has mod_revision 0: succeeds, rev 1
            cas(1, "v2"),   // succeeds, rev 2
            cas(1, "late"), // stale: failure branch runs, still a write: rev 3
            Request::txn(vec![Compare::missing("nodes/1")], vec![Op::delete("nodes/1")], vec![]),
            Request::txn(
                vec![Compare::exists("nodes/1"), Compare::value("nodes/1", CompareOp::Equal, "v2")],
                vec![Op::put("seen", "yes")],
                vec![],
            ),
        ],
    );
    let outcome: Vec<(bool, u64)> = r.iter().map(|r| (r.succeeded, r.revision)).collect();
    assert_eq!(outcome, vec![(true, 1), (true, 2), (false, 3), (false, 3), (true, 4)]);
    assert_eq!(value(&reader, "nodes/1"), Some(b"v2".to_vec()));
    assert_eq!(value(&reader, "conflicts/nodes/1"), Some(b"late".to_vec()));
    assert_eq!(value(&reader, "seen"), Some(b"yes".to_vec()));
    assert!(r[3].results.is_empty(), "an empty failure branch reports no results");
}

#[test]
fn delete_prefix_removes_only_keys_under_the_prefix() {
    let dir = tempdir();
    let (_log, mut sm) = open(dir.path());
    let reader = sm.reader();
    let keys = ["node", "nodes/1", "nodes/10", "nodes/2", "nodesX", "rollouts/1"];
    apply_requests(&mut sm, 1, vec![Request::batch(keys.iter().map(|k| Op::put(*k, "x")).collect())]);
    let r = apply_requests(&mut sm, 2, vec![Request::batch(vec![Op::delete_prefix("nodes/")])]);
    assert_eq!(r[0].results, vec![OpResult::DeletePrefix { deleted: 3 }]);
    assert_eq!(r[0].revision, 2);
    let left: Vec<Vec<u8>> = reader.range(b"", None, 100).expect("range").into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, vec![b"node".to_vec(), b"nodesX".to_vec(), b"rollouts/1".to_vec()]);
}

#[test]
fn entries_of_one_apply_call_see_each_others_writes() {
    let dir = tempdir();
    let (_log, mut sm) = open(dir.path());
    let reader = sm.reader();
    let r = apply_requests(
        &mut sm,
        1,
        vec![
            Request::put("nodes/1", "a"),
            Request::put("nodes/2", "b"),
            Request::batch(vec![Op::delete_prefix("nodes/"), Op::put("nodes/3", "c")]),
            Request::txn(vec![Compare::missing("nodes/1")], vec![Op::put("ok", "1")], vec![]),
        ],
    );
    assert_eq!(r[2].results[0], OpResult::DeletePrefix { deleted: 2 });
    assert!(r[3].succeeded);
    let keys: Vec<Vec<u8>> = reader.range(b"", None, 10).expect("range").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"nodes/3".to_vec(), b"ok".to_vec()]);
    assert_eq!(reader.revision().expect("revision"), 4);
}

#[test]
fn range_pages_through_a_prefix_in_byte_order() {
    let dir = tempdir();
    let (_log, mut sm) = open(dir.path());
    let reader = sm.reader();
    let mut ops: Vec<Op> = (0..25).rev().map(|i| Op::put(format!("nodes/{i:03}"), format!("{i}"))).collect();
    // Neighbours of the prefix, and a byte above ASCII, must sort as bytes.
    ops.extend([
        Op::put("node", "n"),
        Op::put("nodes0", "n"),
        Op::put("a", "a"),
        Op::put(b"nodes/\xff".to_vec(), "hi"),
    ]);
    apply_requests(&mut sm, 1, vec![Request::batch(ops)]);

    let mut pages = Vec::new();
    let mut after: Option<Vec<u8>> = Some(b"a".to_vec()); // before the prefix: ignored
    loop {
        let page = reader.range(b"nodes/", after.as_deref(), 10).expect("range");
        pages.push(page.len());
        match page.last() {
            Some((k, _)) if page.len() == 10 => after = Some(k.clone()),
            _ => break,
        }
        if let Some((first, _)) = page.first() {
            assert!(first.starts_with(b"nodes/"));
        }
    }
    assert_eq!(pages, vec![10, 10, 6]);
    let all: Vec<Vec<u8>> = reader.range(b"nodes/", None, 100).expect("range").into_iter().map(|(k, _)| k).collect();
    let mut expected: Vec<Vec<u8>> = (0..25).map(|i| format!("nodes/{i:03}").into_bytes()).collect();
    expected.push(b"nodes/\xff".to_vec());
    assert_eq!(all, expected);
    assert!(reader.range(b"nodes/", None, 0).expect("range").is_empty());
    assert!(reader.range(b"nodes/", Some(b"nodes/\xff"), 10).expect("range").is_empty());
}

#[test]
fn corrupt_record_is_a_storage_error_naming_the_key() {
    let dir = tempdir();
    {
        let (_log, mut sm) = open(dir.path());
        apply_requests(&mut sm, 1, vec![Request::put("nodes/7", "ok")]);
    }
    {
        let db = crate::common::raw_sled(dir.path());
        let tree = db.open_tree("state_machine").expect("tree");
        tree.insert(b"dnodes/7", &[1u8, 0xff, 0xff][..]).expect("insert garbage");
        db.flush().expect("flush");
    }
    let (_log, mut sm) = open(dir.path());
    let err = sm.reader().get(b"nodes/7").expect_err("garbage must not decode");
    assert!(err.to_string().contains("nodes/7"), "{err}");
    let err = runtime().block_on(sm.apply(vec![normal(1, 2, Request::put("nodes/7", "again"))])).expect_err("apply");
    assert!(err.to_string().contains("nodes/7"), "{err}");
}
