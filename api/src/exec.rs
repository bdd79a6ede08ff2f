//! The exec channel protocol: the frames of `GET /api/v1/containers/runs/{id}/exec` once it is
//! upgraded to a WebSocket.
//!
//! Every WebSocket message is binary; its first byte names the channel, in the manner of
//! Kubernetes' `v5.channel.k8s.io`:
//!
//! | byte | channel | direction | payload |
//! |---|---|---|---|
//! | 0 | stdin | client → runner | bytes for the command's stdin |
//! | 1 | stdout | runner → client | bytes the command wrote (all output, with a TTY) |
//! | 2 | stderr | runner → client | bytes the command wrote to stderr (never with a TTY) |
//! | 3 | status | runner → client | JSON [`ExecStatus`]; the last frame, then the runner closes |
//! | 4 | resize | client → runner | JSON [`TerminalSize`] `{"cols":80,"rows":24}` |
//! | 5 | signal | client → runner | JSON [`SignalFrame`] `{"signal":15}`: a POSIX signal for the command |
//! | 255 | close | client → runner | one more byte, the channel to close: only 0 (stdin) |
//!
//! The status frame comes exactly once, after the last output byte. It carries `exit_code`
//! only when the engine reported one; otherwise `reason` is `"error"` and `message` says why,
//! and a client must not make up an exit code. A command that died of a signal the session
//! sent has `signal` set beside its exit code (128 + the signal).
//!
//! Detached execs (`POST /api/v1/containers/runs/{id}/execs`, [`CreateExec`]) run without a
//! client; the runner captures their output. `GET /api/v1/containers/execs/{exec_id}/attach`
//! speaks the same protocol, output only: everything captured from the start, then (when
//! following) what comes, then the status. Without following, a status with `reason`
//! `running` ends the replay of an exec that still runs.
//!
//! This module does no I/O: it encodes and decodes frames.

use serde::{Deserialize, Serialize};

/// Channel byte: the command's stdin.
pub const STDIN: u8 = 0;
/// Channel byte: the command's stdout (all of its output with a TTY).
pub const STDOUT: u8 = 1;
/// Channel byte: the command's stderr.
pub const STDERR: u8 = 2;
/// Channel byte: the final status.
pub const STATUS: u8 = 3;
/// Channel byte: a terminal resize.
pub const RESIZE: u8 = 4;
/// Channel byte: a signal for the command.
pub const SIGNAL: u8 = 5;
/// Channel byte: close a channel (only stdin can be closed).
pub const CLOSE: u8 = 255;

/// The WebSocket subprotocol the endpoint speaks (`Sec-WebSocket-Protocol`); optional.
pub const SUBPROTOCOL: &str = "v1.exec.bus.dev";

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TerminalSize {
    /// Columns (width).
    pub cols: u16,
    /// Rows (height).
    pub rows: u16,
}

/// A POSIX signal for the command: the payload of the signal frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignalFrame {
    /// The signal's number, 1 to 64 (e.g. 2 SIGINT, 15 SIGTERM).
    pub signal: i32,
}

/// How an exec ended: the payload of the status frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecStatus {
    /// The command's exit code, as the engine reported it; absent when it is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the command, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `exited` when `exit_code` is set; `error` when the session failed and no exit code is
    /// known.
    pub reason: String,
    /// What went wrong, with `reason` `error`; with an exit code, why the runner ended the
    /// command (its output reached the run's `max_output_mb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ExecStatus {
    /// The command exited with `code`.
    pub fn exited(code: i32) -> Self {
        ExecStatus {
            exit_code: Some(code),
            signal: None,
            reason: "exited".to_owned(),
            message: None,
        }
    }

    /// A replay without following ended while the exec still runs.
    pub fn running() -> Self {
        ExecStatus {
            exit_code: None,
            signal: None,
            reason: "running".to_owned(),
            message: None,
        }
    }

    /// The session failed; no exit code is known.
    pub fn error(message: impl Into<String>) -> Self {
        ExecStatus {
            exit_code: None,
            signal: None,
            reason: "error".to_owned(),
            message: Some(message.into()),
        }
    }
}

/// One message of the exec WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes for the command's stdin.
    Stdin(Vec<u8>),
    /// Bytes from the command's stdout.
    Stdout(Vec<u8>),
    /// Bytes from the command's stderr.
    Stderr(Vec<u8>),
    /// The final status.
    Status(ExecStatus),
    /// A new terminal size.
    Resize(TerminalSize),
    /// A signal for the command.
    Signal(SignalFrame),
    /// Close the command's stdin (EOF).
    CloseStdin,
}

