//! The buffer, and groups against a scripted runner: resumes, silence, refusals.

use bytes::Bytes;

use super::*;
use crate::config::ApiOrigin;

fn chunk(seq: u64, len: usize) -> Chunk {
    Chunk {
        seq,
        stream: StdStream::Stdout,
        data: Bytes::from(vec![b'x'; len]),
        time: OffsetDateTime::UNIX_EPOCH,
    }
}

fn seqs(read: Read) -> Vec<u64> {
    match read {
        Read::Chunks(chunks) => chunks.iter().map(|c| c.seq).collect(),
        _ => panic!("expected chunks"),
    }
}

#[test]
fn readers_resume_after_their_own_cursor() {
    let mut buffer = Buffer::default();
    for seq in 1..=5 {
        buffer.push(chunk(seq, 10));
    }
    assert_eq!(seqs(buffer.read_after(0, 64)), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(buffer.read_after(3, 64)), [4, 5]);
    assert_eq!(seqs(buffer.read_after(0, 2)), [1, 2]);
    assert!(matches!(buffer.read_after(5, 64), Read::Nothing));
    buffer.end = Some(Ok(Exit {
        state: RunState::Exited,
        exit_code: Some(0),
        reason: None,
        last_seq: 5,
        finished_at: None,
    }));
    assert!(matches!(buffer.read_after(5, 64), Read::End(Ok(_))));
    // The end comes only after every chunk.
    assert_eq!(seqs(buffer.read_after(4, 64)), [5]);
}

#[test]
fn a_full_buffer_drops_the_oldest_and_reports_readers_behind() {
    let mut buffer = Buffer::default();
    let size = MAX_BUFFER_BYTES / 4 + 1;
    for seq in 1..=5 {
        buffer.push(chunk(seq, size));
    }
    assert!(buffer.bytes <= MAX_BUFFER_BYTES);
    let first_held = buffer.first_held();
    assert!(first_held > 1);
    assert!(matches!(buffer.read_after(0, 64), Read::Behind { first_held: f } if f == first_held));
    assert_eq!(
        seqs(buffer.read_after(first_held - 1, 64)).first(),
        Some(&first_held)
    );
}

/// How a scripted runner answers one logs request: these NDJSON lines, then either
/// silence on an open connection (`hang`) or the end of the body.
#[derive(Clone)]
struct Reply {
    lines: Vec<String>,
    hang: bool,
}

fn output(seq: u64) -> String {
    format!(
        r#"{{"type":"output","seq":{seq},"stream":"stdout","data":"eA==","time":"2024-01-01T00:00:00Z"}}"#
    )
}

fn exit(last_seq: u64) -> String {
    format!(r#"{{"type":"exit","state":"exited","exit_code":0,"last_seq":{last_seq}}}"#)
}

const KEEPALIVE: &str = r#"{"type":"keepalive"}"#;

/// What a scripted runner saw: the paths of its logs requests other than authorizations,
/// and how many authorizations (`tail=0`) it answered.
#[derive(Clone, Default)]
struct Seen {
    paths: Arc<Mutex<Vec<String>>>,
    authorizations: Arc<AtomicU64>,
}

impl Seen {
    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// What makes a scripted runner refuse a token (anywhere in it), as a runner refuses a
/// forged one.
const REFUSED: &str = "forged-signature";

/// A runner that answers authorization requests (`tail=0`) at once (with a 401 problem for
/// a [`REFUSED`] token), and the n-th other logs request with `replies[n]` (the last
/// repeats).
async fn scripted_runner(replies: Vec<Reply>) -> (ApiOrigin, Seen) {
    use tokio::io::AsyncWriteExt;

    use crate::upstream::tests::read_head;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = ApiOrigin::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    let next = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let (replies, record, next) = (replies.clone(), record.clone(), next.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut conn).await else {
                    return;
                };
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                if path.contains("tail=0") {
                    record.authorizations.fetch_add(1, Ordering::SeqCst);
                    let answer = if head.contains(REFUSED) {
                        let body = r#"{"type":"about:blank","title":"Unauthorized","status":401,"detail":"the token's signature does not verify","code":"token_invalid"}"#;
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                    };
                    let _ = conn.write_all(answer.as_bytes()).await;
                    return;
                }
                record.paths.lock().unwrap().push(path);
                let n = next.fetch_add(1, Ordering::SeqCst) as usize;
                let reply = replies[n.min(replies.len() - 1)].clone();
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
                );
                for line in &reply.lines {
                    out.push_str(line);
                    out.push('\n');
                }
                if conn.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                if reply.hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });
    (origin, seen)
}

