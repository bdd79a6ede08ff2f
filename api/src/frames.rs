//! The binary framing of a run's log stream, [`LOG_FRAMES`]: what
//! `GET /api/v1/containers/runs/{id}/logs` answers a reader that names it in `Accept`, so the
//! output's bytes travel as they are instead of base64 inside JSON. The frames and their order
//! are those of the NDJSON stream.
//!
//! Each frame is a kind byte and a body; integers are big-endian:
//! - `0x01`, output: `seq` (u64), stream (u8: 1 stdout, 2 stderr), time (i64, nanoseconds since
//!   the Unix epoch), length (u32), then that many bytes of output;
//! - `0x02`, any other frame (exit, keepalive): length (u32), then the frame as the JSON object
//!   an NDJSON line carries.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use time::OffsetDateTime;

use crate::runs::{LogFrame, Stream};

/// The media type of the binary log stream.
pub const LOG_FRAMES: &str = "application/vnd.bus.log-frames";

/// Most output bytes one frame may carry.
pub const MAX_OUTPUT: usize = 1024 * 1024;

/// Most bytes of JSON one frame of another kind may carry.
pub const MAX_JSON: usize = 64 * 1024;

const OUTPUT: u8 = 0x01;
const JSON: u8 = 0x02;
/// Kind, seq, stream, time and length.
const OUTPUT_HEADER: usize = 1 + 8 + 1 + 8 + 4;
/// Kind and length.
const JSON_HEADER: usize = 1 + 4;

/// A chunk of a run's output, its bytes as the container wrote them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Dense per-run sequence number, from 1.
    pub seq: u64,
    /// The stream it was written to.
    pub stream: Stream,
    /// The bytes.
    pub data: Bytes,
    /// When the runner read it.
    pub time: OffsetDateTime,
}

/// One frame of a log stream, read from either framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A chunk of output.
    Output(Output),
    /// An exit or keepalive frame.
    Control(LogFrame),
}

impl TryFrom<LogFrame> for Frame {
    type Error = FrameError;

    /// An NDJSON frame, its output's base64 decoded.
    fn try_from(frame: LogFrame) -> Result<Self, FrameError> {
        let LogFrame::Output {
            seq,
            stream,
            data,
            time,
        } = frame
        else {
            return Ok(Frame::Control(frame));
        };
        let data = STANDARD.decode(data).map_err(|_| {
            FrameError::Invalid(format!("output frame {seq} has invalid base64 data"))
        })?;
        Ok(Frame::Output(Output {
            seq,
            stream,
            data: Bytes::from(data),
            time,
        }))
    }
}

/// Why bytes are not a log stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Bytes that are not a frame.
    #[error("invalid frame: {0}")]
    Invalid(String),
    /// A frame larger than any the runner sends.
    #[error("a frame is larger than any the API sends")]
    TooLong,
    /// The stream ended inside a frame.
    #[error("the stream ended in the middle of a frame")]
    Truncated,
}

/// Appends an output frame to `out`.
pub fn put_output(out: &mut Vec<u8>, seq: u64, stream: Stream, time: OffsetDateTime, data: &[u8]) {
    let len = u32::try_from(data.len()).expect("an output chunk is under 4 GiB");
    out.reserve(OUTPUT_HEADER + data.len());
    out.put_u8(OUTPUT);
    out.put_u64(seq);
    out.put_u8(match stream {
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    });
    out.put_i64(nanos(time));
    out.put_u32(len);
    out.put_slice(data);
}

/// Appends an exit or keepalive frame to `out`.
pub fn put_control(out: &mut Vec<u8>, frame: &LogFrame) {
    let json = serde_json::to_vec(frame).expect("a log frame always serializes");
    let len = u32::try_from(json.len()).expect("a control frame is small");
    out.reserve(JSON_HEADER + json.len());
    out.put_u8(JSON);
    out.put_u32(len);
    out.put_slice(&json);
}

