//! The `Idempotency-Key` header of `POST /api/v1/containers/runs`: the same key from the same
//! account within 24 hours gets the original response instead of a second run; the same key
//! with another body is a 422 `idempotency_key_reused`.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bus_api::CreateRun;

use crate::http::problem::ApiError;
use crate::store::{Idempotency, Replay};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header that marks a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// The request's key with its body in canonical form; `None` without the header.
pub fn from_request(
    headers: &HeaderMap,
    request: &CreateRun,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} printable ASCII characters \
                 without spaces, e.g. a UUID"
            ))
        })?;
    Ok(Some(Idempotency {
        key: key.to_owned(),
        request: serde_json::to_string(request).expect("a run request always serializes"),
    }))
}

/// The original `201 Created` response, replayed, with `Idempotent-Replayed: true`.
pub fn replay(replay: Replay) -> Response {
    let location = format!("/api/v1/containers/runs/{}", replay.run_id);
    let mut response = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        replay.response,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(
        HeaderName::from_static(REPLAYED),
        HeaderValue::from_static("true"),
    );
    response
}
