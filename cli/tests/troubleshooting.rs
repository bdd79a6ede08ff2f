//! docs/troubleshooting.md, checked against the program: every error line the page lists is
//! produced here for real (the runner on Podman, busd, the `bus` binary; see `tests/common`),
//! and each produced line must match one of the page's lines, each page line one produced
//! line. The page marks its lines with `<!-- error-line -->` before a ```text block; a
//! `<UPPER_CASE>` word in one stands for a part that varies (a path, a pid, a run id).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bus_testkit::{Busd, RunnerProcess, Serve};
use common::{ALL_SCOPES, Runner, Stack, bin, bins, hash_key, stdout, stop_pid};

/// The mark before each listed line's block.
const MARK: &str = "<!-- error-line -->";

/// A line of the page: where it is, and its text with placeholders.
struct Listed {
    line: usize,
    pattern: String,
}

/// The lines the page lists, in order.
fn listed(page: &str) -> Vec<Listed> {
    let lines: Vec<&str> = page.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != MARK {
            continue;
        }
        assert_eq!(
            lines.get(i + 1).map(|l| l.trim_end()),
            Some("```text"),
            "docs/troubleshooting.md:{}: the mark must stand just before a ```text block",
            i + 1
        );
        let body: Vec<&str> = lines[i + 2..]
            .iter()
            .take_while(|l| !l.starts_with("```"))
            .copied()
            .collect();
        assert_eq!(
            body.len(),
            1,
            "docs/troubleshooting.md:{}: a marked block holds one line",
            i + 2
        );
        found.push(Listed {
            line: i + 3,
            pattern: body[0].to_owned(),
        });
    }
    found
}

/// The literal parts of `pattern` between its `<PLACEHOLDER>`s.
fn literals(pattern: &str) -> Vec<&str> {
    let bytes = pattern.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let name = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_uppercase() || **b == b'_')
                .count();
            let close = i + 1 + name;
            if name > 0 && bytes.get(close) == Some(&b'>') {
                parts.push(&pattern[start..i]);
                start = close + 1;
                i = start;
                continue;
            }
        }
        i += 1;
    }
    parts.push(&pattern[start..]);
    parts
}

/// Whether `line` is `pattern` with each placeholder standing for some non-empty text.
fn matches(pattern: &str, line: &str) -> bool {
    let parts = literals(pattern);
    match line.strip_prefix(parts[0]) {
        Some(rest) if parts.len() == 1 => rest.is_empty(),
        Some(rest) => after_placeholder(&parts[1..], rest),
        None => false,
    }
}

/// Whether `text` is some non-empty text followed by `parts[0]`, then (recursively) the
/// same for the remaining parts.
fn after_placeholder(parts: &[&str], text: &str) -> bool {
    let (literal, later) = (parts[0], &parts[1..]);
    if later.is_empty() {
        return text.len() > literal.len() && text.ends_with(literal);
    }
    text.match_indices(literal)
        .filter(|(at, _)| *at > 0)
        .any(|(at, _)| after_placeholder(later, &text[at + literal.len()..]))
}

#[test]
fn placeholders_stand_for_varying_text() {
    assert!(matches("no run <RUN_ID>", "no run run_0a"));
    assert!(!matches("no run <RUN_ID>", "no run "));
    assert!(matches("at <PATH>; run `x`", "at /tmp/a; run `x`"));
    assert!(!matches("at <PATH>; run `x`", "at /tmp/a; run `y`"));
    assert!(matches("a <X> b <Y> c", "a 1 b 2 c"));
    assert!(!matches("a <X> b <Y> c", "a 1 c"));
    assert!(matches("no placeholder <here>", "no placeholder <here>"));
    let page = "x\n<!-- error-line -->\n```text\nbus: error: <A>\n```\n";
    let found = listed(page);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].line, found[0].pattern.as_str()),
        (4, "bus: error: <A>")
    );
}

