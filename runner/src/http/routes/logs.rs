//! `GET /api/v1/containers/runs/{id}/logs?follow=&after_seq=&tail=&stdout=&stderr=`: the run's
//! output as NDJSON, or in the binary framing of [`bus_api::frames`] when `Accept` names it.
//!
//! Stored frames and live ones are read through one cursor (the `seq` of the last frame
//! covered), always from the store, so nothing is lost or repeated between the two.
//!
//! A follow stream that has sent nothing for [`KEEPALIVE_SECONDS`] (or the request's
//! `keepalive_seconds`, 1 to 300) sends a `{"type":"keepalive"}` frame, so a reader can tell a
//! quiet run from a dead connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bus_api::frames::{self, LOG_FRAMES, Output};
pub use bus_api::runs::{KEEPALIVE_SECONDS, KEEPALIVE_SECONDS_RANGE, LogsQuery};
use bus_api::{LogFrame, NDJSON};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::AppState;
use crate::http::auth::{Caller, Read};
use crate::http::openapi::{BadRequest, Conflict, Forbidden, NotFound};
use crate::http::problem::{ApiError, ApiQuery};
use crate::store::{Entry, Store, StreamFilter};

/// Payload bytes gathered into one body chunk at most.
const BATCH_BYTES: usize = 256 * 1024;

/// The keepalive interval a logs query asks for, checked.
pub trait Keepalive {
    /// How long a follow stream may stay silent before it sends a keepalive frame.
    fn keepalive(&self) -> Result<Duration, ApiError>;
}

impl Keepalive for LogsQuery {
    fn keepalive(&self) -> Result<Duration, ApiError> {
        match self.keepalive_seconds {
            None => Ok(Duration::from_secs(KEEPALIVE_SECONDS)),
            Some(s) if KEEPALIVE_SECONDS_RANGE.contains(&s) => Ok(Duration::from_secs(s)),
            Some(s) => Err(ApiError::InvalidRequest(format!(
                "keepalive_seconds must be from {} to {}, not {s}",
                KEEPALIVE_SECONDS_RANGE.start(),
                KEEPALIVE_SECONDS_RANGE.end()
            ))),
        }
    }
}

/// Streams a run's output.
///
/// NDJSON, one `LogFrame` per line (or, when `Accept` names `application/vnd.bus.log-frames`,
/// the same frames in that binary framing, the output's bytes as they are): `output` frames
/// with a dense per-run `seq` (resume after the last one seen with `after_seq`, and nothing is
/// lost or repeated), then one `exit` frame once the run has ended. With `follow`, the stream
/// stays open for new frames, and an idle one carries `keepalive` frames.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs/{id}/logs",
    tag = "containers",
    operation_id = "runLogs",
    security(("bearer" = ["container:read"])),
    params(
        ("id" = String, Path, description = "The run's id (`run_...`) or its name."),
        ("follow" = Option<bool>, Query,
            description = "Keep the stream open and send new frames until the exit frame."),
        ("after_seq" = Option<u64>, Query,
            description = "Send only frames with a greater `seq`."),
        ("tail" = Option<u64>, Query,
            description = "Start with the last `tail` output frames (of the streams asked for)."),
        ("stdout" = Option<bool>, Query, description = "Include stdout frames (default true)."),
        ("stderr" = Option<bool>, Query, description = "Include stderr frames (default true)."),
        ("keepalive_seconds" = Option<u64>, Query, minimum = 1, maximum = 300,
            description = "With `follow`: a keepalive frame after this many idle seconds (default 15)."),
    ),
    responses(
        (status = 200, description = "NDJSON: one `LogFrame` per line. A reader whose `Accept` \
            names `application/vnd.bus.log-frames` gets the same frames in that binary framing: \
            each a kind byte, then for output (0x01) seq u64, stream u8 (1 stdout, 2 stderr), \
            time i64 (ns since the Unix epoch), length u32 and the bytes; for any other frame \
            (0x02) length u32 and its JSON. Integers are big-endian.",
            content(
                (LogFrame = "application/x-ndjson"),
                (Vec<u8> = "application/vnd.bus.log-frames"),
            )),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
// Every output frame after the cursor, then the exit frame once the run has ended; with
// `follow`, new frames as they come, and a keepalive frame whenever the stream has been
// silent for the keepalive interval. Filtered frames keep their `seq`; the exit frame always
// comes last.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller<Read>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let keepalive = query.keepalive()?;
    let framing = Framing::accepted(&headers);
    let entry = state.store().find(caller.account(), &id)?;
    let filter = StreamFilter {
        stdout: query.stdout,
        stderr: query.stderr,
    };
    tracing::debug!(run = %entry.id, follow = query.follow, after_seq = query.after_seq, ?framing, "log stream opened");
    // Subscribe before placing the cursor, so no frame stored meanwhile goes unnoticed.
    let rx = entry.subscribe();
    let mut cursor = query.after_seq;
    if let Some(n) = query.tail {
        cursor = cursor.max(state.store().tail_cursor(&entry, n, filter).await?);
    }
    let reader = Reader {
        store: state.store().clone(),
        closing: state.store().closing(),
        rx,
        entry,
        cursor,
        filter,
        follow: query.follow,
        keepalive,
        framing,
        last_sent: Instant::now(),
        done: false,
    };
    let body = Body::from_stream(futures::stream::unfold(reader, Reader::next));
    let headers = [
        (header::CONTENT_TYPE, framing.media_type()),
        (header::CACHE_CONTROL, "no-store"),
        (header::VARY, "accept"),
    ];
    Ok((headers, body).into_response())
}

