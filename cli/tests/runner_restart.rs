//! End to end across a bus-runner restart: the runner is killed with SIGKILL under an attached
//! `bus containers run`, a `logs -f` and a `wait`, stays down for a while and comes back on
//! the same address. What the runs wrote meanwhile is recovered from the engine's log, so each
//! command prints every byte of both streams once, in order, and ends with the run's exit
//! code; so does a full replay afterwards.

mod common;

use std::time::{Duration, Instant};

use common::script::{two_streams, two_streams_output};
use common::{Stack, Watched, bins, stdout};

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
    stack
        .runs()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Kills the runner with SIGKILL under an attached `run`, a `logs -f` and a `wait` of runs of
/// [`two_streams`], once they printed `before` lines; starts it again on the same address after
/// `down`; checks all three commands, and a full replay of each run afterwards.
fn nothing_is_lost_across_a_runner_restart(lines: u32, before: u64, down: Duration) {
    let mut stack = Stack::start(bins());
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
