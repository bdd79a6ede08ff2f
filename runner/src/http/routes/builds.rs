//! `/api/v1/containers/builds...`: create (a context tar upload), list, get, logs (NDJSON,
//! resumable by `seq`), cancel, delete. The work is [`crate::images::builds`]'.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bus_api::Problem;
use bus_api::builds::{Build, BuildList, BuildLogFrame, BuildLogsQuery, CreateBuildQuery};
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

/// Starts a build.
///
/// The body is the context as a tar. It is refused as soon as it passes the runner's limit
/// (413 `upload_too_large`). The Dockerfile's base images must be ones the caller may see.
/// Answers once the context is stored, with the build `queued`; the build goes on without
/// the caller.
#[utoipa::path(
    post,
    path = "/api/v1/containers/builds",
    tag = "builds",
    operation_id = "createBuild",
    security(("bearer" = ["image:build"])),
    params(
        ("tags" = Option<String>, Query, description = "Comma-separated references the image gets."),
        ("dockerfile" = Option<String>, Query, description = "The Dockerfile's path in the context (default `Dockerfile`)."),
    ),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses(
        (status = 201, description = "The build, `queued`.", body = Build),
        (status = 400, description = "A bad tag, Dockerfile path or context (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:build`, or a tag is public.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "A base image the caller may not see (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds a tag (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the limit (`upload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller<auth::ImageBuild>,
    ApiQuery(query): ApiQuery<CreateBuildQuery>,
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

/// Lists the caller's builds, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/containers/builds",
    tag = "builds",
    operation_id = "listBuilds",
    security(("bearer" = ["image:read"])),
    responses(
        (status = 200, description = "The builds.", body = BuildList),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
    )
)]
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

/// Gets one build.
#[utoipa::path(
    get,
    path = "/api/v1/containers/builds/{id}",
    tag = "builds",
    operation_id = "getBuild",
    security(("bearer" = ["image:read"])),
    params(("id" = String, Path, description = "The build's id (`bld_...`).")),
    responses(
        (status = 200, description = "The build.", body = Build),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such build for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
    )
)]
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

/// Cancels a build.
///
/// Answers once it has stopped (`cancelled`); an ended build is returned unchanged.
#[utoipa::path(
    post,
    path = "/api/v1/containers/builds/{id}/cancel",
    tag = "builds",
    operation_id = "cancelBuild",
    security(("bearer" = ["image:build"])),
    params(("id" = String, Path, description = "The build's id (`bld_...`).")),
    responses(
        (status = 200, description = "The build.", body = Build),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:build` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such build for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller<auth::ImageBuild>,
    Path(id): Path<String>,
) -> Result<Json<Build>, ApiError> {
    Ok(Json(
        builds::cancel(state.images(), caller.account(), &id).await?,
    ))
}

/// Deletes a build and its output, cancelling it first.
#[utoipa::path(
    delete,
    path = "/api/v1/containers/builds/{id}",
    tag = "builds",
    operation_id = "deleteBuild",
    security(("bearer" = ["image:build"])),
    params(("id" = String, Path, description = "The build's id (`bld_...`).")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:build` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such build for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The build did not stop in time (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller<auth::ImageBuild>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    builds::delete(state.images(), caller.account(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams a build's output.
///
/// NDJSON `BuildLogFrame`s: `line` frames with a dense `seq` (resume with `after_seq`), then
/// one `end` frame once the build has ended; with `follow`, new lines as they come, and
/// `keepalive` frames while it is quiet.
#[utoipa::path(
    get,
    path = "/api/v1/containers/builds/{id}/logs",
    tag = "builds",
    operation_id = "buildLogs",
    security(("bearer" = ["image:read"])),
    params(
        ("id" = String, Path, description = "The build's id (`bld_...`)."),
        ("follow" = Option<bool>, Query, description = "Keep the stream open until the build ends."),
        ("after_seq" = Option<u64>, Query, description = "Only lines with a greater `seq`."),
    ),
    responses(
        (status = 200, description = "NDJSON: one `BuildLogFrame` per line.", content_type = "application/x-ndjson", body = BuildLogFrame),
        (status = 400, description = "A bad query (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such build for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<BuildLogsQuery>,
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
