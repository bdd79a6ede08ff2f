//! The HTTP routes, one module per resource.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::AppState;

pub mod logs;
pub mod runs;
pub mod status;

/// Every route below `/api/v1/containers`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/containers/status", get(status::get))
        .route(
            "/api/v1/containers/runs",
            get(runs::list)
                .post(runs::create)
                .layer(DefaultBodyLimit::max(runs::BODY_LIMIT)),
        )
        .route(
            "/api/v1/containers/runs/{id}",
            get(runs::get).delete(runs::delete),
        )
        .route("/api/v1/containers/runs/{id}/logs", get(logs::get))
}
