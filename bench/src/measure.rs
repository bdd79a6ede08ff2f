//! Timing fresh processes, spawn to reap, and the statistics the table prints.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Failed;

/// A command line and the environment it runs in (the environment is replaced, not merged).
#[derive(Debug, Clone)]
pub struct Cmd {
    /// What the table calls it.
    pub label: String,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Cmd {
    /// `argv` with exactly `env`.
    pub fn new<I, S>(label: &str, argv: I, env: &[(OsString, OsString)]) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd {
            label: label.to_owned(),
            argv: argv.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            env: env.to_vec(),
        }
    }

    /// The command, ready to spawn, with stdin closed.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// The same command run under `wrapper` (e.g. `/usr/bin/time -f %M -o FILE`).
    pub fn wrapped(&self, wrapper: &[&OsStr]) -> Cmd {
        let mut argv: Vec<OsString> = wrapper.iter().map(|a| a.to_os_string()).collect();
        argv.extend(self.argv.iter().cloned());
        Cmd {
            label: self.label.clone(),
            argv,
            env: self.env.clone(),
        }
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        self.argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Runs `cmd` once with stdout discarded: its wall time from spawn to reap. A non-zero exit is
/// an error carrying its stderr (kept in `scratch`).
pub fn time_once(cmd: &Cmd, scratch: &Path) -> Result<Duration, Failed> {
    let stderr_path = scratch.join("stderr");
    let stderr = File::create(&stderr_path)
        .map_err(|e| Failed(format!("cannot create {}: {e}", stderr_path.display())))?;
    let mut command = cmd.command();
    command.stdout(Stdio::null()).stderr(stderr);
    let start = Instant::now();
    let status = command
        .status()
        .map_err(|e| Failed(format!("cannot run `{}`: {e}", cmd.display())))?;
    let wall = start.elapsed();
    if !status.success() {
        let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        return Err(Failed(format!(
            "`{}` failed ({status}): {}",
            cmd.display(),
            err.trim()
        )));
    }
    Ok(wall)
}

/// `warmup` + `n` rounds over `cmds`, rotating their order each round so drift hits all
/// alike; returns each command's `n` timed walls, in `cmds`' order.
pub fn interleaved(
    cmds: &[Cmd],
    n: usize,
    warmup: usize,
    scratch: &Path,
) -> Result<Vec<Vec<Duration>>, Failed> {
    let mut walls = vec![Vec::with_capacity(n); cmds.len()];
    for round in 0..warmup + n {
        for k in 0..cmds.len() {
            let i = (k + round) % cmds.len();
            let wall = time_once(&cmds[i], scratch)?;
            if round >= warmup {
                walls[i].push(wall);
            }
        }
    }
    Ok(walls)
}

/// GNU time, which reports a process' own peak RSS.
pub const GNU_TIME: &str = "/usr/bin/time";

/// Whether [`GNU_TIME`] can be run.
pub fn have_gnu_time() -> bool {
    Command::new(GNU_TIME)
        .args(["-f", "%M", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Peak RSS in KiB of `cmd`'s own process, by `/usr/bin/time -f %M` (median of `runs`).
pub fn peak_rss_kib(cmd: &Cmd, runs: usize, scratch: &Path) -> Result<u64, Failed> {
    let out = scratch.join("time.out");
    let mut values = Vec::with_capacity(runs);
    for _ in 0..runs {
        let wrapped = cmd.wrapped(&[
            OsStr::new(GNU_TIME),
            OsStr::new("-f"),
            OsStr::new("%M"),
            OsStr::new("-o"),
            out.as_os_str(),
        ]);
        time_once(&wrapped, scratch)?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let kib = text
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Failed(format!("{GNU_TIME} printed {text:?}, not a size")))?;
        values.push(kib);
    }
    values.sort_unstable();
    Ok(values[values.len() / 2])
}

/// The resident set size of a running process, KiB (`VmRSS`).
pub fn vm_rss_kib(pid: u32) -> Result<u64, Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Failed(format!("cannot read the status of pid {pid}: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Failed(format!("pid {pid} reports no VmRSS")))
}

/// Nearest-rank percentile of `values` (`p` in 0..=100); 0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64 * p / 100.0).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Median and p99 of durations, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Ms {
    /// The median.
    pub median: f64,
    /// The 99th percentile.
    pub p99: f64,
}

impl Ms {
    /// From wall times.
    pub fn of(walls: &[Duration]) -> Ms {
        let ms: Vec<f64> = walls.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Ms::of_ms(&ms)
    }

    /// From milliseconds.
    pub fn of_ms(ms: &[f64]) -> Ms {
        Ms {
            median: percentile(ms, 50.0),
            p99: percentile(ms, 99.0),
        }
    }
}

impl std::fmt::Display for Ms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (p99 {})", ms(self.median), ms(self.p99))
    }
}

/// Milliseconds with a precision that suits their size.
pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} ms")
    } else if value < 100.0 {
        format!("{value:.1} ms")
    } else {
        format!("{value:.0} ms")
    }
}

/// KiB as MiB.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// CPU time (user + system) a process has used so far, µs; this process' own when `pid` is
/// 0. Read from `/proc/PID/stat` (clock ticks of 10 ms).
pub fn cpu_us(pid: u32) -> Result<u64, Failed> {
    let path = if pid == 0 {
        "/proc/self/stat".to_owned()
    } else {
        format!("/proc/{pid}/stat")
    };
    let stat =
        std::fs::read_to_string(&path).map_err(|e| Failed(format!("cannot read {path}: {e}")))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) * 10_000),
        _ => Err(Failed(format!("{path} has no CPU times"))),
    }
}
