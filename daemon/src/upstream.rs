//! The REST client: the only part of busd that speaks HTTP.
//!
//! One pooled `reqwest::Client` per origin (keep-alive, HTTP/2 when offered, rustls). Every
//! call carries the bearer token; every non-2xx answer is parsed as an RFC 9457 problem.
//!
//! Robustness: a unary call is bounded by the caller's gRPC deadline (a reqwest timeout of the
//! time left); idempotent calls (GET, DELETE) and creates that carry an `Idempotency-Key` are
//! retried on connect errors and 502/503/504, [`MAX_TRIES`] times in all, with jittered
//! exponential backoff that never sleeps past the deadline. `Retry-After` is kept on the error.
//!
//! Log streams are not bounded by the deadline (they may outlive the call that opened them)
//! but by silence: keepalive frames are dropped here, and a stream that has shown the runner
//! sends them is cut as broken after [`SILENCE_INTERVALS`] keepalive intervals without a byte
//! (see [`KeepalivesSeen`]), so a half-open connection fails instead of hanging.
//!
//! # Layout
//! - [`origin`] holds the runner's validated origin.
//! - [`client`] holds the pool of clients and one call context ([`Upstream`]).
//! - [`retry`] holds the retry policy, backoff and idempotency keys.
//! - [`error`] holds what can go wrong ([`UpstreamError`]).
//! - [`tls`] holds CA certificates trusted besides the web roots.
//! - [`runs`], [`logs`], [`exec`] and [`images`] hold the endpoints, by resource.
//! - [`ndjson`] holds the NDJSON frame decoder.

pub mod client;
pub mod error;
pub mod exec;
pub mod images;
pub mod logs;
pub mod ndjson;
pub mod origin;
pub mod retry;
pub mod runs;
#[cfg(test)]
pub(crate) mod tests;
pub mod tls;

pub use client::{Revisions, Upstream, Upstreams};
pub use error::UpstreamError;
pub use logs::{
    DEFAULT_KEEPALIVE, KEEPALIVE_ENV, KeepalivesSeen, SILENCE_INTERVALS, keepalive_from_env,
};
pub use origin::{ApiOrigin, ApiUrlError};
pub use retry::{
    IDEMPOTENCY_KEY, MAX_TRIES, backoff, parse_retry_after, retry_policy, retryable_status,
};
pub use runs::{CreateOptions, RunWatch, WATCH_SILENCE};
pub use tls::{CaFileError, TrustedCas};
