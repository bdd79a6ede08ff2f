//! One upstream log stream per run, shared by every local follower of that run.
//!
//! A `Group` follows `GET .../runs/{id}/logs?follow=true` once and keeps the frames it has
//! seen in a bounded buffer; each follower reads that buffer through its own cursor (the seq
//! of the last chunk it was given), so a slow follower never holds up the others. A follower
//! whose cursor falls behind what the buffer still holds re-reads the missing seqs from the
//! runner's store with a request of its own, or, if that fails, is told of an explicit gap.
//!
//! Nobody reads a group on a claim: before a follower joins (or starts) a group, the runner
//! must accept the follower's own token for that run's logs, through a request of its own
//! (`logs?tail=0`, which reads no output). Whatever the runner refuses (a forged or expired
//! token, a missing `container:read` scope, a grant without logs, another account's token)
//! reaches that follower exactly as it would without a group, and the follower never sees a
//! byte of the group's. Groups are keyed by origin, run id and the account of a token the
//! runner has just accepted (two accounts never share one) and end when their last follower
//! leaves.
//!
//! A broken upstream stream is resumed by the group with `after_seq` = the last seq it holds,
//! so followers see neither a duplicate nor a hole. A silent upstream is a broken one: the
//! runner's keepalive frames are dropped by [`Upstream::follow_logs`], which cuts a stream
//! that goes without a byte for [`crate::upstream::SILENCE_INTERVALS`] keepalive intervals
//! once the group has seen the runner send keepalives (on this stream or an earlier one of
//! the group; see [`KeepalivesSeen`]). The cut is resumed like any break, with growing pauses
//! (at most [`MAX_RESUME_PAUSE`]), for as long as the group's resume budget (`resume_for`,
//! [`DEFAULT_RESUME_FOR`] unless configured) allows from the first failure without progress;
//! then the followers get the last error (`UNAVAILABLE`). When the first resume fails too, the
//! followers get a [`Notice::Unreachable`], and a [`Notice::Restored`] with the next frame.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus_api::runs::LogsQuery;
use bus_api::{LogFrame, RunState, Stream as StdStream};
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::upstream::{KeepalivesSeen, Upstream, UpstreamError};

mod read;

pub use read::LogRead;

/// Output bytes a group keeps for late or slow followers before dropping the oldest.
const MAX_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// How long a group goes on resuming a broken upstream stream, from the first failure without
/// progress, unless busd is configured otherwise (`resume_for`).
pub const DEFAULT_RESUME_FOR: Duration = bus::config::DEFAULT_RESUME_FOR;
/// The pause before the first resume; each further one doubles it, up to [`MAX_RESUME_PAUSE`].
const FIRST_RESUME_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two resumes.
pub const MAX_RESUME_PAUSE: Duration = Duration::from_secs(2);
/// Events queued per follower before its reader waits for the client.
const FOLLOWER_BUFFER: usize = 64;

/// One chunk of a run's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Dense per-run sequence number.
    pub seq: u64,
    /// stdout or stderr.
    pub stream: StdStream,
    /// The bytes.
    pub data: Bytes,
    /// When the runner read them.
    pub time: OffsetDateTime,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The final state.
    pub state: RunState,
    /// The exit code, when the command exited.
    pub exit_code: Option<i32>,
    /// Why, when it did not simply exit.
    pub reason: Option<String>,
    /// The seq of the last chunk.
    pub last_seq: u64,
    /// When it ended.
    pub finished_at: Option<OffsetDateTime>,
}

/// What a follower receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Output, in seq order.
    Chunk(Chunk),
    /// Output from `after` up to `first_available - 1` could not be delivered.
    Gap {
        /// The next seq the follower will see.
        first_available_seq: u64,
        /// Why.
        reason: String,
    },
    /// Nothing happened for the requested keepalive interval.
    Keepalive,
    /// Something about the stream rather than the output (see [`Notice`]).
    Notice(Notice),
    /// The run ended; the last event.
    Exit(Exit),
}

/// What a group tells its followers about its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The runner stopped answering; the group goes on trying for up to `retry_for`.
    Unreachable {
        /// The runner's origin.
        origin: String,
        /// The group's whole resume budget.
        retry_for: Duration,
    },
    /// The runner answers again.
    Restored {
        /// The runner's origin.
        origin: String,
    },
}

