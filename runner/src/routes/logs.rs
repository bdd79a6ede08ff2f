//! `GET /api/v1/containers/runs/{id}/logs?follow=&after_seq=`: the run's output as NDJSON.

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
use crate::store::Entry;

/// Payload bytes gathered into one body chunk at most.
const BATCH_BYTES: usize = 256 * 1024;

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
}

/// Every output frame after `after_seq`, then the exit frame once the run has ended; with
/// `follow`, new frames as they come.
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
    let reader = Reader {
        rx: entry.subscribe(),
        entry,
        cursor: query.after_seq,
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
    entry: Arc<Entry>,
    rx: watch::Receiver<()>,
    cursor: u64,
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
            let read = self.entry.read(self.cursor, BATCH_BYTES);
            if !read.frames.is_empty() || read.exit.is_some() {
                let mut out = Vec::new();
                for frame in read.frames.iter().chain(read.exit.as_ref()) {
                    serde_json::to_writer(&mut out, frame).expect("a log frame always serializes");
                    out.push(b'\n');
                }
                self.cursor = read.last_seq;
                self.done = read.exit.is_some();
                return Some((Ok(Bytes::from(out)), self));
            }
            // A deleted run still ends (its executor records why), so followers wait for that.
            if !self.follow {
                return None;
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}
