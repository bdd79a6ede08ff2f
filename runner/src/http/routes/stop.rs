//! `POST /api/v1/containers/runs/{id}/stop`: stop a run, gracefully or at once.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bus_api::Run;
use bus_api::runs::{DEFAULT_STOP_GRACE_SECONDS, MAX_STOP_GRACE_SECONDS, StopRun};
use bytes::Bytes;

use crate::AppState;
use crate::http::auth::{self, Caller};
use crate::http::openapi::{BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge};
use crate::http::problem::{ApiError, BodyLimit};
use crate::runs::executor;

/// Largest request body the endpoint accepts.
pub const BODY_LIMIT: usize = 4 * 1024;
/// How long the run may take to end after SIGKILL before the response goes out anyway.
const KILL_LIMIT: Duration = Duration::from_secs(30);

/// Stops a run.
///
/// SIGTERM, then SIGKILL after `grace_seconds` (default 10), or SIGKILL at once with `force`;
/// answers once the run has ended (`stopped`, reason "stopped on
/// request"). A run that has already ended is returned unchanged. The body is optional.
#[utoipa::path(
    post,
    path = "/api/v1/containers/runs/{id}/stop",
    tag = "containers",
    operation_id = "stopRun",
    security(("bearer" = ["container:run"])),
    params(("id" = String, Path, description = "The run's id (`run_...`) or its name.")),
    request_body(content = Option<StopRun>, content_type = "application/json",
        description = "Optional: an empty body means the defaults."),
    responses(
        (status = 200, description = "The run, ended.", body = Run),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
    )
)]
pub async fn stop(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Run>, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => BodyLimit(BODY_LIMIT).exceeded(),
        _ => ApiError::InvalidRequest(format!(
            "the request body cannot be read: {}",
            e.body_text()
        )),
    })?;
    let request = parse(&body)?;
    let entry = state.store().find(caller.account(), &id)?;
    let grace = Duration::from_secs(
        request
            .grace_seconds
            .unwrap_or(DEFAULT_STOP_GRACE_SECONDS)
            .into(),
    );
    if !entry.state().is_terminal() {
        tracing::info!(run = %entry.id, owner = caller.account(), force = request.force, grace_seconds = grace.as_secs(), "stopping the run");
        executor::stop(state.engine(), &entry, grace, request.force, KILL_LIMIT).await;
    }
    Ok(Json(entry.snapshot()))
}

/// The request, from an empty body or a JSON one.
pub fn parse(body: &[u8]) -> Result<StopRun, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StopRun::default());
    }
    let bad = |e: String| ApiError::InvalidRequest(format!("the request body does not fit: {e}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad(
            "expected a JSON object like {\"grace_seconds\": 10, \"force\": false}".to_owned(),
        ));
    }
    let request: StopRun = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if request
        .grace_seconds
        .is_some_and(|g| g > MAX_STOP_GRACE_SECONDS)
    {
        return Err(ApiError::InvalidRequest(format!(
            "grace_seconds must be at most {MAX_STOP_GRACE_SECONDS}"
        )));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(parse(b"").unwrap(), StopRun::default());
        assert_eq!(parse(b" \n").unwrap(), StopRun::default());
        assert_eq!(
            parse(br#"{"grace_seconds": 3, "force": true}"#).unwrap(),
            StopRun {
                grace_seconds: Some(3),
                force: true
            }
        );
        for bad in [
            &br#"{"grace": 3}"#[..],
            b"[]",
            b"{",
            br#"{"grace_seconds": 3601}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().problem().status, 400);
        }
    }
}