/// Why a message is not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// An empty message has no channel byte.
    Empty,
    /// An unknown channel byte.
    UnknownChannel(u8),
    /// A close frame for a channel other than stdin.
    BadClose(Vec<u8>),
    /// A JSON payload that does not parse.
    BadJson {
        /// The channel.
        channel: u8,
        /// The parser's complaint.
        reason: String,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Empty => write!(f, "an empty exec frame has no channel byte"),
            FrameError::UnknownChannel(c) => write!(f, "unknown exec channel {c}"),
            FrameError::BadClose(p) => write!(f, "a close frame may only close stdin, not {p:?}"),
            FrameError::BadJson { channel, reason } => {
                write!(
                    f,
                    "the JSON of exec channel {channel} does not parse: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl Frame {
    /// The frame's channel byte.
    pub fn channel(&self) -> u8 {
        match self {
            Frame::Stdin(_) => STDIN,
            Frame::Stdout(_) => STDOUT,
            Frame::Stderr(_) => STDERR,
            Frame::Status(_) => STATUS,
            Frame::Resize(_) => RESIZE,
            Frame::Signal(_) => SIGNAL,
            Frame::CloseStdin => CLOSE,
        }
    }

    /// The frame as one binary WebSocket message.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Stdin(data) | Frame::Stdout(data) | Frame::Stderr(data) => {
                encode_data(self.channel(), data)
            }
            Frame::Status(status) => encode_json(STATUS, status),
            Frame::Resize(size) => encode_json(RESIZE, size),
            Frame::Signal(signal) => encode_json(SIGNAL, signal),
            Frame::CloseStdin => vec![CLOSE, STDIN],
        }
    }

    /// Parses one binary WebSocket message. A close frame without the channel byte closes
    /// stdin too.
    pub fn decode(message: &[u8]) -> Result<Frame, FrameError> {
        let (&channel, payload) = message.split_first().ok_or(FrameError::Empty)?;
        let json_err = |e: serde_json::Error| FrameError::BadJson {
            channel,
            reason: e.to_string(),
        };
        Ok(match channel {
            STDIN => Frame::Stdin(payload.to_vec()),
            STDOUT => Frame::Stdout(payload.to_vec()),
            STDERR => Frame::Stderr(payload.to_vec()),
            STATUS => Frame::Status(serde_json::from_slice(payload).map_err(json_err)?),
            RESIZE => Frame::Resize(serde_json::from_slice(payload).map_err(json_err)?),
            SIGNAL => Frame::Signal(serde_json::from_slice(payload).map_err(json_err)?),
            CLOSE => match payload {
                [] | [STDIN] => Frame::CloseStdin,
                other => return Err(FrameError::BadClose(other.to_vec())),
            },
            other => return Err(FrameError::UnknownChannel(other)),
        })
    }
}

/// A data frame for `channel` without building a [`Frame`] first.
pub fn encode_data(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

fn encode_json<T: Serialize>(channel: u8, value: &T) -> Vec<u8> {
    let mut out = vec![channel];
    serde_json::to_writer(&mut out, value).expect("serialising to a Vec cannot fail");
    out
}

/// Most arguments an exec's command may have.
pub const MAX_ARGS: usize = 4096;
/// Longest exec query string accepted.
pub const MAX_QUERY: usize = 64 * 1024;

/// What to execute: the query of `GET /api/v1/containers/runs/{id}/exec`. `command` once per
/// argument, in order; `env` once per `NAME=value`; `workdir`; `tty`; `stdin`; `cols` and
/// `rows` together (the initial terminal size).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecQuery {
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// `NAME=value` entries added to the container's environment.
    pub env: Vec<String>,
    /// The working directory (absolute), else the container's.
    pub workdir: Option<String>,
    /// Allocate a pseudo-terminal (output then comes on stdout only).
    pub tty: bool,
    /// Attach stdin.
    pub stdin: bool,
    /// The terminal's initial size as (cols, rows).
    pub size: Option<(u16, u16)>,
}

