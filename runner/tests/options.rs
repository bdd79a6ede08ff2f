//! Run options against a real Podman engine: memory limits and OOM kills, output limits, a
//! terminal, published ports, and each account's persistent storage.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{Method, StatusCode};
use bus_api::{LogFrame, RunState, Stream};
use bus_runner::config::{Config, Network};
use common::{ALL, Podman, Reply, call, create_run, follow, get_run, runner, runner_with};
use serde_json::{Value, json};

const RUNS: &str = "/api/v1/containers/runs";

/// Removes the runs' containers and the accounts' storage volumes a test made, even when it
/// fails.
struct Cleanup<'a> {
    podman: &'a Podman,
    runs: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.runs {
            self.podman.remove_container(&format!("bus-{id}"));
        }
        for volume in &self.volumes {
            let _ = Command::new("podman")
                .arg("--url")
                .arg(self.podman.url())
                .args(["volume", "rm", "--force", volume])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// An account id no other test (or concurrent test run) uses, so storage volumes never mix.
fn account(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

async fn create(app: &Router, token: &str, body: Value) -> Value {
    create_run(app, token, body).await
}

/// Follows the run's logs to the end; returns the frames and the final record.
async fn finish(app: &Router, token: &str, id: &str) -> (Vec<LogFrame>, Value) {
    let got = follow(app, token, id).await;
    let run = get_run(app, token, id).await.json();
    (got, run)
}

fn stdout_text(frames: &[LogFrame]) -> String {
    let mut text = Vec::new();
    for frame in frames {
        if let LogFrame::Output {
            stream: Stream::Stdout,
            ..
        } = frame
        {
            text.extend(frame.output_bytes().unwrap().unwrap());
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn problem(reply: &Reply) -> (String, String) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let code = reply.problem_code();
    (code, reply.json()["detail"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_memory_limit_fails_as_oom_killed() {
    let podman = Podman::start();
    let mut config = Config::builtin();
    let mut tight = config.profiles["codex"].clone();
    tight.memory_mb = 16;
    config.profiles.insert("tight".into(), tight);
    let (_dir, keys, app) = runner_with(&podman.url(), config);
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));

    let run = create(
        &app,
        &alice,
        json!({"profile": "tight", "argv": ["sh", "-c", "x=a; while true; do x=$x$x; done"]}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let _cleanup = Cleanup {
        podman: &podman,
        runs: vec![id.clone()],
        volumes: vec![],
    };
    assert_eq!(run["memory_mb"], 16);
    let (frames, run) = finish(&app, &alice, &id).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run["exit_code"], 137, "{run}");
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("out of memory (OOM-killed)") && reason.contains("16 MiB"),
        "{reason}"
    );
    match frames.last() {
        Some(LogFrame::Exit { state, reason, .. }) => {
            assert_eq!(*state, RunState::Failed);
            assert!(reason.as_deref().unwrap().contains("OOM-killed"));
        }
        other => panic!("expected the exit frame, got {other:?}"),
    }

    // The default profile's limit (512 MiB) leaves an ordinary run alone.
    let run = create(&app, &alice, json!({"argv": ["sh", "-c", "exit 0"]})).await;
    let id = run["id"].as_str().unwrap();
    assert_eq!(run["memory_mb"], 512);
    let (_, run) = finish(&app, &alice, id).await;
    assert_eq!(
        (&run["state"], &run["exit_code"]),
        (&json!("exited"), &json!(0))
    );
}

/// A command that writes without end is killed once the runner has stored the profile's
/// `max_output_mb`, both streams counted; what it wrote up to the limit is kept to the byte,
/// and a service that reached it is not started again.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_output_limit_is_killed_keeping_its_output_up_to_the_limit() {
    let podman = Podman::start();
    let mut config = Config::builtin();
    for (name, from) in [("chatty", "codex"), ("chatty-service", "service")] {
        let mut profile = config.profiles[from].clone();
        profile.max_output_mb = 1;
        config.profiles.insert(name.into(), profile);
    }
    let (_dir, keys, app) = runner_with(&podman.url(), config);
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup {
        podman: &podman,
        runs: vec![],
        volumes: vec![],
    };

    let run = create(
        &app,
        &alice,
        json!({"profile": "chatty", "argv": ["sh", "-c", "yes err >&2 & yes out"]}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_owned();
    cleanup.runs.push(id.clone());
    assert_eq!(run["max_output_mb"], 1);
    let (frames, run) = finish(&app, &alice, &id).await;
    assert_eq!(
        (&run["state"], &run["exit_code"]),
        (&json!("failed"), &json!(137)),
        "{run}"
    );
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("output limit reached") && reason.contains("1 MiB"),
        "{reason}"
    );
    let mut stored = [0usize; 2];
    for frame in &frames {
        if let LogFrame::Output { stream, .. } = frame {
            stored[usize::from(*stream == Stream::Stderr)] +=
                frame.output_bytes().unwrap().unwrap().len();
        }
    }
    assert_eq!(stored[0] + stored[1], 1024 * 1024, "{stored:?}");
    assert!(
        stored[0] > 0 && stored[1] > 0,
        "both streams count: {stored:?}"
    );

    let run = create(
        &app,
        &alice,
        json!({"profile": "chatty-service", "service": true, "argv": ["yes"],
               "ports": [{"container_port": 8080}]}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_owned();
    cleanup.runs.push(id.clone());
    let (_, run) = finish(&app, &alice, &id).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run.get("restarts"), None, "not started again: {run}");

    // A detached exec's captured output has the run's limit too.
    let run = create(
        &app,
        &alice,
        json!({"profile": "chatty", "argv": ["sleep", "60"]}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_owned();
    cleanup.runs.push(id.clone());
    let reply = call(
        &app,
        Method::POST,
        &format!("{RUNS}/{id}/execs"),
        Some(&alice),
        Some(json!({"command": ["yes"]})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.json());
    let exec = reply.json()["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exec = loop {
        let exec = call(
            &app,
            Method::GET,
            &format!("/api/v1/containers/execs/{exec}"),
            Some(&alice),
            None,
        )
        .await
        .json();
        if exec["state"] != "running" {
            break exec;
        }
        assert!(Instant::now() < deadline, "the exec still runs: {exec}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (&exec["state"], &exec["exit_code"], &exec["signal"]),
        (&json!("exited"), &json!(137), &json!(9)),
        "{exec}"
    );
    assert_eq!(exec["output_bytes"], 1024 * 1024, "{exec}");
    assert!(
        exec["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("output limit reached")),
        "{exec}"
    );

    // The built-in profiles keep a gigabyte.
    let run = create(&app, &alice, json!({"argv": ["true"]})).await;
    cleanup.runs.push(run["id"].as_str().unwrap().to_owned());
    assert_eq!(run["max_output_mb"], 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tty_merges_stderr_into_stdout() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));

    let run = create(
        &app,
        &alice,
        json!({"tty": true, "argv": ["sh", "-c", "echo out; echo err >&2; [ -t 1 ] && echo tty"]}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let _cleanup = Cleanup {
        podman: &podman,
        runs: vec![id.clone()],
        volumes: vec![],
    };
    assert_eq!(run["tty"], true);
    let (frames, run) = finish(&app, &alice, &id).await;
    assert_eq!(
        (&run["state"], &run["exit_code"]),
        (&json!("exited"), &json!(0))
    );
    assert!(
        frames.iter().all(|f| !matches!(
            f,
            LogFrame::Output {
                stream: Stream::Stderr,
                ..
            }
        )),
        "{frames:?}"
    );
    let text = stdout_text(&frames).replace("\r\n", "\n");
    assert_eq!(text, "out\nerr\ntty\n");

    // Without one, the streams stay apart.
    let run = create(
        &app,
        &alice,
        json!({"argv": ["sh", "-c", "[ -t 1 ] || echo plain"]}),
    )
    .await;
    let (frames, run) = finish(&app, &alice, run["id"].as_str().unwrap()).await;
    assert!(run.get("tty").is_none(), "{run}");
    assert_eq!(stdout_text(&frames), "plain\n");
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

#[tokio::test(flavor = "multi_thread")]
async fn ports_are_published_on_loopback_only_where_the_profile_allows_a_network() {
    let podman = Podman::start();
    let mut config = Config::builtin();
    let mut web = config.profiles["codex"].clone();
    web.network = Network::Bridge;
    config.profiles.insert("web".into(), web);
    let (_dir, keys, app) = runner_with(&podman.url(), config);
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));

    // Under network "none" ports are refused, naming the profiles that allow them.
    let serve = "mkdir -p /w && echo hello > /w/index.html && exec httpd -f -p 8080 -h /w";
    let reply = call(
        &app,
        Method::POST,
        RUNS,
        Some(&alice),
        Some(json!({"profile": "codex", "argv": ["sh", "-c", serve],
                    "ports": [{"container_port": 8080}]})),
    )
    .await;
    let (code, detail) = problem(&reply);
    assert_eq!(code, "invalid_request");
    assert!(
        detail.contains("the profile \"codex\" has network \"none\"") && detail.contains("web"),
        "{detail}"
    );

    let run = create(
        &app,
        &alice,
        json!({"profile": "web", "argv": ["sh", "-c", serve], "ports": [{"container_port": 8080}],
               "timeout_seconds": 60}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let _cleanup = Cleanup {
        podman: &podman,
        runs: vec![id.clone()],
        volumes: vec![],
    };
    assert_eq!(
        run["ports"],
        json!([{"container_port": 8080, "protocol": "tcp", "host_ip": "127.0.0.1"}])
    );

    // Once running, the record shows the host port the engine picked; it serves there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let host_port = loop {
        let run = get_run(&app, &alice, &id).await.json();
        if let Some(port) = run["ports"][0]["host_port"].as_u64() {
            assert_eq!(run["state"], "running", "{run}");
            break port as u16;
        }
        assert!(Instant::now() < deadline, "no host port: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        if let Some(reply) = http_get(host_port, "/index.html").filter(|r| r.contains(" 200 ")) {
            break reply;
        }
        assert!(Instant::now() < deadline, "nothing serves on {host_port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(page.ends_with("hello\n"), "{page}");

    let stopped = call(
        &app,
        Method::POST,
        &format!("{RUNS}/{id}/stop"),
        Some(&alice),
        Some(json!({"force": true})),
    )
    .await
    .json();
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(stopped["ports"][0]["host_port"], host_port);
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_persists_across_runs_of_one_account_only() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let (a, b) = (account("store-a"), account("store-b"));
    let alice = keys.mint(&a, &ALL, Duration::from_secs(300));
    let bob = keys.mint(&b, &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup {
        podman: &podman,
        runs: vec![],
        volumes: vec![
            bus_runner::runs::storage::volume_name(&a),
            bus_runner::runs::storage::volume_name(&b),
        ],
    };
    let mut run = async |token: &str, body: Value| {
        let created = create(&app, token, body).await;
        let id = created["id"].as_str().unwrap().to_owned();
        cleanup.runs.push(id.clone());
        let (frames, run) = finish(&app, token, &id).await;
        (stdout_text(&frames), run)
    };

    // The agent profile mounts the account's storage at /data and says so in AGENT_HOME.
    let (out, first) = run(
        &alice,
        json!({"profile": "agent", "argv": ["sh", "-c", "echo $AGENT_HOME; echo kept > /data/f"]}),
    )
    .await;
    assert_eq!(
        (out.as_str(), &first["exit_code"]),
        ("/data\n", &json!(0)),
        "{first}"
    );
    assert_eq!(first["storage"], json!({"mount_path": "/data"}));

    let (out, _) = run(
        &alice,
        json!({"profile": "agent", "argv": ["cat", "/data/f"]}),
    )
    .await;
    assert_eq!(out, "kept\n");

    // Another account gets a storage of its own.
    let (out, other) = run(
        &bob,
        json!({"profile": "agent", "argv": ["sh", "-c", "ls -A /data; cat /data/f"]}),
    )
    .await;
    assert_eq!(out, "");
    assert_eq!(other["exit_code"], 1, "{other}");

    // A subpath mounts a directory inside the storage (created on first use) ...
    let (_, sub) = run(
        &alice,
        json!({"storage": {"mount_path": "/work", "subpath": "projects/p1"},
               "argv": ["sh", "-c", "echo inside > /work/g; ls -A /work"]}),
    )
    .await;
    assert_eq!(sub["exit_code"], 0, "{sub}");
    let (out, _) = run(
        &alice,
        json!({"profile": "agent", "argv": ["cat", "/data/projects/p1/g"]}),
    )
    .await;
    assert_eq!(out, "inside\n");

    // ... but never through a symlink a run planted there.
    let (_, planted) = run(
        &alice,
        json!({"profile": "agent", "argv": ["ln", "-s", "/", "/data/escape"]}),
    )
    .await;
    assert_eq!(planted["exit_code"], 0, "{planted}");
    let (out, refused) = run(
        &alice,
        json!({"storage": {"mount_path": "/work", "subpath": "escape/etc"},
               "argv": ["ls", "/work"]}),
    )
    .await;
    assert_eq!(out, "");
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("\"escape\" in the storage is a symlink or a file"),
        "{refused}"
    );

    // Paths are checked before anything runs.
    for (storage, want) in [
        (
            json!({"mount_path": "/data", "subpath": "../x"}),
            "subpath must not contain \"..\"",
        ),
        (
            json!({"mount_path": "data"}),
            "mount_path must be an absolute path",
        ),
    ] {
        let reply = call(
            &app,
            Method::POST,
            RUNS,
            Some(&alice),
            Some(json!({"storage": storage, "argv": ["true"]})),
        )
        .await;
        let (code, detail) = problem(&reply);
        assert_eq!(code, "invalid_request");
        assert!(detail.contains(want), "{detail}");
    }
}

/// A service has no timeout of its own: the plan's run-seconds left in the period bound it
/// (here 2), where a plain run gets the profile's.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_runs_until_the_plan_s_run_seconds_are_used() {
    let podman = Podman::start();
    let mut config = Config::builtin();
    config
        .plans
        .get_mut("local")
        .unwrap()
        .run_seconds_per_period = Some(2);
    let (_dir, keys, app) = runner_with(&podman.url(), config);
    let alice = keys.mint(&account("svc"), &ALL, Duration::from_secs(300));
    let run = create(
        &app,
        &alice,
        json!({"service": true, "argv": ["sh", "-c", "exec httpd -f -p 8080"],
               "ports": [{"container_port": 8080}]}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let _cleanup = Cleanup {
        podman: &podman,
        runs: vec![id.clone()],
        volumes: vec![],
    };
    assert_eq!(
        (run["service"].as_bool(), run["profile"].as_str()),
        (Some(true), Some("service"))
    );
    let (_, run) = finish(&app, &alice, &id).await;
    assert_eq!(run["state"], "timed_out", "{run}");
    assert!(
        run["reason"].as_str().unwrap().contains("timeout of 2 s"),
        "{run}"
    );

    // A service without a TCP port, or with a timeout, is refused.
    for body in [
        json!({"service": true, "argv": ["true"]}),
        json!({"service": true, "argv": ["true"], "timeout_seconds": 5,
               "ports": [{"container_port": 8080}]}),
    ] {
        let reply = call(&app, Method::POST, RUNS, Some(&alice), Some(body.clone())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
}
