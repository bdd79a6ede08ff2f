//! `/api/v1/containers/images...`: list, inspect, remove, tag, pull, push, load (an upload or
//! a file in the account's storage), save. The
//! work is [`crate::images`]'s; these parse the request and shape the response.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bus_api::Problem;
use bus_api::images::{
    ImageDetail, ImageList, ImageSummary, LoadFromStorage, LoadResult, ProgressFrame,
    RegistryRequest, SaveImageQuery, TagImage,
};
use futures::StreamExt as _;

use crate::AppState;
use crate::http::auth::{self, Caller};
use crate::http::problem::{ApiError, ApiJson, ApiQuery, image_problem};
use crate::images::Progress;

/// Largest JSON body the image routes accept (a reference and credentials).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Lists the caller's images.
///
/// The images the account holds a name of, and the public ones; only the caller's own
/// references are shown.
#[utoipa::path(
    get,
    path = "/api/v1/containers/images",
    tag = "images",
    operation_id = "listImages",
    security(("bearer" = ["image:read"])),
    responses(
        (status = 200, description = "The images.", body = ImageList),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
) -> Result<Json<ImageList>, ApiError> {
    Ok(Json(state.images().list(caller.account()).await?))
}

/// Inspects one image.
///
/// Id, references, labels, times, the manifest it was stored from, registry manifests,
/// config, layers and size. Another account's image answers 404 like a missing one.
#[utoipa::path(
    get,
    path = "/api/v1/containers/images/{reference}",
    tag = "images",
    operation_id = "inspectImage",
    security(("bearer" = ["image:read"])),
    params(("reference" = String, Path, description = "A reference (percent-encoded) or an image id (prefix).")),
    responses(
        (status = 200, description = "The image.", body = ImageDetail),
        (status = 400, description = "Not a valid reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn inspect(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
    Path(reference): Path<String>,
) -> Result<Json<ImageDetail>, ApiError> {
    Ok(Json(
        state.images().inspect(caller.account(), &reference).await?,
    ))
}

/// Removes the caller's name.
///
/// The engine forgets the name when no account holds it any more; an id removes every name
/// the caller holds of that image.
#[utoipa::path(
    delete,
    path = "/api/v1/containers/images/{reference}",
    tag = "images",
    operation_id = "removeImage",
    security(("bearer" = ["image:write"])),
    params(("reference" = String, Path, description = "A reference (percent-encoded) or an image id (prefix).")),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "Not a valid reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write` (`scope_missing`), or the image is public (`image_not_allowed`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A run uses it (`image_in_use`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.images().remove(caller.account(), &reference).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Names an image anew.
///
/// The caller then holds the new name (e.g. a registry name to push under).
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/{reference}/tag",
    tag = "images",
    operation_id = "tagImage",
    security(("bearer" = ["image:write"])),
    params(("reference" = String, Path, description = "The image to name: a reference or an id.")),
    request_body(content = TagImage, content_type = "application/json"),
    responses(
        (status = 201, description = "The image.", body = ImageSummary),
        (status = 400, description = "Not a valid reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, or the new name is public.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds the new name (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large (`payload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
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

/// Pulls an image from a registry.
///
/// NDJSON `ProgressFrame`s: `progress`, then `result` or `error` last. Refusals known at once
/// (a bad reference, a grant, another account's name, the registry's refusal) are problem
/// responses instead. Credentials are used for this call only, never logged or stored.
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/pull",
    tag = "images",
    operation_id = "pullImage",
    security(("bearer" = ["image:write"])),
    request_body(content = RegistryRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "NDJSON progress.", content_type = "application/x-ndjson", body = ProgressFrame),
        (status = 400, description = "Not a registry reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, its grant does not cover the image (`image_not_allowed`), or the registry refused (`registry_denied`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The registry has no such image (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds the name (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large (`payload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The registry failed (`registry_failed`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pull(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    ApiJson(request): ApiJson<RegistryRequest>,
) -> Result<Response, ApiError> {
    let frames = state.images().pull(&caller.claims, request).await?;
    Ok(ndjson(frames))
}

/// Pushes a name the caller holds to its registry.
///
/// NDJSON `ProgressFrame`s, like a pull.
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/push",
    tag = "images",
    operation_id = "pushImage",
    security(("bearer" = ["image:write"])),
    request_body(content = RegistryRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "NDJSON progress.", content_type = "application/x-ndjson", body = ProgressFrame),
        (status = 400, description = "Not a registry reference (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, or the registry refused (`registry_denied`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The caller holds no such name (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large (`payload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "The registry failed (`registry_failed`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn push(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    ApiJson(request): ApiJson<RegistryRequest>,
) -> Result<Response, ApiError> {
    let frames = state.images().push(caller.account(), request).await?;
    Ok(ndjson(frames))
}

/// Loads an image archive.
///
/// The body is a docker-archive or an OCI archive (tar). It is refused as soon as it passes
/// the runner's limit (413 `upload_too_large`), and when a name it gives is another account's.
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/load",
    tag = "images",
    operation_id = "loadImage",
    security(("bearer" = ["image:write"])),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses(
        (status = 200, description = "The images loaded.", body = LoadResult),
        (status = 400, description = "Not an image archive (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, or a name is public.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds a name (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the limit (`upload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
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

/// Loads an image archive from the account's storage.
///
/// The archive (docker or OCI, as for an upload) is a file in the account's storage volume,
/// the one runs mount (the `agent` profile at `/data`), named relative to its root. Absolute
/// paths, `..`, symlinks and anything but a regular file are refused (400), a missing file is
/// 404; the file is copied, up to the upload limit, before it is read.
#[utoipa::path(
    post,
    path = "/api/v1/containers/images/load-from-storage",
    tag = "images",
    operation_id = "loadImageFromStorage",
    security(("bearer" = ["image:write"])),
    request_body(content = LoadFromStorage, content_type = "application/json"),
    responses(
        (status = 200, description = "The images loaded.", body = LoadResult),
        (status = 400, description = "Not a path inside the storage, not a regular file, or not an image archive (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:write`, or a name is public.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file in the account's storage (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another account holds a name (`image_name_taken`).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the limit (`upload_too_large`), or the body is too large (`payload_too_large`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed, or the runner cannot read the storage (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn load_from_storage(
    State(state): State<AppState>,
    caller: Caller<auth::ImageWrite>,
    ApiJson(request): ApiJson<LoadFromStorage>,
) -> Result<Json<LoadResult>, ApiError> {
    let result = state
        .images()
        .load_from_storage(caller.account(), &request.path)
        .await?;
    Ok(Json(result))
}

/// Downloads an image as a docker-archive or an OCI archive.
///
/// `format=oci` answers an OCI image layout in a tar (`oci-layout`, `index.json` naming the
/// image by its full reference, `blobs/sha256/...`); the default is a docker-archive.
#[utoipa::path(
    get,
    path = "/api/v1/containers/images/{reference}/archive",
    tag = "images",
    operation_id = "saveImage",
    security(("bearer" = ["image:read"])),
    params(
        ("reference" = String, Path, description = "A reference (percent-encoded) or an image id (prefix)."),
        SaveImageQuery,
    ),
    responses(
        (status = 200, description = "The archive.", body = Vec<u8>, content_type = "application/x-tar"),
        (status = 400, description = "Not a valid reference, or an unknown format (`invalid_request`).", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token.", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks `image:read` (`scope_missing`).", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such image for this account (`not_found`).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine failed (`engine_unavailable`).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn save(
    State(state): State<AppState>,
    caller: Caller<auth::ImageRead>,
    Path(reference): Path<String>,
    ApiQuery(query): ApiQuery<SaveImageQuery>,
) -> Result<Response, ApiError> {
    let format = query.format.unwrap_or_default();
    let (file, bytes) = state
        .images()
        .save(caller.account(), &reference, format)
        .await?;
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
