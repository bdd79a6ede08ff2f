//! The REST client against a scripted runner: retries, deadlines, broken log requests and
//! what goes on the wire.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_api::CreateRun;
use futures::StreamExt;

use super::*;
use crate::credentials::Token;

/// A scripted HTTP/1.1 upstream for fault injection: answers each request with the next
/// scripted reply (the last one repeats) and records method, path and idempotency key.
struct Fake {
    origin: ApiOrigin,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A request the fake saw: method, path and `Idempotency-Key`.
type Seen = (String, String, Option<String>);

/// One scripted reply: status, extra headers, body; `None` status = accept and never answer.
type Reply = (Option<u16>, &'static str, &'static str);

/// Reads a request's head (through the blank line), byte by byte so the body stays unread;
/// `None` when the connection closed first.
pub(crate) async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).to_string())
}

async fn fake(replies: Vec<Reply>) -> Fake {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = ApiOrigin::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let (status, headers, body) = replies[n.min(replies.len() - 1)];
            n += 1;
            let log = log.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut conn).await else {
                    return;
                };
                let mut lines = head.lines();
                let mut first = lines.next().unwrap().split(' ');
                let (method, path) = (first.next().unwrap(), first.next().unwrap());
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
                let mut rest = vec![0u8; length];
                conn.read_exact(&mut rest).await.unwrap();
                log.lock().unwrap().push((
                    method.to_owned(),
                    path.to_owned(),
                    header("idempotency-key"),
                ));
                let Some(status) = status else {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                };
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    Fake { origin, seen }
}

fn upstream_for(fake: &Fake) -> Upstream {
    Upstreams::default().client(&fake.origin, Token::new("eyJ.a.b"))
}

const UNAVAILABLE: Reply = (
    Some(503),
    "",
    r#"{"title":"t","status":503,"detail":"engine down","code":"engine_unavailable"}"#,
);
const STATUS_OK: Reply = (
    Some(200),
    "",
    r#"{"state":"ready","engine":"podman","engine_api_version":"1.41","profiles":[]}"#,
);

#[tokio::test]
async fn a_read_is_retried_through_brief_unavailability() {
    let fake = fake(vec![UNAVAILABLE, UNAVAILABLE, STATUS_OK]).await;
    let status = upstream_for(&fake).status().await.unwrap();
    assert_eq!(status.state, "ready");
    assert_eq!(fake.seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_read_gives_up_after_three_tries() {
    let fake = fake(vec![UNAVAILABLE]).await;
    let err = upstream_for(&fake).status().await.unwrap_err();
    assert_eq!(err.problem().unwrap().detail, "engine down");
    assert_eq!(fake.seen.lock().unwrap().len(), MAX_TRIES as usize);
}

#[tokio::test]
async fn a_create_is_retried_with_one_idempotency_key() {
    let created = (
        Some(201),
        "",
        r#"{"id":"run_1","state":"queued","image":"i","argv":[],"created_at":"2024-01-01T00:00:00Z"}"#,
    );
    let fake = fake(vec![UNAVAILABLE, created]).await;
    let run = upstream_for(&fake)
        .create_run(&CreateRun::default(), CreateOptions::default())
        .await
        .unwrap();
    assert_eq!(run.id, "run_1");
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let key = seen[0]
        .2
        .clone()
        .expect("the create carries an Idempotency-Key");
    assert_eq!(
        seen[1].2.as_deref(),
        Some(key.as_str()),
        "the retry reuses it"
    );

    // The next logical create gets a key of its own.
    let second = upstream_for(&fake)
        .create_run(&CreateRun::default(), CreateOptions::default())
        .await;
    assert!(second.is_ok());
    assert_ne!(
        fake.seen.lock().unwrap()[2].2.as_deref(),
        Some(key.as_str())
    );
}

#[tokio::test]
async fn a_post_without_a_key_is_not_retried() {
    let fake = fake(vec![UNAVAILABLE]).await;
    let err = upstream_for(&fake)
        .create_token(Some("container:read"), None)
        .await;
    assert!(err.is_err());
    assert_eq!(fake.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_retry_after_is_kept() {
    let quota = (
        Some(429),
        "retry-after: 30\r\n",
        r#"{"title":"t","status":429,"detail":"plan limit","code":"quota_exhausted"}"#,
    );
    let fake = fake(vec![quota]).await;
    let err = upstream_for(&fake).status().await.unwrap_err();
    assert!(
        matches!(&err, UpstreamError::RetryLater { retry_after, .. } if *retry_after == Duration::from_secs(30)),
        "{err:?}"
    );
    assert_eq!(fake.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_long_retry_after_is_not_waited_for() {
    let busy = (Some(503), "retry-after: 120\r\n", UNAVAILABLE.2);
    let fake = fake(vec![busy, STATUS_OK]).await;
    let err = upstream_for(&fake).status().await.unwrap_err();
    assert!(matches!(err, UpstreamError::RetryLater { .. }), "{err:?}");
    assert_eq!(fake.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_deadline_bounds_a_unary_call() {
    let fake = fake(vec![(None, "", "")]).await;
    let started = Instant::now();
    let err = upstream_for(&fake)
        .with_timeout(Some(Duration::from_millis(300)))
        .status()
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Timeout { .. }), "{err:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(300),
        "gave up before the caller: {took:?}"
    );
}

#[tokio::test]
async fn a_log_request_without_an_answer_is_a_broken_connection() {
    let fake = fake(vec![(None, "", "")]).await;
    let upstream = Upstreams::with_keepalive(Duration::from_millis(100))
        .client(&fake.origin, Token::new("eyJ.a.b"));
    let started = Instant::now();
    let Err(err) = upstream.logs("run_1", 0, true).await else {
        panic!("a log stream without headers");
    };
    let took = started.elapsed();
    assert!(
        matches!(&err, UpstreamError::Unreachable { reason, .. } if reason.contains("no answer to a log request within 0.3 s")),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn follow_requests_name_the_keepalive_only_when_it_is_not_the_default() {
    let empty = (Some(200), "", "");
    let fake = fake(vec![empty]).await;
    let token = || Token::new("eyJ.a.b");
    let seen = KeepalivesSeen::default();
    for upstreams in [
        Upstreams::with_keepalive(DEFAULT_KEEPALIVE),
        Upstreams::with_keepalive(Duration::from_secs(2)),
    ] {
        let upstream = upstreams.client(&fake.origin, token());
        let frames: Vec<_> = upstream
            .follow_logs("run_1", 4, &seen)
            .await
            .unwrap()
            .collect()
            .await;
        assert!(frames.is_empty(), "{frames:?}");
        // A read that is not followed never asks for keepalives.
        let _ = upstream.logs("run_1", 0, false).await.unwrap();
    }
    let paths: Vec<String> = fake
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.1.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/containers/runs/run_1/logs?follow=true&after_seq=4",
            "/api/v1/containers/runs/run_1/logs?follow=false&after_seq=0",
            "/api/v1/containers/runs/run_1/logs?follow=true&after_seq=4&keepalive_seconds=2",
            "/api/v1/containers/runs/run_1/logs?follow=false&after_seq=0",
        ]
    );
}

#[tokio::test]
async fn connect_errors_are_retried_then_reported() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = ApiOrigin::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let err = Upstreams::default()
        .client(&origin, Token::new("eyJ.a.b"))
        .status()
        .await
        .unwrap_err();
    assert!(matches!(err, UpstreamError::Unreachable { .. }), "{err:?}");
    // Two pauses of at least 50 ms and 100 ms: it was tried three times.
    assert!(started.elapsed() >= Duration::from_millis(150));
}
