//! The one way a run's logs are read: what the runner's store holds now, then (following)
//! the run's fan-out group after the last seq sent; or, following without a tail, the group
//! alone.

use std::sync::Arc;

use bus_api::runs::LogsQuery;
use futures::StreamExt as _;
use tokio::sync::mpsc;

use super::{Decoded, Event, FOLLOWER_BUFFER, Fanout, Follow, decode};
use crate::upstream::{Upstream, UpstreamError};

/// What a log read asks for.
#[derive(Debug, Clone)]
pub struct LogRead {
    /// Where to start, which streams, how often to send keepalives.
    pub follow: Follow,
    /// Start with the last `tail` output frames stored (only when starting from the
    /// beginning).
    pub tail: Option<u64>,
    /// Go on with what comes until the run ends.
    pub follow_on: bool,
}

impl Fanout {
    /// Reads a run's logs as [`LogRead`] asks. A refusal of the first request (the read of
    /// the store, or the group's authorization) is the first and only event, or, for the
    /// store's, the error itself.
    pub async fn read(
        self: &Arc<Self>,
        upstream: Upstream,
        run_id: &str,
        read: LogRead,
    ) -> Result<mpsc::Receiver<Result<Event, UpstreamError>>, UpstreamError> {
        if read.follow_on && read.tail.is_none() {
            return Ok(self.follow(upstream, run_id, read.follow));
        }
        // What exists now, straight from the runner's store.
        let query = LogsQuery {
            tail: read.tail,
            stdout: read.follow.stdout,
            stderr: read.follow.stderr,
            ..LogsQuery::after(read.follow.after_seq, false)
        };
        let frames = upstream.logs_with(run_id, &query).await?;
        let (tx, rx) = mpsc::channel(FOLLOWER_BUFFER);
        let follow = read.follow_on.then_some(read.follow);
        tokio::spawn(replay_then_follow(
            frames,
            upstream,
            run_id.to_owned(),
            follow,
            self.clone(),
            tx,
        ));
        Ok(rx)
    }
}

/// Sends what the runner's store holds now, as it arrives (never buffered whole), then — when
/// `follow` is given and the run has not ended — joins the run's fan-out group after the last
/// seq sent.
async fn replay_then_follow(
    frames: impl futures::Stream<Item = Result<bus_api::frames::Frame, UpstreamError>>,
    upstream: Upstream,
    run_id: String,
    follow: Option<Follow>,
    fanout: Arc<Fanout>,
    tx: mpsc::Sender<Result<Event, UpstreamError>>,
) {
    let origin = upstream.origin().to_string();
    let mut frames = std::pin::pin!(frames);
    let mut last_seq = follow.as_ref().map_or(0, |f| f.after_seq);
    while let Some(frame) = frames.next().await {
        let event = match frame.and_then(|f| decode(f, &origin)) {
            Ok(Decoded::Chunk(chunk)) => {
                last_seq = chunk.seq;
                Event::Chunk(chunk)
            }
            Ok(Decoded::Exit(exit)) => {
                let _ = tx.send(Ok(Event::Exit(exit))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if tx.send(Ok(event)).await.is_err() {
            return;
        }
    }
    let Some(follow) = follow else { return };
    let follow = Follow {
        after_seq: last_seq,
        ..follow
    };
    let mut live = fanout.follow(upstream, &run_id, follow);
    while let Some(event) = live.recv().await {
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
