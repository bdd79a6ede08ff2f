//! The CLI's errors and the one place they become a line on stderr and an exit code.
//!
//! Exit codes (documented in the README; `run`, `exec` and `wait` exit with the command's own
//! code instead, 124 on a timeout and 125 when the run could not start):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other error |
//! | 2 | usage: bad arguments, a token on the command line, an invalid setting |
//! | 3 | `bus daemon status` / `bus local status`: not running |
//! | 4 | auth: no usable token, expired, or not allowed (UNAUTHENTICATED, PERMISSION_DENIED) |
//! | 5 | not found (NOT_FOUND) |
//! | 6 | unavailable: busd or the runner cannot be reached, or the call timed out |

use std::path::Path;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// busd answered with an error status.
    #[error("{}", render_status(.0))]
    Status(#[from] Status),
    /// busd could not be reached.
    #[error(
        "cannot reach busd at {socket}: {reason}; busd serves only its own user — check that --socket or BUS_SOCKET names your busd (`bus daemon status`)"
    )]
    Connect {
        /// The socket path.
        socket: String,
        /// Why.
        reason: String,
    },
    /// busd could not be started.
    #[error("could not start busd: {0}")]
    DaemonStart(String),
    /// A run's stream ended without its exit event.
    #[error(
        "the output stream of run {0} ended before the run did; it may still be running: see `bus containers runs`"
    )]
    StreamCut(String),
    /// busd did not stop when asked.
    #[error("{0}")]
    DaemonStop(String),
    /// A local precondition failed (a file, the environment); the message says what to do.
    #[error("{0}")]
    Local(String),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// The command line or a setting is wrong (exit code 2).
    #[error("{0}")]
    Usage(String),
}

/// The exit codes; see the module docs.
pub mod exit {
    /// Any other error.
    pub const ERROR: u8 = 1;
    /// Bad arguments or settings.
    pub const USAGE: u8 = 2;
    /// Not running (`bus daemon status`, `bus local status`).
    pub const NOT_RUNNING: u8 = 3;
    /// No usable credentials, or not allowed.
    pub const AUTH: u8 = 4;
    /// No such run (or other resource).
    pub const NOT_FOUND: u8 = 5;
    /// busd or the runner is unreachable, or the call timed out.
    pub const UNAVAILABLE: u8 = 6;
}

/// The exit code for a gRPC status code: the one mapping.
pub fn exit_code_for(code: Code) -> u8 {
    match code {
        Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
        Code::Unauthenticated | Code::PermissionDenied => exit::AUTH,
        Code::NotFound => exit::NOT_FOUND,
        Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
        _ => exit::ERROR,
    }
}

impl CliError {
    /// A connect failure, with its innermost cause.
    pub fn connect(socket: &Path, error: &tonic::transport::Error) -> Self {
        let mut source: &dyn std::error::Error = error;
        while let Some(next) = source.source() {
            source = next;
        }
        CliError::Connect {
            socket: socket.display().to_string(),
            reason: source.to_string(),
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Status(status) => exit_code_for(status.code()),
            CliError::Connect { .. } => exit::UNAVAILABLE,
            CliError::Usage(_) => exit::USAGE,
            _ => exit::ERROR,
        }
    }
}

/// Whether a failed call means busd itself went away (its process died, the connection
/// broke) rather than an answer from busd: every error busd sends carries an `ErrorInfo`.
pub fn busd_lost(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    ) && status.get_error_details().error_info().is_none()
}

/// One line: busd's message, then the guidance it attached (what to do next).
fn render_status(status: &Status) -> String {
    let details = status.get_error_details();
    let mut line = match status.code() {
        Code::DeadlineExceeded if status.message().is_empty() => {
            "the call timed out; raise --timeout or check the runner".to_owned()
        }
        _ if status.message().is_empty() => format!("busd answered {:?}", status.code()),
        _ => status.message().to_owned(),
    };
    if let Some(guidance) = details.localized_message() {
        line.push_str("; ");
        line.push_str(&guidance.message);
    }
    if let Some(delay) = details
        .retry_info()
        .and_then(|retry| retry.retry_delay)
        .filter(|delay| !delay.is_zero())
    {
        line.push_str(&format!(
            "; retry after {}",
            humantime::format_duration(delay)
        ));
    }
    if let Some(link) = details.help().and_then(|help| help.links.first()) {
        line.push_str(&format!(" (see {})", link.url));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_of_failure_has_its_code() {
        let cases = [
            (Code::InvalidArgument, 2),
            (Code::Unauthenticated, 4),
            (Code::PermissionDenied, 4),
            (Code::NotFound, 5),
            (Code::Unavailable, 6),
            (Code::DeadlineExceeded, 6),
            (Code::Internal, 1),
            (Code::ResourceExhausted, 1),
        ];
        for (code, want) in cases {
            assert_eq!(
                CliError::Status(Status::new(code, "x")).exit_code(),
                want,
                "{code:?}"
            );
        }
        let connect = CliError::Connect {
            socket: "s".into(),
            reason: "r".into(),
        };
        assert_eq!(connect.exit_code(), exit::UNAVAILABLE);
        assert_eq!(CliError::Usage("u".into()).exit_code(), exit::USAGE);
    }
}
