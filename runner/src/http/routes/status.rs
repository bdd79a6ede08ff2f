//! `GET /api/v1/containers/status`.

use axum::Json;
use axum::extract::State;
use bus_api::RunnerStatus;

use crate::AppState;
use crate::engine::PING_FRESH;
use crate::http::auth::{Caller, Read};
use crate::http::openapi::Forbidden;

/// The runner's status.
///
/// Its state (`ready`, `starting` or `degraded`, from real engine reachability), the engine's
/// name and version, and the run profiles it offers.
#[utoipa::path(
    get,
    path = "/api/v1/containers/status",
    tag = "containers",
    operation_id = "getStatus",
    security(("bearer" = ["container:read"])),
    responses(
        (status = 200, description = "The runner's status.", body = RunnerStatus),
        (status = 403, response = Forbidden),
    )
)]
// The runner's state: `ready` when the engine answers (a ping that succeeded within
// [`PING_FRESH`] stands; a failed one is never reused), else `degraded`; the engine's version
// is read once and cached.
pub async fn get(State(state): State<AppState>, _caller: Caller<Read>) -> Json<RunnerStatus> {
    let engine = state.engine();
    let alive = engine.alive(PING_FRESH).await;
    let info = if alive {
        engine.info().await.ok()
    } else {
        engine.cached_info()
    };
    let (name, api_version) = match info {
        Some(info) => (info.engine.clone(), info.api_version.clone()),
        None => ("unreachable".to_owned(), String::new()),
    };
    Json(RunnerStatus {
        state: if alive && info.is_some() {
            "ready"
        } else {
            "degraded"
        }
        .to_owned(),
        engine: name,
        engine_api_version: api_version,
        profiles: state.config().profile_names(),
    })
}
