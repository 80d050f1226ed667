//! The machine the harness runs on (cores, memory, kernel — from `/proc`), the harness's
//! own CPU use (`/proc/self/stat`), and raising the open-file limit.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Recorded in every report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub cores: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub kernel: String,
    pub os: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let memory_bytes = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        Machine {
            hostname: read("/proc/sys/kernel/hostname"),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_bytes,
            kernel: format!(
                "{} {} {}",
                read("/proc/sys/kernel/ostype"),
                read("/proc/sys/kernel/osrelease"),
                read("/proc/sys/kernel/version")
            ),
            os: std::env::consts::OS.to_owned(),
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time (user + system) this process has used, in seconds.
pub fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime 14 and stime 15 (1-based) → indexes 11, 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Measures this process's CPU use over an interval, as a fraction of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuClock {
    wall: Instant,
    cpu: f64,
}

impl CpuClock {
    pub fn start() -> CpuClock {
        CpuClock {
            wall: Instant::now(),
            cpu: own_cpu_seconds().unwrap_or(0.0),
        }
    }

    pub fn fraction(&self) -> f64 {
        let wall = self.wall.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (own_cpu_seconds().unwrap_or(self.cpu) - self.cpu) / wall
    }
}

/// Raises the soft limit of open files to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        assert!(own_cpu_seconds().is_some());
    }
}
