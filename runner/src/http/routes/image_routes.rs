//! The image and build routes, kept apart from the run routes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use futures::{Stream, StreamExt as _};

use crate::AppState;
use crate::http::routes::{builds, images};

/// How long an upload refused early is still read (and thrown away).
const DRAIN_FOR: Duration = Duration::from_secs(30);
/// How much of an upload refused early is read at most.
const DRAIN_BYTES: u64 = 1024 * 1024 * 1024;

/// An upload body that, dropped before its end, goes on being read (and thrown away) for a
/// while: a sender still writing when the refusal (413, 403, 409 ...) is sent then reads the
/// refusal instead of a reset connection.
struct DrainOnDrop {
    inner: Option<BodyDataStream>,
    ended: bool,
}

impl Stream for DrainOnDrop {
    type Item = Result<bytes::Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let next = inner.poll_next_unpin(cx);
        if let Poll::Ready(None) = next {
            self.ended = true;
        }
        next
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take().filter(|_| !self.ended) else {
            return;
        };
        tokio::spawn(async move {
            let mut drained = 0u64;
            let _ = tokio::time::timeout(DRAIN_FOR, async {
                while let Some(Ok(chunk)) = inner.next().await {
                    drained += chunk.len() as u64;
                    if drained > DRAIN_BYTES {
                        break;
                    }
                }
            })
            .await;
        });
    }
}

async fn drain_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = Body::from_stream(DrainOnDrop {
        inner: Some(body.into_data_stream()),
        ended: false,
    });
    next.run(Request::from_parts(parts, body)).await
}

/// Every image and build route below `/api/v1/containers` (documented in
/// [`crate::images::openapi`]).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/containers/images", get(images::list))
        .route(
            "/api/v1/containers/images/pull",
            super::json_limited(post(images::pull), images::BODY_LIMIT),
        )
        .route(
            "/api/v1/containers/images/push",
            super::json_limited(post(images::push), images::BODY_LIMIT),
        )
        // Uploads: the size limit is the config's, enforced while the body streams in.
        .route(
            "/api/v1/containers/images/load",
            post(images::load)
                .layer(DefaultBodyLimit::disable())
                .layer(middleware::from_fn(drain_unread)),
        )
        .route(
            "/api/v1/containers/images/{reference}",
            get(images::inspect).delete(images::remove),
        )
        .route(
            "/api/v1/containers/images/{reference}/tag",
            super::json_limited(post(images::tag), images::BODY_LIMIT),
        )
        .route(
            "/api/v1/containers/images/{reference}/archive",
            get(images::save),
        )
        .route(
            "/api/v1/containers/builds",
            get(builds::list)
                .post(builds::create)
                .layer(DefaultBodyLimit::disable())
                .layer(middleware::from_fn(drain_unread)),
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
