//! `GET /api/v1/containers/runs/{id}/logs?follow=&after_seq=&tail=&stdout=&stderr=`: the run's
//! output as NDJSON.
//!
//! Stored frames and live ones are read through one cursor (the `seq` of the last frame
//! covered), always from the store, so nothing is lost or repeated between the two.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bus_api::NDJSON;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::watch;

use crate::AppState;
use crate::auth::{Caller, Read};
use crate::problem::{ApiError, ApiQuery};
use crate::store::{Entry, Store, StreamFilter};

/// Payload bytes gathered into one body chunk at most.
const BATCH_BYTES: usize = 256 * 1024;

fn yes() -> bool {
    true
}

/// The query of the logs endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep the stream open and send new frames until the exit frame.
    #[serde(default)]
    pub follow: bool,
    /// Send only frames with a greater `seq` (resume after the last one seen).
    #[serde(default)]
    pub after_seq: u64,
    /// Start with the last `tail` output frames stored (of the streams asked for); combined
    /// with `after_seq`, whichever starts later wins.
    #[serde(default)]
    pub tail: Option<u64>,
    /// Include stdout frames (default true).
    #[serde(default = "yes")]
    pub stdout: bool,
    /// Include stderr frames (default true).
    #[serde(default = "yes")]
    pub stderr: bool,
}

/// Every output frame after the cursor, then the exit frame once the run has ended; with
/// `follow`, new frames as they come. Filtered frames keep their `seq`; the exit frame always
/// comes last.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller<Read>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let entry = state
        .store()
        .get(caller.account(), &id)
        .ok_or(ApiError::RunNotFound(id))?;
    let filter = StreamFilter {
        stdout: query.stdout,
        stderr: query.stderr,
    };
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
        done: false,
    };
    let body = Body::from_stream(futures::stream::unfold(reader, Reader::next));
    let headers = [
        (header::CONTENT_TYPE, NDJSON),
        (header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, body).into_response())
}

struct Reader {
    store: Store,
    entry: Arc<Entry>,
    rx: watch::Receiver<()>,
    closing: watch::Receiver<bool>,
    cursor: u64,
    filter: StreamFilter,
    follow: bool,
    done: bool,
}

impl Reader {
    /// The next body chunk: a batch of NDJSON lines, or `None` at the end.
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
                for frame in read.frames.iter().chain(read.exit.as_ref()) {
                    serde_json::to_writer(&mut out, frame).expect("a log frame always serializes");
                    out.push(b'\n');
                }
                self.done = read.exit.is_some();
                return Some((Ok(Bytes::from(out)), self));
            }
            // A deleted run still ends (its executor records why), so followers wait for that.
            if !self.follow || *self.closing.borrow() {
                return None;
            }
            tokio::select! {
                changed = self.rx.changed() => if changed.is_err() { return None },
                _ = self.closing.changed() => return None,
            }
        }
    }
}
