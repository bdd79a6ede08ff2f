//! The CLI's errors and the one place they become a line on stderr and an exit code.
//!
//! Exit codes (documented in docs/cli.md). `run`, `exec`, `wait` and `execs wait` pass on the
//! command's own code instead, 124 when the run hit its timeout, and [`exit::TOOL_FAILED`]
//! (125, as docker does) for every failure of bus, busd or the runner, so the command's own
//! codes stay unambiguous. Every other command:
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
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The `ErrorInfo` reason of busd's refusal of a client newer than itself.
pub const PROTOCOL_MISMATCH: &str = "PROTOCOL_MISMATCH";

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// busd answered with an error status.
    #[error("{}", render_status(.0))]
    Status(Status),
    /// busd accepted the connection but does not answer (stopped, or wedged).
    #[error(
        "busd{} at {socket} accepted the connection but did not answer within {}s; run `bus daemon restart`",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        crate::link::ANSWER_BOUND.as_secs()
    )]
    Unresponsive {
        /// The socket path.
        socket: String,
        /// busd's PID, from its `<socket>.pid` lock file.
        pid: Option<u32>,
    },
    /// busd closed the connection under the call: it exited, or was killed.
    #[error("{}", gone_line(.socket, *.answered, .cause))]
    BusdGone {
        /// The socket path.
        socket: String,
        /// Whether busd had sent anything first (if not, it had read no call).
        answered: bool,
        /// The innermost error of the broken connection.
        cause: String,
    },
    /// The call's deadline passed before busd answered.
    #[error("{}", timed_out_line(*.limit, *.default))]
    TimedOut {
        /// The deadline.
        limit: Duration,
        /// Whether it was the built-in default rather than a `--timeout` or setting.
        default: bool,
    },
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
    /// A run created with `run -d` failed before its command started.
    #[error(
        "run {id} failed to start{reason}; check the image and the command (`bus containers get {id}` shows the run)"
    )]
    RunFailedToStart {
        /// The run.
        id: String,
        /// `: ` and the runner's reason, or nothing.
        reason: String,
        /// The exit code the runner gave the command (127: not found, 126: not executable).
        code: Option<i32>,
    },
    /// `run --service` ended, or its port did not accept connections in time.
    #[error("service {id} {why}; its last output is above (`bus containers logs {id}` shows all)")]
    ServiceNotReady {
        /// The run.
        id: String,
        /// What happened, e.g. `ended exited with code 1`.
        why: String,
    },
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
    /// `run`, `exec`, `wait`, `execs wait`: bus, busd or the runner failed (as docker's 125).
    pub const TOOL_FAILED: u8 = 125;
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
        CliError::Connect {
            socket: socket.display().to_string(),
            reason: innermost(error),
        }
    }

    /// Whether this failure means busd went away under the call (see [`busd_lost`]): the
    /// streams that resume after it resume on either form.
    pub fn busd_lost(&self) -> bool {
        match self {
            CliError::BusdGone { .. } => true,
            CliError::Status(status) => busd_lost(status),
            _ => false,
        }
    }

    /// busd on `socket` does not answer; names its PID from the lock file.
    pub fn unresponsive(socket: &Path) -> Self {
        CliError::Unresponsive {
            socket: socket.display().to_string(),
            pid: crate::link::lock_pid(socket),
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Status(status) if error_reason(status) == Some(PROTOCOL_MISMATCH) => {
                exit::UNAVAILABLE
            }
            CliError::Status(status) => exit_code_for(status.code()),
            CliError::Connect { .. }
            | CliError::Unresponsive { .. }
            | CliError::BusdGone { .. }
            | CliError::TimedOut { .. } => exit::UNAVAILABLE,
            CliError::Usage(_) => exit::USAGE,
            _ => exit::ERROR,
        }
    }

    /// The exit code of the command this error ended, for the commands that pass it on
    /// (`run`, `exec`, `wait`): a command that could not be started has one, as in a shell.
    pub fn command_exit_code(&self) -> Option<u8> {
        match self {
            CliError::RunFailedToStart {
                code: Some(code), ..
            } => Some((*code).clamp(0, 255) as u8),
            _ => None,
        }
    }

    /// When busd refused the call as older than this client (`PROTOCOL_MISMATCH`) and a CLI
    /// had started it, so this one may restart it: that busd's PID.
    pub fn stale_busd_started_by_cli(&self) -> Option<u32> {
        let CliError::Status(status) = self else {
            return None;
        };
        let details = status.get_error_details();
        let info = details
            .error_info()
            .filter(|i| i.reason == PROTOCOL_MISMATCH)?;
        if info
            .metadata
            .get("started_by_cli")
            .is_none_or(|v| v != "true")
        {
            return None;
        }
        info.metadata.get("pid")?.parse().ok()
    }
}

