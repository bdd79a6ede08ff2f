//! How output leaves `bus`, through the real binaries (see `testkit`): a foreground
//! run tells its id on a terminal and gives one JSON result with `-o json`; output into a
//! closed pipe ends `bus` as it ends coreutils (killed by SIGPIPE, nothing on stderr) in
//! every output mode.

mod common;

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Output, Stdio};

use common::{Stack, bins, stdout};
use serde_json::Value;

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `bus ARGS...` with stdout a pipe whose read end is already closed.
fn into_closed_pipe(stack: &Stack, args: &[&str]) -> Output {
    let (reader, writer) = rustix::pipe::pipe().unwrap();
    drop(reader);
    stack
        .bus()
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn output_into_a_closed_pipe_ends_bus_quietly_by_sigpipe() {
    let stack = Stack::start(bins());
    let out = stack.run(&["containers", "run", "-d", "--", "sh", "-c", "echo logged"]);
    assert!(out.status.success(), "{}", text(&out));
    let id = stdout(&out).trim().to_owned();
    let out = stack.run(&["containers", "wait", &id]);
    assert!(out.status.success(), "{}", text(&out));
    let modes: [&[&str]; 9] = [
        &["containers", "status"],
        &["containers", "status", "-o", "json"],
        &["containers", "runs"],
        &["containers", "runs", "-q"],
        &["containers", "runs", "-o", "json"],
        &["containers", "get", &id],
        &["containers", "logs", &id],
        &["containers", "run", "--", "echo", "streamed"],
        &["containers", "run", "-o", "json", "--", "echo", "result"],
    ];
    for args in modes {
        let out = into_closed_pipe(&stack, args);
        assert_eq!(
            out.status.signal(),
            Some(13),
            "bus {args:?} dies of SIGPIPE: {}",
            text(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "bus {args:?} says nothing"
        );
    }
}

#[test]
fn run_o_json_prints_one_result_and_exits_with_the_code() {
    let stack = Stack::start(bins());
    let out = stack.run(&[
        "containers",
        "run",
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        "printf 'out\\n'; printf err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let result: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", text(&out)));
    let id = result["id"].as_str().unwrap();
    assert!(id.starts_with("run_"), "{result}");
    assert_eq!(result["state"], "exited", "{result}");
    assert_eq!(result["exit_code"], 3, "{result}");
    assert_eq!(result["stdout"], "out\n", "{result}");
    assert_eq!(result["stderr"], "err", "{result}");
    assert!(result.get("stdout_base64").is_none(), "{result}");
    for time in ["created_at", "started_at", "finished_at"] {
        let at = result[time]
            .as_str()
            .unwrap_or_else(|| panic!("{time}: {result}"));
        // RFC 3339 in UTC, e.g. 2026-11-22T19:32:03.585942154Z.
        assert!(
            at.len() >= 20 && &at[4..5] == "-" && &at[10..11] == "T" && at.ends_with('Z'),
            "{time}: {at}"
        );
    }
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "nothing streamed");
    // The id is the run's: get knows it.
    let got = stack.run(&["containers", "get", id, "-o", "json"]);
    assert!(got.status.success(), "{}", text(&got));

    // Bytes that are not UTF-8 come in base64.
    let out = stack.run(&[
        "containers",
        "run",
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        "printf '\\377ok'",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["stdout"], Value::Null, "{result}");
    assert_eq!(result["stdout_base64"], "/29r", "{result}");
    assert_eq!(result["stderr"], "", "{result}");
}

#[test]
fn a_foreground_run_tells_its_id_on_a_terminal_only() {
    let stack = Stack::start(bins());
    // stderr a pipe: only the output.
    let out = stack.run(&["containers", "run", "--", "echo", "plain"]);
    assert_eq!(stdout(&out), "plain\n", "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    // A terminal (script(1) gives the command a pty for stdout and stderr).
    let probe = stack.bus();
    let mut cmd = Command::new("script");
    cmd.env_clear();
    for (key, value) in probe.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    let line = format!(
        "{} containers run -- echo on-a-terminal",
        probe.get_program().to_str().unwrap()
    );
    let out = cmd
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<&str> = shown.lines().collect();
    let started = lines
        .iter()
        .position(|l| l.contains("run_") && l.contains(" started"))
        .unwrap_or_else(|| panic!("no run id line: {shown:?}"));
    let output = lines
        .iter()
        .position(|l| *l == "on-a-terminal")
        .unwrap_or_else(|| panic!("no output: {shown:?}"));
    assert!(started < output, "the id comes first: {shown:?}");
    // The id it shows is the run's.
    let id: String = lines[started]
        .split_whitespace()
        .find(|w| w.contains("run_"))
        .unwrap()
        .chars()
        .skip_while(|c| *c != 'r')
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let got = stack.run(&["containers", "get", &id, "-o", "json"]);
    assert!(got.status.success(), "{id}: {}", text(&got));
}
