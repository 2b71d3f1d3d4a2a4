//! What the run prints: the method first, then one table of both systems
//! per concurrency level with the Kairos/etcd ratios, then failover.

use std::time::Duration;

use crate::failover::FailoverResult;
use crate::load::LevelResult;
use crate::workload::ValueSizes;
use crate::Args;

/// The settings of this run, printed before anything is measured.
pub fn print_method(args: &Args, cores: usize, etcd_version: Option<&str>) {
    println!("replicated writes and failover, 3 members each on 127.0.0.1, {cores} cores");
    println!(
        "load: {} s warm-up + {} s measured per level; clients {:?}; {} clients per HTTP/2 connection; all writes to the leader",
        args.warmup_secs, args.duration_secs, args.clients, args.clients_per_channel
    );
    println!("kairos: AddRelease over TLS (bearer token), heartbeat 100 ms, election 500-1000 ms, snapshot every 5000 entries");
    match etcd_version {
        Some(v) => println!(
            "etcd: {v}, KV.Put over {}, heartbeat 100 ms, election 1000 ms (its defaults)",
            if args.etcd_plaintext { "plain HTTP/2" } else { "TLS (client and peer)" }
        ),
        None => println!("etcd: skipped"),
    }
    println!("cpu ms/w: user + system CPU of the 3 member processes per acknowledged write, measured window only");
    println!("other: cores used on average by everything but the members and the load generator (other work, steal)");
    println!(
        "failover: {} kairos / {} etcd leader SIGKILLs, per-attempt client timeout {} ms",
        args.kill_rounds,
        if args.skip_etcd { 0 } else { args.etcd_kill_rounds },
        args.attempt_timeout_ms
    );
}

/// One level as a progress line on stderr.
pub fn level_line(r: &LevelResult) -> String {
    format!(
        "{} {:>2} clients / {} channels: {:.0} writes/s, p50 {:.2} ms, p99 {:.2} ms, {:.3} member CPU ms per write, load generator {:.2} cores, other work {:.2} cores, {} errors{}",
        r.system,
        r.clients,
        r.channels,
        r.writes_per_sec(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.cpu_ms_per_write(),
        r.bench_cores(),
        r.other_cores(),
        r.errors,
        r.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
    )
}

/// The results table.
pub fn print_results(
    sizes: &ValueSizes,
    kairos: &[LevelResult],
    etcd: &[LevelResult],
    kairos_failover: Option<&FailoverResult>,
    etcd_failover: Option<&FailoverResult>,
) {
    println!();
    println!(
        "value: {:.0} bytes on average ({}..{}), key {:.0} bytes ({}..{}), over {} writes sized",
        sizes.value.1, sizes.value.0, sizes.value.2, sizes.key.1, sizes.key.0, sizes.key.2, sizes.sampled
    );
    println!();
    println!(
        "{:<6} | {:>7} | {:>8} | {:>9} | {:>7} | {:>7} | {:>9} | {:>5} | {:>6} || {:>15} | {:>10} | {:>10} | {:>10}",
        "system",
        "clients",
        "channels",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "cpu ms/w",
        "other",
        "errors",
        "writes/s K/etcd",
        "p50 K/etcd",
        "p99 K/etcd",
        "cpu K/etcd"
    );
    for (i, k) in kairos.iter().enumerate() {
        let e = etcd.get(i).filter(|e| e.clients == k.clients);
        let ratio = |f: fn(&LevelResult) -> f64| e.map_or("-".to_string(), |e| format!("{:.2}x", f(k) / f(e)));
        println!(
            "{} || {:>15} | {:>10} | {:>10} | {:>10}",
            row(k),
            ratio(LevelResult::writes_per_sec),
            ratio(|r| r.quantile_ms(0.5)),
            ratio(|r| r.quantile_ms(0.99)),
            ratio(LevelResult::cpu_ms_per_write)
        );
        if let Some(e) = e {
            println!("{} ||", row(e));
        }
    }
    if kairos_failover.is_none() && etcd_failover.is_none() {
        return;
    }
    println!();
    println!(
        "{:<6} | {:>5} | {:>13} | {:>10} | {:>13} | {:>10} | {:>6} | {:>15} | {:>12}",
        "system",
        "kills",
        "leader median",
        "leader max",
        "to ack median",
        "to ack max",
        "no ack",
        "catch-up median",
        "catch-up max"
    );
    for f in [kairos_failover, etcd_failover].into_iter().flatten() {
        let elected = f.elected_sorted();
        let to_ack = f.to_ack_sorted();
        let catch_up = f.catch_up_sorted();
        println!(
            "{:<6} | {:>5} | {:>10} ms | {:>7} ms | {:>10} ms | {:>7} ms | {:>6} | {:>12} ms | {:>9} ms",
            f.system,
            f.rounds.len(),
            ms(median(&elected)),
            ms(elected.last().copied()),
            ms(median(&to_ack)),
            ms(to_ack.last().copied()),
            f.lost_rounds(),
            ms(median(&catch_up)),
            ms(catch_up.last().copied())
        );
    }
    for f in [kairos_failover, etcd_failover].into_iter().flatten() {
        let all: Vec<String> = f.rounds.iter().map(|r| ms(r.to_ack)).collect();
        println!("{} kill -> ack per round (ms): {}", f.system, all.join(" "));
    }
}

fn row(r: &LevelResult) -> String {
    format!(
        "{:<6} | {:>7} | {:>8} | {:>9.0} | {:>7.2} | {:>7.2} | {:>9.3} | {:>5.2} | {:>6}",
        r.system,
        r.clients,
        r.channels,
        r.writes_per_sec(),
        r.quantile_ms(0.5),
        r.quantile_ms(0.99),
        r.cpu_ms_per_write(),
        r.other_cores(),
        r.errors
    )
}

/// The median of sorted durations (the mean of the middle two for an even count).
fn median(sorted: &[Duration]) -> Option<Duration> {
    let n = sorted.len();
    (n > 0).then(|| (sorted[(n - 1) / 2] + sorted[n / 2]) / 2)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
}