/// A bound on one command, so a hang fails the test instead of stalling the suite.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion within [`LIMIT`] and returns its one stderr line, checking that
/// it failed and printed exactly one line.
fn error_line(what: &str, mut cmd: Command) -> String {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: {cmd:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out: Output = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{what}: succeeded: {}", stdout(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "{what}: expected one line on stderr, got: {stderr}"
    );
    stderr.trim_end().to_owned()
}

/// The runner's config: a profile that keeps 1 MiB of a run's output, a full account, one
/// whose plan allows one run at a time, and one whose billing is not set up.
fn config(key: &str) -> String {
    let scopes = "[\"container:read\", \"container:run\", \"container:delete\", \"billing:read\"]";
    format!(
        "[profiles.tiny]\nimage = \"localhost/busybox:latest\"\ntimeout_seconds = 60\n\
         max_output_mb = 1\n\n\
         [plans.one]\nmax_concurrent_runs = 1\n\n\
         [[accounts]]\nid = \"dev\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\nresources = {scopes}\n\n\
         [[accounts]]\nid = \"small\"\napi_key_sha256 = \"{}\"\nplan = \"one\"\nresources = {scopes}\n\n\
         [[accounts]]\nid = \"unpaid\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\n\
         billing = \"required\"\nresources = {scopes}\n",
        hash_key(key),
        hash_key("small-key-0123456789"),
        hash_key("unpaid-key-0123456789"),
    )
}

/// `bus-runner serve` over HTTPS with a certificate from a CA the caller does not trust, on
/// the stack's engine; returns it (stopped by PID when dropped) and its origin.
fn https_runner(stack: &Stack, dir: &Path) -> (RunnerProcess, String) {
    bus_testkit::tls::certificates(dir).unwrap();
    let runner = Serve::new(bins(), &stack.runner.engine.socket, &dir.join("state"))
        .unwrap()
        .listen("https://127.0.0.1:0")
        .tls(dir.join("server.pem"), dir.join("server.key"))
        .spawn();
    let origin = runner.origin().to_owned();
    (runner, origin)
}

