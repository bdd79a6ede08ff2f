//! The HTTP layer: routes (each handler with its OpenAPI operation), the OpenAPI document's
//! root, problem documents, the bearer-token extractor, TLS.

pub mod auth;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod tls;
