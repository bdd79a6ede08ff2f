//! The image and build routes, kept apart from the run routes.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::AppState;
use crate::routes::{builds, images};

/// Every image and build route below `/api/v1/containers` (documented in
/// [`crate::images::openapi`]).
pub fn router() -> Router<AppState> {
    let json = || DefaultBodyLimit::max(images::BODY_LIMIT);
    Router::new()
        .route("/api/v1/containers/images", get(images::list))
        .route(
            "/api/v1/containers/images/pull",
            post(images::pull).layer(json()),
        )
        .route(
            "/api/v1/containers/images/push",
            post(images::push).layer(json()),
        )
        // Uploads: the size limit is the config's, enforced while the body streams in.
        .route(
            "/api/v1/containers/images/load",
            post(images::load).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/containers/images/{reference}",
            get(images::inspect).delete(images::remove),
        )
        .route(
            "/api/v1/containers/images/{reference}/tag",
            post(images::tag).layer(json()),
        )
        .route(
            "/api/v1/containers/images/{reference}/archive",
            get(images::save),
        )
        .route(
            "/api/v1/containers/builds",
            get(builds::list)
                .post(builds::create)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/containers/builds/{id}",
            get(builds::get).delete(builds::delete),
        )
        .route("/api/v1/containers/builds/{id}/logs", get(builds::logs))
        .route(
            "/api/v1/containers/builds/{id}/cancel",
            post(builds::cancel),
        )
}