impl ExecQuery {
    /// The query string (without `?`).
    pub fn to_query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for arg in &self.argv {
            q.append_pair("command", arg);
        }
        for env in &self.env {
            q.append_pair("env", env);
        }
        if let Some(dir) = &self.workdir {
            q.append_pair("workdir", dir);
        }
        q.append_pair("tty", if self.tty { "true" } else { "false" });
        q.append_pair("stdin", if self.stdin { "true" } else { "false" });
        if let Some((cols, rows)) = self.size {
            q.append_pair("cols", &cols.to_string());
            q.append_pair("rows", &rows.to_string());
        }
        q.finish()
    }

    /// Parses and validates a query string; the error is a sentence naming the parameter.
    pub fn parse(query: &str) -> Result<Self, String> {
        if query.len() > MAX_QUERY {
            return Err(format!("the query is longer than {MAX_QUERY} bytes"));
        }
        let mut exec = ExecQuery::default();
        let (mut cols, mut rows) = (None, None);
        let flag = |key: &str, value: &str| match value {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(format!("{key} must be true or false, not {other:?}")),
        };
        let size = |key: &str, value: &str| {
            value
                .parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{key} must be from 1 to 65535, not {value:?}"))
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            // An argument, an environment entry and a path are C strings to the engine.
            if matches!(&*key, "command" | "env" | "workdir") && value.contains('\0') {
                return Err(format!("{key} must not contain NUL bytes"));
            }
            match &*key {
                "command" => exec.argv.push(value.into_owned()),
                "env" => exec.env.push(value.into_owned()),
                "workdir" => exec.workdir = Some(value.into_owned()),
                "tty" => exec.tty = flag("tty", &value)?,
                "stdin" => exec.stdin = flag("stdin", &value)?,
                "cols" => cols = Some(size("cols", &value)?),
                "rows" => rows = Some(size("rows", &value)?),
                other => return Err(format!("unknown query parameter {other:?}")),
            }
        }
        if exec.argv.first().is_none_or(String::is_empty) {
            return Err(
                "name the command with one `command` parameter per argument, e.g. \
                 ?command=sh&command=-c&command=echo%20hi"
                    .to_owned(),
            );
        }
        exec.check()?;
        exec.size = match (cols, rows) {
            (Some(c), Some(r)) => Some((c, r)),
            (None, None) => None,
            _ => return Err("give cols and rows together".to_owned()),
        };
        Ok(exec)
    }
}

impl ExecQuery {
    /// Checks the command, environment and working directory; the error is a sentence naming
    /// the field.
    pub fn check(&self) -> Result<(), String> {
        if self.argv.first().is_none_or(String::is_empty) {
            return Err("the command is empty; give it with its arguments".to_owned());
        }
        if self.argv.len() > MAX_ARGS {
            return Err(format!("at most {MAX_ARGS} command arguments"));
        }
        if let Some(bad) = self
            .env
            .iter()
            .find(|v| !v.contains('=') || v.starts_with('='))
        {
            return Err(format!("env must read NAME=value, not {bad:?}"));
        }
        if let Some(dir) = self.workdir.as_deref().filter(|d| !d.starts_with('/')) {
            return Err(format!("workdir must be an absolute path, not {dir:?}"));
        }
        Ok(())
    }
}

/// The body of `POST /api/v1/containers/runs/{id}/execs`: a command started detached, its
/// output captured by the runner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateExec {
    /// The command and its arguments.
    pub command: Vec<String>,
    /// `NAME=value` entries added to the container's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory (absolute), else the container's.
    #[serde(default)]
    pub workdir: Option<String>,
}

impl CreateExec {
    /// The exec this body asks for (no stdin, no terminal), checked.
    pub fn to_query(&self) -> Result<ExecQuery, String> {
        let exec = ExecQuery {
            argv: self.command.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            ..Default::default()
        };
        exec.check()?;
        Ok(exec)
    }
}

/// Where a detached exec is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExecState {
    /// The command runs.
    Running,
    /// The command ended; `exit_code` says how.
    Exited,
    /// The exec ended without a known exit code; `message` says why.
    Failed,
}

/// A detached exec, as `GET /api/v1/containers/execs/{exec_id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExecRecord {
    /// The exec's id (`exec_...`).
    pub id: String,
    /// The run it runs in.
    pub run_id: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Where it is.
    pub state: ExecState,
    /// The command's exit code, once it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when known.
    pub signal: Option<i32>,
    /// Why it failed, with state `failed`; with state `exited`, why the runner ended it (its
    /// output reached the run's `max_output_mb`).
    pub message: Option<String>,
    /// Output bytes captured so far (stdout and stderr together).
    pub output_bytes: u64,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    /// When it ended, once it did.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<time::OffsetDateTime>,
}

fn yes() -> bool {
    true
}

/// The query of `GET /api/v1/containers/execs/{exec_id}/attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct ExecAttachQuery {
    /// Keep sending output until the exec ends (default true).
    #[serde(default = "yes")]
    pub follow: bool,
}