impl Notice {
    /// One line for a person.
    pub fn message(&self) -> String {
        match self {
            Notice::Unreachable { origin, retry_for } => format!(
                "the runner at {origin} is unreachable; retrying for up to {}",
                humantime::format_duration(*retry_for)
            ),
            Notice::Restored { origin } => format!("the runner at {origin} answers again"),
        }
    }
}

/// What a follower asks for.
#[derive(Debug, Clone)]
pub struct Follow {
    /// Deliver chunks with a seq above this.
    pub after_seq: u64,
    /// Deliver stdout chunks.
    pub stdout: bool,
    /// Deliver stderr chunks.
    pub stderr: bool,
    /// Send [`Event::Keepalive`] after this long without an event.
    pub keepalive: Option<Duration>,
}

impl Follow {
    /// Everything after `after_seq`, both streams, no keepalives.
    pub fn after(after_seq: u64) -> Self {
        Follow {
            after_seq,
            stdout: true,
            stderr: true,
            keepalive: None,
        }
    }

    fn wants(&self, stream: StdStream) -> bool {
        match stream {
            StdStream::Stdout => self.stdout,
            StdStream::Stderr => self.stderr,
        }
    }
}

/// What a group is shared by: one run of one origin, read by one account. `account` is only
/// ever taken from a token the runner has just accepted for this run's logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    origin: String,
    account: Account,
    run_id: String,
}

/// The account of an accepted token: its subject, or (for a token that is not a JWT) a hash
/// of the token, never the token in clear.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Account {
    Subject(String),
    OpaqueToken(u64),
}

/// Every live group of this daemon.
pub struct Fanout {
    groups: Mutex<HashMap<GroupKey, Arc<Group>>>,
    upstream_streams: AtomicU64,
    resume_for: Duration,
}

impl Default for Fanout {
    /// No groups; a resume budget of [`DEFAULT_RESUME_FOR`].
    fn default() -> Self {
        Fanout::new(DEFAULT_RESUME_FOR)
    }
}

/// The buffer and state one group shares with its followers.
struct Group {
    key: GroupKey,
    buffer: Mutex<Buffer>,
    changed: watch::Sender<()>,
    followers: AtomicU64,
    task: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct Buffer {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    /// The seq of the last chunk the group has received (0 before any).
    last_seq: u64,
    /// While the runner is unreachable: the outage's number and its notice.
    outage: Option<(u64, Notice)>,
    /// How many outages the group has had.
    outages: u64,
    /// How the run ended, once it has (or why following it failed).
    end: Option<Result<Exit, UpstreamError>>,
}

/// A read of a group's buffer after a cursor.
enum Read {
    Chunks(Vec<Chunk>),
    /// Seqs after the cursor up to `first_held - 1` are no longer held.
    Behind {
        first_held: u64,
    },
    End(Result<Exit, UpstreamError>),
    Nothing,
}

impl Buffer {
    fn first_held(&self) -> u64 {
        self.chunks.front().map_or(self.last_seq + 1, |c| c.seq)
    }

    fn read_after(&self, cursor: u64, max: usize) -> Read {
        if cursor < self.last_seq {
            let first_held = self.first_held();
            if cursor + 1 < first_held {
                return Read::Behind { first_held };
            }
            let start = (cursor + 1 - first_held) as usize;
            return Read::Chunks(self.chunks.iter().skip(start).take(max).cloned().collect());
        }
        match &self.end {
            Some(end) => Read::End(end.clone()),
            None => Read::Nothing,
        }
    }

    fn push(&mut self, chunk: Chunk) {
        self.bytes += chunk.data.len();
        self.last_seq = chunk.seq;
        self.chunks.push_back(chunk);
        while self.bytes > MAX_BUFFER_BYTES && self.chunks.len() > 1 {
            let dropped = self.chunks.pop_front().expect("more than one chunk");
            self.bytes -= dropped.data.len();
        }
    }
}

impl Fanout {
    /// No groups; each goes on resuming a broken upstream stream for `resume_for` from the
    /// first failure without progress.
    pub fn new(resume_for: Duration) -> Self {
        Fanout {
            groups: Mutex::default(),
            upstream_streams: AtomicU64::new(0),
            resume_for,
        }
    }

