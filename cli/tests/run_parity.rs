//! `bus containers run` as the service's documentation and docker users expect it: published
//! ports, the account's storage at a path of the caller's choosing, runs named and found by
//! name, the list filtered, and who a run is for. Everything on the real chain (Podman,
//! bus-runner, busd, the `bus` binary); see `testkit`.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Stack, Watched, bins, describe, expect_success, free_port, one_line_error};
use serde_json::Value;

fn json(stack: &Stack, args: &[&str]) -> Value {
    let out = stack.run(args);
    serde_json::from_str(&expect_success(&out))
        .unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

/// `GET path` on 127.0.0.1:`port`, the whole reply, or `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// The reply once `port` serves `path` with 200, failing after 30 s.
fn served(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(reply) = http_get(port, path).filter(|r| r.contains(" 200 ")) {
            return reply;
        }
        assert!(Instant::now() < deadline, "nothing serves on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A shell command for busybox's httpd serving `text` at `/index.html` on `port`.
fn serve(port: u16, text: &str) -> String {
    format!("mkdir -p /w && echo {text} > /w/index.html && exec httpd -f -p {port} -h /w")
}

#[test]
fn ports_publish_as_docker_does_on_a_default_runner() {
    let stack = Stack::start(bins());
    let host_port = free_port();
    let publish = format!("127.0.0.1:{host_port}:8080");
    let out = stack.run(&[
        "containers",
        "run",
        "-d",
        "-p",
        &publish,
        "--",
        "sh",
        "-c",
        &serve(8080, "hello"),
    ]);
    let id = expect_success(&out).trim().to_owned();
    assert!(id.starts_with("run_"), "{}", describe(&out));

    // Served on the host port asked for.
    assert!(served(host_port, "/index.html").ends_with("hello\n"));

    // get and runs show it, in text and JSON; the profile is the runner's ports profile.
    let run = json(&stack, &["containers", "get", &id, "-o", "json"]);
    assert_eq!(run["profile"], "service", "{run}");
    assert_eq!(
        run["ports"],
        serde_json::json!([{"host_ip": "127.0.0.1", "host_port": host_port,
                            "container_port": 8080, "protocol": "tcp"}])
    );
    let text = expect_success(&stack.run(&["containers", "get", &id]));
    assert!(
        text.contains(&format!("ports:     127.0.0.1:{host_port}->8080/tcp")),
        "{text}"
    );
    let runs = json(&stack, &["containers", "runs", "-o", "json"]);
    assert_eq!(runs[0]["ports"], run["ports"]);
    let table = expect_success(&stack.run(&["containers", "runs"]));
    assert!(table.lines().next().unwrap().ends_with("PORTS"), "{table}");
    assert!(
        table.contains(&format!("127.0.0.1:{host_port}->8080/tcp")),
        "{table}"
    );

    // Without a host port the engine picks one, and get shows it once the run runs.
    let out = stack.run(&[
        "containers",
        "run",
        "-d",
        "-p",
        "8081",
        "--",
        "sh",
        "-c",
        &serve(8081, "picked"),
    ]);
    let picked = expect_success(&out).trim().to_owned();
    let run = json(&stack, &["containers", "get", &picked, "-o", "json"]);
    let port = run["ports"][0]["host_port"]
        .as_u64()
        .unwrap_or_else(|| panic!("{run}"));
    assert!(served(port as u16, "/index.html").ends_with("picked\n"));

    // A port already in use: one line naming it, and no run left running.
    let out = stack.run(&[
        "containers",
        "run",
        "-d",
        "-p",
        &publish,
        "--",
        "sh",
        "-c",
        &serve(8080, "second"),
    ]);
    let line = one_line_error(&out);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(line.contains(&host_port.to_string()), "{line}");
    let live = json(
        &stack,
        &["containers", "runs", "--state", "running", "-o", "json"],
    );
    assert_eq!(live.as_array().unwrap().len(), 2, "{live}");

    // Bad values are refused by the CLI before anything is sent.
    for bad in ["0", "8080/sctp", "localhost:80:80", "1:2:3:4"] {
        let out = stack.run(&["containers", "run", "-d", "-p", bad, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("-p"),
            "{}",
            describe(&out)
        );
    }
    // A profile without a network refuses ports, naming the one that allows them.
    let out = stack.run(&[
        "containers",
        "run",
        "--profile",
        "codex",
        "-p",
        "80",
        "--",
        "true",
    ]);
    let line = one_line_error(&out);
    assert!(line.contains("allows them: agent, service"), "{line}");

    for id in [&id, &picked] {
        expect_success(&stack.run(&["containers", "stop", "--force", id]));
    }
}

#[test]
fn storage_mounts_at_the_path_and_subpath_asked_for() {
    let stack = Stack::start(bins());
    let out = stack.run(&[
        "containers",
        "run",
        "--mount-path",
        "/work",
        "--mount-subpath",
        "proj/a",
        "--",
        "sh",
        "-c",
        "echo kept > /work/note && pwd > /dev/null",
    ]);
    expect_success(&out);
    // Another run sees it at the storage root under that subpath.
    let out = stack.run(&[
        "containers",
        "run",
        "--mount-path",
        "/s",
        "--",
        "cat",
        "/s/proj/a/note",
    ]);
    assert_eq!(expect_success(&out), "kept\n");
    let run = json(
        &stack,
        &["containers", "runs", "--limit", "1", "-o", "json"],
    );
    assert_eq!(
        run[0]["storage"],
        serde_json::json!({"mount_path": "/s", "subpath": null})
    );

    // Paths that cannot be mounted: one line each, and nothing runs.
    let before = stack.runs().len();
    for (args, says) in [
        (&["--mount-path", "data"][..], "absolute"),
        (&["--mount-path", "/etc/app"][..], "inside /etc"),
        (
            &["--mount-path", "/d", "--mount-subpath", "../up"][..],
            "..",
        ),
        (
            &["--mount-path", "/d", "--mount-subpath", "/abs"][..],
            "relative",
        ),
    ] {
        let mut cmd = vec!["containers", "run"];
        cmd.extend_from_slice(args);
        cmd.extend(["--", "true"]);
        let out = stack.run(&cmd);
        let line = one_line_error(&out);
        assert!(line.contains(says), "{args:?}: {line}");
    }
    assert_eq!(stack.runs().len(), before, "nothing was started");
    // A subpath alone is a usage error.
    let out = stack.run(&["containers", "run", "--mount-subpath", "x", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn runs_are_addressed_by_name_wherever_an_id_is() {
    let stack = Stack::start(bins());
    let id = expect_success(&stack.run(&[
        "containers",
        "run",
        "-d",
        "--name",
        "web",
        "--",
        "sh",
        "-c",
        "echo up; sleep 60",
    ]))
    .trim()
    .to_owned();

    // get, exec, logs and wait take the name.
    let run = json(&stack, &["containers", "get", "web", "-o", "json"]);
    assert_eq!(
        (run["id"].as_str(), run["name"].as_str()),
        (Some(&*id), Some("web"))
    );
    let out = stack.run(&["containers", "exec", "web", "--", "echo", "inside"]);
    assert_eq!(expect_success(&out), "inside\n");
    let out = stack.run(&["containers", "logs", "web"]);
    assert_eq!(expect_success(&out), "up\n");

    // The table has a NAME column.
    let table = expect_success(&stack.run(&["containers", "runs"]));
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("ID  "), "{table}");
    assert!(
        table.lines().any(|l| l
            .split_whitespace()
            .take(3)
            .eq([id.as_str(), "web", "running"])),
        "{table}"
    );

    // A second live run cannot take the name: one line naming the run that has it.
    let before = stack.runs().len();
    let out = stack.run(&["containers", "run", "-d", "--name", "web", "--", "true"]);
    let line = one_line_error(&out);
    assert!(line.contains(&id) && line.contains("\"web\""), "{line}");
    assert_eq!(stack.runs().len(), before, "nothing was started");
    // Names cannot pass for ids.
    let out = stack.run(&["containers", "run", "--name", "run_x", "--", "true"]);
    assert!(one_line_error(&out).contains("run_"), "{}", describe(&out));

    // stop by name; then the name is free again.
    expect_success(&stack.run(&["containers", "stop", "--force", "web"]));
    let out = stack.run(&["containers", "run", "--name", "web", "--", "echo", "again"]);
    assert_eq!(expect_success(&out), "again\n");
    // Two ended runs with the name: it is ambiguous, and the error lists both ids.
    let out = stack.run(&["containers", "get", "web"]);
    let line = one_line_error(&out);
    assert!(
        line.contains(&id) && line.contains("matches 2 ended runs"),
        "{line}"
    );
    // delete by name works once it stands for one run.
    expect_success(&stack.run(&["containers", "delete", &id]));
    let run = json(&stack, &["containers", "get", "web", "-o", "json"]);
    assert_ne!(run["id"].as_str(), Some(&*id));
    expect_success(&stack.run(&["containers", "delete", "web"]));
    let out = stack.run(&["containers", "get", "web"]);
    assert!(
        one_line_error(&out).contains("no run web"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_list_filters_by_state_name_participant_and_role_and_stops_at_a_limit() {
    let stack = Stack::start(bins());
    let run = |args: &[&str]| {
        let mut cmd = vec!["containers", "run"];
        cmd.extend_from_slice(args);
        expect_success(&stack.run(&cmd)).trim().to_owned()
    };
    run(&["--participant", "ann", "--role", "agent", "--", "true"]);
    run(&["--participant", "bob", "--role", "agent", "--", "true"]);
    let live = run(&[
        "-d",
        "--participant",
        "ann",
        "--name",
        "svc",
        "--",
        "sleep",
        "60",
    ]);

    let ids = |args: &[&str]| -> Vec<String> {
        let mut cmd = vec!["containers", "runs", "-o", "json"];
        cmd.extend_from_slice(args);
        json(&stack, &cmd)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = ids(&[]);
    assert_eq!(all.len(), 3);
    assert_eq!(ids(&["--state", "running"]), [live.as_str()]);
    assert_eq!(ids(&["--state", "exited,stopped"]), all[1..]);
    // State names as the JSON output writes them, `timed_out` included.
    assert!(ids(&["--state", "timed_out,failed"]).is_empty());
    assert_eq!(
        ids(&["--participant", "ann"]),
        [all[0].clone(), all[2].clone()]
    );
    assert_eq!(ids(&["--role", "agent"]), all[1..]);
    assert_eq!(
        ids(&["--participant", "ann", "--role", "agent"]),
        [all[2].clone()]
    );
    assert_eq!(ids(&["--name", "svc"]), [live.as_str()]);
    assert_eq!(ids(&["--limit", "2"]), all[..2]);
    // -q prints ids only, filtered too.
    let quiet = expect_success(&stack.run(&["containers", "runs", "-q", "--role", "agent"]));
    assert_eq!(quiet.lines().collect::<Vec<_>>(), all[1..]);

    // Shown by get.
    let run = json(&stack, &["containers", "get", &all[2], "-o", "json"]);
    assert_eq!(
        (run["participant"].as_str(), run["role"].as_str()),
        (Some("ann"), Some("agent"))
    );
    let text = expect_success(&stack.run(&["containers", "get", &all[2]]));
    assert!(
        text.contains("for:       ann") && text.contains("role:      agent"),
        "{text}"
    );

    // Bad values: one line each, nothing started.
    let out = stack.run(&["containers", "run", "--role", "Admin!", "--", "true"]);
    assert!(
        one_line_error(&out).contains("role \"Admin!\""),
        "{}",
        describe(&out)
    );
    let out = stack.run(&["containers", "runs", "--state", "sleeping"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = stack.run(&["containers", "runs", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(ids(&[]).len(), 3, "nothing was started");
    expect_success(&stack.run(&["containers", "stop", "--force", &live]));
}

/// `run` pulls a registry image it lacks (docker's default), with `--credentials-file` for a
/// private registry; `--pull never` refuses instead, and `--pull always` pulls again.
#[test]
fn run_pulls_a_missing_image_with_the_credentials_given() {
    use common::registry::{ImageCleanup, Registry};
    use common::{Podman, Runner};
    let registry = Registry::start();
    let engine = Podman::builder()
        .env("CONTAINERS_REGISTRIES_CONF", registry.registries_conf())
        .start();
    let stack = Stack::on(Runner::start_on(bins(), engine, None, true));
    // Runs need only the container scopes, pulls on run included; the image is made with
    // the image scopes.
    stack.write_token(&stack.runner.token("alice", common::ALL_SCOPES));
    let images = stack.token_file(
        "images-token",
        &stack
            .runner
            .token("alice", "image:read image:write image:build"),
    );
    let images = images.to_str().unwrap();
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let credentials = registry.credentials_file(stack.home.path());
    let credentials = credentials.to_str().unwrap();
    let reference = format!("{}/alice/greet:1", registry.host);

    // An image in the registry, and not on the runner.
    let dir = tempfile::tempdir_in(stack.home.path()).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM localhost/busybox\nRUN echo pulled-on-run > /msg\nCMD [\"cat\", \"/msg\"]\n",
    )
    .unwrap();
    let context = dir.path().to_str().unwrap();
    let with_images = |args: &[&str]| {
        let mut cmd = vec!["--token-file", images];
        cmd.extend_from_slice(args);
        expect_success(&stack.run(&cmd))
    };
    let build = with_images(&["builds", "create", "-d", "-t", &reference, context]);
    with_images(&["builds", "logs", "-f", build.trim()]);
    let image: Value = serde_json::from_str(&with_images(&[
        "images", "inspect", &reference, "-o", "json",
    ]))
    .unwrap();
    cleanup.add(image["id"].as_str().unwrap());
    with_images(&[
        "images",
        "push",
        &reference,
        "--credentials-file",
        credentials,
    ]);
    with_images(&["images", "rm", &reference]);
    let mut outputs = Vec::new();

    // Never: refused, saying how to get it; nothing recorded.
    let before = stack.runs().len();
    let out = stack.run(&[
        "containers",
        "run",
        "--pull",
        "never",
        "--image",
        &reference,
    ]);
    let line = one_line_error(&out);
    assert!(
        line.contains("is not on the runner") && line.contains("--pull missing"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(125));
    outputs.push(out);
    // Missing (the default), without credentials: the registry's refusal, saying how to
    // pass them.
    let out = stack.run(&["containers", "run", "--image", &reference]);
    let line = one_line_error(&out);
    assert!(line.contains("--credentials-file"), "{line}");
    outputs.push(out);
    assert_eq!(stack.runs().len(), before, "nothing was started");

    // With them: pulled, then run.
    let out = stack.run(&[
        "containers",
        "run",
        "--image",
        &reference,
        "--credentials-file",
        credentials,
    ]);
    assert_eq!(expect_success(&out), "pulled-on-run\n");
    outputs.push(out);
    // Now on the runner: no pull needed, and none made (no credentials needed).
    let out = stack.run(&[
        "containers",
        "run",
        "--pull",
        "never",
        "--image",
        &reference,
    ]);
    assert_eq!(expect_success(&out), "pulled-on-run\n");
    // Always pulls again: without credentials the registry refuses.
    let out = stack.run(&[
        "containers",
        "run",
        "--pull",
        "always",
        "--image",
        &reference,
    ]);
    assert!(
        one_line_error(&out).contains("--credentials-file"),
        "{}",
        describe(&out)
    );
    outputs.push(out);

    // The password is in no log and no output.
    let runner_log =
        std::fs::read_to_string(stack.runner.state_dir.path().join("runner.log")).unwrap();
    assert!(runner_log.contains("pull done"), "{runner_log}");
    assert!(!runner_log.contains(&registry.password), "runner log");
    assert!(!stack.busd_log().contains(&registry.password), "busd log");
    for out in &outputs {
        assert!(
            !describe(out).contains(&registry.password),
            "command output"
        );
    }
    let db = std::fs::read(stack.runner.state_dir.path().join("runs.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(&registry.password),
        "the run store"
    );
}

/// A command for busybox that counts its starts in the storage file `count` and serves on
/// `port` from the `ready_at`th start on, failing before it.
fn flaky_server(count: &str, port: u16, ready_at: u32) -> String {
    format!(
        "n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; \
         echo start $n; [ $n -ge {ready_at} ] || exit 1; {}",
        serve(port, "service")
    )
}

#[test]
fn a_service_returns_once_it_serves_and_is_started_again_when_it_fails() {
    let stack = Stack::start(bins());
    let unique = format!("svc-{}", free_port());
    let host_port = free_port();
    let publish = format!("127.0.0.1:{host_port}:8080");

    // Fails on its first start, serves on its second: bus returns once it serves, with its URL.
    let out = stack.run(&[
        "containers",
        "run",
        "--service",
        "--name",
        "api",
        "-p",
        &publish,
        "--mount-path",
        "/s",
        "--mount-subpath",
        &unique,
        "--",
        "sh",
        "-c",
        &flaky_server("/s/count", 8080, 2),
    ]);
    assert_eq!(
        expect_success(&out),
        format!("http://127.0.0.1:{host_port}\n")
    );
    // Ready means ready: it answers at once.
    let reply = http_get(host_port, "/index.html").expect("the service answers at once");
    assert!(reply.ends_with("service\n"), "{reply}");
    let run = json(&stack, &["containers", "get", "api", "-o", "json"]);
    assert_eq!(
        (
            run["service"].as_bool(),
            run["restarts"].as_u64(),
            run["state"].as_str()
        ),
        (Some(true), Some(1), Some("running")),
        "{run}"
    );
    let text = expect_success(&stack.run(&["containers", "get", "api"]));
    assert!(
        text.contains("service:   yes, started again once after it failed"),
        "{text}"
    );
    // Both starts' output is the run's, in order.
    let logs = expect_success(&stack.run(&["containers", "logs", "api"]));
    assert_eq!(logs, "start 1\nstart 2\n");
    expect_success(&stack.run(&["containers", "stop", "api"]));
    let run = json(&stack, &["containers", "get", "api", "-o", "json"]);
    assert_eq!(
        run["state"], "stopped",
        "a stopped service stays stopped: {run}"
    );

    // One that never serves: started again 3 times, then bus fails with its last output.
    let out = stack.run(&[
        "containers",
        "run",
        "--service",
        "--name",
        "broken",
        "-p",
        "8080",
        "--",
        "sh",
        "-c",
        "echo boom >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("boom").count(), 4, "{stderr}");
    let line = stderr.lines().last().unwrap();
    assert!(
        line.contains("exited with code 3 before it was ready")
            && line.contains("bus containers logs"),
        "{line}"
    );
    let run = json(&stack, &["containers", "get", "broken", "-o", "json"]);
    assert_eq!(
        (run["restarts"].as_u64(), run["exit_code"].as_i64()),
        (Some(3), Some(3)),
        "{run}"
    );

    // A service needs a port, and has no timeout of its own: usage errors.
    for args in [
        &["--service", "--", "true"][..],
        &["--service", "-p", "80", "--run-timeout", "5", "--", "true"][..],
        &["--service", "-d", "-p", "80", "--", "true"][..],
    ] {
        let mut cmd = vec!["containers", "run"];
        cmd.extend_from_slice(args);
        let out = stack.run(&cmd);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
}

/// Sends `signal` to the process `pid`.
fn send(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
}

#[test]
fn interrupting_a_followed_run_stops_it_and_a_second_interrupt_kills_it() {
    use rustix::process::Signal;
    let stack = Stack::start(bins());
    let follow = |name: &str, script: &str| {
        let mut cmd = stack.bus();
        cmd.args([
            "containers",
            "run",
            "--name",
            name,
            "--",
            "sh",
            "-c",
            script,
        ]);
        let run = Watched::spawn(cmd);
        run.reached(1);
        run
    };
    let loop_ = "echo started; while :; do sleep 0.1; done";

    // Ctrl-C: the run is stopped, not left running; its command ignores SIGTERM, so the
    // second Ctrl-C kills it rather than waiting out the grace period.
    let run = follow("interrupted", &format!("trap '' TERM; {loop_}"));
    send(run.pid(), Signal::INT);
    // Signals sent together may arrive as one.
    std::thread::sleep(Duration::from_secs(1));
    send(run.pid(), Signal::INT);
    let (code, out, err) = run.finish(Duration::from_secs(60));
    let id = json(&stack, &["containers", "get", "interrupted", "-o", "json"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(code, Some(130), "as a process killed by SIGINT: {err}");
    assert_eq!(out, "started\n");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!(
                "bus: stopping run {id} (SIGTERM, SIGKILL after the grace period); interrupt \
                 again to kill it now"
            ),
            format!("bus: killing run {id}"),
            format!("bus: run {id} stopped"),
        ]
    );
    let record = json(&stack, &["containers", "get", &id, "-o", "json"]);
    assert_eq!(record["state"], "stopped", "{record}");

    // SIGTERM (a service manager, `kill`): stopped the same way, exit 128 + 15.
    let run = follow("terminated", &format!("trap 'exit 0' TERM; {loop_}"));
    send(run.pid(), Signal::TERM);
    let (code, out, err) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(143), "{err}");
    assert_eq!(out, "started\n");
    assert_eq!(err.lines().count(), 2, "stopping, stopped: {err}");
    let record = json(&stack, &["containers", "get", "terminated", "-o", "json"]);
    assert_eq!(record["state"], "stopped", "{record}");
}

#[test]
fn rm_deletes_the_run_once_it_has_ended_and_been_printed_or_with_d_once_it_ends() {
    let stack = Stack::start(bins());
    let names = |stack: &Stack| -> Vec<String> {
        json(stack, &["containers", "runs", "-o", "json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let kept = stack.run(&["containers", "run", "--name", "kept", "--", "true"]);
    expect_success(&kept);

    // Followed: the output, the command's code, then no run.
    let out = stack.run(&[
        "containers",
        "run",
        "--rm",
        "--name",
        "gone",
        "--",
        "sh",
        "-c",
        "echo bye; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // As one JSON result.
    let out = stack.run(&[
        "containers",
        "run",
        "--rm",
        "-o",
        "json",
        "--name",
        "gone-json",
        "--",
        "echo",
        "hi",
    ]);
    let result: Value = serde_json::from_str(&expect_success(&out)).unwrap();
    assert_eq!(result["stdout"], "hi\n", "{result}");
    // Attached to stdin.
    let mut cmd = stack.bus();
    cmd.args([
        "containers",
        "run",
        "--rm",
        "-i",
        "--name",
        "gone-i",
        "--",
        "cat",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "typed\n", "{out:?}");
    assert!(out.status.success(), "{out:?}");

    assert_eq!(names(&stack), ["kept"], "only the run without --rm is left");

    // With -d the runner deletes it once it ends, as docker's daemon does; until then it is
    // there to exec into.
    let out = stack.run(&[
        "containers",
        "run",
        "--rm",
        "-d",
        "--name",
        "gone-d",
        "--",
        "sleep",
        "1",
    ]);
    let id = expect_success(&out).trim().to_owned();
    let out = stack.run(&["containers", "exec", &id, "--", "echo", "still here"]);
    assert_eq!(expect_success(&out), "still here\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.run(&["containers", "get", &id]).status.code() != Some(5) {
        assert!(
            Instant::now() < deadline,
            "run {id} was not deleted once it ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(names(&stack), ["kept"], "only the run without --rm is left");
}

/// Runs `command` as `| head -1` would: reads one line of its output, then closes the pipe;
/// returns the line and how the command ended.
fn first_line_then_closed(command: &mut std::process::Command) -> (String, std::process::Output) {
    use std::io::BufRead as _;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    (first, child.wait_with_output().unwrap())
}

#[test]
fn a_closed_output_ends_the_followed_run_as_a_closed_pipe_ends_a_command() {
    use std::os::unix::process::ExitStatusExt as _;
    let stack = Stack::start(bins());
    let mut run = stack.bus();
    run.args(["containers", "run", "--name", "piped", "--", "sh", "-c"])
        .arg("while :; do echo y; done");
    let (first, out) = first_line_then_closed(&mut run);
    assert_eq!(first, "y\n");
    assert_eq!(out.status.signal(), Some(13), "killed by SIGPIPE: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // Not left printing into the runner's store until its timeout.
    let run = json(&stack, &["containers", "get", "piped", "-o", "json"]);
    assert_eq!(run["state"], "stopped", "{run}");
}

/// `-e KEY` passes on the value KEY has in bus' environment, and nothing when it has none, as
/// `docker run -e KEY` does: a secret reaches the run without being on a command line. An
/// `--env-file` adds its lines, `-e` winning.
#[test]
fn env_without_a_value_passes_on_the_one_from_here() {
    let stack = Stack::start(bins());
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# from a file\nFROM_FILE=f\nGIVEN=overridden\n").unwrap();
    for verb in ["run", "exec"] {
        let mut args = vec!["containers", verb];
        let sleeper;
        if verb == "exec" {
            let out = stack.run(&["containers", "run", "-d", "--", "sleep", "60"]);
            sleeper = expect_success(&out).trim().to_owned();
            args.push(&sleeper);
        }
        args.extend(["-e", "FROM_HERE", "-e", "NOT_HERE", "-e", "GIVEN=1"]);
        args.extend(["--env-file", env_file.to_str().unwrap(), "--"]);
        args.extend([
            "sh",
            "-c",
            "echo \"$FROM_HERE ${NOT_HERE-unset} $GIVEN $FROM_FILE\"",
        ]);
        let out = stack
            .bus()
            .env("FROM_HERE", "s3cret")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(expect_success(&out), "s3cret unset 1 f\n", "{verb}");
    }
}

/// `run -d -i` then `attach`, as docker users start a run and come back to it: attach gets the
/// run's output from its first byte, passes stdin to its command and exits with its exit
/// code; on a run that has ended it prints the output and the code.
#[test]
fn attach_takes_up_a_detached_run_s_stdin_and_exits_with_its_code() {
    let stack = Stack::start(bins());
    let out = stack.run(&[
        "containers",
        "run",
        "-d",
        "-i",
        "--",
        "sh",
        "-c",
        "echo ready; read x; echo \"got $x\"; exit 4",
    ]);
    let id = expect_success(&out).trim().to_owned();
    let mut attach = stack.bus();
    attach
        .args(["containers", "attach", &id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = attach.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\ngot hello\n");

    // Ended: the output and the exit code, whatever stdin holds.
    let out = stack.run(&["containers", "attach", "--no-stdin", &id]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ready\ngot hello\n");

    // As `| head -1` on a run that has ended: the closed pipe ends bus by SIGPIPE, not with
    // the run's exit code (0) as if everything had been printed.
    use std::os::unix::process::ExitStatusExt as _;
    let out = stack.run(&["containers", "run", "-d", "--", "seq", "1", "200000"]);
    let many = expect_success(&out).trim().to_owned();
    expect_success(&stack.run(&["containers", "wait", &many]));
    let mut attach = stack.bus();
    attach.args(["containers", "attach", &many]);
    let (first, out) = first_line_then_closed(&mut attach);
    assert_eq!(first, "1\n");
    assert_eq!(out.status.signal(), Some(13), "killed by SIGPIPE: {out:?}");
}

#[test]
fn stop_and_rm_take_docker_s_flags() {
    let stack = Stack::start(bins());
    // SIGTERM ends this command with 42; only SIGKILL ends it with 137.
    let script = "trap 'exit 42' TERM; while :; do sleep 0.1; done";
    let start = || {
        let out = stack.run(&["containers", "run", "-d", "--", "sh", "-c", script]);
        expect_success(&out).trim().to_owned()
    };
    let ended = |id: &str| {
        let run = json(&stack, &["containers", "get", id, "-o", "json"]);
        (run["state"].clone(), run["exit_code"].clone())
    };
    // `stop -t N` (`--time N`) is `--grace N`.
    let id = start();
    expect_success(&stack.run(&["containers", "stop", "--time", "5", &id]));
    assert_eq!(ended(&id), ("stopped".into(), 42.into()));
    // `-t 0` gives no grace: SIGKILL at once, not the runner's default grace.
    let id = start();
    expect_success(&stack.run(&["containers", "stop", "-t", "0", &id]));
    assert_eq!(ended(&id), ("stopped".into(), 137.into()));
    // `rm -f` deletes a run that is still running.
    let id = start();
    assert_eq!(
        expect_success(&stack.run(&["containers", "rm", "-f", &id])).trim(),
        id
    );
    let line = one_line_error(&stack.run(&["containers", "get", &id]));
    assert!(line.contains(&format!("no run {id}")), "{line}");
}
