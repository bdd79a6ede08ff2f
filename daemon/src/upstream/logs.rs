//! Log streams: frames (binary when the runner offers it, NDJSON otherwise) with keepalives
//! dropped and silence bounded, so a half-open connection fails instead of hanging.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus_api::frames::{self, Frame, FrameError, LOG_FRAMES};
use bus_api::runs::{KEEPALIVE_SECONDS, KEEPALIVE_SECONDS_RANGE, LogsQuery};
use bus_api::{LogFrame, NDJSON, paths};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::error::frame_error;
use super::{Upstream, UpstreamError, ndjson};

/// The runner's default keepalive interval on follow streams (its `KEEPALIVE_SECONDS`). busd
/// asks for it by leaving `keepalive_seconds` out, so runners from before the parameter
/// existed (which refuse unknown query parameters) still answer.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(KEEPALIVE_SECONDS);
/// Keepalive intervals without a byte after which a log stream is presumed broken.
pub const SILENCE_INTERVALS: u32 = 3;
/// Test-only override of the keepalive interval busd asks follow streams for, in whole
/// seconds (1 to 300, the runner's bounds); the silence bound follows it ([`SILENCE_INTERVALS`]
/// times). Read once, when busd starts. Any other value is ignored.
pub const KEEPALIVE_ENV: &str = "BUSD_UPSTREAM_KEEPALIVE_SECONDS";

/// Whether the runner has been seen sending keepalive frames on the streams of one follow;
/// shared by that follow's successive (resumed) streams.
///
/// The silence of a follow stream is bounded only once a keepalive has been seen on it, or on
/// an earlier stream of the same follow: a runner from before keepalives existed sends nothing
/// while a run is quiet, and its streams must not be cut for that. Knowing it across resumes
/// matters: a resumed stream that is half-open from its first byte shows no keepalive, and
/// would otherwise hang. (A runner replaced by an older one behind the same follow is cut
/// after each silence bound and resumed, and the follow ends when its resume budget is spent.)
#[derive(Debug, Clone, Default)]
pub struct KeepalivesSeen(Arc<AtomicBool>);