    /// How long a group goes on resuming.
    pub fn resume_for(&self) -> Duration {
        self.resume_for
    }

    /// How many upstream log streams this daemon has opened so far.
    pub fn upstream_streams(&self) -> u64 {
        self.upstream_streams.load(Ordering::Relaxed)
    }

    /// How many groups (runs being followed) are live.
    pub fn groups(&self) -> usize {
        self.groups.lock().expect("fanout lock").len()
    }

    /// Follows `run_id` through its group, once the runner has accepted `upstream`'s token for
    /// the run's logs (a `logs?tail=0` request of its own; its refusal is this follower's only
    /// event). The group, and its one upstream stream, is created if this is its first
    /// follower. `upstream` is this caller's; it opens the group's stream when the group is
    /// new, and fills this follower's gaps.
    pub fn follow(
        self: &Arc<Self>,
        upstream: Upstream,
        run_id: &str,
        follow: Follow,
    ) -> mpsc::Receiver<Result<Event, UpstreamError>> {
        let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
        let fanout = self.clone();
        let run_id = run_id.to_owned();
        tokio::spawn(async move {
            let accepted = tokio::select! {
                accepted = upstream.authorize_logs(&run_id) => accepted,
                () = tx.closed() => return,
            };
            if let Err(e) = accepted {
                let _ = tx.send(Err(e)).await;
                return;
            }
            // Only now is the token's subject one the runner has verified.
            let account = match upstream.token_subject() {
                Some(sub) => Account::Subject(sub.to_owned()),
                None => Account::OpaqueToken(upstream.token_hash()),
            };
            let key = GroupKey {
                origin: upstream.origin().to_string(),
                account,
                run_id,
            };
            let group = fanout.join(key, &upstream, follow.after_seq);
            let guard = Membership {
                fanout,
                group: group.clone(),
            };
            deliver(&group, &upstream, follow, &tx).await;
            drop(guard);
        });
        rx
    }

    fn join(self: &Arc<Self>, key: GroupKey, upstream: &Upstream, after_seq: u64) -> Arc<Group> {
        let mut groups = self.groups.lock().expect("fanout lock");
        if let Some(group) = groups.get(&key) {
            group.followers.fetch_add(1, Ordering::SeqCst);
            return group.clone();
        }
        let group = Arc::new(Group {
            key: key.clone(),
            buffer: Mutex::new(Buffer {
                last_seq: after_seq,
                ..Buffer::default()
            }),
            changed: watch::channel(()).0,
            followers: AtomicU64::new(1),
            task: Mutex::new(None),
        });
        self.upstream_streams.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(pump(
            group.clone(),
            upstream.clone(),
            after_seq,
            self.resume_for,
        ));
        *group.task.lock().expect("group task lock") = Some(task.abort_handle());
        groups.insert(key, group.clone());
        group
    }

    fn leave(&self, group: &Arc<Group>) {
        let mut groups = self.groups.lock().expect("fanout lock");
        if group.followers.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(task) = group.task.lock().expect("group task lock").take() {
                task.abort();
            }
            if groups
                .get(&group.key)
                .is_some_and(|g| Arc::ptr_eq(g, group))
            {
                groups.remove(&group.key);
            }
        }
    }
}

/// Leaves the group when a follower's task ends, however it ends.
struct Membership {
    fanout: Arc<Fanout>,
    group: Arc<Group>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.fanout.leave(&self.group);
    }
}

