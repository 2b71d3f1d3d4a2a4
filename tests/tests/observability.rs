//! `/metrics` of a real replica process while a rollout runs on simulated
//! nodes: the rollout's progress, the fleet by flavor and release, raft
//! positions, node and watch streams.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use kairos_fleet_tests::sim::{add_releases, seed_images, Simulator, SimulatorOptions};
use kairos_fleet_tests::{free_port, ok_stdout, wait_for, Cluster};

/// Simulated nodes: one per seed image family.
const NODES: usize = 16;

/// One scrape: `name{labels}` → value.
type Scrape = BTreeMap<String, f64>;

fn scrape(addr: &str) -> Option<Scrape> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    let mut samples = Scrape::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
        samples.insert(series.to_string(), value);
    }
    Some(samples)
}

fn get(samples: &Scrape, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("{series} missing from {samples:#?}"))
}

fn rollout_nodes(samples: &Scrape, id: &str, state: &str) -> f64 {
    get(samples, &format!("kairos_fleet_rollout_nodes{{rollout=\"{id}\",target=\"v1.6.1\",state=\"{state}\"}}"))
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_scrape_during_a_rollout_shows_its_progress_and_the_fleet() {
    let mut cluster = Cluster::init(1);
    let metrics = format!("127.0.0.1:{}", free_port());
    cluster.form(&["--node-heartbeat-ms", "1000", "--metrics-listen", &metrics]);
    let opts = SimulatorOptions { name: "metrics".into(), ..SimulatorOptions::new(&cluster, NODES) }.arg(&[
        "--release",
        "v1.6.0",
        "--upgrade-step",
        "300ms",
    ]);
    let sim = Simulator::start_with(&cluster, &opts);
    add_releases(&cluster, &seed_images("1.6.0"));
    add_releases(&cluster, &seed_images("1.6.1"));

    // Before the rollout: every node online on v1.6.0, one stream each.
    let before = wait_for("every node in the metrics", Duration::from_secs(60), || {
        let s = scrape(&metrics)?;
        (s.get("kairos_fleet_node_streams") == Some(&(NODES as f64))
            && s.iter().filter(|(k, _)| k.starts_with("kairos_fleet_nodes_online{")).map(|(_, v)| v).sum::<f64>()
                == NODES as f64)
            .then_some(s)
    });
    let ubuntu = "kairos_fleet_nodes{flavor=\"ubuntu\",release=\"v1.6.0\",support=\"patch_available\"}";
    assert_eq!(get(&before, ubuntu), 2.0, "ubuntu core and standard");
    assert_eq!(get(&before, "kairos_fleet_nodes_by_state{state=\"idle\"}"), NODES as f64);
    assert_eq!(get(&before, "kairos_fleet_raft_is_leader"), 1.0);
    assert_eq!(get(&before, "kairos_fleet_raft_leader_id"), 1.0);
    assert!(get(&before, "kairos_fleet_raft_term") >= 1.0);
    let committed = get(&before, "kairos_fleet_raft_commit_index");
    assert!(committed > 0.0 && get(&before, "kairos_fleet_raft_applied_index") <= committed);
    assert!(get(&before, "kairos_fleet_raft_apply_lag") >= 0.0);
    assert_eq!(get(&before, "kairos_fleet_watch_streams{kind=\"rollouts\"}"), 0.0);

    // Two nodes at a time, so the rollout is seen half done.
    let out = cluster.ctl(&["rollout", "create", "--to", "v1.6.1", "--waves", "1,100%", "--max-unavailable", "2"]);
    let created: serde_json::Value =
        serde_json::from_str(&ok_stdout(&cluster.ctl(&["rollout", "list", "-o", "json"]), "rollout list"))
            .expect("json");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = created["rollouts"][0]["rollout_id"].as_str().expect("a rollout id").to_string();
    // A follower of the rollout, counted among the watch streams (its
    // few dozen event lines fit the pipe).
    let watch = Killed(cluster.ctl_spawn(&["rollout", "watch", &id, "-o", "json"]));

    let started = Instant::now();
    let mut healthy_seen = Vec::new();
    let mut watch_seen = false;
    let end = loop {
        assert!(started.elapsed() < Duration::from_secs(120), "no completed rollout in the metrics: {healthy_seen:?}");
        let Some(s) = scrape(&metrics) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        watch_seen |= s.get("kairos_fleet_watch_streams{kind=\"rollouts\"}").is_some_and(|v| *v >= 1.0);
        if !s.contains_key(&format!("kairos_fleet_rollout_phase{{rollout=\"{id}\",phase=\"running\"}}"))
            && !s.contains_key(&format!("kairos_fleet_rollout_phase{{rollout=\"{id}\",phase=\"completed\"}}"))
        {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert_eq!(rollout_nodes(&s, &id, "total"), NODES as f64);
        assert!(rollout_nodes(&s, &id, "in_flight") <= 2.0, "max unavailable 2: {s:#?}");
        healthy_seen.push(rollout_nodes(&s, &id, "healthy"));
        if s.contains_key(&format!("kairos_fleet_rollout_phase{{rollout=\"{id}\",phase=\"completed\"}}")) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(watch);
    wait_for("the ended watch to leave the count", Duration::from_secs(30), || {
        let s = scrape(&metrics)?;
        (s.get("kairos_fleet_watch_streams{kind=\"rollouts\"}") == Some(&0.0)).then_some(())
    });
    assert!(
        healthy_seen.iter().any(|h| *h > 0.0 && *h < NODES as f64),
        "a scrape saw the rollout part-way: {healthy_seen:?}"
    );
    assert!(healthy_seen.windows(2).all(|w| w[0] <= w[1]), "healthy only grows: {healthy_seen:?}");
    assert!(watch_seen, "the open kairosctl watch was counted");
    assert_eq!(rollout_nodes(&end, &id, "healthy"), NODES as f64);
    // Completed on its last wave.
    let waves = get(&end, &format!("kairos_fleet_rollout_waves{{rollout=\"{id}\"}}"));
    assert!(waves >= 1.0);
    assert_eq!(get(&end, &format!("kairos_fleet_rollout_current_wave{{rollout=\"{id}\"}}")), waves - 1.0);

    // The fleet gauges follow the nodes' reports onto v1.6.1.
    wait_for("every node on v1.6.1 in the metrics", Duration::from_secs(30), || {
        let s = scrape(&metrics)?;
        let on_target: f64 = s
            .iter()
            .filter(|(k, _)| k.starts_with("kairos_fleet_nodes{") && k.contains("release=\"v1.6.1\""))
            .map(|(_, v)| v)
            .sum();
        (on_target == NODES as f64).then_some(())
    });
    drop(sim);
    wait_for("the stopped nodes' streams to leave the count", Duration::from_secs(30), || {
        let s = scrape(&metrics)?;
        (s.get("kairos_fleet_node_streams") == Some(&0.0)).then_some(())
    });
}
