//! The HTTP layer: routes (each handler with its OpenAPI operation), the OpenAPI document's
//! root, problem documents, the bearer-token extractor, the `bus-revision` header, TLS, and a
//! debug line per request.

pub mod access;
pub mod auth;
pub mod openapi;
pub mod problem;
pub mod revision;
pub mod routes;
pub mod tls;
