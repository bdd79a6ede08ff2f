//! The CLI's errors and the one place they become a line on stderr.

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
    #[error("cannot reach busd at {socket}: {reason}")]
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
        1
    }
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
    if let Some(link) = details.help().and_then(|help| help.links.first()) {
        line.push_str(&format!(" (see {})", link.url));
    }
    line
}
