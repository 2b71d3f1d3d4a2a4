//! CPU time from `/proc`: what the members of a system spend per write, and
//! how much of the machine other work took meanwhile (the cores are shared,
//! so a figure means little without it).

/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on every Linux
/// build this bench runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// By the member processes of the system under test (user + system).
    pub members: f64,
    /// By this process: the load generator.
    pub bench: f64,
    /// By the whole machine, every core (all but idle and I/O wait).
    pub machine: f64,
}

impl Sample {
    /// A sample with the members `pids`.
    pub fn take(pids: &[u32]) -> Sample {
        Sample {
            members: pids.iter().map(|&pid| process_ticks(pid).unwrap_or(0)).sum::<u64>() as f64 / TICKS_PER_SEC,
            bench: process_ticks(std::process::id()).unwrap_or(0) as f64 / TICKS_PER_SEC,
            machine: machine_busy_ticks().unwrap_or(0) as f64 / TICKS_PER_SEC,
        }
    }

    /// CPU seconds used between `earlier` and this sample.
    pub fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            members: self.members - earlier.members,
            bench: self.bench - earlier.bench,
            machine: self.machine - earlier.machine,
        }
    }

    /// Of a difference: what neither the members nor the bench used.
    pub fn other(&self) -> f64 {
        (self.machine - self.members - self.bench).max(0.0)
    }
}

/// utime + stime of process `pid` (0 fields if it is gone).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count from the `)`.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc_pid_stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy ticks of all cores: user, nice, system, irq, softirq and steal of
/// the `cpu` line of /proc/stat (steal: taken by the hypervisor).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?)
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
