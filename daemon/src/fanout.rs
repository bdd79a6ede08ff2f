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

use bus_api::frames::Frame;
use bus_api::runs::LogsQuery;
use bus_api::{LogFrame, RunState, Stream as StdStream};
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

/// One chunk of a run's output, its bytes decoded.
pub use bus_api::frames::Output as Chunk;

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
        self.follow_checked(upstream, run_id, follow, true)
    }

    /// Follows `run_id` as [`Fanout::follow`] does, for the caller that has just created it
    /// with `follow=true`: the runner accepted that caller's token for the run's logs in the
    /// create itself, so it joins without a `logs?tail=0` of its own (one round trip less on
    /// `Run`).
    pub fn follow_created(
        self: &Arc<Self>,
        upstream: Upstream,
        run_id: &str,
        follow: Follow,
    ) -> mpsc::Receiver<Result<Event, UpstreamError>> {
        self.follow_checked(upstream, run_id, follow, false)
    }

    fn follow_checked(
        self: &Arc<Self>,
        upstream: Upstream,
        run_id: &str,
        follow: Follow,
        check: bool,
    ) -> mpsc::Receiver<Result<Event, UpstreamError>> {
        let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
        let fanout = self.clone();
        let run_id = run_id.to_owned();
        tokio::spawn(async move {
            if check {
                let accepted = tokio::select! {
                    accepted = upstream.authorize_logs(&run_id) => accepted,
                    () = tx.closed() => return,
                };
                if let Err(e) = accepted {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
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

/// Takes a frame's parts: its output, or its exit.
pub fn decode(frame: Frame, origin: &str) -> Result<Decoded, UpstreamError> {
    match frame {
        Frame::Output(chunk) => Ok(Decoded::Chunk(chunk)),
        Frame::Control(LogFrame::Exit {
            state,
            exit_code,
            reason,
            last_seq,
            finished_at,
        }) => Ok(Decoded::Exit(Exit {
            state,
            exit_code,
            reason,
            last_seq,
            finished_at,
        })),
        // The upstream's frame readers drop keepalives and decode output; others are out of
        // place here.
        Frame::Control(other) => Err(UpstreamError::Protocol {
            origin: origin.to_owned(),
            reason: format!("a {other:?} frame reached the log decoder"),
        }),
    }
}

#[cfg(test)]
mod tests;
