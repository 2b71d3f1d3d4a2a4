//! kill -9 durability: a child process appends, applies, votes, snapshots
//! and purges, printing an acknowledgement after each durable step; the
//! parent SIGKILLs it at a random moment, reopens the store and checks that
//! every acknowledged step survived. Five kills on the same directory, so
//! recovery from a crash is itself crashed into.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kairos_controlplane::store::types::{Entry, EntryPayload, Vote};
use kairos_controlplane::store::{LogStore, Op, Request, StateMachineStore};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{RaftLogReader, RaftSnapshotBuilder};

use crate::common::{log_id, membership, open, runtime, tempdir};

const CHILD_DIR_ENV: &str = "KAIROS_STORE_KILL_CHILD_DIR";
/// The test re-runs itself as the child: same test name, with the directory in the environment.
const SELF_TEST: &str = "kill::kill9_acknowledged_writes_survive";
const KILLS: usize = 5;
/// The child stops on its own after this long, should the parent fail to kill it.
const CHILD_LIFETIME: Duration = Duration::from_secs(20);

/// The request of log index `i` (i >= 2): one new key and the "last" marker.
fn request(i: u64) -> Request {
    Request::batch(vec![Op::put(format!("k/{i:08}"), i.to_string()), Op::put("last", i.to_string())])
}

/// Acknowledges a durable step, then idles up to 2 ms.
///
/// println! goes through a LineWriter: one write(2) per line, so the parent
/// sees whole lines, each sent only after the step was durable. The pause
/// stands in for the work a replica does between storage calls; without it
/// the next step's fsync follows at once and covers for a missing one
/// (log and state machine share one sled database), hiding the bug.
async fn ack(what: &str, n: u64) {
    println!("ACK {what} {n}");
    let jitter = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()) % 2_000;
    tokio::time::sleep(Duration::from_micros(u64::from(jitter))).await;
}

async fn write_until_killed(dir: &Path) {
    let (mut log, mut sm) = open(dir);
    let term = log.read_vote().await.expect("read vote").map_or(1, |v| v.leader_id.term + 1);
    log.save_vote(&Vote::new_committed(term, 0)).await.expect("save vote");
    ack("vote", term).await;
    let last = log.get_log_state().await.expect("log state").last_log_id.map_or(0, |id| id.index);
    let mut applied = sm.applied_state().await.expect("applied").0.map_or(0, |id| id.index);
    applied = apply_up_to(&mut log, &mut sm, applied, last).await;
    ack("ready", last).await;

    let started = Instant::now();
    let mut i = last + 1;
    while started.elapsed() < CHILD_LIFETIME {
        let entry = if i == 1 {
            membership(term, 1, &[0])
        } else {
            Entry { log_id: log_id(term, i), payload: EntryPayload::Normal(request(i)) }
        };
        log.blocking_append([entry]).await.expect("append");
        ack("append", i).await;
        if i % 2 == 0 {
            applied = apply_up_to(&mut log, &mut sm, applied, i).await;
            ack("apply", applied).await;
        }
        if i % 25 == 0 {
            let snapshot = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
            let upto = snapshot.meta.last_log_id.expect("snapshot of applied state");
            ack("snapshot", upto.index).await;
            if upto.index > 5 {
                let keep_from = upto.index - 5;
                let purge_id = log.try_get_log_entries(keep_from..keep_from + 1).await.expect("read")[0].log_id;
                log.purge(purge_id).await.expect("purge");
                ack("purge", purge_id.index).await;
            }
        }
        i += 1;
    }
}

/// Applies the logged entries after `applied` up to `to`, reading them back from the log.
async fn apply_up_to(log: &mut LogStore, sm: &mut StateMachineStore, applied: u64, to: u64) -> u64 {
    if to <= applied {
        return applied;
    }
    let entries = log.try_get_log_entries(applied + 1..=to).await.expect("read log");
    assert_eq!(entries.len() as u64, to - applied, "log hole between {applied} and {to}");
    sm.apply(entries).await.expect("apply");
    to
}

/// The highest value of each kind acknowledged by any child so far: every
/// acknowledgement of every earlier round must still hold.
#[derive(Debug, Default)]
struct Acks {
    vote: u64,
    append: u64,
    apply: u64,
    snapshot: u64,
    purge: u64,
    /// Whether the current child said it is ready.
    ready: bool,
}

