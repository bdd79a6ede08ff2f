//! End to end across a bus-runner restart: the runner is killed with SIGKILL under an attached
//! `bus containers run`, a `logs -f` and a `wait`, stays down for a while and comes back on
//! the same address. What the runs wrote meanwhile is recovered from the engine's log, so each
//! command prints every byte of both streams once, in order, and ends with the run's exit
//! code; so does a full replay afterwards.

mod common;

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Stack, stdout};

/// A script writing, `lines` times with `pause` seconds between: `line I out` to stdout in two
/// writes (the first without its newline, a partial line in the engine's log) and `err I` to
/// stderr; then a last line without a newline on each stream; it exits with 7.
fn two_streams(lines: u32, pause: &str) -> String {
    format!(
        "i=0; while [ $i -lt {lines} ]; do printf \"line $i\"; sleep 0.01; echo ' out'; \
         echo \"err $i\" >&2; i=$((i+1)); sleep {pause}; done; \
         printf 'last words'; printf 'no newline' >&2; exit 7"
    )
}

/// What [`two_streams`] writes to stdout and to stderr.
fn two_streams_output(lines: u32) -> (String, String) {
    let mut stdout: String = (0..lines).map(|i| format!("line {i} out\n")).collect();
    stdout.push_str("last words");
    let mut stderr: String = (0..lines).map(|i| format!("err {i}\n")).collect();
    stderr.push_str("no newline");
    (stdout, stderr)
}

/// `stderr` without busd's notice that it lost the runner and retries, and how many such
/// notices it held.
fn without_notices(stderr: &str) -> (String, usize) {
    let is_notice =
        |line: &str| line.starts_with("bus: the runner at ") && line.contains("unreachable");
    let notices = stderr
        .split_inclusive('\n')
        .filter(|l| is_notice(l))
        .count();
    let rest = stderr
        .split_inclusive('\n')
        .filter(|l| !is_notice(l))
        .collect();
    (rest, notices)
}

/// A `bus` process whose stdout and stderr are read as they come.
struct Watched {
    child: Child,
    /// Newlines read from stdout so far.
    lines: Arc<AtomicU64>,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Watched {
    fn spawn(mut command: Command) -> Watched {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(AtomicU64::new(0));
        let counter = lines.clone();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => return all,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        let count = all.iter().filter(|b| **b == b'\n').count();
                        counter.store(count as u64, Ordering::SeqCst);
                    }
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = err.read_to_end(&mut all);
            all
        });
        Watched {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// Waits until at least `n` lines were printed to stdout, for at most a minute.
    fn reached(&self, n: u64) {
        let start = Instant::now();
        while self.lines.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the CLI printed {} lines within a minute, not {n}",
                self.lines.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process (at most `limit`, then kills it by its PID and fails); returns its
    /// exit code, stdout and stderr.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the CLI did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text =
            |h: JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().unwrap()).into_owned();
        (status.code(), text(self.stdout), text(self.stderr))
    }
}

/// Starts busd through the CLI; returns its PID.
fn start_busd(stack: &Stack) -> u32 {
    let out = stack.run(&["daemon", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stack.busd_pid().expect("busd runs")
}

/// The ids of every run of the stack's account.
fn run_ids(stack: &Stack) -> Vec<String> {
    let out = stack.run(&["containers", "runs", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    runs.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Kills the runner with SIGKILL under an attached `run`, a `logs -f` and a `wait` of runs of
/// [`two_streams`], once they printed `before` lines; starts it again on the same address after
/// `down`; checks all three commands, and a full replay of each run afterwards.
fn nothing_is_lost_across_a_runner_restart(lines: u32, before: u64, down: Duration) {
    let mut stack = Stack::start();
    let busd = start_busd(&stack);
    let script = two_streams(lines, "0.05");
    let (expected_out, expected_err) = two_streams_output(lines);

    let mut run = stack.bus();
    run.args(["containers", "run", "--", "sh", "-c", &script]);
    let run = Watched::spawn(run);
    let out = stack.run(&["containers", "run", "-d", "--", "sh", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detached = stdout(&out).trim().to_owned();
    let mut logs = stack.bus();
    logs.args(["containers", "logs", "-f", &detached]);
    let logs = Watched::spawn(logs);
    let mut wait = stack.bus();
    wait.args(["containers", "wait", &detached]);
    let wait = Watched::spawn(wait);
    run.reached(before);
    logs.reached(before);

    stack.runner.kill();
    let killed = Instant::now();
    std::thread::sleep(down);
    stack.runner.restart_in_place();
    eprintln!("runner down for {:?}", killed.elapsed());

    let limit = Duration::from_secs(120);
    let (code, out, err) = run.finish(limit);
    let (err, notices) = without_notices(&err);
    assert_eq!(notices, 1, "run says once that the runner is unreachable");
    assert_eq!(out, expected_out, "run printed every stdout byte once");
    assert_eq!(
        err, expected_err,
        "run printed every stderr byte once, and nothing else"
    );
    assert_eq!(code, Some(7), "run exits with the command's code");

    let (code, out, err) = logs.finish(limit);
    let (err, notices) = without_notices(&err);
    assert_eq!(
        notices, 1,
        "logs -f says once that the runner is unreachable"
    );
    assert_eq!(out, expected_out, "logs -f printed every stdout byte once");
    assert_eq!(
        err, expected_err,
        "logs -f printed every stderr byte once, and nothing else"
    );
    assert_eq!(code, Some(0), "logs -f");

    let (code, out, err) = wait.finish(limit);
    let (err, notices) = without_notices(&err);
    assert_eq!(notices, 1, "wait says once that the runner is unreachable");
    assert_eq!(
        (out.as_str(), err.as_str()),
        ("", ""),
        "wait prints nothing else"
    );
    assert_eq!(code, Some(7), "wait exits with the run's code");

    let ids = run_ids(&stack);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&detached), "{ids:?}");
    for id in &ids {
        let replay = stack.run(&["containers", "logs", id]);
        let err = String::from_utf8_lossy(&replay.stderr);
        assert!(replay.status.success(), "logs {id}: {err}");
        assert_eq!(
            stdout(&replay),
            expected_out,
            "a full replay of {id}: stdout"
        );
        assert_eq!(err, expected_err, "a full replay of {id}: stderr");
        let got = stack.run(&["containers", "get", id, "-o", "json"]);
        let record: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
        assert_eq!(record["state"], "exited", "{record}");
        assert_eq!(record["exit_code"], 7, "{record}");
    }
    assert_eq!(stack.busd_pid(), Some(busd), "busd rode it out");
}

#[test]
fn nothing_is_lost_when_the_runner_is_down_for_3_s() {
    nothing_is_lost_across_a_runner_restart(250, 40, Duration::from_secs(3));
}

/// Longer than busd's old resume budget (5 tries, about 6 s); well within `resume_for`'s 2m.
#[test]
fn nothing_is_lost_when_the_runner_is_down_for_30_s() {
    // 700 lines take over 42 s: the runs outlive the 30 s without a runner.
    nothing_is_lost_across_a_runner_restart(700, 40, Duration::from_secs(30));
}
