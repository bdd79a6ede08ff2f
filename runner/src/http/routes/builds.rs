//! `/api/v1/containers/builds...`: create (a context tar upload), list, get, logs (NDJSON,
//! resumable by `seq`), cancel, delete. The work is [`crate::images::builds`]'.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bus_api::builds::{Build, BuildList, BuildLogFrame};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::AppState;
use crate::http::auth::{self, Caller};
use crate::http::problem::{ApiError, ApiQuery};
use crate::http::routes::images::content_length;
use crate::images::ImageError;
use crate::images::builds;

/// Builds listed at most.
const LIST_LIMIT: usize = 200;
/// Lines read from the database per query.
const READ_BATCH: usize = 1000;
/// A follow's keepalive interval.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The query of `POST /builds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// Comma-separated references the image gets.
    pub tags: Option<String>,
    /// The Dockerfile's path in the context (default `Dockerfile`).
    pub dockerfile: Option<String>,
}

/// Accepts a build (the body is the context tar) and starts it.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller<auth::ImageBuild>,
    ApiQuery(query): ApiQuery<CreateQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = builds::parse_request(query.tags.as_deref(), query.dockerfile.as_deref())?;
    let build = builds::create(
        state.images(),
        caller.account(),
        request,
        body,
        content_length(&headers),
    )
    .await?;
    let location = format!("/api/v1/containers/builds/{}", build.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(build),
    )
        .into_response())
}

/// The caller's builds, newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
) -> Result<Json<BuildList>, ApiError> {
    let builds = state
        .images()
        .db()?
        .builds(caller.account(), LIST_LIMIT)
        .map_err(ImageError::from)?;
    Ok(Json(BuildList { builds }))
}

/// One build.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
    Path(id): Path<String>,
) -> Result<Json<Build>, ApiError> {
    Ok(Json(find(&state, caller.account(), &id)?))
}

fn find(state: &AppState, owner: &str, id: &str) -> Result<Build, ApiError> {
    Ok(state
        .images()
        .db()?
        .build(owner, id)
        .map_err(ImageError::from)?
        .ok_or_else(|| ImageError::BuildNotFound(id.to_owned()))?)
}

/// Cancels a build (waiting until it has stopped); an ended build is returned as it is.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller<auth::ImageBuild>,
    Path(id): Path<String>,
) -> Result<Json<Build>, ApiError> {
    Ok(Json(
        builds::cancel(state.images(), caller.account(), &id).await?,
    ))
}

/// Deletes a build and its output (cancelling it first).
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller<auth::ImageBuild>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    builds::delete(state.images(), caller.account(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The query of `GET /builds/{id}/logs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Keep the stream open until the build ends.
    #[serde(default)]
    pub follow: bool,
    /// Only lines with a greater seq.
    #[serde(default)]
    pub after_seq: u64,
}

/// A build's output: stored lines after `after_seq`, then (with `follow`) new ones, and an
/// `end` frame once the build has ended.
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let owner = caller.account().to_owned();
    find(&state, &owner, &id)?;
    let (tx, rx) = mpsc::channel::<BuildLogFrame>(64);
    tokio::spawn(async move {
        let mut after = query.after_seq;
        loop {
            // Subscribe before reading, so no change between the read and the wait is missed.
            let live = state.images().builds.get(&id);
            let mut changes = live.as_ref().map(|l| l.progress.subscribe());
            let Ok(db) = state.images().db() else { return };
            let Ok(Some(build)) = db.build(&owner, &id) else {
                return;
            };
            loop {
                let Ok(lines) = db.lines(&id, after, READ_BATCH) else {
                    return;
                };
                let full = lines.len() == READ_BATCH;
                for (seq, time, text) in lines {
                    after = seq;
                    if tx
                        .send(BuildLogFrame::Line { seq, text, time })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
            if build.state.is_terminal() {
                let last_seq = db.last_seq(&id).unwrap_or(after);
                let _ = tx.send(BuildLogFrame::End { build, last_seq }).await;
                return;
            }
            if !query.follow {
                return;
            }
            match changes.as_mut() {
                Some(changes) => match tokio::time::timeout(KEEPALIVE, changes.changed()).await {
                    Ok(_) => {}
                    Err(_) => {
                        if tx.send(BuildLogFrame::Keepalive).await.is_err() {
                            return;
                        }
                    }
                },
                // Not in flight but not ended: it is about to be recorded; look again soon.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let lines = futures::StreamExt::map(ReceiverStream::new(rx), |frame| {
        let mut line = serde_json::to_vec(&frame).expect("a log frame serializes");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    Ok((
        [(header::CONTENT_TYPE, bus_api::NDJSON)],
        Body::from_stream(lines),
    )
        .into_response())
}
