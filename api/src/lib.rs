//! # bus-api — the REST contract's wire types
//!
//! The container-runner REST API (`/api/v1/...`) speaks JSON; this crate is its vocabulary,
//! shared by the runner (which serves it) and busd (which calls it). It does no I/O.
//!
//! # Layout
//! - [`runs`]: run requests and records, list pages, log frames.
//! - [`frames`]: the log stream's binary framing, and log frames with their bytes decoded.
//! - [`status`]: the runner's status document.
//! - [`problem`]: RFC 9457 problem documents and the stable error codes.
//! - [`auth`]: scope names, the JWT claims (and grant) the runner issues, token exchange.
//! - [`billing`]: the billing status document.
//! - [`exec`]: the exec WebSocket's channel frames.
//! - [`images`]: images as an account sees them, registry requests, progress frames.
//! - [`builds`]: build records and their log frames.
//! - [`paths`]: the endpoints' paths; [`query_string`] encodes the query types.
//!
//! Every query a caller sends is one of this crate's types, so what busd serializes is what
//! the runner deserializes.

pub mod auth;
pub mod billing;
pub mod builds;
pub mod exec;
pub mod frames;
pub mod images;
pub mod paths;
pub mod problem;
pub mod runs;
pub mod status;

pub use billing::{BillingState, BillingStatus};
pub use problem::{Problem, ProblemCode};
pub use runs::{
    CreateRun, LogFrame, Port, Protocol, Run, RunEvent, RunOptions, RunPage, RunState, StopRun,
    StorageMount, Stream, WatchedRun,
};
pub use status::RunnerStatus;

/// The path prefix every endpoint hangs below; an API URL is the origin only.
pub const API_PREFIX: &str = "/api/v1";

/// The media type of a log stream: one JSON [`LogFrame`] per line.
pub const NDJSON: &str = "application/x-ndjson";

/// A query type's query string (without `?`): what the runner's query extractor reads back.
pub fn query_string<Q: serde::Serialize>(query: &Q) -> String {
    serde_urlencoded::to_string(query).expect("the query types serialize as flat pairs")
}

/// Serializes each query and reads it back, as the two sides do: it must come back the same.
#[cfg(test)]
fn assert_round_trips<Q>(queries: impl IntoIterator<Item = Q>)
where
    Q: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for query in queries {
        let text = query_string(&query);
        let back: Q = serde_urlencoded::from_str(&text).expect("a serialized query reads back");
        assert_eq!(back, query, "{text}");
    }
}
