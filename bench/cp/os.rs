//! The operating-system side of the benchmark: CPU pinning, the descriptor limit, and a process's CPU
//! time and memory from `/proc`.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// Linux reports `utime`/`stime` in clock ticks of `USER_HZ`, which is 100 on every architecture
/// Linux supports today (`getconf CLK_TCK`).
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Pins the calling thread (call it before starting any other thread: they inherit it) to `cpu`.
pub fn pin_to(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).with_context(|| format!("cannot pin the benchmark to CPU {cpu}"))
}

/// Makes sure at least `needed` descriptors can be open, raising the soft limit (up to the hard
/// one) if needed. The error says what to do when the hard limit is too low.
pub fn ensure_descriptors(needed: u64) -> Result<u64> {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    if soft >= needed {
        return Ok(soft);
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < needed {
        bail!(
            "RLIMIT_NOFILE: {needed} descriptors are needed (one connection per simulated proxy, plus margin) \
             but the hard limit is {hard}; raise it (`ulimit -Hn`, as root) or run fewer proxies (--proxies)"
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .with_context(|| format!("cannot raise RLIMIT_NOFILE from {soft} to {needed}"))?;
    Ok(needed)
}

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// `utime + stime`, seconds.
    pub cpu_seconds: f64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` (peak RSS), KiB.
    pub hwm_kib: u64,
}

impl Sample {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn of(pid: u32) -> Result<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| {
            format!("cannot read /proc/{pid}/stat (has the control plane exited?)")
        })?;
        // The command name (field 2) is in parentheses and may contain spaces: count from the last ')'.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("unexpected /proc/<pid>/stat format")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
        let ticks = |i: usize| -> Result<u64> {
            fields
                .get(i - 3)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("/proc/{pid}/stat: field {i} missing"))
        };
        let cpu_seconds = (ticks(14)? + ticks(15)?) as f64 / TICKS_PER_SECOND;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let kib = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            at,
            cpu_seconds,
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
        })
    }

    /// Cores used between `earlier` and `self`: Δ(utime + stime) / Δwall.
    pub fn cores_since(&self, earlier: &Sample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (self.cpu_seconds - earlier.cpu_seconds) / wall
    }
}

/// The load averages line of `/proc/loadavg` (for the record: the machine is shared).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
