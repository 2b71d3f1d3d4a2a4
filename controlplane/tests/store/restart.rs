//! What must survive closing and reopening the store in-process.

use kairos_controlplane::store::types::{Entry, Vote};
use kairos_controlplane::store::Request;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder};

use crate::common::{log_id, membership, normal, open, runtime, tempdir};

fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range
        .map(|i| {
            if i == 1 {
                membership(1, 1, &[1])
            } else {
                normal(1, i, Request::put(format!("k/{i:03}"), format!("{i}")))
            }
        })
        .collect()
}

#[test]
fn vote_logs_purge_marker_state_and_snapshot_survive_reopen() {
    let dir = tempdir();
    let rt = runtime();
    let vote = Vote::new_committed(3, 1);
    let snapshot_meta = rt.block_on(async {
        let (mut log, mut sm) = open(dir.path());
        log.save_vote(&vote).await.expect("save vote");
        log.blocking_append(entries(1..=10)).await.expect("append");
        log.save_committed(Some(log_id(1, 10))).await.expect("save committed");
        sm.apply(entries(1..=8)).await.expect("apply");
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("build snapshot");
        log.purge(log_id(1, 6)).await.expect("purge");
        snapshot.meta
    });
    assert_eq!(snapshot_meta.last_log_id, Some(log_id(1, 8)));

    rt.block_on(async {
        let (mut log, mut sm) = open(dir.path());
        assert_eq!(log.read_vote().await.expect("read vote"), Some(vote));
        assert_eq!(log.read_committed().await.expect("read committed"), Some(log_id(1, 10)));
        let state = log.get_log_state().await.expect("log state");
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 6)), Some(log_id(1, 10))));
        let present: Vec<u64> =
            log.try_get_log_entries(0..100).await.expect("read log").iter().map(|e| e.log_id.index).collect();
        assert_eq!(present, vec![7, 8, 9, 10]);
        assert_eq!(log.try_get_log_entries(7..8).await.expect("read log"), entries(7..=7));

        let (applied, membership) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id(1, 8)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 1)));
        let reader = sm.reader();
        assert_eq!(reader.revision().expect("revision"), 7);
        assert_eq!(reader.get(b"k/008").expect("get").map(|kv| kv.value), Some(b"8".to_vec()));
        assert_eq!(reader.get(b"k/009").expect("get"), None, "entry 9 was appended, never applied");
        let current = sm.get_current_snapshot().await.expect("read snapshot").expect("a snapshot is kept");
        assert_eq!(current.meta, snapshot_meta);

        // Everything behind the snapshot goes, as openraft does after a snapshot.
        log.purge(log_id(1, 8)).await.expect("purge behind snapshot");
        log.truncate(log_id(1, 10)).await.expect("truncate the tail");
    });

    rt.block_on(async {
        let (mut log, _sm) = open(dir.path());
        let state = log.get_log_state().await.expect("log state");
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 8)), Some(log_id(1, 9))));
        let present: Vec<u64> =
            log.try_get_log_entries(..).await.expect("read log").iter().map(|e| e.log_id.index).collect();
        assert_eq!(present, vec![9], "purged entries stay purged, truncated ones stay gone");
    });
}

#[test]
fn leftovers_of_an_interrupted_purge_are_removed_at_open() {
    let dir = tempdir();
    let rt = runtime();
    rt.block_on(async {
        let (mut log, _sm) = open(dir.path());
        log.blocking_append(entries(1..=5)).await.expect("append");
    });
    // Simulate a crash between persisting the marker and deleting entries:
    // take the marker a real purge wrote elsewhere and plant it here.
    let other = tempdir();
    rt.block_on(async {
        let (mut log, _sm) = open(other.path());
        log.purge(log_id(1, 3)).await.expect("purge");
    });
    let marker = {
        let db = crate::common::raw_sled(other.path());
        db.open_tree("raft_meta").expect("tree").get(b"last_purged").expect("get").expect("marker written")
    };
    {
        let db = crate::common::raw_sled(dir.path());
        db.open_tree("raft_meta").expect("tree").insert(b"last_purged", marker).expect("insert marker");
        db.flush().expect("flush");
    }
    rt.block_on(async {
        let (mut log, _sm) = open(dir.path());
        let present: Vec<u64> =
            log.try_get_log_entries(..).await.expect("read log").iter().map(|e| e.log_id.index).collect();
        assert_eq!(present, vec![4, 5]);
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    });
}

#[test]
fn corrupt_log_entry_is_a_storage_error_naming_the_index() {
    let dir = tempdir();
    let rt = runtime();
    rt.block_on(async {
        let (mut log, _sm) = open(dir.path());
        log.blocking_append(entries(1..=3)).await.expect("append");
    });
    {
        let db = crate::common::raw_sled(dir.path());
        db.open_tree("raft_log").expect("tree").insert(2u64.to_be_bytes(), &[1u8, 9, 9, 9][..]).expect("insert");
        db.flush().expect("flush");
    }
    rt.block_on(async {
        let (mut log, _sm) = open(dir.path());
        let err = log.try_get_log_entries(1..4).await.expect_err("garbage must not decode");
        assert!(err.to_string().contains("raft_log/2"), "{err}");
    });
}
