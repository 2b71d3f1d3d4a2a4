//! Snapshots: install replaces the whole state and the kept snapshot; a
//! late build never replaces a newer installed snapshot; garbage is refused.

use std::io::Cursor;

use kairos_controlplane::store::types::SnapshotMeta;
use kairos_controlplane::store::{Op, Request, StateMachineStore};
use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;

use crate::common::{log_id, membership, normal, open, runtime, tempdir};

/// Applies a membership entry and `puts` as entries 2.. in term `term`.
async fn apply_puts(sm: &mut StateMachineStore, term: u64, puts: &[(&str, &str)]) {
    let mut entries = vec![membership(term, 1, &[1])];
    entries.extend(puts.iter().enumerate().map(|(i, (k, v))| normal(term, i as u64 + 2, Request::put(*k, *v))));
    sm.apply(entries).await.expect("apply");
}

#[test]
fn install_snapshot_replaces_all_state_and_the_kept_snapshot() {
    let (leader_dir, follower_dir) = (tempdir(), tempdir());
    let rt = runtime();
    let meta: SnapshotMeta = rt.block_on(async {
        let (_log, mut leader) = open(leader_dir.path());
        apply_puts(&mut leader, 2, &[("nodes/1", "a"), ("nodes/2", "b"), ("nodes/1", "c")]).await;
        let snap = leader.get_snapshot_builder().await.build_snapshot().await.expect("build");

        let (_flog, mut follower) = open(follower_dir.path());
        apply_puts(&mut follower, 1, &[("stale/1", "x")]).await;
        let old = follower.get_snapshot_builder().await.build_snapshot().await.expect("build old");
        assert_ne!(old.meta.snapshot_id, snap.meta.snapshot_id);
        let mut data = follower.begin_receiving_snapshot().await.expect("begin");
        *data = *snap.snapshot;
        follower.install_snapshot(&snap.meta, data).await.expect("install");
        snap.meta
    });
    let (_log, mut follower) = open(follower_dir.path());
    let reader = follower.reader();
    let keys: Vec<Vec<u8>> = reader.range(b"", None, 10).expect("range").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"nodes/1".to_vec(), b"nodes/2".to_vec()], "old keys gone, new ones in");
    let n1 = reader.get(b"nodes/1").expect("get").expect("nodes/1");
    assert_eq!((n1.value.as_slice(), n1.version, n1.mod_revision), (b"c".as_slice(), 2, 3));
    assert_eq!(reader.revision().expect("revision"), 3);
    rt.block_on(async {
        let (applied, mem) = follower.applied_state().await.expect("applied");
        assert_eq!(applied, Some(log_id(2, 4)));
        assert_eq!(mem.log_id(), &Some(log_id(2, 1)));
        let kept = follower.get_current_snapshot().await.expect("read").expect("kept");
        assert_eq!(kept.meta, meta, "the installed snapshot replaced the older one");
        // The state machine keeps applying on top of the installed state.
        let r = follower.apply(vec![normal(2, 5, Request::batch(vec![Op::put("nodes/3", "d")]))]).await.expect("apply");
        assert_eq!(r[0].revision, 4);
    });
}

#[test]
fn snapshot_build_overtaken_by_install_keeps_the_newer_snapshot() {
    let (dir, other) = (tempdir(), tempdir());
    runtime().block_on(async {
        let (_olog, mut newer_sm) = open(other.path());
        apply_puts(&mut newer_sm, 3, &[("a", "1"), ("b", "2"), ("c", "3")]).await;
        let newer = newer_sm.get_snapshot_builder().await.build_snapshot().await.expect("build newer");

        let (_log, mut sm) = open(dir.path());
        apply_puts(&mut sm, 1, &[("a", "0")]).await;
        // openraft runs the builder in its own task; an install can land first.
        let mut late_builder = sm.get_snapshot_builder().await;
        let mut data = sm.begin_receiving_snapshot().await.expect("begin");
        *data = *newer.snapshot;
        sm.install_snapshot(&newer.meta, data).await.expect("install");
        let late = late_builder.build_snapshot().await.expect("late build still returns its snapshot");
        assert_eq!(late.meta.last_log_id, Some(log_id(1, 2)));
        let kept = sm.get_current_snapshot().await.expect("read").expect("kept");
        assert_eq!(kept.meta, newer.meta);
    });
}

#[test]
fn garbage_snapshot_is_refused_and_state_kept() {
    let dir = tempdir();
    runtime().block_on(async {
        let (_log, mut sm) = open(dir.path());
        apply_puts(&mut sm, 1, &[("a", "1")]).await;
        let good = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
        let meta = SnapshotMeta { snapshot_id: "bogus".into(), last_log_id: Some(log_id(9, 99)), ..good.meta.clone() };
        let err = sm.install_snapshot(&meta, Box::new(Cursor::new(vec![1, 0xff, 0xff]))).await.expect_err("garbage");
        assert!(err.to_string().contains("bogus"), "the error names the snapshot: {err}");
        assert_eq!(sm.applied_state().await.expect("applied").0, Some(log_id(1, 2)));
        assert_eq!(sm.reader().get(b"a").expect("get").map(|kv| kv.value), Some(b"1".to_vec()));
        assert_eq!(sm.get_current_snapshot().await.expect("read").expect("kept").meta, good.meta);
    });
}
