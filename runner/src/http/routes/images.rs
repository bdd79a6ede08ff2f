//! `/api/v1/containers/images...`: list, inspect, remove, tag, pull, push, load, save. The
//! work is [`crate::images`]'s; these parse the request and shape the response.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bus_api::images::{
    ImageDetail, ImageList, LoadResult, ProgressFrame, RegistryRequest, TagImage,
};
use futures::StreamExt as _;

use crate::AppState;
use crate::http::auth::{self, Caller};
use crate::http::problem::{ApiError, ApiJson, image_problem};
use crate::images::Progress;

/// Largest JSON body the image routes accept (a reference and credentials).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The caller's images and the public ones.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
) -> Result<Json<ImageList>, ApiError> {
    Ok(Json(state.images().list(caller.account()).await?))
}

/// One image.
pub async fn inspect(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
    Path(reference): Path<String>,
) -> Result<Json<ImageDetail>, ApiError> {
    Ok(Json(
        state.images().inspect(caller.account(), &reference).await?,
    ))
}

/// Drops the caller's name (or every name it holds of the image an id names).
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.images().remove(caller.account(), &reference).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Names an image the caller may see anew.
pub async fn tag(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    Path(reference): Path<String>,
    ApiJson(request): ApiJson<TagImage>,
) -> Result<(StatusCode, Json<bus_api::images::ImageSummary>), ApiError> {
    let image = state
        .images()
        .tag(caller.account(), &reference, &request.target)
        .await?;
    Ok((StatusCode::CREATED, Json(image)))
}

/// Pulls from a registry: NDJSON progress, ending with `result` or `error`.
pub async fn pull(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    ApiJson(request): ApiJson<RegistryRequest>,
) -> Result<Response, ApiError> {
    let frames = state.images().pull(&caller.claims, request).await?;
    Ok(ndjson(frames))
}

/// Pushes to a registry: NDJSON progress, ending with `result` or `error`.
pub async fn push(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    ApiJson(request): ApiJson<RegistryRequest>,
) -> Result<Response, ApiError> {
    let frames = state.images().push(caller.account(), request).await?;
    Ok(ndjson(frames))
}

/// Loads an uploaded archive.
pub async fn load(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<LoadResult>, ApiError> {
    let result = state
        .images()
        .load(caller.account(), body, content_length(&headers))
        .await?;
    Ok(Json(result))
}

/// Downloads an image as a docker-archive.
pub async fn save(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let (file, bytes) = state.images().save(caller.account(), &reference).await?;
    let disposition = format!("attachment; filename=\"{file}\"");
    Ok((
        [
            (header::CONTENT_TYPE, bus_api::images::ARCHIVE.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(bytes),
    )
        .into_response())
}

/// The declared body length, if any.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn ndjson(frames: Progress) -> Response {
    let lines = frames.map(|frame| {
        let frame = frame.unwrap_or_else(|err| ProgressFrame::Error {
            problem: image_problem(&err),
        });
        let mut line = serde_json::to_vec(&frame).expect("a progress frame serializes");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line))
    });
    (
        [(header::CONTENT_TYPE, bus_api::NDJSON)],
        Body::from_stream(lines),
    )
        .into_response()
}
