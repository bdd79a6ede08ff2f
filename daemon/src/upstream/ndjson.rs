//! The runner's NDJSON framing: one JSON value per line — [`LogFrame`]s on the log stream,
//! progress events on image and build streams. Pure (no I/O), so the upstream client feeds it
//! a response's chunks as they come and tests and fuzzing feed it any bytes.
//!
//! A frame's outcome never depends on how the bytes were split into chunks: a line longer than
//! [`MAX_FRAME_LINE`] is refused whether it arrived whole or in pieces. Each byte is scanned
//! once, and consumed lines are dropped in amortized constant time, so a runner that sends
//! many small lines or one long one costs linear time.

use std::marker::PhantomData;

use bus_api::LogFrame;
use serde::de::DeserializeOwned;

/// Longest NDJSON line accepted (a 64 KiB chunk in base64 plus its envelope).
pub const MAX_FRAME_LINE: usize = 256 * 1024;

/// Why the bytes are not a stream of frames: the same reasons as the binary framing's.
pub use bus_api::frames::FrameError;

/// Splits a byte stream into frames of type `T` (log frames unless said otherwise):
/// [`push`](Self::push) chunks, then take frames with
/// [`next_frame`](Self::next_frame) until it answers `None`; at the end of the stream,
/// [`finish`](Self::finish). Blank lines are skipped; keepalive frames are returned like any
/// other (the caller decides what they mean). After an error the decoder yields nothing more.
#[derive(Debug)]
pub struct FrameDecoder<T = LogFrame> {
    buf: Vec<u8>,
    /// Where the first unconsumed byte is.
    start: usize,
    /// How far past `start` the buffer is known to hold no newline.
    scanned: usize,
    failed: bool,
    frames: PhantomData<fn() -> T>,
}

impl<T> Default for FrameDecoder<T> {
    fn default() -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            failed: false,
            frames: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> FrameDecoder<T> {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        // Drop consumed bytes once they are at least half the buffer: amortized O(1) per byte.
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete frame, or `None` when more bytes are needed (or after an error).
    pub fn next_frame(&mut self) -> Option<Result<T, FrameError>> {
        while !self.failed {
            let pending = &self.buf[self.start..];
            let Some(offset) = pending[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = pending.len();
                if pending.len() > MAX_FRAME_LINE {
                    return Some(Err(self.fail(FrameError::TooLong)));
                }
                return None;
            };
            let len = self.scanned + offset;
            let line = &pending[..len];
            self.start += len + 1;
            self.scanned = 0;
            if len > MAX_FRAME_LINE {
                return Some(Err(self.fail(FrameError::TooLong)));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(
                serde_json::from_slice::<T>(line)
                    .map_err(|e| self.fail(FrameError::Invalid(e.to_string()))),
            );
        }
        None
    }

    /// At the end of the stream: an error when part of a line is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if !self.failed && self.start < self.buf.len() {
            return Err(FrameError::Truncated);
        }
        Ok(())
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = true;
        self.buf = Vec::new();
        self.start = 0;
        self.scanned = 0;
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: &[u8] =
        b"{\"type\":\"exit\",\"state\":\"exited\",\"exit_code\":0,\"last_seq\":0}\n";

    fn decode(chunks: &[&[u8]]) -> (Vec<Result<LogFrame, FrameError>>, Result<(), FrameError>) {
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            out.extend(std::iter::from_fn(|| decoder.next_frame()));
        }
        (out, decoder.finish())
    }

    #[test]
    fn lines_split_anywhere_decode_alike() {
        let stream = [b"\n  \n{\"type\":\"keepalive\"}\n".as_slice(), EXIT].concat();
        let (whole, end) = decode(&[&stream]);
        assert_eq!(whole.len(), 2, "{whole:?}");
        assert!(matches!(whole[0], Ok(LogFrame::Keepalive)));
        assert!(matches!(whole[1], Ok(LogFrame::Exit { .. })));
        assert_eq!(end, Ok(()));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode(&bytes), (whole, end));
    }

    #[test]
    fn other_frame_types_decode_the_same_way() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Progress {
            id: String,
        }
        let mut decoder = FrameDecoder::<Progress>::new();
        decoder.push(b"{\"id\":\"a\"}\n\n{\"id\"");
        assert_eq!(decoder.next_frame(), Some(Ok(Progress { id: "a".into() })));
        assert_eq!(decoder.next_frame(), None);
        assert_eq!(decoder.finish(), Err(FrameError::Truncated));
        decoder.push(b":1}\n");
        assert!(matches!(
            decoder.next_frame(),
            Some(Err(FrameError::Invalid(_)))
        ));
        assert_eq!(decoder.next_frame(), None, "nothing follows an error");
    }

    #[test]
    fn a_long_line_is_refused_however_it_arrives() {
        let mut line = vec![b' '; MAX_FRAME_LINE + 1];
        line.push(b'\n');
        assert_eq!(decode(&[&line]).0, [Err(FrameError::TooLong)]);
        let (pieces, _) = decode(&line.chunks(4096).collect::<Vec<_>>());
        assert_eq!(pieces, [Err(FrameError::TooLong)]);
        // Nothing comes after the error, not even a good frame.
        assert_eq!(decode(&[&line, EXIT]).0, [Err(FrameError::TooLong)]);
    }

    #[test]
    fn the_end_of_a_stream_inside_a_line_is_truncation() {
        assert_eq!(decode(&[b"{\"type\""]).1, Err(FrameError::Truncated));
        assert_eq!(decode(&[EXIT, b"x"]).1, Err(FrameError::Truncated));
        let (frames, end) = decode(&[b"<html>\n", EXIT]);
        assert!(matches!(&frames[..], [Err(FrameError::Invalid(_))]));
        assert_eq!(
            end,
            Ok(()),
            "after an error the leftover is not reported again"
        );
    }

    #[test]
    fn many_small_lines_in_one_chunk_cost_linear_time() {
        // 200k blank lines and a frame in one chunk (shifting the buffer per line would copy
        // ~20 GB).
        let mut stream = vec![b'\n'; 200_000];
        stream.extend_from_slice(EXIT);
        let (frames, end) = decode(&[&stream]);
        assert_eq!(frames.len(), 1);
        assert_eq!(end, Ok(()));
    }
}
