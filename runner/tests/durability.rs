//! Durability against a real Podman engine: runs and their output survive a runner killed with
//! SIGKILL, running containers are re-adopted and what they wrote while no runner was attached
//! (or before they exited meanwhile) is recovered from the engine's log, vanished ones end as
//! `failed`; plus stop, idempotency keys and the logs endpoint's tail and stream filters.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bus_api::auth::Scope;
use bus_api::{LogFrame, RunState, Stream};
use bus_testkit::script::{two_streams, two_streams_output};
use bus_testkit::{RunnerProcess, Serve};
use common::{ALL, Cleanup, Podman, Reply, bins, call, create_run, follow, frames, runner};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const RUNS: &str = "/api/v1/containers/runs";
const VANISHED: &str = "the container vanished while the runner was down";

/// `bus-runner serve` on port 0 on `podman` and `state`, its log appended to `log`.
fn serve(podman: &Podman, state: &Path, log: &Path) -> RunnerProcess {
    Serve::new(bins(), &podman.socket, state)
        .unwrap()
        .log(log)
        .spawn()
}

/// A runner on a fresh state dir, for a test that kills it and serves that dir again: the
/// engine, the temporary dir (state and log live in it), the state dir, the log, the running
/// process and alice's token.
fn first_runner() -> (
    Podman,
    tempfile::TempDir,
    PathBuf,
    PathBuf,
    RunnerProcess,
    String,
) {
    let podman = Podman::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("runner.log");
    let first = serve(&podman, &state, &log);
    let token = mint(&state, "alice");
    (podman, dir, state, log, first, token)
}

/// A token for `account` with every container scope, from `bus-runner token`.
fn mint(state: &Path, account: &str) -> String {
    bus_testkit::mint(bins(), state, account, bus_testkit::ALL_SCOPES, &[])
}

