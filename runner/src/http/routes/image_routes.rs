//! The image and build routes, kept apart from the run routes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use futures::{Stream, StreamExt as _};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

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

/// An upload route: the size limit is the config's, enforced while the body streams in, and
/// a body refused early is drained (see [`DrainOnDrop`]).
fn upload(route: UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    route.map(|route| {
        route
            .layer(DefaultBodyLimit::disable())
            .layer(middleware::from_fn(drain_unread))
    })
}

/// Every image and build route below `/api/v1/containers`, each with its operation.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(images::list))
        .routes(super::json_limited(
            routes!(images::pull),
            images::BODY_LIMIT,
        ))
        .routes(super::json_limited(
            routes!(images::push),
            images::BODY_LIMIT,
        ))
        .routes(upload(routes!(images::load)))
        .routes(super::json_limited(
            routes!(images::load_from_storage),
            images::BODY_LIMIT,
        ))
        .routes(routes!(images::inspect, images::remove))
        .routes(super::json_limited(
            routes!(images::tag),
            images::BODY_LIMIT,
        ))
        .routes(routes!(images::save))
        .routes(upload(routes!(builds::list, builds::create)))
        .routes(routes!(builds::get, builds::delete))
        .routes(routes!(builds::logs))
        .routes(routes!(builds::cancel))
}