/// How a log stream's frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON frame per line, output base64.
    Ndjson,
    /// [`bus_api::frames`]: output bytes as they are.
    Binary,
}

impl Framing {
    /// The framing a request's `Accept` asks for: binary when it names [`LOG_FRAMES`] (with a
    /// quality above zero), NDJSON otherwise.
    pub fn accepted(headers: &HeaderMap) -> Framing {
        let binary = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let named = parts
                    .next()
                    .is_some_and(|t| t.eq_ignore_ascii_case(LOG_FRAMES));
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                named && !refused
            });
        if binary {
            Framing::Binary
        } else {
            Framing::Ndjson
        }
    }

    /// The response's `Content-Type`.
    pub fn media_type(self) -> &'static str {
        match self {
            Framing::Ndjson => NDJSON,
            Framing::Binary => LOG_FRAMES,
        }
    }

    /// Appends an output frame.
    fn put_output(self, out: &mut Vec<u8>, frame: &Output) {
        match self {
            Framing::Ndjson => put_line(
                out,
                &LogFrame::output(frame.seq, frame.stream, &frame.data, frame.time),
            ),
            Framing::Binary => {
                frames::put_output(out, frame.seq, frame.stream, frame.time, &frame.data)
            }
        }
    }

    /// Appends an exit or keepalive frame.
    fn put_control(self, out: &mut Vec<u8>, frame: &LogFrame) {
        match self {
            Framing::Ndjson => put_line(out, frame),
            Framing::Binary => frames::put_control(out, frame),
        }
    }
}

/// Appends `frame` as an NDJSON line.
fn put_line(out: &mut Vec<u8>, frame: &LogFrame) {
    serde_json::to_writer(&mut *out, frame).expect("a log frame always serializes");
    out.push(b'\n');
}

struct Reader {
    store: Store,
    entry: Arc<Entry>,
    rx: watch::Receiver<()>,
    closing: watch::Receiver<bool>,
    cursor: u64,
    filter: StreamFilter,
    follow: bool,
    /// Silence after which a follow stream sends a keepalive frame.
    keepalive: Duration,
    framing: Framing,
    /// When the last frame (of any kind) went out, or the stream began.
    last_sent: Instant,
    done: bool,
}

