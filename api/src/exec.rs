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
//! | 255 | close | client → runner | one more byte, the channel to close: only 0 (stdin) |
//!
//! The status frame comes exactly once, after the last output byte. It carries `exit_code`
//! only when the engine reported one; otherwise `reason` is `"error"` and `message` says why,
//! and a client must not make up an exit code.
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
    /// What went wrong, with `reason` `error`.
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

#[cfg(test)]
mod tests {
    use super::*;

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