/// The group's one upstream stream: frames into the buffer until the exit frame, resuming
/// after the last seq held when the stream breaks or goes silent (once the runner has shown
/// it sends keepalives, which tell a quiet run from a dead connection), for up to
/// `resume_for` from the first failure without a frame since.
async fn pump(group: Arc<Group>, upstream: Upstream, mut after_seq: u64, resume_for: Duration) {
    let run_id = group.key.run_id.clone();
    let keepalives = KeepalivesSeen::default();
    // The failures since the last frame: when the first came, and how many.
    let mut outage: Option<(Instant, u32)> = None;
    let failure = loop {
        let failure = match upstream.follow_logs(&run_id, after_seq, &keepalives).await {
            Ok(frames) => {
                let mut frames = std::pin::pin!(frames);
                let mut failure = None;
                while let Some(frame) = frames.next().await {
                    let decoded = frame.and_then(|f| decode(f, upstream.origin().as_str()));
                    if decoded.is_ok() && outage.take().is_some() {
                        group.restored();
                    }
                    match decoded {
                        Ok(Decoded::Chunk(chunk)) if chunk.seq <= after_seq => {}
                        Ok(Decoded::Chunk(chunk)) => {
                            after_seq = chunk.seq;
                            group.buffer.lock().expect("buffer lock").push(chunk);
                            group.changed.send_replace(());
                        }
                        Ok(Decoded::Exit(exit)) => {
                            group.buffer.lock().expect("buffer lock").end = Some(Ok(exit));
                            group.changed.send_replace(());
                            return;
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
                failure.unwrap_or_else(|| UpstreamError::Unreachable {
                    origin: upstream.origin().to_string(),
                    reason: "the log stream closed before the run's exit frame".into(),
                })
            }
            Err(e) => e,
        };
        let transient = matches!(
            failure,
            UpstreamError::Unreachable { .. } | UpstreamError::Unavailable { .. }
        );
        if !transient {
            break failure;
        }
        let (since, failures) = outage.get_or_insert_with(|| (Instant::now(), 0));
        *failures += 1;
        let left = resume_for.saturating_sub(since.elapsed());
        if left.is_zero() {
            break failure;
        }
        if *failures == 2 {
            // The first resume failed too: not a blip, the runner is gone for now.
            group.unreachable(Notice::Unreachable {
                origin: upstream.origin().to_string(),
                retry_for: resume_for,
            });
        }
        tracing::warn!(run = %run_id, after_seq, failures = *failures, error = %failure, "log stream broke; resuming");
        tokio::time::sleep(resume_pause(*failures).min(left)).await;
    };
    group.buffer.lock().expect("buffer lock").end = Some(Err(failure));
    group.changed.send_replace(());
}

/// The pause before resume number `n` (from 1): doubling from [`FIRST_RESUME_PAUSE`], at most
/// [`MAX_RESUME_PAUSE`].
fn resume_pause(n: u32) -> Duration {
    FIRST_RESUME_PAUSE
        .saturating_mul(1 << n.saturating_sub(1).min(16))
        .min(MAX_RESUME_PAUSE)
}

impl Group {
    /// Starts an outage: followers get `notice` (once each).
    fn unreachable(&self, notice: Notice) {
        let mut buffer = self.buffer.lock().expect("buffer lock");
        buffer.outages += 1;
        buffer.outage = Some((buffer.outages, notice));
        drop(buffer);
        self.changed.send_replace(());
    }

    /// Ends an outage, if one is on: followers told of it get [`Notice::Restored`].
    fn restored(&self) {
        let mut buffer = self.buffer.lock().expect("buffer lock");
        if buffer.outage.take().is_some() {
            drop(buffer);
            self.changed.send_replace(());
        }
    }
}

/// The notice a follower is due, given the outage it was last told of (`told`), and the
/// outage it is told of once it gets it.
fn notice_due(
    outage: Option<&(u64, Notice)>,
    told: Option<u64>,
    origin: &str,
) -> Option<(Notice, Option<u64>)> {
    match (outage, told) {
        (Some((n, notice)), told) if told != Some(*n) => Some((notice.clone(), Some(*n))),
        (None, Some(_)) => Some((
            Notice::Restored {
                origin: origin.to_owned(),
            },
            None,
        )),
        _ => None,
    }
}

/// One follower: everything after its cursor from the group's buffer, gaps filled from the
/// runner, keepalives when idle, the exit last.
async fn deliver(
    group: &Group,
    upstream: &Upstream,
    follow: Follow,
    tx: &mpsc::Sender<Result<Event, UpstreamError>>,
) {
    let mut changed = group.changed.subscribe();
    let mut cursor = follow.after_seq;
    // The outage this follower was last told of.
    let mut told = None;
    loop {
        changed.borrow_and_update();
        let (read, due) = {
            let buffer = group.buffer.lock().expect("buffer lock");
            let due = notice_due(buffer.outage.as_ref(), told, &group.key.origin);
            (buffer.read_after(cursor, FOLLOWER_BUFFER), due)
        };
        if let Some((notice, now_told)) = due {
            told = now_told;
            if tx.send(Ok(Event::Notice(notice))).await.is_err() {
                return;
            }
        }
        match read {
            Read::Chunks(chunks) => {
                for chunk in chunks {
                    cursor = chunk.seq;
                    if follow.wants(chunk.stream) && tx.send(Ok(Event::Chunk(chunk))).await.is_err()
                    {
                        return;
                    }
                }
            }
            Read::Behind { first_held } => {
                match refill(upstream, &group.key.run_id, cursor, first_held, &follow, tx).await {
                    Ok(true) => cursor = first_held - 1,
                    Ok(false) => return,
                    Err(e) => {
                        let gap = Event::Gap {
                            first_available_seq: first_held,
                            reason: format!(
                                "output {}..{} could not be re-read: {e}",
                                cursor + 1,
                                first_held - 1
                            ),
                        };
                        if tx.send(Ok(gap)).await.is_err() {
                            return;
                        }
                        cursor = first_held - 1;
                    }
                }
            }
            Read::End(end) => {
                let _ = tx.send(end.map(Event::Exit)).await;
                return;
            }
            Read::Nothing => {
                let idle = async {
                    match follow.keepalive {
                        Some(every) => tokio::time::sleep(every).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = changed.changed() => {}
                    () = idle => {
                        if tx.send(Ok(Event::Keepalive)).await.is_err() {
                            return;
                        }
                    }
                    () = tx.closed() => return,
                }
            }
        }
    }
}

/// Re-reads seqs `after + 1 .. until - 1` from the runner's store for one follower.
/// `Ok(false)` means the client went away. The read is not followed, so the runner never
/// pauses it: its silence is always bounded (see [`Upstream::logs_with`]).
async fn refill(
    upstream: &Upstream,
    run_id: &str,
    after: u64,
    until: u64,
    follow: &Follow,
    tx: &mpsc::Sender<Result<Event, UpstreamError>>,
) -> Result<bool, UpstreamError> {
    let frames = upstream
        .logs_with(run_id, &LogsQuery::after(after, false))
        .await?;
    let mut frames = std::pin::pin!(frames);
    while let Some(frame) = frames.next().await {
        match decode(frame?, upstream.origin().as_str())? {
            Decoded::Chunk(chunk) if chunk.seq >= until => return Ok(true),
            Decoded::Chunk(chunk) if chunk.seq <= after || !follow.wants(chunk.stream) => {}
            Decoded::Chunk(chunk) => {
                if tx.send(Ok(Event::Chunk(chunk))).await.is_err() {
                    return Ok(false);
                }
            }
            Decoded::Exit(_) => return Ok(true),
        }
    }
    Ok(true)
}

/// A log frame with its bytes decoded.
pub enum Decoded {
    /// Output.
    Chunk(Chunk),
    /// The end.
    Exit(Exit),
}

/// Decodes a frame's base64 payload.
pub fn decode(frame: LogFrame, origin: &str) -> Result<Decoded, UpstreamError> {
    match frame {
        LogFrame::Output {
            seq,
            stream,
            ref data,
            time,
        } => {
            let bytes = base64_decode(data).ok_or_else(|| UpstreamError::Protocol {
                origin: origin.to_owned(),
                reason: format!("log frame {seq} has invalid base64 data"),
            })?;
            Ok(Decoded::Chunk(Chunk {
                seq,
                stream,
                data: Bytes::from(bytes),
                time,
            }))
        }
        LogFrame::Exit {
            state,
            exit_code,
            reason,
            last_seq,
            finished_at,
        } => Ok(Decoded::Exit(Exit {
            state,
            exit_code,
            reason,
            last_seq,
            finished_at,
        })),
        // The upstream's frame reader drops keepalives; one here is out of place.
        LogFrame::Keepalive => Err(UpstreamError::Protocol {
            origin: origin.to_owned(),
            reason: "a keepalive frame reached the log decoder".to_owned(),
        }),
    }
}

fn base64_decode(data: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(data).ok()
}

#[cfg(test)]
mod tests {
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
        assert!(
            matches!(buffer.read_after(0, 64), Read::Behind { first_held: f } if f == first_held)
        );
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
        let origin =
            ApiOrigin::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
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
}