/// `busd` with the stack's environment, on `socket`.
fn busd_on(stack: &Stack, socket: &Path) -> Command {
    let mut cmd = Command::new(bin("busd"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", stack.home.path())
        .env("BUS_CONFIG_DIR", stack.config_dir())
        .env("BUS_AI_API_URL", &stack.runner.origin)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null());
    cmd
}

/// Produces every error line the page should list, each with what produced it.
fn produce() -> Vec<(&'static str, String)> {
    let key = "sk-troubleshooting-0123456789";
    let stack = Stack::on(Runner::start_with_config(bins(), &config(key)));
    let runner = &stack.runner;
    let work = tempfile::tempdir_in(stack.home.path()).unwrap();
    let mut lines = Vec::new();
    let mut bus = |what: &'static str, args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = stack.bus();
        cmd.args(args).envs(env.iter().copied());
        let line = error_line(what, cmd);
        lines.push((what, line));
    };

    // Credentials: none yet, then ones that cannot be used.
    bus("no token", &["containers", "runs"], &[]);
    bus("no API key", &["auth", "token"], &[]);
    bus(
        "a wrong API key",
        &["auth", "token"],
        &[("BUS_API_KEY", "sk-not-the-key-0123456789")],
    );
    let token =
        |name: &str, token: &str| stack.token_file(name, token).to_string_lossy().into_owned();
    let expired = token("expired", &runner.expired_token("dev"));
    bus(
        "an expired token",
        &["--token-file", &expired, "containers", "runs"],
        &[],
    );
    let open = token("readable", &runner.token("dev", ALL_SCOPES));
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    bus(
        "a token file others can read",
        &["--token-file", &open, "containers", "runs"],
        &[],
    );
    let reader = token("reader", &runner.token("dev", "container:read"));
    bus(
        "a missing scope",
        &[
            "--token-file",
            &reader,
            "containers",
            "run",
            "-d",
            "--",
            "true",
        ],
        &[],
    );
    bus(
        "a token on the command line",
        &[
            "containers",
            "runs",
            "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl",
        ],
        &[],
    );

    // Usage and runs, with a full token in the default file.
    stack.write_token(&runner.token("dev", ALL_SCOPES));
    bus(
        "a command without --",
        &["containers", "run", "sh", "-c", "echo hi"],
        &[],
    );
    bus("a containers command at the top", &["ps"], &[]);
    bus(
        "a docker flag",
        &["containers", "run", "--memory", "256m", "--", "true"],
        &[],
    );
    let unknown = "run_00000000000000000000000000000000";
    bus("no such run", &["containers", "get", unknown], &[]);
    bus(
        "no such image",
        &[
            "containers",
            "run",
            "--image",
            "localhost/no-such-image:1",
            "--",
            "true",
        ],
        &[],
    );
    bus(
        "a registry image not pulled, with --pull never",
        &[
            "containers",
            "run",
            "--pull",
            "never",
            "--image",
            "127.0.0.1:1/team/app:1",
            "--",
            "true",
        ],
        &[],
    );
    let out = stack.run(&[
        "containers",
        "run",
        "-d",
        "--name",
        "web",
        "--",
        "sleep",
        "600",
    ]);
    let web = stdout(&out).trim().to_owned();
    assert!(web.starts_with("run_"), "{out:?}");
    bus(
        "a run name in use",
        &["containers", "run", "-d", "--name", "web", "--", "true"],
        &[],
    );
    let _ = stack.run(&["containers", "stop", "--force", &web]);
    for _ in 0..2 {
        let out = stack.run(&["containers", "run", "--name", "job", "--", "true"]);
        assert!(out.status.success(), "{out:?}");
    }
    bus("an ambiguous run name", &["containers", "logs", "job"], &[]);
    bus(
        "no such profile",
        &["containers", "run", "--profile", "nope", "--", "true"],
        &[],
    );
    bus(
        "a command the image does not have",
        &["containers", "run", "--", "no-such-command"],
        &[],
    );
    let out = stack.run(&["containers", "run", "-d", "--profile", "tiny", "--", "yes"]);
    let chatty = stdout(&out).trim().to_owned();
    assert!(chatty.starts_with("run_"), "{out:?}");
    bus(
        "a run that writes past its output limit",
        &["containers", "wait", &chatty],
        &[],
    );
    let images = token("images", &runner.token("dev", "image:read image:write"));
    bus(
        "an absolute storage path",
        &[
            "--token-file",
            &images,
            "images",
            "load",
            "--from-storage",
            "/data/app.tar",
        ],
        &[],
    );
    let out = stack.run(&["containers", "run", "-d", "--", "true"]);
    let ended = stdout(&out).trim().to_owned();
    assert!(ended.starts_with("run_"), "{out:?}");
    let mut waited = stack.bus();
    waited.args(["containers", "wait", &ended]);
    let _ = waited.output().unwrap();
    bus(
        "exec into a run that ended",
        &["containers", "exec", &ended, "--", "true"],
        &[],
    );

    // Plans and billing.
    let small = token("small", &runner.token("small", ALL_SCOPES));
    let out = stack.run(&[
        "--token-file",
        &small,
        "containers",
        "run",
        "-d",
        "--",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{out:?}");
    bus(
        "the plan's concurrent runs",
        &[
            "--token-file",
            &small,
            "containers",
            "run",
            "-d",
            "--",
            "true",
        ],
        &[],
    );
    let unpaid = token("unpaid", &runner.token("unpaid", ALL_SCOPES));
    bus(
        "billing not set up",
        &[
            "--token-file",
            &unpaid,
            "containers",
            "run",
            "-d",
            "--",
            "true",
        ],
        &[],
    );

    // The runner's address.
    let with_path = format!("{}/api/v1/containers", runner.origin);
    bus(
        "an API URL with a path",
        &["--api-url", &with_path, "containers", "runs"],
        &[],
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    bus(
        "no runner at the API URL",
        &["--api-url", &nobody, "containers", "runs"],
        &[],
    );
    let (_https, https) = https_runner(&stack, work.path());
    bus(
        "a certificate busd does not trust",
        &["--api-url", &https, "containers", "runs"],
        &[],
    );
    let plain_to_tls = https.replacen("https://", "http://", 1);
    bus(
        "plain HTTP to an HTTPS runner",
        &["--api-url", &plain_to_tls, "containers", "runs"],
        &[],
    );
    // BUS_CA_FILE is read when busd starts: a busd of its own, on another socket.
    let missing_ca = work.path().join("no-such-ca.pem");
    let socket = work.path().join("ca.sock");
    bus(
        "a CA file that does not exist",
        &["--socket", &socket.to_string_lossy(), "containers", "runs"],
        &[("BUS_CA_FILE", &missing_ca.to_string_lossy())],
    );

    // busd itself: one older than this bus that no bus started, on a socket of its own.
    let old_socket = work.path().join("old.sock");
    let mut old = busd_on(&stack, &old_socket);
    old.env("BUSD_PROTOCOL_OVERRIDE", "0").stderr(Stdio::null());
    let old = Busd::spawn(old, &old_socket);
    bus(
        "a busd older than bus",
        &[
            "--socket",
            &old_socket.to_string_lossy(),
            "containers",
            "runs",
        ],
        &[],
    );
    let line = error_line("a second busd on one socket", busd_on(&stack, &old_socket));
    lines.push(("a second busd on one socket", line));
    drop(old);

    // A busd that accepts but does not answer (stopped), and a --timeout that passes first.
    assert!(stack.run(&["daemon", "start"]).status.success());
    let pid = stack.busd_pid().expect("busd runs");
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let mut bus_stopped = |what: &'static str, args: &[&str]| {
        let mut cmd = stack.bus();
        cmd.args(args);
        let line = error_line(what, cmd);
        lines.push((what, line));
    };
    bus_stopped("a busd that does not answer", &["containers", "runs"]);
    bus_stopped(
        "a call longer than --timeout",
        &["--timeout", "1s", "containers", "runs"],
    );
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();

    // A busd that dies under a call, before and after it answered anything.
    for (what, answer) in [
        ("a busd that closes before answering", false),
        ("a busd that goes away during a call", true),
    ] {
        let socket = work.path().join(format!("dying-{answer}.sock"));
        let dying = common::dying_busd(&socket, answer);
        let mut cmd = stack.bus();
        cmd.args(["--socket"])
            .arg(&socket)
            .args(["containers", "runs"]);
        lines.push((what, error_line(what, cmd)));
        dying.join().unwrap();
    }

    // The runner up, its engine (Podman's API service) not.
    stop_pid(stack.runner.engine.pid());
    let mut cmd = stack.bus();
    cmd.args(["containers", "run", "--", "true"]);
    lines.push(("the engine is down", error_line("the engine is down", cmd)));
    lines
}

#[test]
fn the_troubleshooting_page_lists_exactly_the_lines_bus_prints() {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/troubleshooting.md"
    ))
    .expect("docs/troubleshooting.md");
    let listed = listed(&page);
    let produced = produce();

    let mut problems = Vec::new();
    for (what, line) in &produced {
        let found: Vec<&Listed> = listed
            .iter()
            .filter(|l| matches(&l.pattern, line))
            .collect();
        if found.len() != 1 {
            problems.push(format!(
                "{what}: {} lines of the page match the line bus printed:\n  {line}",
                found.len()
            ));
        }
    }
    for entry in &listed {
        if !produced
            .iter()
            .any(|(_, line)| matches(&entry.pattern, line))
        {
            problems.push(format!(
                "docs/troubleshooting.md:{}: no test produced this line:\n  {}",
                entry.line, entry.pattern
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(listed.len() >= 10, "only {} lines listed", listed.len());
}