impl Reader {
    /// The next body chunk: a batch of frames, or `None` at the end.
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Reader)> {
        if self.done {
            return None;
        }
        loop {
            // Mark the current version seen before reading, so no change is missed.
            self.rx.borrow_and_update();
            let read = match self
                .store
                .read(&self.entry, self.cursor, self.filter, BATCH_BYTES)
                .await
            {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(run = %self.entry.id, error = %e, "reading the run's output failed; ending the stream");
                    return None;
                }
            };
            self.cursor = read.last_seq;
            if !read.frames.is_empty() || read.exit.is_some() {
                let mut out = Vec::new();
                for frame in &read.frames {
                    self.framing.put_output(&mut out, frame);
                }
                if let Some(exit) = &read.exit {
                    self.framing.put_control(&mut out, exit);
                }
                self.done = read.exit.is_some();
                self.last_sent = Instant::now();
                return Some((Ok(Bytes::from(out)), self));
            }
            // A deleted run still ends (its executor records why), so followers wait for that.
            if !self.follow || *self.closing.borrow() {
                return None;
            }
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { return None },
                _ = self.closing.changed() => return None,
                () = tokio::time::sleep_until(self.last_sent + self.keepalive) => {
                    self.last_sent = Instant::now();
                    let mut out = Vec::new();
                    self.framing.put_control(&mut out, &LogFrame::Keepalive);
                    return Some((Ok(Bytes::from(out)), self));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bus_api::{Run, RunState, Stream};
    use time::OffsetDateTime;

    use super::*;
    use crate::store::{Inserted, NewRun};

    fn query(keepalive_seconds: Option<u64>) -> LogsQuery {
        LogsQuery {
            follow: true,
            after_seq: 0,
            tail: None,
            stdout: true,
            stderr: true,
            keepalive_seconds,
        }
    }

    #[test]
    fn the_keepalive_interval_defaults_and_is_bounded() {
        assert_eq!(
            query(None).keepalive().unwrap(),
            Duration::from_secs(KEEPALIVE_SECONDS)
        );
        assert_eq!(query(Some(1)).keepalive().unwrap(), Duration::from_secs(1));
        assert_eq!(
            query(Some(300)).keepalive().unwrap(),
            Duration::from_secs(300)
        );
        for bad in [0, 301, u64::MAX] {
            let err = query(Some(bad)).keepalive().unwrap_err();
            assert!(
                err.to_string()
                    .contains("keepalive_seconds must be from 1 to 300"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_binary_framing_is_chosen_only_when_accept_names_it() {
        let framing = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::ACCEPT, value.parse().unwrap());
            }
            Framing::accepted(&headers)
        };
        assert_eq!(framing(&[]), Framing::Ndjson, "no Accept");
        for binary in [
            LOG_FRAMES,
            "APPLICATION/VND.BUS.LOG-FRAMES",
            " application/vnd.bus.log-frames ; q=1",
            "application/x-ndjson;q=0.5, application/vnd.bus.log-frames;q=0.9",
        ] {
            assert_eq!(framing(&[binary]), Framing::Binary, "{binary}");
        }
        assert_eq!(
            framing(&["application/x-ndjson", LOG_FRAMES]),
            Framing::Binary,
            "named in a second Accept header"
        );
        for ndjson in [
            "*/*",
            "application/*",
            "application/x-ndjson",
            "application/vnd.bus.log-frames;q=0",
            "application/vnd.bus.log-frames; q=0.0, */*",
            "application/vnd.bus.log-frames-v2",
            "text/plain",
        ] {
            assert_eq!(framing(&[ndjson]), Framing::Ndjson, "{ndjson}");
        }
    }

    #[test]
    fn keepalive_seconds_is_a_known_query_parameter() {
        let uri: axum::http::Uri = "/logs?follow=true&keepalive_seconds=2".parse().unwrap();
        let axum::extract::Query(q) =
            axum::extract::Query::<LogsQuery>::try_from_uri(&uri).unwrap();
        assert_eq!(q.keepalive_seconds, Some(2));
    }

    async fn live_run(store: &Store) -> Arc<Entry> {
        let record = Run {
            id: "run_keepalive".to_owned(),
            state: RunState::Queued,
            exit_code: None,
            profile: None,
            image: "img".to_owned(),
            argv: vec![],
            name: None,
            participant: None,
            role: None,
            labels: BTreeMap::new(),
            created_at: OffsetDateTime::now_utc(),
            started_at: None,
            finished_at: None,
            reason: None,
            wall_seconds: None,
            options: Default::default(),
        };
        let new = NewRun {
            record,
            timeout: Duration::from_secs(600),
            idempotency: None,
        };
        match store.insert("alice", new).await.unwrap() {
            Inserted::Created(entry) => entry,
            other => panic!("expected a new run, got {other:?}"),
        }
    }

    fn reader(store: &Store, entry: &Arc<Entry>, follow: bool, keepalive: Duration) -> Reader {
        Reader {
            store: store.clone(),
            closing: store.closing(),
            rx: entry.subscribe(),
            entry: entry.clone(),
            cursor: 0,
            filter: StreamFilter {
                stdout: true,
                stderr: true,
            },
            follow,
            keepalive,
            framing: Framing::Ndjson,
            last_sent: Instant::now(),
            done: false,
        }
    }

    /// The frames of one body chunk.
    fn frames(chunk: &Bytes) -> Vec<LogFrame> {
        chunk
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    async fn next(reader: Reader) -> (Vec<LogFrame>, Reader) {
        let (chunk, reader) = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("the reader answers")
            .expect("the stream goes on");
        (frames(&chunk.unwrap()), reader)
    }

    #[tokio::test]
    async fn an_idle_follow_stream_sends_keepalives_between_frames() {
        let store = Store::temporary().unwrap();
        let entry = live_run(&store).await;
        let every = Duration::from_millis(100);
        let reader = reader(&store, &entry, true, every);

        let started = std::time::Instant::now();
        let (got, reader) = next(reader).await;
        assert_eq!(got, [LogFrame::Keepalive]);
        assert!(started.elapsed() >= every, "{:?}", started.elapsed());
        let (got, reader) = next(reader).await;
        assert_eq!(got, [LogFrame::Keepalive], "and again while it stays idle");

        entry
            .push_output(Stream::Stdout, Bytes::from_static(b"hi\n"))
            .await;
        let (got, reader) = next(reader).await;
        assert!(
            matches!(got.as_slice(), [LogFrame::Output { seq: 1, .. }]),
            "output, not a keepalive: {got:?}"
        );

        entry.finish(RunState::Exited, Some(0), None).await;
        let (got, reader) = next(reader).await;
        assert!(
            matches!(got.last(), Some(LogFrame::Exit { last_seq: 1, .. })),
            "{got:?}"
        );
        assert!(reader.next().await.is_none(), "nothing after the exit");
    }

    #[tokio::test]
    async fn a_busy_stream_sends_no_keepalives() {
        let store = Store::temporary().unwrap();
        let entry = live_run(&store).await;
        let every = Duration::from_millis(300);
        let mut reader = reader(&store, &entry, true, every);
        let writer = {
            let entry = entry.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    entry
                        .push_output(Stream::Stdout, Bytes::from_static(b"x"))
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                entry.finish(RunState::Exited, Some(0), None).await;
            })
        };
        let mut all = Vec::new();
        loop {
            let (got, next_reader) = next(reader).await;
            reader = next_reader;
            let ended = matches!(got.last(), Some(LogFrame::Exit { .. }));
            all.extend(got);
            if ended {
                break;
            }
        }
        writer.await.unwrap();
        assert!(!all.contains(&LogFrame::Keepalive), "{all:?}");
    }

    #[tokio::test]
    async fn a_stream_that_is_not_followed_never_sends_one() {
        let store = Store::temporary().unwrap();
        let entry = live_run(&store).await;
        let reader = reader(&store, &entry, false, Duration::from_millis(10));
        let end = tokio::time::timeout(Duration::from_secs(5), reader.next())
            .await
            .unwrap();
        assert!(end.is_none(), "an empty read of a live run just ends");
    }
}