/// Nanoseconds since the Unix epoch, saturated to what an i64 holds (years 1677 to 2262).
fn nanos(time: OffsetDateTime) -> i64 {
    time.unix_timestamp_nanos()
        .clamp(i64::MIN.into(), i64::MAX.into()) as i64
}

/// Splits a binary log stream into frames: [`push`](Self::push) chunks, then take frames with
/// [`next_frame`](Self::next_frame) until it answers `None`; at the end of the stream,
/// [`finish`](Self::finish). A frame's outcome never depends on how the bytes were split, and
/// output bytes are handed out without a copy. After an error it yields nothing more.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    failed: bool,
}

impl FrameDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// The next complete frame, or `None` when more bytes are needed (or after an error).
    pub fn next_frame(&mut self) -> Option<Result<Frame, FrameError>> {
        if self.failed {
            return None;
        }
        let frame = match *self.buf.first()? {
            OUTPUT => self.output(),
            JSON => self.control(),
            kind => Some(Err(FrameError::Invalid(format!(
                "unknown frame kind {kind:#04x}"
            )))),
        };
        if let Some(Err(e)) = frame {
            return Some(Err(self.fail(e)));
        }
        frame
    }

    /// At the end of the stream: an error when part of a frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if !self.failed && !self.buf.is_empty() {
            return Err(FrameError::Truncated);
        }
        Ok(())
    }

    fn output(&mut self) -> Option<Result<Frame, FrameError>> {
        let mut header = self.buf.get(..OUTPUT_HEADER)?;
        header.advance(1);
        let seq = header.get_u64();
        let stream = match header.get_u8() {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            other => {
                return Some(Err(FrameError::Invalid(format!(
                    "output frame {seq} names stream {other}"
                ))));
            }
        };
        let time = header.get_i64();
        let len = header.get_u32() as usize;
        if len > MAX_OUTPUT {
            return Some(Err(FrameError::TooLong));
        }
        if self.buf.len() < OUTPUT_HEADER + len {
            self.buf.reserve(OUTPUT_HEADER + len - self.buf.len());
            return None;
        }
        let Ok(time) = OffsetDateTime::from_unix_timestamp_nanos(time.into()) else {
            return Some(Err(FrameError::Invalid(format!(
                "output frame {seq} has an impossible time"
            ))));
        };
        self.buf.advance(OUTPUT_HEADER);
        let data = self.buf.split_to(len).freeze();
        Some(Ok(Frame::Output(Output {
            seq,
            stream,
            data,
            time,
        })))
    }

    fn control(&mut self) -> Option<Result<Frame, FrameError>> {
        let mut header = self.buf.get(..JSON_HEADER)?;
        header.advance(1);
        let len = header.get_u32() as usize;
        if len > MAX_JSON {
            return Some(Err(FrameError::TooLong));
        }
        let json = self.buf.get(JSON_HEADER..JSON_HEADER + len)?;
        let frame = match serde_json::from_slice::<LogFrame>(json) {
            Ok(LogFrame::Output { seq, .. }) => {
                return Some(Err(FrameError::Invalid(format!(
                    "output frame {seq} sent as JSON"
                ))));
            }
            Ok(frame) => frame,
            Err(e) => return Some(Err(FrameError::Invalid(e.to_string()))),
        };
        self.buf.advance(JSON_HEADER + len);
        Some(Ok(Frame::Control(frame)))
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = true;
        self.buf = BytesMut::new();
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::RunState;

    fn time(nanos: i128) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap()
    }

    fn stream_of_three() -> (Vec<u8>, Vec<Frame>) {
        let exit = LogFrame::Exit {
            state: RunState::Exited,
            exit_code: Some(3),
            reason: None,
            last_seq: 2,
            finished_at: Some(time(1_800_000_000_000_000_123)),
        };
        let mut wire = Vec::new();
        put_output(
            &mut wire,
            1,
            Stream::Stdout,
            time(1_700_000_000_123_456_789),
            b"hi\n",
        );
        put_control(&mut wire, &LogFrame::Keepalive);
        put_output(
            &mut wire,
            2,
            Stream::Stderr,
            time(1_700_000_001_000_000_000),
            &[0, 255, b'\n'],
        );
        put_control(&mut wire, &exit);
        let frames = vec![
            Frame::Output(Output {
                seq: 1,
                stream: Stream::Stdout,
                data: Bytes::from_static(b"hi\n"),
                time: time(1_700_000_000_123_456_789),
            }),
            Frame::Control(LogFrame::Keepalive),
            Frame::Output(Output {
                seq: 2,
                stream: Stream::Stderr,
                data: Bytes::from_static(&[0, 255, b'\n']),
                time: time(1_700_000_001_000_000_000),
            }),
            Frame::Control(exit),
        ];
        (wire, frames)
    }

    fn decode_in_pieces(wire: &[u8], piece: usize) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(piece) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next_frame() {
                got.push(frame?);
            }
        }
        decoder.finish()?;
        Ok(got)
    }

    #[test]
    fn frames_come_back_as_written_however_the_bytes_are_split() {
        let (wire, frames) = stream_of_three();
        for piece in [1, 2, 7, 22, wire.len()] {
            assert_eq!(
                decode_in_pieces(&wire, piece).unwrap(),
                frames,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn an_ndjson_frame_reads_as_the_same_frame() {
        let at = time(1_700_000_000_123_456_789);
        let line = LogFrame::output(7, Stream::Stderr, b"\x00bytes", at);
        let frame = Frame::try_from(line).unwrap();
        assert_eq!(
            frame,
            Frame::Output(Output {
                seq: 7,
                stream: Stream::Stderr,
                data: Bytes::from_static(b"\x00bytes"),
                time: at,
            })
        );
        let bad = LogFrame::Output {
            seq: 1,
            stream: Stream::Stdout,
            data: "not base64!".to_owned(),
            time: at,
        };
        assert!(matches!(Frame::try_from(bad), Err(FrameError::Invalid(_))));
    }

    #[test]
    fn a_cut_stream_is_truncated() {
        let (wire, _) = stream_of_three();
        for cut in [1, 5, 24, 26, wire.len() - 1] {
            assert_eq!(
                decode_in_pieces(&wire[..cut], 3).unwrap_err(),
                FrameError::Truncated,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn bad_bytes_are_refused_and_nothing_follows() {
        let mut wire = vec![0x07];
        put_control(&mut wire, &LogFrame::Keepalive);
        let mut decoder = FrameDecoder::new();
        decoder.push(&wire);
        assert!(matches!(
            decoder.next_frame(),
            Some(Err(FrameError::Invalid(_)))
        ));
        assert_eq!(decoder.next_frame(), None, "nothing after an error");

        let mut wire = Vec::new();
        put_output(&mut wire, 1, Stream::Stdout, time(0), b"x");
        wire[9] = 3;
        assert!(
            matches!(decode_in_pieces(&wire, 64), Err(FrameError::Invalid(e)) if e.contains("stream 3"))
        );

        let mut too_long = Vec::new();
        put_output(&mut too_long, 1, Stream::Stdout, time(0), b"");
        too_long[18..22].copy_from_slice(&(MAX_OUTPUT as u32 + 1).to_be_bytes());
        assert_eq!(decode_in_pieces(&too_long, 64), Err(FrameError::TooLong));

        let json = serde_json::to_vec(&LogFrame::output(1, Stream::Stdout, b"x", time(0))).unwrap();
        let mut as_json = vec![JSON];
        as_json.extend_from_slice(&(json.len() as u32).to_be_bytes());
        as_json.extend_from_slice(&json);
        assert!(
            matches!(decode_in_pieces(&as_json, 64), Err(FrameError::Invalid(e)) if e.contains("sent as JSON"))
        );
    }
}
