//! The CLI at its edges with busd: exit codes of the commands that pass on a container's code,
//! a busd that accepts but does not answer (SIGSTOP), the `--timeout` expiry, a busd older
//! than the CLI, and the one-line errors for bad input. Everything runs the real binaries
//! (runner on Podman, busd started by the CLI); see `testkit`.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Stack, bins, one_line_error, stdout};

/// A bound on one CLI invocation so a hang fails the test instead of stalling the suite; the
/// assertions are on outcomes, never on durations.
const HARNESS_LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion, killing it (and failing) if it outlives [`HARNESS_LIMIT`].
fn bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).unwrap();
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        err.read_to_end(&mut buf).unwrap();
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HARNESS_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn run(stack: &Stack, args: &[&str]) -> Output {
    let mut cmd = stack.bus();
    cmd.args(args);
    bounded(cmd)
}

/// busd's PID from its instance lock file.
fn lock_pid(stack: &Stack) -> u32 {
    let mut lock = stack.socket.clone().into_os_string();
    lock.push(".pid");
    std::fs::read_to_string(lock)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

/// Continues a stopped busd when dropped, so a failing test leaves nothing stopped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        signal(pid, rustix::process::Signal::STOP);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.0 as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
    }
}

fn info_json(stack: &Stack) -> serde_json::Value {
    let out = run(stack, &["daemon", "info", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn run_exec_and_wait_exit_125_when_bus_busd_or_the_runner_fails() {
    let stack = Stack::start(bins());
    // The command's own code passes through, 6 included.
    let out = run(&stack, &["containers", "run", "--", "sh", "-c", "exit 6"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    // Waiting for a run that does not exist: the not-found line, exit 125.
    let unknown = "run_00000000000000000000000000000000";
    let out = run(&stack, &["containers", "wait", unknown]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(one_line_error(&out).contains(&format!("no run {unknown}")));
    // Other commands keep their class: not found is 5.
    let out = run(&stack, &["containers", "get", unknown]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    // An expired token: 125 for run, 4 for the rest.
    stack.write_token(&stack.runner.expired_token("alice"));
    let out = run(&stack, &["containers", "run", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(one_line_error(&out).contains("expired"));
    let out = run(&stack, &["containers", "runs"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}

#[test]
fn a_busd_that_does_not_answer_is_named_and_works_again_once_continued() {
    let stack = Stack::start(bins());
    let out = run(
        &stack,
        &["containers", "run", "-d", "--", "sh", "-c", "sleep 600"],
    );
    assert!(out.status.success(), "{out:?}");
    let id = stdout(&out).trim().to_owned();
    let pid = lock_pid(&stack);
    let stopped = Stopped::new(pid);

    for (args, code) in [
        (&["containers", "status"][..], 6),
        (&["containers", "runs"][..], 6),
        (&["daemon", "status"][..], 6),
        (&["containers", "wait", &id][..], 125),
    ] {
        let out = run(&stack, args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        let line = one_line_error(&out);
        assert!(line.contains(&format!("(pid {pid})")), "{args:?}: {line}");
        assert!(line.contains("`bus daemon restart`"), "{args:?}: {line}");
    }
    // A --timeout shorter than that bound expires first, and says so.
    for (args, code) in [
        (&["--timeout", "1s", "containers", "runs"][..], 6),
        (&["--timeout", "1s", "containers", "wait", &id][..], 125),
    ] {
        let out = run(&stack, args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
        let line = one_line_error(&out);
        assert!(
            line.contains("took longer than --timeout 1s"),
            "{args:?}: {line}"
        );
    }

    drop(stopped);
    let out = run(&stack, &["containers", "runs", "-q"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(&id));
    assert_eq!(info_json(&stack)["pid"], pid, "the same busd serves");
    assert!(run(&stack, &["containers", "delete", &id]).status.success());
}

#[test]
fn bus_daemon_restart_replaces_a_busd_that_does_not_answer() {
    let stack = Stack::start(bins());
    assert!(run(&stack, &["daemon", "start"]).status.success());
    let pid = lock_pid(&stack);
    let _stopped = Stopped::new(pid);
    let out = run(&stack, &["daemon", "restart"]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(&format!("busd stopped (pid {pid})")));
    let out = run(&stack, &["containers", "runs"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(info_json(&stack)["pid"], pid);
}

#[test]
fn quiet_streams_and_waits_are_not_cut() {
    let stack = Stack::start(bins());
    // Longer than busd's answer bound without a byte of output.
    let out = run(
        &stack,
        &["containers", "run", "--", "sh", "-c", "sleep 8; echo done"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "done\n");
    let out = run(
        &stack,
        &[
            "containers",
            "run",
            "-d",
            "--",
            "sh",
            "-c",
            "sleep 8; exit 3",
        ],
    );
    let id = stdout(&out).trim().to_owned();
    let out = run(&stack, &["containers", "wait", &id]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[test]
fn a_busd_older_than_the_cli_is_restarted_when_a_cli_started_it() {
    let stack = Stack::start(bins());
    // A busd "from before an upgrade", started by the CLI (debug builds read the override).
    let mut start = stack.bus();
    start
        .env("BUSD_PROTOCOL_OVERRIDE", "0")
        .args(["daemon", "start"]);
    assert!(bounded(start).status.success());
    let old = info_json(&stack);
    assert_eq!(old["protocol"], 0);
    let out = run(&stack, &["containers", "runs"]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spoke an older protocol than this bus"),
        "{stderr}"
    );
    let new = info_json(&stack);
    assert_ne!(new["pid"], old["pid"]);
    assert_eq!(new["protocol"], 1);
}

#[test]
fn a_busd_older_than_the_cli_that_no_cli_started_is_reported() {
    let stack = Stack::start(bins());
    let mut busd = stack.start_busd(|busd| {
        busd.env("BUSD_PROTOCOL_OVERRIDE", "0")
            .stderr(Stdio::null());
    });
    let started = Instant::now();
    while !(stack.socket.exists() && info_json_ok(&stack)) {
        assert!(started.elapsed() < HARNESS_LIMIT, "busd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(&stack, &["containers", "runs"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let line = one_line_error(&out);
    assert!(line.contains("protocol 0"), "{line}");
    assert!(line.contains("`bus daemon restart`"), "{line}");
    let out = run(&stack, &["containers", "run", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    // The advice works.
    assert!(run(&stack, &["daemon", "restart"]).status.success());
    let _ = busd.wait();
    assert!(run(&stack, &["containers", "runs"]).status.success());
}

fn info_json_ok(stack: &Stack) -> bool {
    run(stack, &["daemon", "status"]).status.success()
}

#[test]
fn bad_input_gets_one_line_saying_what_to_do() {
    let stack = Stack::start(bins());

    // A token file that is not text.
    let path = stack.home.path().join("binary-token");
    std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80, b'x']).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = stack.bus();
    cmd.arg("--token-file")
        .arg(&path)
        .args(["containers", "runs"]);
    let out = bounded(cmd);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let line = one_line_error(&out);
    assert!(line.contains("not UTF-8"), "{line}");
    assert!(line.contains("bus auth token"), "{line}");
    assert!(!line.contains("exists and is readable"), "{line}");

    // https:// to the plain-HTTP runner.
    let https = stack.runner.origin.replacen("http://", "https://", 1);
    let out = run(&stack, &["--api-url", &https, "containers", "runs"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let line = one_line_error(&out);
    assert!(line.contains("does not speak TLS"), "{line}");
    assert!(line.contains(&stack.runner.origin), "{line}");
    assert!(!line.contains("InvalidContentType"), "{line}");

    // 1 MiB of -e (in 64 KiB values: one argument may hold at most 128 KiB).
    let value = "x".repeat(64 * 1024);
    let pairs: Vec<String> = (0..16).map(|i| format!("V{i}={value}")).collect();
    let mut args = vec!["containers", "run"];
    for pair in &pairs {
        args.extend(["-e", pair.as_str()]);
    }
    args.extend(["--", "true"]);
    let out = run(&stack, &args);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let line = one_line_error(&out);
    assert!(line.contains("larger than"), "{line}");
    assert!(line.contains("fewer or smaller -e values"), "{line}");

    // Control characters in an id are escaped, never echoed raw.
    let out = run(&stack, &["containers", "get", "a\x1b[31mb"]);
    assert!(!out.status.success());
    assert!(!out.stderr.contains(&0x1b), "{out:?}");
    let line = one_line_error(&out);
    assert!(line.contains("a\\x1b[31mb"), "{line}");
}
