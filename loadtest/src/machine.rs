//! The machine the harness runs on (cores, memory, kernel — from `/proc`), the harness's
//! own CPU use (`/proc/self/stat`), the whole machine's and some processes' CPU use over an
//! interval ([`LoadClock`]), and raising the open-file limit.

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
    ProcStat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?).map(|s| s.own_seconds())
}

/// CPU time (user + system) process `pid` has used, in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    ProcStat::read(pid).map(|s| s.own_seconds())
}

/// The parent and CPU fields of one `/proc/<pid>/stat` line, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// Of its children that exited and were waited for.
    pub cutime: u64,
    pub cstime: u64,
}

impl ProcStat {
    pub fn parse(line: &str) -> Option<ProcStat> {
        // The command name is in parentheses and may itself hold spaces and ')': the other
        // fields start after the last ')'. There, field n of proc(5) is f[n - 3].
        let f: Vec<&str> = line.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
        Some(ProcStat {
            ppid: f.get(1)?.parse().ok()?,
            utime: ticks(14)?,
            stime: ticks(15)?,
            cutime: ticks(16)?,
            cstime: ticks(17)?,
        })
    }

    /// `/proc/<pid>/stat`; `None` once the process is gone.
    pub fn read(pid: u32) -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Its own CPU (user + system), in seconds.
    pub fn own_seconds(&self) -> f64 {
        (self.utime + self.stime) as f64 / TICKS_PER_SEC
    }

    /// Its own CPU and that of its waited-for children, in seconds.
    pub fn with_children_seconds(&self) -> f64 {
        (self.utime + self.stime + self.cutime + self.cstime) as f64 / TICKS_PER_SEC
    }
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

/// The machine's CPU time from `/proc/stat` (all cores): (busy, total) ticks.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Measures, over an interval, how busy the whole machine was (a fraction of all its
/// cores) and how many cores some other processes (e.g. the server under test) used.
#[derive(Debug, Clone)]
pub struct LoadClock {
    wall: Instant,
    machine: Option<(u64, u64)>,
    pids: Vec<(u32, Option<f64>)>,
}

impl LoadClock {
    pub fn start(pids: &[u32]) -> LoadClock {
        LoadClock {
            wall: Instant::now(),
            machine: machine_ticks(),
            pids: pids.iter().map(|&p| (p, process_cpu_seconds(p))).collect(),
        }
    }

    /// Fraction (0–1) of all the machine's cores that were busy since the start.
    pub fn machine_busy(&self) -> Option<f64> {
        let (b0, t0) = self.machine?;
        let (b1, t1) = machine_ticks()?;
        (t1 > t0).then(|| b1.saturating_sub(b0) as f64 / (t1 - t0) as f64)
    }

    /// Cores used since the start by the processes given, together; `None` unless each
    /// of them could be read at both ends.
    pub fn processes_cores(&self) -> Option<f64> {
        let wall = self.wall.elapsed().as_secs_f64();
        if self.pids.is_empty() || wall <= 0.0 {
            return None;
        }
        let mut used = 0.0;
        for (pid, before) in &self.pids {
            used += process_cpu_seconds(*pid)? - (*before)?;
        }
        Some(used / wall)
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
        assert!(process_cpu_seconds(std::process::id()).is_some());
        let clock = LoadClock::start(&[std::process::id()]);
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(clock
            .machine_busy()
            .is_some_and(|b| (0.0..=1.0).contains(&b)));
        assert!(clock.processes_cores().is_some_and(|c| c >= 0.0));
    }

    #[test]
    fn parses_a_stat_line_with_an_awkward_name() {
        // comm "(my proc) x" holds spaces and parentheses; utime 1234, stime 56, cutime 7,
        // cstime 8 (fields 14–17).
        let line = "4242 ((my proc) x) S 17 4242 4242 0 -1 4194560 500 0 0 0 1234 56 7 8 20 0 4 0 1000 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = ProcStat::parse(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                ppid: 17,
                utime: 1234,
                stime: 56,
                cutime: 7,
                cstime: 8
            }
        );
        assert!((s.own_seconds() - 12.9).abs() < 1e-9);
        assert!((s.with_children_seconds() - 13.05).abs() < 1e-9);
        assert_eq!(ProcStat::parse("4242 (cut"), None);
        assert_eq!(ProcStat::parse("4242 (short) S 1 2 3"), None);
    }
}
