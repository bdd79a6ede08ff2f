//! The watch of an account's runs (`GET /api/v1/containers/runs?watch=true`) and the
//! `bus-revision` header it is read against, through `app(state).oneshot(..)`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bus_api::auth::Scope;
use bus_api::runs::{REVISION_HEADER, RunEvent, WATCH_ALIVE_SECONDS};
use bus_api::{Run, RunState};
use common::{
    ALL, Cleanup, Podman, Reply, call, create_run_reply, get_run, runner, runner_without_engine,
};
use http_body_util::BodyExt as _;
use serde_json::json;
use tokio::time::Instant;
use tower::ServiceExt as _;

const RUNS: &str = "/api/v1/containers/runs";
const WATCH: &str = "/api/v1/containers/runs?watch=true";
/// The longest wait for one line: an idle watch sends one every WATCH_ALIVE_SECONDS.
const LINE_WAIT: Duration = Duration::from_secs(WATCH_ALIVE_SECONDS + 3);
/// The longest wait for the watch to report what a test is after.
const CONVERGE_WAIT: Duration = Duration::from_secs(60);

/// An open watch's body, read a line at a time.
struct Lines {
    body: Body,
    buf: Vec<u8>,
}

impl Lines {
    /// The next line, or `None` when the body has ended; panics when none comes in `limit`.
    async fn next(&mut self, limit: Duration) -> Option<RunEvent> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("not a run event ({e}): {}", String::from_utf8_lossy(&line))
                }));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no line within {limit:?}"));
            match frame {
                None => {
                    assert!(self.buf.is_empty(), "the body ends with a whole line");
                    return None;
                }
                Some(frame) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// `GET uri` with `token`: the status, the headers and the body as lines.
async fn open(app: &Router, token: &str, uri: &str) -> (StatusCode, HeaderMap, Lines) {
    let request = Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let lines = Lines {
        body,
        buf: Vec::new(),
    };
    (parts.status, parts.headers, lines)
}

/// A watch opened with `token`, asserting the answer.
async fn watch(app: &Router, token: &str) -> Lines {
    let (status, headers, lines) = open(app, token, WATCH).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-ndjson");
    lines
}

/// The `bus-revision` header of a reply.
fn revision(reply: &Reply) -> u64 {
    reply
        .headers
        .get(REVISION_HEADER)
        .unwrap_or_else(|| panic!("no {REVISION_HEADER} on a {} answer", reply.status))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The runs as a reader that applies a watch's lines knows them.
#[derive(Default)]
struct View {
    runs: BTreeMap<String, (u64, Run)>,
    revision: u64,
    deleted: Vec<String>,
    /// Every run id any line named.
    seen: HashSet<String>,
    /// The lines before `listed`, and `listed`'s revision, once it came.
    listing: Vec<RunEvent>,
    listed: Option<u64>,
    last: Option<RunEvent>,
}

impl View {
    fn apply(&mut self, event: RunEvent) {
        assert!(
            event.revision() >= self.revision,
            "revisions never go back: {event:?} after {}",
            self.revision
        );
        self.revision = event.revision();
        match &event {
            RunEvent::Changed { run, .. } => {
                self.seen.insert(run.run.id.clone());
                self.runs
                    .insert(run.run.id.clone(), (run.serial, run.run.clone()));
                if self.listed.is_none() {
                    self.listing.push(event.clone());
                }
            }
            RunEvent::Deleted { id, .. } => {
                self.seen.insert(id.clone());
                self.runs.remove(id);
                self.deleted.push(id.clone());
            }
            RunEvent::Listed { revision } => {
                assert_eq!(self.listed, None, "one listed line");
                self.listed = Some(*revision);
            }
            RunEvent::Alive { .. } => assert!(self.listed.is_some(), "alive after listed"),
        }
        self.last = Some(event);
    }

    /// Applies lines until `done` holds; panics when the watch ends or takes too long.
    async fn until(&mut self, lines: &mut Lines, what: &str, done: impl Fn(&View) -> bool) {
        let deadline = Instant::now() + CONVERGE_WAIT;
        while !done(self) {
            assert!(Instant::now() < deadline, "the watch never showed {what}");
            let event = lines
                .next(LINE_WAIT)
                .await
                .unwrap_or_else(|| panic!("the watch ended before it showed {what}"));
            self.apply(event);
        }
    }

    fn state(&self, id: &str) -> Option<RunState> {
        self.runs.get(id).map(|(_, run)| run.state)
    }
}

/// Creates a run for `token`; asserts 201 and returns its id and the reply.
async fn create(app: &Router, token: &str, argv: &[&str]) -> (String, Reply) {
    let reply = create_run_reply(app, token, json!({"argv": argv})).await;
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    (id, reply)
}

/// Deletes run `id`; asserts 204 and returns the reply.
async fn delete(app: &Router, token: &str, id: &str) -> Reply {
    let reply = call(
        app,
        Method::DELETE,
        &format!("{RUNS}/{id}"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    reply
}

/// Stops run `id` at once; asserts 200 and returns the reply.
async fn force_stop(app: &Router, token: &str, id: &str) -> Reply {
    let stop = format!("{RUNS}/{id}/stop");
    let reply = call(
        app,
        Method::POST,
        &stop,
        Some(token),
        Some(json!({"force": true})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply
}

fn container(id: &str) -> String {
    format!("bus-{id}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_lists_the_runs_then_reports_each_change_by_the_calls_revision() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let bob = keys.mint("bob", &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup(&podman, vec![]);

    let (older, _) = create(&app, &alice, &["true"]).await;
    let (newer, _) = create(&app, &alice, &["sleep", "60"]).await;
    let (bobs, _) = create(&app, &bob, &["true"]).await;
    cleanup
        .1
        .extend([&older, &newer, &bobs].map(|id| container(id)));

    // The listing: one changed line per run, newest first, at the listing's revision, with
    // the page token a page ending with that run would give.
    let mut lines = watch(&app, &alice).await;
    let mut view = View::default();
    view.until(&mut lines, "the listing", |v| v.listed.is_some())
        .await;
    let listed = view.listed.unwrap();
    let listing: Vec<(u64, String, u64)> = view
        .listing
        .iter()
        .map(|event| match event {
            RunEvent::Changed { revision, run } => (*revision, run.run.id.clone(), run.serial),
            other => panic!("only changed lines come before listed: {other:?}"),
        })
        .collect();
    assert_eq!(
        listing.iter().map(|l| l.1.as_str()).collect::<Vec<_>>(),
        [newer.as_str(), older.as_str()]
    );
    assert!(listing[0].2 > listing[1].2, "serials descend: {listing:?}");
    assert!(listing.iter().all(|l| l.0 == listed), "{listing:?}");
    let page = call(
        &app,
        Method::GET,
        &format!("{RUNS}?page_size=1"),
        Some(&alice),
        None,
    )
    .await;
    let RunEvent::Changed { run: first, .. } = &view.listing[0] else {
        unreachable!()
    };
    assert_eq!(page.json()["next_page_token"], first.page_token.as_str());
    assert!(revision(&page) >= listed);

    // A run created now: it is there once the watch reaches the create's revision, and its
    // end arrives as a change.
    let (created, reply) = create(&app, &alice, &["sh", "-c", "exit 3"]).await;
    cleanup.1.push(container(&created));
    let at = revision(&reply);
    assert!(at > listed, "{at} > {listed}");
    view.until(&mut lines, "the create's revision", |v| v.revision >= at)
        .await;
    assert!(
        view.runs.contains_key(&created),
        "the created run is listed"
    );
    view.until(&mut lines, "the created run's end", |v| {
        v.state(&created).is_some_and(RunState::is_terminal)
    })
    .await;
    let run = &view.runs[&created].1;
    assert_eq!((run.state, run.exit_code), (RunState::Exited, Some(3)));

    // A stop: the run is stopped in the view by the stop's revision.
    let reply = force_stop(&app, &alice, &newer).await;
    let at = revision(&reply);
    view.until(&mut lines, "the stop's revision", |v| v.revision >= at)
        .await;
    assert_eq!(view.state(&newer), Some(RunState::Stopped));

    // A delete arrives as deleted.
    let reply = delete(&app, &alice, &older).await;
    let at = revision(&reply);
    view.until(&mut lines, "the delete's revision", |v| v.revision >= at)
        .await;
    assert!(!view.runs.contains_key(&older));
    assert!(view.deleted.contains(&older), "{:?}", view.deleted);

    // Bob's runs, old or new, never appear; an idle watch says it is alive, at the revision
    // of its last line.
    let (bobs_new, _) = create(&app, &bob, &["true"]).await;
    cleanup.1.push(container(&bobs_new));
    let last = view.revision;
    view.until(&mut lines, "an alive line", |v| {
        matches!(v.last, Some(RunEvent::Alive { .. }))
    })
    .await;
    assert_eq!(view.last, Some(RunEvent::Alive { revision: last }));
    assert!(
        !view.seen.contains(&bobs) && !view.seen.contains(&bobs_new),
        "another account's runs: {:?}",
        view.seen
    );
    assert_eq!(
        view.runs.keys().collect::<HashSet<_>>(),
        HashSet::from([&created, &newer])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_revision_header_moves_with_the_callers_own_changes_only() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let bob = keys.mint("bob", &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup(&podman, vec![]);

    let (id, reply) = create(&app, &alice, &["sleep", "60"]).await;
    cleanup.1.push(container(&id));
    let created = revision(&reply);
    let reply = force_stop(&app, &alice, &id).await;
    assert_eq!(reply.json()["state"], "stopped");
    let stopped = revision(&reply);
    assert!(stopped > created, "{stopped} > {created}");
    let reply = call(&app, Method::GET, RUNS, Some(&alice), None).await;
    assert_eq!(revision(&reply), stopped, "a read changes nothing");

    // Bob's changes are counted in bob's revisions.
    let (bobs, reply) = create(&app, &bob, &["true"]).await;
    cleanup.1.push(container(&bobs));
    assert!(revision(&reply) > 0);
    delete(&app, &bob, &bobs).await;
    let reply = get_run(&app, &alice, &id).await;
    assert_eq!(
        revision(&reply),
        stopped,
        "bob's calls leave alice's revision"
    );

    let reply = delete(&app, &alice, &id).await;
    assert!(revision(&reply) > stopped);

    // Only successes of verified callers carry it.
    let reply = get_run(&app, &alice, &id).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.headers.get(REVISION_HEADER).is_none());
    let reply = call(&app, Method::GET, RUNS, None, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.headers.get(REVISION_HEADER).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_tokens_watch_ends_with_its_run() {
    let podman = Podman::start();
    let (_dir, keys, app) = runner(&podman.url());
    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    let mut cleanup = Cleanup(&podman, vec![]);
    let (id, _) = create(&app, &alice, &["sleep", "2"]).await;
    cleanup.1.push(container(&id));
    let (_, mut claims) =
        keys.mint_with_grant("alice", &[Scope::Read], Duration::from_secs(300), None);
    claims.run = Some(id.clone());
    let run_token = keys.sign(&claims);

    let mut lines = watch(&app, &run_token).await;
    let deadline = Instant::now() + CONVERGE_WAIT;
    let mut view = View::default();
    while let Some(event) = lines.next(LINE_WAIT).await {
        view.apply(event);
        assert!(
            Instant::now() < deadline,
            "the watch did not end with its run"
        );
    }
    assert!(view.listed.is_some());
    let reply = get_run(&app, &alice, &id).await;
    assert_eq!(reply.json()["state"], "exited", "it ended when the run did");
    let (status, _, _) = open(&app, &run_token, WATCH).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an ended run's token watches no more"
    );
}

#[tokio::test]
async fn a_watch_needs_container_read_and_takes_no_other_parameter() {
    let (_dir, keys, app) = runner_without_engine();
    let runner_only = keys.mint("alice", &[Scope::Run], Duration::from_secs(300));
    let reply = call(&app, Method::GET, WATCH, Some(&runner_only), None).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.problem_code(), "scope_missing");

    let alice = keys.mint("alice", &ALL, Duration::from_secs(300));
    for query in [
        "watch=true&page_size=5",
        "watch=true&state=",
        "page_token=x&watch=true",
    ] {
        let reply = call(
            &app,
            Method::GET,
            &format!("{RUNS}?{query}"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(reply.problem_code(), "invalid_request");
        assert!(
            reply.json()["detail"]
                .as_str()
                .unwrap()
                .contains("watch takes no other parameter"),
            "{query}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let reply = call(
        &app,
        Method::GET,
        &format!("{RUNS}?watch=false"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["runs"], json!([]));
}

#[tokio::test]
async fn an_idle_watch_is_alive_until_its_token_expires() {
    let (_dir, keys, app) = runner_without_engine();
    let opened = Instant::now();
    let token = keys.mint("alice", &[Scope::Read], Duration::from_secs(5));
    let (status, headers, mut lines) = open(&app, &token, WATCH).await;
    assert_eq!(status, StatusCode::OK);
    let header: u64 = headers[REVISION_HEADER].to_str().unwrap().parse().unwrap();
    let mut view = View::default();
    while let Some(event) = lines.next(LINE_WAIT).await {
        view.apply(event);
    }
    let ended = opened.elapsed();
    assert!(ended < Duration::from_secs(10), "ended after {ended:?}");
    assert!(ended >= Duration::from_secs(3), "ended after {ended:?}");
    let listed = view.listed.expect("a listed line");
    assert_eq!(listed, header, "nothing changed");
    assert!(view.runs.is_empty());
    assert_eq!(view.last, Some(RunEvent::Alive { revision: listed }));
}
