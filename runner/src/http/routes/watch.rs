//! `GET /api/v1/containers/runs?watch=true` (the list route with `watch`): the caller's runs,
//! then each change to them, as NDJSON lines of [`RunEvent`].
//!
//! The watch subscribes to the store's changes and reads the account's revision at the same
//! moment, then lists the runs: one `changed` line per run, newest first, with that revision,
//! and a `listed` line. After it, for each change of the account's, in revision order, the
//! run as it is then (`changed`), or `deleted` when it is gone; a reader that applies the
//! lines converges on the runs as they are. An idle stream sends `alive` every
//! [`WATCH_ALIVE_SECONDS`] with the revision of the last line sent.
//!
//! The stream ends when the token expires (after [`MAX_WATCH`] at most), when the watch falls more than
//! [`CHANGES_CAPACITY`](crate::store::CHANGES_CAPACITY) changes behind (the reader watches again), when the runner shuts
//! down, and, for a run token, once its run has ended or is gone.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bus_api::NDJSON;
use bus_api::auth::Claims;
use bus_api::runs::{RunEvent, WATCH_ALIVE_SECONDS, WatchedRun};
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::AppState;
use crate::http::auth::check_run_live;
use crate::http::routes::runs::encode_page_token;
use crate::store::Change;

/// The longest a watch stays open, whatever its token's expiry.
pub const MAX_WATCH: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How long a watch stays silent before it sends `alive`.
const ALIVE: Duration = Duration::from_secs(WATCH_ALIVE_SECONDS);

/// The response to a watch by the caller with `claims`: the listing, then the changes.
pub fn respond(state: AppState, claims: Claims) -> Response {
    let store = state.store();
    let (rx, revision) = store.changes().subscribe(&claims.sub);
    let mut opening = Vec::new();
    for (serial, run) in store.all_of(&claims.sub) {
        let run = watched(serial, run);
        put_line(&mut opening, &RunEvent::Changed { revision, run });
    }
    put_line(&mut opening, &RunEvent::Listed { revision });
    let watch = Watch {
        closing: store.closing(),
        expires: Box::pin(sleep_until(expiry(claims.exp))),
        alive: Box::pin(sleep_until(Instant::now() + ALIVE)),
        state,
        claims,
        rx,
        opening: Some(Bytes::from(opening)),
        revision,
    };
    tracing::debug!(owner = %watch.claims.sub, revision, "watch of runs opened");
    let body = Body::from_stream(futures::stream::unfold(watch, Watch::next));
    let headers = [
        (header::CONTENT_TYPE, NDJSON),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, body).into_response()
}

/// A run with its serial and the page token that continues after it.
fn watched(serial: u64, run: bus_api::Run) -> WatchedRun {
    WatchedRun {
        serial,
        page_token: encode_page_token(serial),
        run,
    }
}

/// When a token that expires at `exp` (Unix seconds) has expired, at most [`MAX_WATCH`] away.
fn expiry(exp: i64) -> Instant {
    let left_ns =
        i128::from(exp) * 1_000_000_000 - OffsetDateTime::now_utc().unix_timestamp_nanos();
    let left = Duration::from_nanos(u64::try_from(left_ns.max(0)).unwrap_or(u64::MAX));
    Instant::now() + left.min(MAX_WATCH)
}

/// Appends `event` as an NDJSON line.
fn put_line(out: &mut Vec<u8>, event: &RunEvent) {
    serde_json::to_writer(&mut *out, event).expect("a run event always serializes");
    out.push(b'\n');
}

/// One open watch.
struct Watch {
    state: AppState,
    claims: Claims,
    rx: broadcast::Receiver<Change>,
    closing: watch::Receiver<bool>,
    /// The listing, until it is sent.
    opening: Option<Bytes>,
    /// The revision of the last line sent.
    revision: u64,
    /// Fires when the token expires.
    expires: Pin<Box<Sleep>>,
    /// Fires when the watch has been silent for [`ALIVE`].
    alive: Pin<Box<Sleep>>,
}

impl Watch {
    /// The next line (the listing's lines at first), or `None` at the end.
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Watch)> {
        let line = match self.opening.take() {
            Some(opening) => opening,
            None => self.line().await?,
        };
        self.alive.as_mut().reset(Instant::now() + ALIVE);
        Some((Ok(line), self))
    }

    /// The line after the first ones: a change, or `alive` when there was none for a while.
    async fn line(&mut self) -> Option<Bytes> {
        // After every line: a run token's watch ends with its run.
        if check_run_live(&self.state, &self.claims).is_err() {
            tracing::debug!(owner = %self.claims.sub, "watch of runs ended: its run token's run has ended");
            return None;
        }
        let event = loop {
            if *self.closing.borrow() {
                return None;
            }
            tokio::select! {
                biased;
                _ = self.closing.changed() => return None,
                () = &mut self.expires => {
                    tracing::debug!(owner = %self.claims.sub, "watch of runs ended: the token expired");
                    return None;
                }
                change = self.rx.recv() => match change {
                    Ok(change) if change.owner == self.claims.sub => break self.changed(change),
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(owner = %self.claims.sub, missed, "watch of runs ended: it fell behind");
                        return None;
                    }
                    Err(RecvError::Closed) => return None,
                },
                () = &mut self.alive => {
                    break RunEvent::Alive { revision: self.revision };
                }
            }
        };
        self.revision = event.revision();
        let mut out = Vec::new();
        put_line(&mut out, &event);
        Some(Bytes::from(out))
    }

    /// The line for `change`: the run as it is now, or its deletion.
    fn changed(&self, change: Change) -> RunEvent {
        let revision = change.revision;
        match self.state.store().get(&change.owner, &change.id) {
            Some(entry) => RunEvent::Changed {
                revision,
                run: watched(entry.serial, entry.snapshot()),
            },
            None => RunEvent::Deleted {
                revision,
                id: change.id,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_ends_when_its_token_expires_and_within_a_year() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let until = |exp: i64| expiry(exp).saturating_duration_since(Instant::now());
        assert!(until(now - 10).is_zero());
        let left = until(now + 60);
        assert!(
            left > Duration::from_secs(58) && left <= Duration::from_secs(60),
            "{left:?}"
        );
        assert!(until(i64::MAX) <= MAX_WATCH);
        assert!(until(i64::MAX) > MAX_WATCH - Duration::from_secs(5));
    }
}
