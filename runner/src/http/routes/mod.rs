//! The HTTP routes, one module per resource.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, get, post};

mod image_routes;

use crate::AppState;
use crate::http::problem::limit_body;

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
            json_limited(get(runs::list).post(runs::create), runs::BODY_LIMIT),
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
            json_limited(post(exec::create_detached), exec::BODY_LIMIT),
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
            json_limited(post(stop::stop), stop::BODY_LIMIT),
        )
        .route(
            "/api/v1/auth/token",
            json_limited(post(auth::token), auth::BODY_LIMIT),
        )
        .route("/api/v1/billing/status", get(billing::status))
        .route(crate::openapi::PATH, get(crate::openapi::serve))
        .merge(image_routes::router())
}

/// A route whose JSON body may be at most `limit` bytes: a larger declared length is refused
/// with 413 before the body is read, a body without one once it passes the limit; either
/// way the problem names the limit.
pub(crate) fn json_limited<S: Clone + Send + Sync + 'static>(
    route: MethodRouter<S>,
    limit: usize,
) -> MethodRouter<S> {
    route
        .layer(DefaultBodyLimit::max(limit))
        .layer(from_fn_with_state(limit, limit_body))
}