impl Acks {
    fn record(&mut self, line: &str) {
        let Some(pos) = line.rfind("ACK ") else { return };
        let mut words = line[pos + 4..].split_whitespace();
        let (Some(kind), Some(Ok(n))) = (words.next(), words.next().map(str::parse::<u64>)) else { return };
        let slot = match kind {
            "vote" => &mut self.vote,
            "append" => &mut self.append,
            "apply" => &mut self.apply,
            "snapshot" => &mut self.snapshot,
            "purge" => &mut self.purge,
            "ready" => {
                self.ready = true;
                return;
            }
            _ => return,
        };
        *slot = (*slot).max(n);
    }
}

/// A small xorshift; the seed is printed so a failing run can be replayed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn kill9_acknowledged_writes_survive() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        // Child mode: write until the parent kills us.
        runtime().block_on(write_until_killed(Path::new(&dir)));
        return;
    }
    let dir = tempdir();
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0x9e37_79b9, |d| d.as_nanos() as u64) | 1;
    let mut rng = seed;
    eprintln!("kill9 seed {seed}");
    let exe = std::env::current_exe().expect("test binary path");
    let mut acks = Acks::default();
    let mut progress = Vec::new();
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([SELF_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        acks.ready = false;
        while !acks.ready {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => acks.record(&line),
                Err(e) => panic!("round {round}: child never became ready ({e}); seed {seed}"),
            }
        }
        let delay = Duration::from_millis(50 + next_random(&mut rng) % 400);
        thread::sleep(delay);
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap child");
        reader.join().expect("stdout reader");
        for line in rx.try_iter() {
            acks.record(&line);
        }
        eprintln!("round {round}: killed after {delay:?} ({status}), acknowledged {acks:?}");
        verify(dir.path(), &acks, round, seed);
        progress.push(acks.append);
    }
    // Each child must have got past its recovery and written something new,
    // or the kills proved nothing about acknowledged writes.
    let grew = progress.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(acks.append >= 10 && grew >= KILLS / 2, "too little progress per round: {progress:?}; seed {seed}");
}

/// Reopens the store and checks every acknowledged step against it.
fn verify(dir: &Path, acks: &Acks, round: usize, seed: u64) {
    let ctx = format!("round {round}, seed {seed}, acks {acks:?}");
    runtime().block_on(async {
        let (mut log, mut sm) = open(dir);
        let vote = log.read_vote().await.expect("read vote").expect("a vote was saved");
        assert!(vote.leader_id.term >= acks.vote, "vote lost: {vote:?}; {ctx}");

        let state = log.get_log_state().await.expect("log state");
        let purged = state.last_purged_log_id.map_or(0, |id| id.index);
        let last = state.last_log_id.map_or(0, |id| id.index);
        assert!(purged >= acks.purge, "purge marker lost: {purged}; {ctx}");
        assert!(last >= acks.append, "acknowledged append lost: last log {last}; {ctx}");
        let entries = log.try_get_log_entries(..).await.expect("read whole log");
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        let expected: Vec<u64> = (purged + 1..=last).collect();
        assert_eq!(indexes, expected, "log has a hole or leftovers; {ctx}");
        for entry in entries.iter().filter(|e| e.log_id.index >= 2) {
            let EntryPayload::Normal(req) = &entry.payload else {
                panic!("entry {} is not a put; {ctx}", entry.log_id)
            };
            assert_eq!(req, &request(entry.log_id.index), "entry {} altered; {ctx}", entry.log_id);
        }

        let applied = sm.applied_state().await.expect("applied").0.map_or(0, |id| id.index);
        assert!(applied >= acks.apply, "acknowledged apply lost: applied {applied}; {ctx}");
        assert!(applied <= last.max(purged), "applied beyond the log; {ctx}");
        // The state must be exactly the state at `applied`: all of it, nothing more.
        let reader = sm.reader();
        assert_eq!(reader.revision().expect("revision"), applied.saturating_sub(1), "{ctx}");
        let last_key = reader.get(b"last").expect("get last").map(|kv| kv.value);
        assert_eq!(last_key, (applied >= 2).then(|| applied.to_string().into_bytes()), "{ctx}");
        let keys = reader.range(b"k/", None, usize::MAX).expect("range");
        assert_eq!(keys.len() as u64, applied.saturating_sub(1), "{ctx}");
        for (n, (key, kv)) in (2u64..).zip(&keys) {
            assert_eq!(key, format!("k/{n:08}").as_bytes(), "{ctx}");
            assert_eq!(kv.value, n.to_string().into_bytes(), "{ctx}");
        }

        if acks.snapshot > 0 {
            let snap = sm.get_current_snapshot().await.expect("read snapshot").expect("snapshot kept");
            let at = snap.meta.last_log_id.map_or(0, |id| id.index);
            assert!(at >= acks.snapshot, "acknowledged snapshot lost: kept {at}; {ctx}");
        }
    });
}
