//! CPU time of processes, from `/proc/<pid>/stat`, to tell how much work
//! each system spends per write on a machine whose cores are shared.

/// Clock ticks per second of the `utime` and `stime` fields (USER_HZ, 100
/// on every Linux build this bench runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds used so far by the processes `pids` (0 for a
/// process that is gone).
pub fn seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| ticks(pid).unwrap_or(0)).sum::<u64>() as f64 / TICKS_PER_SEC
}

fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count from the `)`.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Process ids whose command line has `arg` as one of its arguments.
pub fn pids_with_arg(arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}
