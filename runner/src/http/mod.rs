//! The HTTP layer: routes, problem documents, TLS.

pub mod auth;
pub mod problem;
pub mod routes;
pub mod tls;