fn upstream_to(origin: &ApiOrigin, keepalive: Duration) -> Upstream {
    upstream_with(origin, keepalive, "eyJ.a.b")
}

fn upstream_with(origin: &ApiOrigin, keepalive: Duration, token: &str) -> Upstream {
    crate::upstream::Upstreams::with_keepalive(keepalive)
        .client(origin, crate::credentials::Token::new(token))
}

/// Every event a follower gets until its channel ends, or until `limit`.
async fn events(
    mut rx: mpsc::Receiver<Result<Event, UpstreamError>>,
    limit: Duration,
) -> (Vec<Result<Event, UpstreamError>>, bool) {
    let mut got = Vec::new();
    let ended = tokio::time::timeout(limit, async {
        while let Some(event) = rx.recv().await {
            got.push(event);
        }
    })
    .await
    .is_ok();
    (got, ended)
}

fn chunk_seqs(events: &[Result<Event, UpstreamError>]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Ok(Event::Chunk(c)) => Some(c.seq),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_stream_gone_silent_after_a_keepalive_is_resumed_after_its_last_seq() {
    let (origin, seen) = scripted_runner(vec![
        Reply {
            lines: vec![output(1), KEEPALIVE.into()],
            hang: true,
        },
        Reply {
            lines: vec![output(2), exit(2)],
            hang: false,
        },
    ])
    .await;
    let fanout = Arc::new(Fanout::default());
    let started = std::time::Instant::now();
    let rx = fanout.follow(
        upstream_to(&origin, Duration::from_millis(100)),
        "run_1",
        Follow::after(0),
    );
    let (got, ended) = events(rx, Duration::from_secs(10)).await;
    assert!(ended, "the follow ended: {got:?}");
    assert_eq!(chunk_seqs(&got), [1, 2], "{got:?}");
    assert!(
        matches!(got.last(), Some(Ok(Event::Exit(Exit { last_seq: 2, .. })))),
        "{got:?}"
    );
    // Cut after 0.3 s of silence, resumed after a 0.2 s pause.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let paths = seen.paths();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[1].contains("after_seq=1"), "{paths:?}");
    assert!(paths[1].contains("keepalive_seconds=1"), "{paths:?}");
    assert_eq!(seen.authorizations.load(Ordering::SeqCst), 1);
    // A blip resumed at once is not worth a notice.
    assert!(
        !got.iter().any(|e| matches!(e, Ok(Event::Notice(_)))),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_runner_that_stays_silent_fails_the_followers_once_the_resume_budget_is_spent() {
    let (origin, seen) = scripted_runner(vec![
        Reply {
            lines: vec![output(1), KEEPALIVE.into()],
            hang: true,
        },
        // Half-open from the start: headers, then nothing, on every resume.
        Reply {
            lines: vec![],
            hang: true,
        },
    ])
    .await;
    let budget = Duration::from_secs(2);
    let fanout = Arc::new(Fanout::new(budget));
    let rx = fanout.follow(
        upstream_to(&origin, Duration::from_millis(100)),
        "run_1",
        Follow::after(0),
    );
    let (got, ended) = events(rx, Duration::from_secs(30)).await;
    assert!(ended, "the follow failed instead of hanging: {got:?}");
    assert_eq!(chunk_seqs(&got), [1]);
    match got.last() {
        Some(Err(UpstreamError::Unreachable { reason, .. })) => {
            assert!(reason.contains("sent nothing"), "{reason}")
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // Each resume waits out a 0.3 s silence: the budget allows a few, not one.
    assert!(seen.paths().len() >= 3, "{:?}", seen.paths());
    let notices: Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            Ok(Event::Notice(n)) => Some(n.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        notices,
        [Notice::Unreachable {
            origin: origin.to_string(),
            retry_for: budget,
        }],
        "one notice, once the first resume failed too"
    );
    assert_eq!(fanout.groups(), 0);
}

/// Two tokens that claim the same subject: the second, which the runner refuses, gets the
/// refusal and nothing of the group the first one's follow keeps open.
#[tokio::test]
async fn a_follower_the_runner_refuses_joins_no_group() {
    let (origin, seen) = scripted_runner(vec![Reply {
        lines: vec![output(1), output(2)],
        hang: true,
    }])
    .await;
    use base64::Engine as _;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        r#"{"sub":"alice","iss":"bus-runner","aud":"bus-containers","exp":4000000000,"nbf":0,"iat":0,"scope":"container:read","jti":"j"}"#,
    );
    let accepted = format!("eyJhbGciOiJFZERTQSJ9.{claims}.c2ln");
    let forged = format!("eyJhbGciOiJFZERTQSJ9.{claims}.{REFUSED}");
    let fanout = Arc::new(Fanout::default());
    let keepalive = Duration::from_secs(15);
    let mut owner = fanout.follow(
        upstream_with(&origin, keepalive, &accepted),
        "run_1",
        Follow::after(0),
    );
    for seq in [1, 2] {
        let event = owner.recv().await.unwrap();
        assert!(
            matches!(&event, Ok(Event::Chunk(c)) if c.seq == seq),
            "{event:?}"
        );
    }
    assert_eq!(fanout.groups(), 1);
    // Forged: the same claims (`sub` alice), a signature the runner does not accept.
    let forged = fanout.follow(
        upstream_with(&origin, keepalive, &forged),
        "run_1",
        Follow::after(0),
    );
    let (got, ended) = events(forged, Duration::from_secs(10)).await;
    assert!(ended, "{got:?}");
    match got.as_slice() {
        [Err(UpstreamError::Problem(problem))] => {
            assert_eq!(problem.status, 401, "{problem:?}")
        }
        other => panic!("expected the refusal alone, got {other:?}"),
    }
    assert_eq!(seen.paths().len(), 1, "one upstream stream");
    assert_eq!(seen.authorizations.load(Ordering::SeqCst), 2);
    assert_eq!(fanout.upstream_streams(), 1);
}

#[tokio::test]
async fn a_quiet_stream_from_a_runner_without_keepalives_is_left_open() {
    let (origin, seen) = scripted_runner(vec![Reply {
        lines: vec![output(1)],
        hang: true,
    }])
    .await;
    let fanout = Arc::new(Fanout::default());
    let rx = fanout.follow(
        upstream_to(&origin, Duration::from_millis(100)),
        "run_1",
        Follow::after(0),
    );
    // Ten silence bounds pass: no keepalive was ever seen, so nothing is cut.
    let (got, ended) = events(rx, Duration::from_secs(3)).await;
    assert!(!ended, "{got:?}");
    assert_eq!(chunk_seqs(&got), [1]);
    assert_eq!(seen.paths().len(), 1, "never resumed");
}

#[test]
fn a_group_started_mid_run_holds_nothing_before_its_start() {
    let buffer = Buffer {
        last_seq: 7,
        ..Buffer::default()
    };
    assert!(matches!(buffer.read_after(7, 64), Read::Nothing));
    assert!(matches!(
        buffer.read_after(3, 64),
        Read::Behind { first_held: 8 }
    ));
}

/// The caller that created the run (the runner accepted it for the logs in that create)
/// follows without a `tail=0` of its own; anyone who joins its group after it still asks,
/// and a refused token still gets nothing.
#[tokio::test]
async fn only_the_creator_follows_without_an_authorization_of_its_own() {
    let (origin, seen) = scripted_runner(vec![Reply {
        lines: vec![output(1), KEEPALIVE.into()],
        hang: true,
    }])
    .await;
    let fanout = Arc::new(Fanout::default());
    let mut creator = fanout.follow_created(
        upstream_to(&origin, Duration::from_secs(30)),
        "run_1",
        Follow::after(0),
    );
    let first = tokio::time::timeout(Duration::from_secs(10), creator.recv())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ok(Event::Chunk(_)))), "{first:?}");
    assert_eq!(seen.authorizations.load(Ordering::SeqCst), 0);

    let forged = fanout.follow(
        upstream_with(
            &origin,
            Duration::from_secs(30),
            &format!("eyJ.{REFUSED}.b"),
        ),
        "run_1",
        Follow::after(0),
    );
    let (got, ended) = events(forged, Duration::from_secs(10)).await;
    assert!(ended, "{got:?}");
    assert!(
        chunk_seqs(&got).is_empty(),
        "a refused token read output: {got:?}"
    );
    assert_eq!(seen.authorizations.load(Ordering::SeqCst), 1);
    // One upstream stream, the creator's.
    assert_eq!(seen.paths().len(), 1, "{:?}", seen.paths());
}
