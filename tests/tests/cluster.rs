//! The replicated core as real processes on loopback: a 3-replica cluster
//! formed with `init` / `serve` / `kairosctl cluster add-replica`, writes
//! through any replica, SIGKILLed leaders, catch-up through the log and
//! through a snapshot, a whole-cluster crash, and membership changes while
//! writes continue. Writes are `kairosctl releases add`: each acknowledged
//! one must be readable afterwards.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kairos_fleet_tests::{ok_stdout, wait_for, Cluster};

/// Fast elections keep the suite short; the defaults are measured in the benchmark.
const FAST: &[&str] = &["--heartbeat-ms", "50", "--election-timeout-ms", "300"];

fn image(n: u32) -> String {
    format!("quay.io/kairos/core-opensuse:v1.{}.{}", n / 1000, n % 1000)
}

fn status_json(cluster: &Cluster, id: u64) -> Option<serde_json::Value> {
    cluster.status_json(id)
}

fn leader(cluster: &Cluster, ids: &[u64]) -> Option<u64> {
    cluster.leader(ids)
}

fn voters(cluster: &Cluster, id: u64) -> usize {
    cluster.voters(id)
}

/// The releases replica `id` holds in its own state (a local read).
fn releases_on(cluster: &Cluster, id: u64) -> Option<BTreeSet<String>> {
    let out = cluster.ctl_on(id, &["releases", "list", "-o", "json", "--limit", "100000"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["releases"].as_array()?.iter().filter_map(|r| r["image_ref"].as_str().map(str::to_string)).collect())
}

fn wait_holds(cluster: &Cluster, id: u64, want: &BTreeSet<String>, timeout: Duration) {
    wait_for(&format!("replica {id} to hold {} releases", want.len()), timeout, || {
        releases_on(cluster, id).filter(|have| have.is_superset(want)).map(|_| ())
    });
}

fn add(cluster: &Cluster, n: u32) -> bool {
    cluster.ctl(&["releases", "add", &image(n)]).status.success()
}

/// A formed 3-replica cluster with replica 1 as the bootstrap leader.
fn three_replicas(extra: &[&str]) -> Cluster {
    let mut cluster = Cluster::init(3);
    cluster.form(extra);
    cluster
}

/// Writes continuously from a thread, recording every acknowledged write.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    next: Arc<AtomicU32>,
    first: u32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(cluster: &Cluster, first: u32) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let next = Arc::new(AtomicU32::new(first));
        let config = cluster.dir.path().join("kairosctl.toml");
        let (s, a, n) = (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&next));
        let thread = std::thread::spawn(move || {
            let ctl = kairos_fleet_tests::binary("kairosctl");
            while !s.load(Ordering::Relaxed) {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let out = std::process::Command::new(&ctl)
                    .arg("--config")
                    .arg(&config)
                    .args(["releases", "add", &image(i)])
                    .output();
                if out.is_ok_and(|o| o.status.success()) {
                    a.lock().unwrap_or_else(|p| p.into_inner()).insert(image(i));
                }
            }
        });
        Writer { stop, acked, next, first, thread: Some(thread) }
    }

    fn acked(&self) -> BTreeSet<String> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait_acked(&self, more_than: usize, timeout: Duration) {
        wait_for(&format!("{more_than} acknowledged writes"), timeout, || {
            (self.acked().len() > more_than).then_some(())
        });
    }

    fn finish(mut self) -> BTreeSet<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let tried = self.next.load(Ordering::Relaxed) - self.first;
        eprintln!("writer: {tried} writes tried, {} acknowledged", self.acked().len());
        self.acked()
    }
}

#[test]
fn three_replicas_form_and_a_write_through_any_replica_is_read_on_every_replica() {
    let cluster = three_replicas(FAST);
    let mut written = BTreeSet::new();
    for (n, via) in [(1u32, 1u64), (2, 2), (3, 3)] {
        let out = cluster.ctl_on(via, &["releases", "add", &image(n)]);
        ok_stdout(&out, &format!("releases add through replica {via}"));
        written.insert(image(n));
    }
    for id in 1..=3 {
        wait_holds(&cluster, id, &written, Duration::from_secs(10));
    }
    let status = status_json(&cluster, 2).expect("status from a follower");
    assert_eq!(status["replicas"].as_array().map(Vec::len), Some(3), "{status}");
}

