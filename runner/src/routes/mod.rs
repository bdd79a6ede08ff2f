//! The HTTP routes, one module per resource.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};

mod image_routes;

use crate::AppState;
use crate::problem::limit_body;

pub mod attach;
pub mod auth;
pub mod billing;
pub mod builds;
pub mod exec;
pub mod idempotency;
pub mod images;
pub mod input;
pub mod logs;
pub mod runs;
pub mod status;
pub mod stop;

/// Every route below `/api/v1` (each documented in [`crate::openapi`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/containers/status", get(status::get))
        .route(
            "/api/v1/containers/runs",
            get(runs::list)
                .post(runs::create)
                .layer(DefaultBodyLimit::max(runs::BODY_LIMIT))
                .layer(from_fn_with_state(runs::BODY_LIMIT, limit_body)),
        )
        .route(
            "/api/v1/containers/runs/{id}",
            get(runs::get).delete(runs::delete),
        )
        .route("/api/v1/containers/runs/{id}/logs", get(logs::get))
        .route("/api/v1/containers/runs/{id}/exec", get(exec::exec))
        .route("/api/v1/containers/runs/{id}/attach", get(attach::attach))
        .route(
            "/api/v1/containers/runs/{id}/execs",
            post(exec::create_detached).layer(DefaultBodyLimit::max(exec::BODY_LIMIT)),
        )
        .route(
            "/api/v1/containers/execs/{exec_id}",
            get(exec::get_detached),
        )
        .route(
            "/api/v1/containers/execs/{exec_id}/attach",
            get(exec::attach_detached),
        )
        .route(
            "/api/v1/containers/runs/{id}/stop",
            post(stop::stop)
                .layer(DefaultBodyLimit::max(stop::BODY_LIMIT))
                .layer(from_fn_with_state(stop::BODY_LIMIT, limit_body)),
        )
        .route(
            "/api/v1/auth/token",
            post(auth::token)
                .layer(DefaultBodyLimit::max(auth::BODY_LIMIT))
                .layer(from_fn_with_state(auth::BODY_LIMIT, limit_body)),
        )
        .route("/api/v1/billing/status", get(billing::status))
        .route(crate::openapi::PATH, get(crate::openapi::serve))
        .merge(image_routes::router())
}
