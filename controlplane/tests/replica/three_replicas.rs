//! A three-replica cluster grown through `ClusterService`, writes through
//! a follower, reads on every replica, and a leader failover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kairos_controlplane::replica::ReplicaHandle;
use kairos_fleet_proto::fleet::v1 as pb;

use crate::common::{add_release, cluster_client, eventually, image, leader_of, list_all, tuning, Pki, Slot};

async fn add_replica(pki: &Pki, via: &Slot, new: &Slot) -> pb::AddReplicaResponse {
    let request = pb::AddReplicaRequest { replica_id: new.id, address: new.addr(), ..Default::default() };
    match cluster_client(pki, &via.addr()).add_replica(request).await {
        Ok(answer) => answer.into_inner(),
        Err(status) => panic!("AddReplica {} through replica {}: {status:?}", new.id, via.id),
    }
}

/// Every replica's local list contains `image_ref` before the deadline.
async fn visible_everywhere(pki: &Pki, slots: &[&Slot], image_ref: &str) {
    for slot in slots {
        let addr = slot.addr();
        eventually(&format!("{image_ref} on replica {}", slot.id), Duration::from_secs(5), || {
            let addr = addr.clone();
            async move {
                let releases = list_all(pki, &addr, false).await.ok()?;
                releases.iter().any(|r| r.image_ref == image_ref).then_some(())
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_forward_follower_writes_and_survive_leader_loss() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Arc::new(Pki::new());
    let slots: Vec<Slot> = (1..=3).map(|id| Slot::new(id, root.path())).collect();
    let started = Instant::now();
    let r1 = slots[0].start(&pki, true, tuning()).await;
    assert_eq!(leader_of(&r1).await, 1, "the bootstrapped replica leads its one-voter cluster");
    let r2 = slots[1].start(&pki, false, tuning()).await;
    let r3 = slots[2].start(&pki, false, tuning()).await;

    // Replica 3 is added through a follower: the call is forwarded to the leader.
    add_replica(&pki, &slots[0], &slots[1]).await;
    let added = add_replica(&pki, &slots[1], &slots[2]).await;
    assert_eq!(added.replicas.len(), 3, "{added:?}");
    let again = add_replica(&pki, &slots[0], &slots[2]).await;
    assert_eq!(again.replicas.len(), 3, "adding a voter again is a no-op");
    println!("cluster of three formed in {:?}", started.elapsed());

    let status = cluster_client(&pki, &slots[0].addr()).status(pb::ClusterStatusRequest {}).await.expect("Status");
    let status = status.into_inner();
    let roles: Vec<(u64, i32)> = status.replicas.iter().map(|r| (r.replica_id, r.role)).collect();
    let leader = pb::ReplicaRole::Leader as i32;
    let follower = pb::ReplicaRole::Follower as i32;
    assert_eq!(roles, vec![(1, leader), (2, follower), (3, follower)], "{status:?}");
    assert!(status.from_leader && status.leader_id == 1 && status.answered_by == 1, "{status:?}");
    assert!(status.commit_index > 0 && status.term > 0, "{status:?}");
    assert!(status.replicas.iter().all(|r| r.reachable), "{status:?}");

    // A write through a follower is forwarded to the leader.
    let first = image(1);
    let answer = add_release(&pki, &slots[1].addr(), &first).await.expect("AddRelease through a follower");
    assert!(answer.created, "{answer:?}");
    let again = add_release(&pki, &slots[2].addr(), &first).await.expect("AddRelease again");
    assert!(!again.created, "adding a known image is a no-op: {again:?}");
    assert_eq!(again.release.map(|r| r.added_at), answer.release.map(|r| r.added_at), "the stored record is kept");

    let all: Vec<&Slot> = slots.iter().collect();
    visible_everywhere(&pki, &all, &first).await;
    for slot in &slots {
        let releases = list_all(&pki, &slot.addr(), true).await.expect("linearizable ListReleases");
        assert!(releases.iter().any(|r| r.image_ref == first), "replica {}: {releases:?}", slot.id);
    }

    // The leader stops; the two others elect a new one, which takes writes.
    let stopped = Instant::now();
    r1.shutdown().await.expect("leader shutdown");
    let shutdown_took = stopped.elapsed();
    let survivors: [&ReplicaHandle; 2] = [&r2, &r3];
    let new_leader = eventually("a new leader", Duration::from_secs(10), || {
        let known: Vec<Option<u64>> = survivors.iter().map(|r| r.raft().metrics().borrow().current_leader).collect();
        async move { known.iter().flatten().copied().find(|id| *id != 1) }
    })
    .await;
    println!(
        "leader shutdown took {shutdown_took:?}; replica {new_leader} elected {:?} after shutdown began",
        stopped.elapsed()
    );
    let second = image(2);
    let follower = if new_leader == 2 { &slots[2] } else { &slots[1] };
    let answer = add_release(&pki, &follower.addr(), &second).await.expect("AddRelease after failover");
    assert!(answer.created, "{answer:?}");
    visible_everywhere(&pki, &[&slots[1], &slots[2]], &second).await;

    r2.shutdown().await.expect("shutdown 2");
    r3.shutdown().await.expect("shutdown 3");
    println!("three-replica scenario took {:?}", started.elapsed());
}
