//! What can go wrong talking to the runner, and how a transport failure is worded.

use std::time::Duration;

use bus_api::Problem;
use reqwest::StatusCode;

use super::ndjson;

/// What went wrong talking to the upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with a problem document.
    #[error("{}", .0.detail)]
    Problem(Box<Problem>),
    /// The upstream answered with a problem document and a `Retry-After` header.
    #[error("{}", .problem.detail)]
    RetryLater {
        /// The problem.
        problem: Box<Problem>,
        /// How long to wait before trying again.
        retry_after: Duration,
    },
    /// The call's deadline passed before the upstream answered.
    #[error("the container runner at {origin} did not answer within the call's deadline")]
    Timeout {
        /// The origin that was called.
        origin: String,
    },
    /// No connection could be made, or it broke.
    #[error("cannot reach the container runner at {origin}: {reason}")]
    Unreachable {
        /// The origin that was called.
        origin: String,
        /// The transport's reason.
        reason: String,
    },
    /// An `https://` origin answered the TLS handshake in plain HTTP.
    #[error(
        "the container runner at {origin} does not speak TLS there (it answered in plain HTTP)"
    )]
    NotTls {
        /// The origin that was called.
        origin: String,
    },
    /// A gateway (or the runner) answered 502, 503 or 504 without a problem document, on
    /// every try.
    #[error("the container runner at {origin} is unavailable: it answered HTTP {status}{}",
        if *.tries > 1 { format!(" to {} tries", .tries) } else { String::new() })]
    Unavailable {
        /// The origin that was called.
        origin: String,
        /// The last answer's status, e.g. `503 Service Unavailable`.
        status: String,
        /// How many times the call was sent.
        tries: u32,
        /// The last answer's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The upstream answered something that is not this API.
    #[error("the container runner at {origin} answered unexpectedly: {reason}")]
    Protocol {
        /// The origin that was called.
        origin: String,
        /// What was wrong.
        reason: String,
    },
}

impl UpstreamError {
    /// The problem document, if the upstream sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            UpstreamError::Problem(problem) | UpstreamError::RetryLater { problem, .. } => {
                Some(problem)
            }
            _ => None,
        }
    }

    /// How long the upstream asked to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::RetryLater { retry_after, .. } => Some(*retry_after),
            UpstreamError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

pub(super) fn hint_for_status(status: StatusCode) -> &'static str {
    if status == StatusCode::NOT_FOUND {
        " (is the API URL the runner's origin?)"
    } else {
        ""
    }
}

/// The innermost cause of a transport error, which is the useful part ("connection refused").
pub(super) fn transport_reason(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        "timed out".to_owned()
    } else {
        source.to_string()
    }
}

/// Whether the TLS handshake failed because the peer answered with something that is not a
/// TLS record: a plain-HTTP server behind an `https://` origin.
pub(super) fn plain_http_answer(e: &reqwest::Error) -> bool {
    fn is_plain_http(error: &(dyn std::error::Error + 'static)) -> bool {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            );
        }
        // An io::Error's `source` skips the error it wraps: look inside it.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if is_plain_http(inner) {
                return true;
            }
        }
        error.source().is_some_and(is_plain_http)
    }
    is_plain_http(e)
}

/// What a broken NDJSON stream from `origin` means: a stream cut mid-line is a connection
/// that broke, anything else an answer that is not the API's.
pub(super) fn frame_error(origin: &str, e: ndjson::FrameError) -> UpstreamError {
    match e {
        ndjson::FrameError::Truncated => UpstreamError::Unreachable {
            origin: origin.to_owned(),
            reason: e.to_string(),
        },
        _ => UpstreamError::Protocol {
            origin: origin.to_owned(),
            reason: e.to_string(),
        },
    }
}