#[test]
fn sigkilled_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let mut cluster = three_replicas(FAST);
    for round in 0..2u32 {
        let writer = Writer::start(&cluster, 10_000 * (round + 1));
        writer.wait_acked(5 + (round as usize) * 3, Duration::from_secs(30));
        // Kill at an arbitrary moment of the write stream, not right after an ack.
        let jitter =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
        std::thread::sleep(Duration::from_millis(u64::from(jitter % 300)));
        let old = leader(&cluster, &[1, 2, 3]).expect("a leader");
        let before = writer.acked().len();
        let killed_at = Instant::now();
        cluster.kill9(old);
        let others: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
        let new = wait_for("a new leader", Duration::from_secs(20), || leader(&cluster, &others));
        let elected = killed_at.elapsed();
        let at_election = writer.acked().len().max(before);
        writer.wait_acked(at_election, Duration::from_secs(20));
        eprintln!(
            "round {round}: SIGKILL of leader {old}: replica {new} leads after {elected:?}, writes accepted again after {:?}",
            killed_at.elapsed()
        );
        let acked = writer.finish();
        for &id in &others {
            wait_holds(&cluster, id, &acked, Duration::from_secs(15));
        }
        // The killed replica comes back and catches up through the log.
        cluster.start_with(old, FAST);
        wait_holds(&cluster, old, &acked, Duration::from_secs(30));
    }
}

#[test]
fn restarted_replica_catches_up_through_a_snapshot_after_compaction() {
    // Snapshot every 20 entries and keep no log behind it: a follower that
    // missed 60 entries can only catch up through a snapshot.
    let flags: Vec<&str> = FAST.iter().copied().chain(["--snapshot-logs", "20", "--snapshot-keep-logs", "0"]).collect();
    let mut cluster = three_replicas(&flags);
    let mut written = BTreeSet::new();
    for n in 0..10 {
        assert!(add(&cluster, n), "write {n}");
        written.insert(image(n));
    }
    let follower = (1..=3).find(|&i| Some(i) != leader(&cluster, &[1, 2, 3])).expect("a follower");
    cluster.kill9(follower);
    for n in 10..70 {
        assert!(add(&cluster, n), "write {n}");
        written.insert(image(n));
    }
    cluster.start_with(follower, &flags);
    wait_holds(&cluster, follower, &written, Duration::from_secs(30));
    let log = cluster.log(follower);
    eprintln!("replica {follower} caught up on {} releases", written.len());
    assert!(log.contains("installed a snapshot from the leader"), "replica {follower} log: {log}");
    assert!(!log.contains("panicked"), "replica {follower} log: {log}");
}

#[test]
fn whole_cluster_sigkilled_and_restarted_keeps_its_state() {
    let mut cluster = three_replicas(FAST);
    let mut written = BTreeSet::new();
    for n in 0..15 {
        assert!(add(&cluster, n), "write {n}");
        written.insert(image(n));
    }
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.start_with(id, FAST);
    }
    wait_for("a leader after the restart", Duration::from_secs(30), || leader(&cluster, &[1, 2, 3]));
    for id in 1..=3 {
        wait_holds(&cluster, id, &written, Duration::from_secs(20));
    }
    assert!(add(&cluster, 99), "the restarted cluster accepts writes");
}

#[test]
fn removing_and_adding_a_replica_while_writes_continue() {
    let cluster = three_replicas(FAST);
    let writer = Writer::start(&cluster, 50_000);
    writer.wait_acked(5, Duration::from_secs(30));
    let target = (1..=3).find(|&i| Some(i) != leader(&cluster, &[1, 2, 3])).expect("a follower");
    ok_stdout(&cluster.ctl(&["cluster", "remove-replica", &target.to_string()]), "remove-replica");
    let rest: Vec<u64> = (1..=3).filter(|&i| i != target).collect();
    wait_for("2 voters", Duration::from_secs(20), || (voters(&cluster, rest[0]) == 2).then_some(()));
    let before = writer.acked().len();
    writer.wait_acked(before + 3, Duration::from_secs(20));
    let addr = cluster.addresses[&target].clone();
    ok_stdout(&cluster.ctl(&["cluster", "add-replica", &target.to_string(), &addr]), "add-replica back");
    wait_for("3 voters again", Duration::from_secs(20), || (voters(&cluster, rest[0]) == 3).then_some(()));
    let before = writer.acked().len();
    writer.wait_acked(before + 3, Duration::from_secs(20));
    let acked = writer.finish();
    for id in 1..=3 {
        wait_holds(&cluster, id, &acked, Duration::from_secs(20));
    }
}

#[test]
fn sigterm_stops_a_replica_cleanly_and_it_restarts_with_its_state() {
    let mut cluster = Cluster::init(1);
    cluster.start_with(1, FAST);
    wait_for("replica 1 to lead", Duration::from_secs(20), || leader(&cluster, &[1]));
    let written: BTreeSet<String> = (0..3).map(image).collect();
    for n in 0..3 {
        assert!(add(&cluster, n), "write {n}");
    }
    let started = Instant::now();
    assert!(cluster.terminate(1, Duration::from_secs(10)), "exit status 0 after SIGTERM: {}", cluster.log(1));
    eprintln!("SIGTERM to exit: {:?}", started.elapsed());
    assert!(cluster.log(1).contains("SIGTERM"), "{}", cluster.log(1));
    cluster.start_with(1, FAST);
    wait_holds(&cluster, 1, &written, Duration::from_secs(20));
}