impl Default for ExecAttachQuery {
    /// Following.
    fn default() -> Self {
        ExecAttachQuery { follow: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_attach_queries_round_trip() {
        crate::assert_round_trips([true, false].map(|follow| ExecAttachQuery { follow }));
        assert_eq!(
            crate::query_string(&ExecAttachQuery::default()),
            "follow=true"
        );
    }

    #[test]
    fn exec_queries_round_trip_and_bad_ones_are_named() {
        let exec = ExecQuery {
            argv: vec!["sh".into(), "-c".into(), "echo a&b".into()],
            env: vec!["A=1".into()],
            workdir: Some("/tmp".into()),
            tty: true,
            stdin: false,
            size: Some((80, 24)),
        };
        let query = exec.to_query();
        assert_eq!(
            query,
            "command=sh&command=-c&command=echo+a%26b&env=A%3D1&workdir=%2Ftmp&tty=true&stdin=false&cols=80&rows=24"
        );
        assert_eq!(ExecQuery::parse(&query).unwrap(), exec);
        let plain = ExecQuery::parse("command=true").unwrap();
        assert!(!plain.tty && !plain.stdin && plain.size.is_none());
        for (bad, names) in [
            ("", "command"),
            ("tty=true", "command"),
            ("command=", "command"),
            ("command=x&cols=80", "cols and rows"),
            ("command=x&cols=0&rows=1", "cols"),
            ("command=x&tty=maybe", "tty"),
            ("command=x&env=NOEQUALS", "env"),
            ("command=x&workdir=relative", "workdir"),
            ("command=x&bogus=1", "bogus"),
            // A NUL byte cannot reach the engine: refused here, not there.
            ("command=a%00b", "command must not contain NUL"),
            ("command=x&env=A%3D%00", "env must not contain NUL"),
            (
                "command=x&workdir=%2Ftmp%00",
                "workdir must not contain NUL",
            ),
        ] {
            let err = ExecQuery::parse(bad).unwrap_err();
            assert!(err.contains(names), "{bad}: {err}");
        }
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            Frame::Stdin(b"hello\n".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::Stdout((0..=255).collect()),
            Frame::Stderr(b"err".to_vec()),
            Frame::Status(ExecStatus::exited(5)),
            Frame::Status(ExecStatus::error("engine gone")),
            Frame::Resize(TerminalSize { cols: 80, rows: 24 }),
            Frame::Signal(SignalFrame { signal: 15 }),
            Frame::Status(ExecStatus::running()),
            Frame::CloseStdin,
        ];
        for frame in frames {
            let bytes = frame.encode();
            assert_eq!(bytes[0], frame.channel());
            assert_eq!(Frame::decode(&bytes).unwrap(), frame);
        }
    }

    #[test]
    fn wire_bytes_are_the_documented_ones() {
        assert_eq!(Frame::Stdout(b"x".to_vec()).encode(), b"\x01x");
        assert_eq!(Frame::Stderr(b"y".to_vec()).encode(), b"\x02y");
        assert_eq!(Frame::CloseStdin.encode(), [255, 0]);
        assert_eq!(
            Frame::Resize(TerminalSize { cols: 80, rows: 24 }).encode(),
            b"\x04{\"cols\":80,\"rows\":24}"
        );
        assert_eq!(
            Frame::Status(ExecStatus::exited(0)).encode(),
            b"\x03{\"exit_code\":0,\"reason\":\"exited\"}"
        );
        // An error status never carries an exit code.
        assert_eq!(
            Frame::Status(ExecStatus::error("gone")).encode(),
            b"\x03{\"reason\":\"error\",\"message\":\"gone\"}"
        );
        assert_eq!(encode_data(STDIN, b"ab"), b"\x00ab");
        assert_eq!(
            Frame::Signal(SignalFrame { signal: 2 }).encode(),
            b"\x05{\"signal\":2}"
        );
    }

    #[test]
    fn close_without_a_channel_byte_closes_stdin() {
        assert_eq!(Frame::decode(&[255]).unwrap(), Frame::CloseStdin);
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[9, 1]), Err(FrameError::UnknownChannel(9)));
        assert_eq!(Frame::decode(&[255, 1]), Err(FrameError::BadClose(vec![1])));
        assert!(matches!(
            Frame::decode(b"\x04{\"cols\":-1}"),
            Err(FrameError::BadJson { channel: 4, .. })
        ));
        assert!(matches!(
            Frame::decode(b"\x03not json"),
            Err(FrameError::BadJson { channel: 3, .. })
        ));
        assert!(!FrameError::UnknownChannel(9).to_string().is_empty());
    }

    #[test]
    fn status_fields_are_optional_on_the_wire() {
        let s: ExecStatus = serde_json::from_str(r#"{"exit_code":3,"reason":"exited"}"#).unwrap();
        assert_eq!(s, ExecStatus::exited(3));
        let s: ExecStatus =
            serde_json::from_str(r#"{"exit_code":137,"signal":9,"reason":"exited"}"#).unwrap();
        assert_eq!(s.signal, Some(9));
    }
}
