//! The runs API against a real Podman engine, through `app(state).oneshot(..)`.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bus_api::auth::Scope;
use bus_api::{LogFrame, RunState, Stream};
use common::{
    ALL, Podman, call, create_run, follow, frames, get_run, runner, runner_with,
    runner_without_engine,
};
use http_body_util::BodyExt as _;
use serde_json::json;
use tower::ServiceExt as _;

const RUNS: &str = "/api/v1/containers/runs";

/// Removes the run's container if a failing test left it behind.
struct Cleanup<'a>(&'a Podman, Vec<String>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in &self.1 {
            self.0.remove_container(&format!("bus-{id}"));
        }
    }
}

fn output(frame: &LogFrame) -> (u64, Stream, Vec<u8>) {
    match frame {
        LogFrame::Output { seq, stream, .. } => {
            (*seq, *stream, frame.output_bytes().unwrap().unwrap())
        }
        other => panic!("expected an output frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_streams_output_then_exit_and_stays_private() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let bob = keys.mint("bob", &ALL, Duration::from_secs(300));

    let reply = call(
        &app,
        Method::POST,
        RUNS,
        Some(&alice),
        Some(json!({"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]})),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let run = reply.json();
    let id = run["id"].as_str().unwrap().to_owned();
    let mut cleanup = Cleanup(&podman, vec![id.clone()]);
    assert!(id.starts_with("run_") && id.len() >= 30, "{id}");
    assert_eq!(run["state"], "queued");
    assert_eq!(run["profile"], "codex");
    assert_eq!(reply.headers[header::LOCATION], format!("{RUNS}/{id}"));

    // Follow: output frames in order, then the exit frame, then the stream ends.
    let logs = call(
        &app,
        Method::GET,
        &format!("{RUNS}/{id}/logs?follow=true"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(logs.status, StatusCode::OK);
    assert_eq!(logs.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let got = frames(&logs.body);
    assert_eq!(got.len(), 3, "{}", String::from_utf8_lossy(&logs.body));
    assert_eq!(output(&got[0]), (1, Stream::Stdout, b"out\n".to_vec()));
    assert_eq!(output(&got[1]), (2, Stream::Stderr, b"err\n".to_vec()));
    match &got[2] {
        LogFrame::Exit {
            state,
            exit_code,
            last_seq,
            finished_at,
            ..
        } => {
            assert_eq!(
                (*state, *exit_code, *last_seq),
                (RunState::Exited, Some(3), 2)
            );
            assert!(finished_at.is_some());
        }
        other => panic!("expected the exit frame, got {other:?}"),
    }

    // Resume after seq 1 without follow.
    let logs = call(
        &app,
        Method::GET,
        &format!("{RUNS}/{id}/logs?after_seq=1"),
        Some(&alice),
        None,
    )
    .await;
    let got = frames(&logs.body);
    assert_eq!(got.len(), 2);
    assert_eq!(output(&got[0]).0, 2);
    assert!(matches!(got[1], LogFrame::Exit { .. }));

    let reply = get_run(&app, &alice, &id).await;
    let run = reply.json();
    assert_eq!(run["state"], "exited");
    assert_eq!(run["exit_code"], 3);
    assert!(
        run["started_at"].is_string() && run["finished_at"].is_string(),
        "{run}"
    );
    assert!(
        !podman.container_exists(&format!("bus-{id}")),
        "the container is removed after the run"
    );

    // The list shows alice's run to alice only.
    let page = call(&app, Method::GET, RUNS, Some(&alice), None)
        .await
        .json();
    assert_eq!(page["runs"][0]["id"], id.as_str());
    let page = call(&app, Method::GET, RUNS, Some(&bob), None).await.json();
    assert_eq!(page["runs"], json!([]));

    // Another account gets the same 404 as for an id that does not exist.
    let unknown = call(
        &app,
        Method::GET,
        &format!("{RUNS}/run_00000000000000000000000000000000"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    for (method, path) in [
        (Method::GET, format!("{RUNS}/{id}")),
        (Method::GET, format!("{RUNS}/{id}/logs")),
        (Method::DELETE, format!("{RUNS}/{id}")),
    ] {
        let reply = call(&app, method.clone(), &path, Some(&bob), None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(reply.problem_code(), "not_found");
        assert_eq!(
            reply.json()["detail"],
            format!("no run {id} in this account")
        );
    }

    let reply = call(
        &app,
        Method::DELETE,
        &format!("{RUNS}/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = get_run(&app, &alice, &id).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = call(
        &app,
        Method::DELETE,
        &format!("{RUNS}/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    cleanup.1.clear();
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_missing_image_and_delete_of_a_live_run() {
    let podman = Podman::start();
    // Runs use only images the account may see; a public name the engine lacks still reaches
    // the engine, which is the failure this test is after.
    let mut config = bus_runner::config::Config::builtin();
    config.images.public = vec!["localhost/bus-test-no-such-image:1".to_owned()];
    let (_dir, keys, app) = runner_with(&podman.url(), config);
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup(&podman, vec![]);
    let mut create = async |body: serde_json::Value| {
        let reply = call(&app, Method::POST, RUNS, Some(&alice), Some(body)).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let id = reply.json()["id"].as_str().unwrap().to_owned();
        cleanup.1.push(id.clone());
        id
    };
    let timed_out =
        create(json!({"argv": ["sh", "-c", "echo started; sleep 60"], "timeout_seconds": 1})).await;
    let missing =
        create(json!({"image": "localhost/bus-test-no-such-image:1", "argv": ["true"]})).await;
    let live = create(json!({"argv": ["sh", "-c", "echo live; sleep 60"]})).await;

    let follow = |id: &str| format!("{RUNS}/{id}/logs?follow=true");
    let got = frames(
        &call(&app, Method::GET, &follow(&timed_out), Some(&alice), None)
            .await
            .body,
    );
    assert_eq!(output(&got[0]).2, b"started\n");
    match got.last().unwrap() {
        LogFrame::Exit { state, reason, .. } => {
            assert_eq!(*state, RunState::TimedOut);
            assert_eq!(
                reason.as_deref(),
                Some("the run exceeded its timeout of 1 s and was killed")
            );
        }
        other => panic!("expected the exit frame, got {other:?}"),
    }
    assert!(!podman.container_exists(&format!("bus-{timed_out}")));

    let got = frames(
        &call(&app, Method::GET, &follow(&missing), Some(&alice), None)
            .await
            .body,
    );
    assert_eq!(
        got,
        [LogFrame::Exit {
            state: RunState::Failed,
            exit_code: None,
            reason: Some("image localhost/bus-test-no-such-image:1 not found on the engine".into()),
            last_seq: 0,
            finished_at: match &got[0] {
                LogFrame::Exit { finished_at, .. } => *finished_at,
                _ => None,
            },
        }]
    );

    // Follow the live run until its first frame, then delete it: the container goes away.
    let req = Request::get(follow(&live))
        .header(header::AUTHORIZATION, format!("Bearer {alice}"))
        .body(Body::empty())
        .unwrap();
    let mut body = app.clone().oneshot(req).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(output(&frames(&first)[0]).2, b"live\n");
    assert!(podman.container_exists(&format!("bus-{live}")));
    let reply = call(
        &app,
        Method::DELETE,
        &format!("{RUNS}/{live}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(
        !podman.container_exists(&format!("bus-{live}")),
        "delete force-removes a live container"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    match frames(&rest).last() {
        Some(LogFrame::Exit { state, reason, .. }) => {
            assert_eq!(*state, RunState::Failed);
            assert_eq!(reason.as_deref(), Some("the run was deleted while it ran"));
        }
        other => panic!("a follower of a deleted run gets its exit frame, not {other:?}"),
    }
    cleanup.1.clear();
}

#[tokio::test]
async fn auth_and_request_problems() {
    let (_dir, keys, app) = runner_without_engine();
    let reader = keys.mint("alice", &[Scope::Read], Duration::from_secs(300));
    let writer = keys.mint("alice", &ALL, Duration::from_secs(300));
    let expired = keys.mint_expired("alice", &ALL);
    let body = || Some(json!({"argv": ["true"]}));

    let reply = call(&app, Method::POST, RUNS, None, body()).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.problem_code(), "token_missing");
    assert!(
        reply.json()["guidance"]
            .as_str()
            .unwrap()
            .contains("bus-runner token")
    );

    let reply = call(&app, Method::POST, RUNS, Some(&reader), body()).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.problem_code(), "scope_missing");
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap()
            .contains("container:run")
    );

    let reply = call(&app, Method::GET, RUNS, Some(&expired), None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.problem_code(), "token_expired");

    let (_other_dir, other_keys, _) = runner_without_engine();
    let foreign = other_keys.mint("alice", &ALL, Duration::from_secs(300));
    let reply = call(&app, Method::GET, RUNS, Some(&foreign), None).await;
    assert_eq!(reply.problem_code(), "token_invalid");
    assert!(
        !String::from_utf8_lossy(&reply.body).contains(&foreign),
        "the token is never echoed"
    );

    // Parse, then act: these never reach the (absent) engine.
    let cases = [
        (
            json!({"argv": ["true"], "imgae": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"profile": "nope"}),
            StatusCode::BAD_REQUEST,
            "unknown_profile",
        ),
        (
            json!({"argv": ["true"], "timeout_seconds": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"name": "x".repeat(300 * 1024)}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let reply = call(&app, Method::POST, RUNS, Some(&writer), Some(body)).await;
        assert_eq!(
            (reply.status, reply.problem_code().as_str()),
            (status, code)
        );
    }
    let reply = call(
        &app,
        Method::GET,
        &format!("{RUNS}?page_token=nope"),
        Some(&writer),
        None,
    )
    .await;
    assert_eq!(reply.problem_code(), "invalid_request");
    let reply = call(&app, Method::GET, "/api/v1/nothing", Some(&writer), None).await;
    assert_eq!(
        (reply.status, reply.problem_code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let reply = call(&app, Method::PUT, RUNS, Some(&writer), None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.problem_code(), "invalid_request");
}

/// A GET of `uri` with `accept` as its `Accept`.
async fn get_accepting(
    app: &axum::Router,
    uri: &str,
    token: &str,
    accept: &str,
) -> (String, Vec<u8>) {
    let req = Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::ACCEPT, accept)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::VARY],
        "accept",
        "the framing depends on Accept"
    );
    let content_type = response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (content_type, body.to_vec())
}

/// A runner on `podman` and alice's run of `sh -c script` on it: the runner's directory (to
/// hold), the app, alice's token and the run's id.
async fn alices_run(
    podman: &Podman,
    script: &str,
) -> (tempfile::TempDir, axum::Router, String, String) {
    let (dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let run = create_run(&app, &alice, json!({"argv": ["sh", "-c", script]})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    (dir, app, alice, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_framing_carries_the_same_frames_as_ndjson() {
    use bus_api::frames::{Frame, FrameDecoder, LOG_FRAMES};

    let podman = Podman::start();
    let script = "printf '\\377\\000x\\n'; sleep 0.2; printf 'err' >&2; exit 3";
    let (_dir, app, alice, id) = alices_run(&podman, script).await;
    let _cleanup = Cleanup(&podman, vec![id.clone()]);
    let logs = format!("{RUNS}/{id}/logs?follow=true");

    let (content_type, body) = get_accepting(&app, &logs, &alice, LOG_FRAMES).await;
    assert_eq!(content_type, LOG_FRAMES);
    let mut decoder = FrameDecoder::new();
    decoder.push(&body);
    let binary: Vec<Frame> = std::iter::from_fn(|| decoder.next_frame())
        .map(Result::unwrap)
        .collect();
    decoder.finish().unwrap();

    let (content_type, body) =
        get_accepting(&app, &logs, &alice, "application/x-ndjson, */*;q=0.1").await;
    assert_eq!(content_type, "application/x-ndjson");
    let ndjson: Vec<Frame> = frames(&body)
        .into_iter()
        .map(|f| Frame::try_from(f).unwrap())
        .collect();
    assert_eq!(binary, ndjson, "the same frames either way");

    let outputs: Vec<_> = binary
        .iter()
        .filter_map(|f| match f {
            Frame::Output(o) => Some((o.seq, o.stream, o.data.to_vec())),
            Frame::Control(_) => None,
        })
        .collect();
    assert_eq!(
        outputs,
        [
            (1, Stream::Stdout, b"\xff\x00x\n".to_vec()),
            (2, Stream::Stderr, b"err".to_vec())
        ]
    );
    assert!(
        matches!(
            binary.last(),
            Some(Frame::Control(LogFrame::Exit {
                exit_code: Some(3),
                last_seq: 2,
                ..
            }))
        ),
        "{binary:?}"
    );

    let refused = format!("{LOG_FRAMES};q=0, application/x-ndjson");
    let (content_type, _) = get_accepting(&app, &logs, &alice, &refused).await;
    assert_eq!(
        content_type, "application/x-ndjson",
        "q=0 refuses the binary framing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_longer_than_the_first_wait_step_still_ends_with_its_exit_code() {
    // The runner asks Podman to poll less often once a run has gone on for 2 s: the first
    // wait is given up and another one made. The exit must come through that change.
    let podman = Podman::start();
    let (_dir, app, alice, id) = alices_run(&podman, "sleep 2.5; echo done; exit 7").await;
    let _cleanup = Cleanup(&podman, vec![id.clone()]);
    let got = follow(&app, &alice, &id).await;
    assert_eq!(output(&got[0]), (1, Stream::Stdout, b"done\n".to_vec()));
    assert!(
        matches!(
            got.last(),
            Some(LogFrame::Exit {
                state: RunState::Exited,
                exit_code: Some(7),
                ..
            })
        ),
        "{got:?}"
    );
}

/// A command the image lacks, or one it cannot execute, fails the run with the exit code a
/// shell gives it (127, 126), as `docker run` does, and a reason that names the command.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_not_found_fails_with_127_and_one_not_executable_with_126() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup(&podman, vec![]);
    for (argv, code, begins) in [
        (json!(["no-such-command-here"]), 127, "command not found"),
        (json!(["/no/such/file"]), 127, "command not found"),
        (json!(["/etc"]), 126, "command not executable"),
    ] {
        let run = create_run(&app, &alice, json!({"argv": argv})).await;
        let id = run["id"].as_str().unwrap().to_owned();
        cleanup.1.push(id.clone());
        let got = follow(&app, &alice, &id).await;
        let Some(LogFrame::Exit {
            state,
            exit_code,
            reason,
            ..
        }) = got.last()
        else {
            panic!("no exit frame: {got:?}");
        };
        let reason = reason.as_deref().unwrap_or_default();
        let command = argv[0].as_str().unwrap();
        assert_eq!(
            (*state, *exit_code),
            (RunState::Failed, Some(code)),
            "{reason}"
        );
        assert!(
            reason.starts_with(begins) && reason.contains(&format!("\"{command}\"")),
            "{reason}"
        );
    }
}

/// `auto_remove` (docker's `--rm`): the run is there while it runs and deleted, with its
/// output, once it has ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_with_auto_remove_is_deleted_once_it_has_ended() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let run = create_run(
        &app,
        &alice,
        json!({"argv": ["sh", "-c", "echo bye"], "auto_remove": true}),
    )
    .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let _cleanup = Cleanup(&podman, vec![id.clone()]);
    assert_eq!(run["auto_remove"], true);
    let got = follow(&app, &alice, &id).await;
    assert!(
        matches!(got.last(), Some(LogFrame::Exit { .. })),
        "a follower still sees the end: {got:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get_run(&app, &alice, &id).await;
        if reply.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not deleted: {:?}",
            reply.json()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