/// A minimal REST client for a runner process.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(base: &str, token: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    async fn create(&self, body: Value) -> String {
        let reply = self
            .http
            .post(format!("{}{RUNS}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
        let run: Value = reply.json().await.unwrap();
        run["id"].as_str().unwrap().to_owned()
    }

    async fn run(&self, id: &str) -> (u16, Value) {
        let reply = self
            .http
            .get(format!("{}{RUNS}/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (reply.status().as_u16(), reply.json().await.unwrap())
    }

    /// Waits (polling, bounded) until the run's state satisfies `done`.
    async fn wait_state(&self, id: &str, what: &str, done: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, run) = self.run(id).await;
            assert_eq!(status, 200, "{run}");
            if done(run["state"].as_str().unwrap()) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} never got {what}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Follows the run's logs after `after_seq`, calling `each` on every frame until it says
    /// stop or the stream ends.
    async fn follow(&self, id: &str, after_seq: u64, mut each: impl FnMut(&LogFrame) -> bool) {
        let reply = self
            .http
            .get(format!(
                "{}{RUNS}/{id}/logs?follow=true&after_seq={after_seq}",
                self.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let mut body = reply.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("no log frame within 60 s")
        {
            pending.extend_from_slice(&chunk.unwrap());
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let frame: LogFrame = serde_json::from_slice(&line).unwrap();
                if !each(&frame) {
                    return;
                }
            }
        }
    }
}

/// The numbers of the `line N` lines in `text`.
fn line_numbers(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_survives_a_runner_killed_with_sigkill() {
    let (podman, _dir, state, log, mut first, token) = first_runner();
    let client = Client::new(first.origin(), &token);

    const LINES: u32 = 300;
    let id = client
        .create(json!({"argv": ["sh", "-c", format!(
            "i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo line $i; sleep 0.02; done"
        )]}))
        .await;
    let _cleanup = Cleanup(&podman, vec![format!("bus-{id}")]);

    // Follow until at least 20 lines have arrived.
    let mut last_seq = 0;
    let mut seen = String::new();
    client
        .follow(&id, 0, |frame| {
            let LogFrame::Output { seq, stream, .. } = frame else {
                panic!("the run ended too early: {frame:?}")
            };
            assert_eq!(*seq, last_seq + 1, "dense seq");
            assert_eq!(*stream, Stream::Stdout);
            last_seq = *seq;
            seen.push_str(std::str::from_utf8(&frame.output_bytes().unwrap().unwrap()).unwrap());
            line_numbers(&seen).len() < 20
        })
        .await;

    first.kill();
    assert!(
        podman.container_exists(&format!("bus-{id}")),
        "the container outlives the runner"
    );

    let second = serve(&podman, &state, &log);
    let client = Client::new(second.origin(), &token);
    let (status, run) = client.run(&id).await;
    assert_eq!(status, 200, "the run record survived: {run}");
    assert_eq!(run["state"], "running", "{run}");

    // Resume after the last seq seen: every later seq exactly once, then the exit frame.
    let resumed_from = last_seq;
    let mut exit = None;
    client
        .follow(&id, resumed_from, |frame| match frame {
            LogFrame::Output { seq, .. } => {
                assert_eq!(*seq, last_seq + 1, "no duplicate, no gap");
                last_seq = *seq;
                seen.push_str(
                    std::str::from_utf8(&frame.output_bytes().unwrap().unwrap()).unwrap(),
                );
                true
            }
            LogFrame::Exit { .. } => {
                exit = Some(frame.clone());
                false
            }
            LogFrame::Keepalive => true,
        })
        .await;
    match exit {
        Some(LogFrame::Exit {
            state,
            exit_code,
            last_seq: exit_last,
            ..
        }) => {
            assert_eq!((state, exit_code), (RunState::Exited, Some(0)));
            assert_eq!(exit_last, last_seq);
        }
        other => panic!("expected the exit frame, got {other:?}"),
    }
    assert!(
        last_seq > resumed_from,
        "output after the restart was captured"
    );
    // Every line once, in order: those written while no runner was attached too.
    let numbers = line_numbers(&seen);
    eprintln!("resumed after seq {resumed_from}; {last_seq} frames");
    assert_eq!(numbers, (1..=LINES).collect::<Vec<_>>());
    let (_, run) = client.run(&id).await;
    assert_eq!(run["state"], "exited");
    assert!(run["wall_seconds"].as_u64().unwrap() >= 1, "{run}");
    assert!(
        !podman.container_exists(&format!("bus-{id}")),
        "the re-adopted container is removed after its exit"
    );

    // A replay from the start gives exactly the frames followed, densely.
    let reply = client
        .http
        .get(format!("{}{RUNS}/{id}/logs", second.origin()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let all = frames(&reply.bytes().await.unwrap());
    let mut replayed = String::new();
    for (i, frame) in all.iter().enumerate() {
        match frame {
            LogFrame::Output { seq, .. } => {
                assert_eq!(*seq, i as u64 + 1);
                replayed.push_str(
                    std::str::from_utf8(&frame.output_bytes().unwrap().unwrap()).unwrap(),
                );
            }
            LogFrame::Exit { .. } => assert_eq!(i, all.len() - 1),
            LogFrame::Keepalive => panic!("a keepalive in a stream that is not followed"),
        }
    }
    assert_eq!(replayed, seen);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_removed_while_the_runner_was_down_fails_the_run() {
    let (podman, _dir, state, log, mut first, token) = first_runner();
    let client = Client::new(first.origin(), &token);
    let id = client.create(json!({"argv": ["sleep", "60"]})).await;
    let name = format!("bus-{id}");
    let stray = format!("bus-stray-{}", std::process::id());
    let _cleanup = Cleanup(&podman, vec![name.clone(), stray.clone()]);
    client.wait_state(&id, "running", |s| s == "running").await;
    let runner_label = podman_output(
        &podman,
        &[
            "inspect",
            "--format",
            "{{index .Config.Labels \"bus.runner\"}}",
            &name,
        ],
    );
    first.kill();

    // While it is down: its container vanishes, and a container with its label but a run id
    // it does not know appears.
    podman.remove_container(&name);
    podman_output(
        &podman,
        &[
            "create",
            "--name",
            &stray,
            "--label",
            &format!("bus.runner={runner_label}"),
            "--label",
            "bus.run-id=run_00000000000000000000000000000000",
            "localhost/busybox",
            "sleep",
            "60",
        ],
    );
    assert!(podman.container_exists(&stray));

    let second = serve(&podman, &state, &log);
    let client = Client::new(second.origin(), &token);
    let run = client.wait_state(&id, "an end", |s| s != "running").await;
    assert_eq!(run["state"], "failed", "{run}");
    assert_eq!(run["reason"], VANISHED);
    let mut exit = None;
    client
        .follow(&id, 0, |frame| {
            exit = Some(frame.clone());
            false
        })
        .await;
    assert!(
        matches!(&exit, Some(LogFrame::Exit { state: RunState::Failed, reason: Some(r), .. }) if r == VANISHED),
        "{exit:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while podman.container_exists(&stray) {
        assert!(
            Instant::now() < deadline,
            "the unknown run's container was not removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a client took from a run's log: every output frame's seq, each stream's bytes, the exit
/// frames.
#[derive(Debug, Default)]
struct Taken {
    seqs: Vec<u64>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exits: Vec<LogFrame>,
}

impl Taken {
    /// Takes one frame; `false` once it was the exit frame.
    fn take(&mut self, frame: &LogFrame) -> bool {
        match frame {
            LogFrame::Output { seq, stream, .. } => {
                self.seqs.push(*seq);
                let bytes = frame.output_bytes().unwrap().unwrap();
                match stream {
                    Stream::Stdout => self.stdout.extend_from_slice(&bytes),
                    Stream::Stderr => self.stderr.extend_from_slice(&bytes),
                }
                true
            }
            LogFrame::Exit { .. } => {
                self.exits.push(frame.clone());
                false
            }
            LogFrame::Keepalive => true,
        }
    }

    fn last_seq(&self) -> u64 {
        self.seqs.last().copied().unwrap_or(0)
    }

    /// Asserts seqs 1..=N once each in order, `lines` of [`two_streams`] on each stream, and
    /// one exit frame, `exited` with 7 after seq N.
    fn assert_complete(&self, who: &str, lines: u32) {
        let (stdout, stderr) = two_streams_output(lines);
        let n = self.seqs.len() as u64;
        assert_eq!(self.seqs, (1..=n).collect::<Vec<_>>(), "{who}: dense seqs");
        assert_eq!(
            String::from_utf8_lossy(&self.stdout),
            stdout,
            "{who}: stdout"
        );
        assert_eq!(
            String::from_utf8_lossy(&self.stderr),
            stderr,
            "{who}: stderr"
        );
        assert_eq!(self.exits.len(), 1, "{who}: one exit frame");
        match &self.exits[0] {
            LogFrame::Exit {
                state,
                exit_code,
                reason,
                last_seq,
                ..
            } => {
                assert_eq!((*state, *exit_code), (RunState::Exited, Some(7)), "{who}");
                assert_eq!(*reason, None, "{who}");
                assert_eq!(
                    *last_seq, n,
                    "{who}: the exit frame follows the last output"
                );
            }
            other => panic!("{who}: {other:?}"),
        }
    }
}

impl Client {
    /// The run's whole log, read once (not followed).
    async fn replay(&self, id: &str) -> Taken {
        let reply = self
            .http
            .get(format!("{}{RUNS}/{id}/logs", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);
        let mut taken = Taken::default();
        for frame in frames(&reply.bytes().await.unwrap()) {
            taken.take(&frame);
        }
        taken
    }
}

/// Whether the engine says the container is running.
fn running(podman: &Podman, name: &str) -> bool {
    podman_output(podman, &["inspect", "--format", "{{.State.Running}}", name]) == "true"
}

/// Starts a run of [`two_streams`], follows it until it has written `before` lines, kills the
/// runner with SIGKILL, waits until `down` has passed (and, with `exit_meanwhile`, until the
/// container exited), starts a runner on the same state dir, and checks that a follower
/// resuming after the last seq it saw, and a full replay afterwards, get every byte of both
/// streams once, in order, with dense seqs, and the exit code once.
async fn recovers_output_written_while_down(
    lines: u32,
    pause: &str,
    before: usize,
    down: Duration,
    exit_meanwhile: bool,
) {
    let (podman, _dir, state, log, mut first, token) = first_runner();
    let client = Client::new(first.origin(), &token);
    let id = client
        .create(json!({"argv": ["sh", "-c", two_streams(lines, pause)]}))
        .await;
    let name = format!("bus-{id}");
    let _cleanup = Cleanup(&podman, vec![name.clone()]);

    let mut taken = Taken::default();
    client
        .follow(&id, 0, |frame| {
            assert!(taken.take(frame), "the run ended too early: {frame:?}");
            taken.stdout.iter().filter(|b| **b == b'\n').count() < before
        })
        .await;
    let resumed_after = taken.last_seq();
    first.kill();
    let killed = Instant::now();
    tokio::time::sleep(down).await;
    if exit_meanwhile {
        let deadline = Instant::now() + Duration::from_secs(120);
        while running(&podman, &name) {
            assert!(Instant::now() < deadline, "the run did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        assert!(
            running(&podman, &name),
            "the container still runs when the runner comes back (make the run longer)"
        );
    }
    let second = serve(&podman, &state, &log);
    eprintln!("runner down {:?}", killed.elapsed());
    let client = Client::new(second.origin(), &token);
    client
        .follow(&id, resumed_after, |frame| taken.take(frame))
        .await;
    eprintln!(
        "resumed after seq {resumed_after}; {} frames in all",
        taken.seqs.len()
    );
    taken.assert_complete("the resumed follower", lines);

    let (_, run) = client.run(&id).await;
    assert_eq!(run["state"], "exited", "{run}");
    assert_eq!(run["exit_code"], 7, "{run}");
    assert!(
        !podman.container_exists(&name),
        "the container is removed after its exit"
    );
    client
        .replay(&id)
        .await
        .assert_complete("a later full replay", lines);
}

#[tokio::test(flavor = "multi_thread")]
async fn output_written_while_the_runner_was_down_for_30_s_is_recovered() {
    // 700 lines take over 42 s (two sleeps of 0.01 and 0.05 s per line): the run outlives
    // the 30 s without a runner, with a margin for a slow start.
    recovers_output_written_while_down(700, "0.05", 20, Duration::from_secs(30), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_exited_while_the_runner_was_down_keeps_all_its_output() {
    recovers_output_written_while_down(60, "0.03", 10, Duration::ZERO, true).await;
}

fn podman_output(podman: &Podman, args: &[&str]) -> String {
    let out = podman
        .command()
        .args(args)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Sends a request with extra headers through the in-process app.
async fn send(app: &Router, req: Request<Body>) -> Reply {
    let response = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn create(app: &Router, token: &str, body: Value) -> String {
    create_run(app, token, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Follows the run's logs (in-process) until a frame's output contains `text`.
async fn follow_until(app: &Router, token: &str, id: &str, text: &str) {
    let req = Request::get(format!("{RUNS}/{id}/logs?follow=true"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let mut body = app.clone().oneshot(req).await.unwrap().into_body();
    let mut seen = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .expect("output within 30 s")
            .expect("the stream ended before the text")
            .unwrap();
        for frame in frames(&chunk.into_data().unwrap()) {
            if let Some(bytes) = frame.output_bytes() {
                seen.extend(bytes.unwrap());
            }
        }
        if String::from_utf8_lossy(&seen).contains(text) {
            return;
        }
    }
}

async fn stop(app: &Router, token: &str, id: &str, body: Option<Value>) -> Reply {
    call(
        app,
        Method::POST,
        &format!("{RUNS}/{id}/stop"),
        Some(token),
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_gracefully_or_at_once_twice_and_only_ones_own() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let bob = keys.mint("bob", &ALL, Duration::from_secs(300));
    let reader = keys.mint("alice", &[Scope::Read], Duration::from_secs(300));
    let mut cleanup = Cleanup(&podman, vec![]);

    // Graceful: SIGTERM reaches the trap, which says bye and exits 7.
    let graceful = create(
        &app,
        &alice,
        json!({"argv": ["sh", "-c", "trap 'echo bye; exit 7' TERM; echo ready; while true; do sleep 0.1; done"]}),
    )
    .await;
    cleanup.1.push(format!("bus-{graceful}"));
    follow_until(&app, &alice, &graceful, "ready").await;

    let reply = stop(&app, &bob, &graceful, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "another account's run");
    assert_eq!(reply.problem_code(), "not_found");
    assert_eq!(
        reply.json()["detail"],
        format!("no run {graceful} in this account")
    );
    let reply = stop(&app, &reader, &graceful, None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.problem_code(), "scope_missing");
    let reply = stop(&app, &alice, &graceful, Some(json!({"grace_seconds": "x"}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let reply = stop(&app, &alice, &graceful, Some(json!({"grace_seconds": 20}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let run = reply.json();
    assert_eq!(run["state"], "stopped", "{run}");
    assert_eq!(run["exit_code"], 7);
    assert_eq!(run["reason"], "stopped on request");
    assert!(run["wall_seconds"].is_u64(), "{run}");
    assert!(!podman.container_exists(&format!("bus-{graceful}")));
    let logs = call(
        &app,
        Method::GET,
        &format!("{RUNS}/{graceful}/logs"),
        Some(&alice),
        None,
    )
    .await;
    let got = frames(&logs.body);
    let text: Vec<u8> = got
        .iter()
        .filter_map(|f| f.output_bytes())
        .flat_map(Result::unwrap)
        .collect();
    assert_eq!(text, b"ready\nbye\n");
    assert!(matches!(
        got.last(),
        Some(LogFrame::Exit {
            state: RunState::Stopped,
            exit_code: Some(7),
            ..
        })
    ));

    // Twice: the ended run comes back unchanged.
    let again = stop(&app, &alice, &graceful, Some(json!({"force": true}))).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), run);

    // Force: SIGKILL at once.
    let forced = create(&app, &alice, json!({"argv": ["sleep", "60"]})).await;
    cleanup.1.push(format!("bus-{forced}"));
    let started = Instant::now();
    let reply = stop(&app, &alice, &forced, Some(json!({"force": true}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let run = reply.json();
    assert_eq!(run["state"], "stopped", "{run}");
    assert_eq!(run["reason"], "stopped on request");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!podman.container_exists(&format!("bus-{forced}")));

    // A process that ignores SIGTERM (a shell as PID 1 without a trap) is killed after the grace.
    let stubborn = create(
        &app,
        &alice,
        json!({"argv": ["sh", "-c", "echo ready; while true; do sleep 0.1; done"]}),
    )
    .await;
    cleanup.1.push(format!("bus-{stubborn}"));
    follow_until(&app, &alice, &stubborn, "ready").await;
    let reply = stop(&app, &alice, &stubborn, Some(json!({"grace_seconds": 1}))).await;
    let run = reply.json();
    assert_eq!(run["state"], "stopped", "{run}");
    assert_eq!(run["exit_code"], 137, "SIGKILL after the grace: {run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_replays_the_original_run() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let bob = keys.mint("bob", &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup(&podman, vec![]);
    let post = |token: &str, key: &str, body: Value| {
        Request::post(RUNS)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let body = json!({"argv": ["sh", "-c", "echo once"]});
    let first = send(&app, post(&alice, "key-1", body.clone())).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let id = first.json()["id"].as_str().unwrap().to_owned();
    cleanup.1.push(format!("bus-{id}"));
    follow_until(&app, &alice, &id, "once").await;

    let again = send(&app, post(&alice, "key-1", body.clone())).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body, "the same body");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.headers[header::LOCATION], format!("{RUNS}/{id}"));
    let page = call(&app, Method::GET, RUNS, Some(&alice), None)
        .await
        .json();
    assert_eq!(page["runs"].as_array().unwrap().len(), 1, "no second run");

    let other = send(
        &app,
        post(&alice, "key-1", json!({"argv": ["sh", "-c", "echo twice"]})),
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.problem_code(), "idempotency_key_reused");

    let bobs = send(&app, post(&bob, "key-1", body.clone())).await;
    assert_eq!(bobs.status, StatusCode::CREATED, "keys are per account");
    let bob_id = bobs.json()["id"].as_str().unwrap().to_owned();
    cleanup.1.push(format!("bus-{bob_id}"));
    assert_ne!(bob_id, id);

    let bad = send(&app, post(&alice, "two words", body)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.problem_code(), "invalid_request");
    // Let both runs end (and their containers go) before the app does.
    for (token, id) in [(&alice, &id), (&bob, &bob_id)] {
        let logs = call(
            &app,
            Method::GET,
            &format!("{RUNS}/{id}/logs?follow=true"),
            Some(token),
            None,
        )
        .await;
        assert!(matches!(
            frames(&logs.body).last(),
            Some(LogFrame::Exit { .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_tail_and_stream_filters() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup(&podman, vec![]);
    // Pauses keep the chunks apart, so each line is a frame of its own.
    let id = create(
        &app,
        &alice,
        json!({"argv": ["sh", "-c", "for i in 1 2 3; do echo out$i; sleep 0.05; echo err$i >&2; sleep 0.05; done"]}),
    )
    .await;
    cleanup.1.push(format!("bus-{id}"));
    let all = follow(&app, &alice, &id).await;
    let outputs: Vec<(u64, Stream, Vec<u8>)> = all
        .iter()
        .filter_map(|f| match f {
            LogFrame::Output { seq, stream, .. } => {
                Some((*seq, *stream, f.output_bytes().unwrap().unwrap()))
            }
            LogFrame::Exit { .. } | LogFrame::Keepalive => None,
        })
        .collect();
    assert_eq!(outputs.len(), 6, "{all:?}");
    let get = |query: &str| {
        let (app, alice) = (app.clone(), alice.clone());
        let uri = format!("{RUNS}/{id}/logs?{query}");
        async move { frames(&call(&app, Method::GET, &uri, Some(&alice), None).await.body) }
    };
    let seqs = |frames: &[LogFrame]| -> Vec<u64> {
        frames
            .iter()
            .map(|f| match f {
                LogFrame::Output { seq, .. } => *seq,
                LogFrame::Exit { .. } => 0,
                LogFrame::Keepalive => panic!("a keepalive in a stream that is not followed"),
            })
            .collect()
    };
    // tail: the last N output frames, then the exit frame (0 here).
    assert_eq!(seqs(&get("tail=2").await), [5, 6, 0]);
    assert_eq!(seqs(&get("tail=0").await), [0]);
    assert_eq!(seqs(&get("tail=100").await), [1, 2, 3, 4, 5, 6, 0]);
    // Filters keep the original seq; the exit frame still comes last.
    let stdout = get("stderr=false").await;
    assert_eq!(seqs(&stdout), [1, 3, 5, 0]);
    assert!(matches!(
        stdout.last(),
        Some(LogFrame::Exit { last_seq: 6, .. })
    ));
    assert_eq!(seqs(&get("stdout=false&follow=true").await), [2, 4, 6, 0]);
    assert_eq!(seqs(&get("stdout=false&stderr=false").await), [0]);
    // tail counts within the filter; after_seq and tail: the later start wins.
    assert_eq!(seqs(&get("stdout=false&tail=1").await), [6, 0]);
    assert_eq!(seqs(&get("tail=5&after_seq=4").await), [5, 6, 0]);
    let reply = call(
        &app,
        Method::GET,
        &format!("{RUNS}/{id}/logs?tail=x"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

/// A run with `auto_remove` that a restarted runner re-adopted is still deleted once it ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_re_adopted_run_with_auto_remove_is_deleted_once_it_ends() {
    let (podman, _dir, state, log, mut first, token) = first_runner();
    let client = Client::new(first.origin(), &token);
    let id = client
        .create(json!({"argv": ["sh", "-c", "echo up; sleep 2"], "auto_remove": true}))
        .await;
    let _cleanup = Cleanup(&podman, vec![format!("bus-{id}")]);
    client.wait_state(&id, "running", |s| s == "running").await;
    first.kill();

    let second = serve(&podman, &state, &log);
    let client = Client::new(second.origin(), &token);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, run) = client.run(&id).await;
        if status == 404 {
            break;
        }
        assert_eq!(status, 200, "{run}");
        assert!(Instant::now() < deadline, "never deleted: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