impl KeepalivesSeen {
    /// Whether a keepalive has been seen.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// When a log stream's silence means a broken connection.
#[derive(Debug, Clone)]
struct Silence {
    /// No bytes for this long is a broken connection.
    bound: Duration,
    /// Bound from the first byte: a stream that is not followed never pauses.
    always: bool,
    /// Otherwise bound once the runner has shown it sends keepalives.
    seen: KeepalivesSeen,
}

impl Silence {
    fn enforced(&self) -> bool {
        self.always || self.seen.get()
    }
}

/// The keepalive interval named by [`KEEPALIVE_ENV`]'s value, if it is a valid one.
pub fn keepalive_from_env(value: Option<&str>) -> Option<Duration> {
    let seconds: u64 = value?.trim().parse().ok()?;
    KEEPALIVE_SECONDS_RANGE
        .contains(&seconds)
        .then(|| Duration::from_secs(seconds))
}

impl Upstream {
    /// `GET /api/v1/containers/runs/{id}/logs?follow&after_seq`: the run's frames after
    /// `after_seq`, ending with the exit frame once the run has ended.
    pub async fn logs(
        &self,
        id: &str,
        after_seq: u64,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<Frame, UpstreamError>> + use<>, UpstreamError> {
        self.logs_with(id, &LogsQuery::after(after_seq, follow))
            .await
    }

    /// Asks the runner whether this context's token may read run `id`'s logs, reading none:
    /// `logs?tail=0`, answered like any logs request (`token_invalid`, `token_expired`,
    /// `scope_missing`, `logs_disabled`, `not_found`) and otherwise with at most the exit frame.
    pub async fn authorize_logs(&self, id: &str) -> Result<(), UpstreamError> {
        let query = LogsQuery {
            tail: Some(0),
            ..LogsQuery::after(0, false)
        };
        let frames = self.logs_with(id, &query).await?;
        // The answer is the verdict; the (tiny) body is read only so the connection is reused.
        let mut frames = std::pin::pin!(frames);
        while let Some(Ok(_)) = frames.next().await {}
        Ok(())
    }

    /// One stream of a follow that may be resumed: `logs?follow=true&after_seq`, whose
    /// silence is bounded once `seen` (shared by the follow's streams) says the runner sends
    /// keepalives.
    pub async fn follow_logs(
        &self,
        id: &str,
        after_seq: u64,
        seen: &KeepalivesSeen,
    ) -> Result<impl Stream<Item = Result<Frame, UpstreamError>> + use<>, UpstreamError> {
        self.logs_seen(id, &LogsQuery::after(after_seq, true), seen.clone())
            .await
    }

    /// `GET /api/v1/containers/runs/{id}/logs` with every option of [`LogsQuery`].
    ///
    /// The runner is asked for the binary framing ([`LOG_FRAMES`]) and NDJSON is read when it
    /// answers that (as runners from before the binary framing do). Keepalive frames are
    /// dropped. The response's headers must come within the silence bound
    /// ([`SILENCE_INTERVALS`] keepalive intervals); then a stream that is not followed is cut
    /// as broken (`Unreachable`) after that long without a byte, and a followed one too once a
    /// keepalive has come on it.
    pub async fn logs_with(
        &self,
        id: &str,
        query: &LogsQuery,
    ) -> Result<impl Stream<Item = Result<Frame, UpstreamError>> + use<>, UpstreamError> {
        self.logs_seen(id, query, KeepalivesSeen::default()).await
    }

    /// How long a log stream may go without a byte once its silence is bounded.
    pub fn silence_bound(&self) -> Duration {
        self.keepalive.saturating_mul(SILENCE_INTERVALS)
    }

    async fn logs_seen(
        &self,
        id: &str,
        query: &LogsQuery,
        seen: KeepalivesSeen,
    ) -> Result<impl Stream<Item = Result<Frame, UpstreamError>> + use<>, UpstreamError> {
        let query = LogsQuery {
            // Named only when not the default: older runners refuse unknown parameters.
            keepalive_seconds: (query.follow && self.keepalive != DEFAULT_KEEPALIVE)
                .then(|| self.keepalive.as_secs().max(1)),
            ..query.clone()
        };
        let request = self
            .request(Method::GET, &paths::run_logs(id))
            .header(ACCEPT, ACCEPTED)
            .query(&query);
        let bound = self.silence_bound();
        let response = tokio::time::timeout(bound, self.send(request))
            .await
            .map_err(|_| UpstreamError::Unreachable {
                origin: self.origin.to_string(),
                reason: format!(
                    "no answer to a log request within {}; the connection is presumed broken",
                    seconds(bound)
                ),
            })??;
        let silence = Silence {
            bound,
            always: !query.follow,
            seen,
        };
        let origin = self.origin.to_string();
        let decoder = LogDecoder::for_content_type(
            response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let bytes = response.bytes_stream().map_err({
            let origin = origin.clone();
            move |e| UpstreamError::Unreachable {
                origin: origin.clone(),
                reason: e.to_string(),
            }
        });
        Ok(log_frames(bytes, decoder, origin, silence))
    }
}

/// What busd's log requests accept: the binary framing first.
const ACCEPTED: &str = "application/vnd.bus.log-frames, application/x-ndjson;q=0.5";

/// A log stream's decoder, for the framing the runner answered with.
#[derive(Debug)]
enum LogDecoder {
    Ndjson(ndjson::FrameDecoder<LogFrame>),
    Binary(frames::FrameDecoder),
}

impl LogDecoder {
    /// The binary decoder for [`LOG_FRAMES`], NDJSON for anything else.
    fn for_content_type(content_type: Option<&str>) -> LogDecoder {
        let media_type = content_type
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .unwrap_or(NDJSON);
        if media_type.eq_ignore_ascii_case(LOG_FRAMES) {
            LogDecoder::Binary(frames::FrameDecoder::new())
        } else {
            LogDecoder::Ndjson(ndjson::FrameDecoder::new())
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        match self {
            LogDecoder::Ndjson(d) => d.push(chunk),
            LogDecoder::Binary(d) => d.push(chunk),
        }
    }

    fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        match self {
            LogDecoder::Ndjson(d) => d.next_frame().map(|f| f.and_then(Frame::try_from)),
            LogDecoder::Binary(d) => d.next_frame(),
        }
    }

    fn finish(&self) -> Result<(), FrameError> {
        match self {
            LogDecoder::Ndjson(d) => d.finish(),
            LogDecoder::Binary(d) => d.finish(),
        }
    }
}

/// A duration as whole or fractional seconds, for messages: "45 s", "0.3 s".
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Splits a log stream's bytes into frames with `decoder`, dropping keepalive frames; past
/// `silence`'s bound without a byte, once it is enforced, the stream ends with `Unreachable`.
fn log_frames<S>(
    bytes: S,
    decoder: LogDecoder,
    origin: String,
    silence: Silence,
) -> impl Stream<Item = Result<Frame, UpstreamError>>
where
    S: Stream<Item = Result<bytes::Bytes, UpstreamError>> + Unpin,
{
    let protocol = frame_error;
    futures::stream::unfold(
        (bytes, decoder, origin, silence, false),
        move |(mut bytes, mut decoder, origin, silence, done)| async move {
            if done {
                return None;
            }
            loop {
                match decoder.next_frame() {
                    Some(Ok(Frame::Control(LogFrame::Keepalive))) => {
                        silence.seen.set();
                        continue;
                    }
                    Some(Ok(frame)) => {
                        return Some((Ok(frame), (bytes, decoder, origin, silence, false)));
                    }
                    Some(Err(e)) => {
                        let err = protocol(&origin, e);
                        return Some((Err(err), (bytes, decoder, origin, silence, true)));
                    }
                    None => {}
                }
                let next = if silence.enforced() {
                    match tokio::time::timeout(silence.bound, bytes.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            let err = UpstreamError::Unreachable {
                                origin: origin.clone(),
                                reason: format!(
                                    "the log stream sent nothing for {}, although the runner sends keepalives; the connection is presumed broken",
                                    seconds(silence.bound)
                                ),
                            };
                            return Some((Err(err), (bytes, decoder, origin, silence, true)));
                        }
                    }
                } else {
                    bytes.next().await
                };
                match next {
                    Some(Ok(chunk)) => decoder.push(&chunk),
                    Some(Err(e)) => return Some((Err(e), (bytes, decoder, origin, silence, true))),
                    None => {
                        let end = decoder.finish().map_err(|e| protocol(&origin, e));
                        return end
                            .err()
                            .map(|err| (Err(err), (bytes, decoder, origin, silence, true)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Token;
    use crate::upstream::{ApiOrigin, Upstreams};

    fn ndjson_frames<S>(
        bytes: S,
        origin: String,
        silence: Silence,
    ) -> impl Stream<Item = Result<Frame, UpstreamError>>
    where
        S: Stream<Item = Result<bytes::Bytes, UpstreamError>> + Unpin,
    {
        log_frames(
            bytes,
            LogDecoder::for_content_type(Some(NDJSON)),
            origin,
            silence,
        )
    }

    fn frames_of(chunks: Vec<&'static [u8]>) -> Vec<Result<Frame, String>> {
        let bytes = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, UpstreamError>(bytes::Bytes::from_static(c))),
        );
        let frames = ndjson_frames(bytes, "http://o".into(), unbounded())
            .map(|r| r.map_err(|e| e.to_string()));
        futures::executor::block_on(frames.collect())
    }

    #[test]
    fn frames_split_across_chunks_are_joined() {
        let got = frames_of(vec![
            b"{\"type\":\"output\",\"seq\":1,\"stream\":\"stdout\",\"da",
            b"ta\":\"T0s=\",\"time\":\"2024-01-01T00:00:00Z\"}\n{\"type\":\"exit\",\"state\":\"exited\",",
            b"\"exit_code\":0,\"last_seq\":1}\n",
        ]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            matches!(&got[0], Ok(Frame::Output(o)) if o.data == b"OK"[..]),
            "{got:?}"
        );
        assert!(matches!(
            got[1],
            Ok(Frame::Control(LogFrame::Exit {
                exit_code: Some(0),
                last_seq: 1,
                ..
            }))
        ));
    }

    /// A silence that is never enforced (no keepalive comes in these streams).
    fn unbounded() -> Silence {
        Silence {
            bound: Duration::from_secs(45),
            always: false,
            seen: KeepalivesSeen::default(),
        }
    }

    const OUTPUT_1: &[u8] =
        b"{\"type\":\"output\",\"seq\":1,\"stream\":\"stdout\",\"data\":\"T0s=\",\"time\":\"2024-01-01T00:00:00Z\"}\n";
    const KEEPALIVE: &[u8] = b"{\"type\":\"keepalive\"}\n";

    /// A byte stream fed by hand, and frames read from it with `silence`.
    fn fed(
        silence: Silence,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<&'static [u8]>,
        impl Stream<Item = Result<Frame, UpstreamError>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<&'static [u8]>();
        let bytes = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|b| Ok::<_, UpstreamError>(bytes::Bytes::from_static(b)));
        (
            tx,
            Box::pin(ndjson_frames(bytes, "http://o".into(), silence)),
        )
    }

    fn bounded(always: bool, seen: &KeepalivesSeen) -> Silence {
        Silence {
            bound: Duration::from_secs(3),
            always,
            seen: seen.clone(),
        }
    }

    #[tokio::test]
    async fn keepalive_frames_are_dropped_and_noted() {
        let seen = KeepalivesSeen::default();
        let bytes = futures::stream::iter(
            [KEEPALIVE, OUTPUT_1, KEEPALIVE]
                .map(|c| Ok::<_, UpstreamError>(bytes::Bytes::from_static(c))),
        );
        let silence = Silence {
            seen: seen.clone(),
            ..unbounded()
        };
        let got: Vec<_> = ndjson_frames(bytes, "http://o".into(), silence)
            .collect()
            .await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(matches!(
            got[0],
            Ok(Frame::Output(frames::Output { seq: 1, .. }))
        ));
        assert!(seen.get());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_a_keepalive_is_a_broken_connection() {
        let seen = KeepalivesSeen::default();
        let (tx, mut frames) = fed(bounded(false, &seen));
        tx.send(OUTPUT_1).unwrap();
        tx.send(KEEPALIVE).unwrap();
        assert!(matches!(
            frames.next().await,
            Some(Ok(Frame::Output(frames::Output { seq: 1, .. })))
        ));
        let started = tokio::time::Instant::now();
        let err = frames.next().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(
            matches!(&err, UpstreamError::Unreachable { reason, .. } if reason.contains("sent nothing for 3 s")),
            "{err:?}"
        );
        assert!(frames.next().await.is_none(), "the stream ends there");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn each_byte_restarts_the_silence_bound() {
        let seen = KeepalivesSeen::default();
        let (tx, mut frames) = fed(bounded(false, &seen));
        tx.send(KEEPALIVE).unwrap();
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                tx.send(KEEPALIVE).unwrap();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            tx.send(OUTPUT_1).unwrap();
            tx
        });
        let started = tokio::time::Instant::now();
        assert!(matches!(
            frames.next().await,
            Some(Ok(Frame::Output(frames::Output { seq: 1, .. })))
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(12));
        drop(feeder.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_follow_stream_without_keepalives_is_never_cut() {
        // An older runner: no keepalives, so a quiet run's stream must stay open.
        let (tx, mut frames) = fed(bounded(false, &KeepalivesSeen::default()));
        tx.send(OUTPUT_1).unwrap();
        assert!(frames.next().await.unwrap().is_ok());
        let waited = tokio::time::timeout(Duration::from_secs(3600), frames.next()).await;
        assert!(waited.is_err(), "still open after an hour: {waited:?}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_stream_is_bounded_from_its_first_byte() {
        // The follow's earlier stream saw a keepalive; this one is half-open from the start.
        let seen = KeepalivesSeen::default();
        seen.set();
        let (tx, mut frames) = fed(bounded(false, &seen));
        let started = tokio::time::Instant::now();
        assert!(matches!(
            frames.next().await,
            Some(Err(UpstreamError::Unreachable { .. }))
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_is_not_followed_is_always_bounded() {
        let (tx, mut frames) = fed(bounded(true, &KeepalivesSeen::default()));
        assert!(matches!(
            frames.next().await,
            Some(Err(UpstreamError::Unreachable { .. }))
        ));
        drop(tx);
    }

    #[test]
    fn the_keepalive_override_takes_whole_seconds_in_the_runners_bounds() {
        assert_eq!(keepalive_from_env(Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(
            keepalive_from_env(Some(" 300 ")),
            Some(Duration::from_secs(300))
        );
        for bad in [
            None,
            Some(""),
            Some("0"),
            Some("301"),
            Some("1.5"),
            Some("x"),
        ] {
            assert_eq!(keepalive_from_env(bad), None, "{bad:?}");
        }
        let upstreams = Upstreams::with_keepalive(Duration::from_secs(2));
        let origin = ApiOrigin::parse("http://o").unwrap();
        assert_eq!(
            upstreams
                .client(&origin, Token::new("eyJ.a.b"))
                .silence_bound(),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_an_end() {
        let got = frames_of(vec![b"{\"type\":\"exit\""]);
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().unwrap_err().contains("ended in the middle"));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let got = frames_of(vec![b"<html>\n"]);
        assert!(got[0].as_ref().unwrap_err().contains("invalid frame"));
    }

    #[tokio::test]
    async fn the_binary_framing_is_read_when_the_runner_answers_with_it() {
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let mut wire = Vec::new();
        frames::put_output(&mut wire, 1, bus_api::Stream::Stdout, at, b"raw\x00bytes");
        frames::put_control(&mut wire, &LogFrame::Keepalive);
        frames::put_control(
            &mut wire,
            &LogFrame::Exit {
                state: bus_api::RunState::Exited,
                exit_code: Some(0),
                reason: None,
                last_seq: 1,
                finished_at: None,
            },
        );
        let decoder =
            LogDecoder::for_content_type(Some("application/vnd.bus.log-frames; charset=binary"));
        assert!(matches!(decoder, LogDecoder::Binary(_)), "{decoder:?}");
        let chunks = wire
            .chunks(5)
            .map(|c| Ok::<_, UpstreamError>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>();
        let got: Vec<_> = log_frames(
            futures::stream::iter(chunks),
            decoder,
            "http://o".into(),
            unbounded(),
        )
        .collect()
        .await;
        assert_eq!(got.len(), 2, "the keepalive is dropped: {got:?}");
        assert!(
            matches!(&got[0], Ok(Frame::Output(o)) if o.data == b"raw\x00bytes"[..]),
            "{got:?}"
        );
        assert!(matches!(
            got[1],
            Ok(Frame::Control(LogFrame::Exit { last_seq: 1, .. }))
        ));
        for other in [None, Some("application/x-ndjson"), Some("text/plain")] {
            assert!(
                matches!(LogDecoder::for_content_type(other), LogDecoder::Ndjson(_)),
                "{other:?}"
            );
        }
    }
}