impl From<Status> for CliError {
    /// busd's answer; or, for a failure busd did not send (no `ErrorInfo`), what the
    /// connection saw: the deadline passing, or busd not answering.
    fn from(status: Status) -> Self {
        if status.get_error_details().error_info().is_none() {
            if deadline_passed(&status) {
                let (limit, default) = crate::link::deadline_in_force();
                return CliError::TimedOut { limit, default };
            }
            if transport_failure(&status) {
                if let Some(socket) = crate::link::unresponsive() {
                    return CliError::unresponsive(&socket);
                }
                if let Some(gone) = crate::link::went_away() {
                    return CliError::BusdGone {
                        socket: gone.socket.display().to_string(),
                        answered: gone.answered,
                        cause: innermost(&status),
                    };
                }
            }
        }
        CliError::Status(status)
    }
}

/// busd's `ErrorInfo` reason, among those this module acts on.
fn error_reason(status: &Status) -> Option<&'static str> {
    let details = status.get_error_details();
    let info = details.error_info()?;
    [PROTOCOL_MISMATCH, PAYLOAD_TOO_LARGE]
        .into_iter()
        .find(|reason| info.reason == *reason)
}

/// The `ErrorInfo` reason of a request body the runner found too large.
const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";

/// The `ErrorInfo` reason of a request the runner refused as malformed or out of bounds.
const INVALID_REQUEST: &str = "INVALID_REQUEST";

/// The CLI's options for the request fields a runner names in an [`INVALID_REQUEST`]
/// message. The runner speaks REST (`timeout_seconds`); the user typed `--run-timeout`.
/// Names that are also plain words count only where they open the message as its subject
/// (`name must …`, `role is …`).
const FIELD_OPTIONS: [(&str, &str, bool); 9] = [
    ("timeout_seconds", "--run-timeout", false),
    ("grace_seconds", "--grace", false),
    ("mount_path", "--mount-path", false),
    ("subpath", "--mount-subpath", false),
    ("workdir", "--workdir", false),
    ("name", "--name", true),
    ("participant", "--participant", true),
    ("role", "--role", true),
    ("image", "--image", true),
];

/// `message` with each request field it names (as a whole word) replaced by the CLI option
/// that sets it.
fn with_options(message: &str) -> String {
    let mut out = message.to_owned();
    for (field, option, opening_only) in FIELD_OPTIONS {
        let mut at = 0;
        while let Some(found) = out[at..].find(field).map(|i| at + i) {
            let end = found + field.len();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            let whole = !word(out[..found].chars().next_back()) && !word(out[end..].chars().next());
            let subject = found == 0
                && [" must ", " is "]
                    .iter()
                    .any(|verb| out[end..].starts_with(verb));
            if whole && (!opening_only || subject) {
                out.replace_range(found..end, option);
                at = found + option.len();
            } else {
                at = end;
            }
            if opening_only {
                break;
            }
        }
    }
    out
}

