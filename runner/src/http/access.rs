//! One debug line per request: method, path and HTTP version (`RUST_LOG=bus_runner::http=debug`),
//! which shows how clients reach the runner, e.g. that busd's unary calls share HTTP/2 while
//! its log follows keep HTTP/1.1 connections of their own.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// Middleware (`axum::middleware::from_fn(log_request)`): logs the request, then serves it.
pub async fn log_request(request: Request, next: Next) -> Response {
    tracing::debug!(
        method = %request.method(),
        path = request.uri().path(),
        version = ?request.version(),
        "request"
    );
    next.run(request).await
}
