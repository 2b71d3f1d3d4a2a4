//! A follower that missed more log than the leader keeps catches up from
//! a snapshot sent in InstallSnapshot chunks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_controlplane::replica::{RaftTuning, ReplicaHandle};
use kairos_fleet_proto::fleet::v1 as pb;

use crate::common::{cluster_client, eventually, image, leader_of, list_all, release_client, tuning, Pki, Slot};

/// Snapshot every 20 entries and keep no log behind it, so the leader
/// purges what a stopped follower would need.
fn compacting() -> RaftTuning {
    RaftTuning { snapshot_logs: 20, snapshot_keep_logs: 0, ..tuning() }
}

async fn add_releases(pki: &Pki, addr: &str, patches: std::ops::Range<u32>) {
    // One client (one TLS connection) for the whole batch.
    let mut client = release_client(pki, addr);
    for patch in patches {
        let request = pb::AddReleaseRequest { image_ref: image(patch), ..Default::default() };
        let answer = client.add_release(request).await.expect("AddRelease").into_inner();
        assert!(answer.created, "{answer:?}");
    }
}

async fn applied_index(handle: &ReplicaHandle) -> u64 {
    handle.raft().metrics().borrow().last_applied.map_or(0, |l| l.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_through_a_snapshot() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let slots: Vec<Slot> = (1..=3).map(|id| Slot::new(id, root.path())).collect();
    let r1 = slots[0].start(&pki, true, compacting()).await;
    assert_eq!(leader_of(&r1).await, 1);
    let r2 = slots[1].start(&pki, false, compacting()).await;
    let r3 = slots[2].start(&pki, false, compacting()).await;
    let mut cluster = cluster_client(&pki, &slots[0].addr());
    for slot in &slots[1..] {
        let request = pb::AddReplicaRequest { replica_id: slot.id, address: slot.addr(), ..Default::default() };
        cluster.add_replica(request).await.expect("AddReplica");
    }

    let started = Instant::now();
    add_releases(&pki, &slots[0].addr(), 0..100).await;
    let leader_applied = applied_index(&r1).await;
    eventually("replica 3 applies the first 100", Duration::from_secs(10), || {
        let r3 = &r3;
        async move { (applied_index(r3).await >= leader_applied).then_some(()) }
    })
    .await;
    let stopped_at = r3.raft().metrics().borrow().last_log_index.unwrap_or(0);
    r3.shutdown().await.expect("stop replica 3");

    add_releases(&pki, &slots[0].addr(), 100..200).await;
    println!("200 AddRelease calls took {:?}", started.elapsed());
    let purged = eventually("the leader purges past replica 3's log", Duration::from_secs(10), || {
        let purged = r1.raft().metrics().borrow().purged.map_or(0, |l| l.index);
        async move { (purged > stopped_at).then_some(purged) }
    })
    .await;

    // No own snapshots on restart: any newer snapshot it holds was installed.
    let restarted = Instant::now();
    let r3 = slots[2].start(&pki, false, RaftTuning { snapshot_logs: 1_000_000, ..compacting() }).await;
    let target = applied_index(&r1).await;
    let snapshot = eventually("replica 3 catches up", Duration::from_secs(15), || {
        let m = r3.raft().metrics().borrow().clone();
        async move {
            let applied = m.last_applied.map_or(0, |l| l.index);
            let snapshot = m.snapshot.map_or(0, |l| l.index);
            (applied >= target && snapshot > stopped_at).then_some(snapshot)
        }
    })
    .await;
    println!(
        "replica 3 stopped at log {stopped_at}, leader purged to {purged}, caught up through the snapshot at \
         {snapshot} in {:?}",
        restarted.elapsed()
    );
    let releases = list_all(&pki, &slots[2].addr(), false).await.expect("local ListReleases on replica 3");
    assert_eq!(releases.len(), 200);
    let releases = list_all(&pki, &slots[2].addr(), true).await.expect("linearizable ListReleases on replica 3");
    assert_eq!(releases.len(), 200);

    for handle in [r3, r2, r1] {
        handle.shutdown().await.expect("shutdown");
    }
}