/// The codes tonic gives a call whose connection failed under it.
fn transport_failure(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

/// Whether this is the CLI's own deadline passing before busd answered (tonic's client-side
/// timeout, which has no `ErrorInfo`).
fn deadline_passed(status: &Status) -> bool {
    status.code() == Code::Cancelled
        && status.message() == tonic::TimeoutExpired(()).to_string()
        && status.get_error_details().error_info().is_none()
}

fn timed_out_line(limit: Duration, default: bool) -> String {
    let limit = humantime::format_duration(limit);
    if default {
        format!(
            "the call took longer than {limit}, the default timeout; pass --timeout (e.g. --timeout 2m) or `bus config set timeout 2m`, or check `bus daemon status` and the runner"
        )
    } else {
        format!(
            "the call took longer than --timeout {limit}; raise --timeout, or check `bus daemon status` and the runner"
        )
    }
}

/// Whether a failed call means busd itself went away (its process died, the connection
/// broke) rather than an answer from busd: every error busd sends carries an `ErrorInfo`.
/// Neither the call's deadline passing nor a busd that stopped answering counts: asking
/// again would only wait again.
pub fn busd_lost(status: &Status) -> bool {
    transport_failure(status)
        && status.get_error_details().error_info().is_none()
        && !deadline_passed(status)
        && crate::link::unresponsive().is_none()
}

/// `text` with every control character (and bidirectional override) escaped, so input
/// echoed in a message cannot move the cursor, recolour the terminal or hide text: ESC
/// becomes `\x1b`, a newline `\n`. Everything else is left as it is.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// One line: busd's message, then the guidance it attached (what to do next).
fn render_status(status: &Status) -> String {
    let details = status.get_error_details();
    let mut line = match status.code() {
        Code::DeadlineExceeded if status.message().is_empty() => {
            "the call timed out; raise --timeout or check the runner".to_owned()
        }
        _ if status.message().is_empty() => format!("busd answered {:?}", status.code()),
        _ if details
            .error_info()
            .is_some_and(|info| info.reason == INVALID_REQUEST) =>
        {
            with_options(status.message())
        }
        _ => status.message().to_owned(),
    };
    if error_reason(status) == Some(PAYLOAD_TOO_LARGE) {
        // What the CLI sends in bulk is a run's environment and arguments; busd, which cannot
        // know which command sent it, only says to fix the request.
        line.push_str(
            "; pass fewer or smaller -e values and arguments, or keep large data in a file in \
             the account's storage (`--profile agent` mounts it at /data) and read it there",
        );
    } else if let Some(guidance) = details.localized_message() {
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

/// busd closed the connection under a call: whether the call reached it, and what to do.
fn gone_line(socket: &str, answered: bool, cause: &str) -> String {
    let log = crate::daemon::log_path();
    if answered {
        format!(
            "the connection to busd at {socket} broke during the call ({cause}); busd may have \
             exited (its log: {}): check what the call did (`bus containers runs`) before \
             running it again",
            log.display()
        )
    } else {
        format!(
            "busd at {socket} closed the connection before answering ({cause}), so the call \
             was not made; run it again (a new busd starts when none runs; its log: {})",
            log.display()
        )
    }
}

/// The innermost error behind `error` (the I/O error of a broken connection, say).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields_read_as_the_options_that_set_them() {
        assert_eq!(
            with_options("timeout_seconds is 999999; at most 86400 (one day) is allowed"),
            "--run-timeout is 999999; at most 86400 (one day) is allowed"
        );
        assert_eq!(
            with_options("a service has no timeout of its own; leave timeout_seconds out"),
            "a service has no timeout of its own; leave --run-timeout out"
        );
        assert_eq!(
            with_options("name must be 1 to 128 characters long"),
            "--name must be 1 to 128 characters long"
        );
        // A plain word inside the text, and a field inside a longer word, stay.
        assert_eq!(
            with_options("the image name must not be empty"),
            "the image name must not be empty"
        );
        assert_eq!(with_options("my_workdir_x is bad"), "my_workdir_x is bad");
        assert_eq!(
            with_options("name an image reference, e.g. busybox"),
            "name an image reference, e.g. busybox"
        );
        assert_eq!(
            with_options("subpath must not contain \"..\" components"),
            "--mount-subpath must not contain \"..\" components"
        );
    }

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
        let timed_out = CliError::TimedOut {
            limit: Duration::from_secs(1),
            default: false,
        };
        assert_eq!(timed_out.exit_code(), exit::UNAVAILABLE);
        assert!(
            timed_out.to_string().contains("--timeout 1s"),
            "{timed_out}"
        );
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("a\x1b[31mb"), "a\\x1b[31mb");
        assert_eq!(escape("one\ntwo\r\t\x7f"), "one\\ntwo\\r\\t\\x7f");
        assert_eq!(escape("\u{9b}x\u{202e}y"), "\\x9bx\\u{202e}y");
        assert_eq!(escape("run-1 `bus x` é ✓"), "run-1 `bus x` é ✓");
    }

    #[test]
    fn the_clients_own_timeout_is_not_busd_going_away() {
        let expired = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert!(deadline_passed(&expired), "{expired:?}");
        assert!(!busd_lost(&expired));
        assert!(matches!(CliError::from(expired), CliError::TimedOut { .. }));
        assert!(busd_lost(&Status::unavailable("connection reset")));
    }
}
