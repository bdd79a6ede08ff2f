//! Writing a run's output chunks to this process's stdout and stderr as they arrive, or
//! keeping them for one structured result (`run -o json`); for `logs`, only those written
//! since a time, each line stamped with its time.

use std::borrow::Cow;
use std::io::{self, StderrLock, StdoutLock, Write};

use bus::proto::containers::v1::{LogChunk, StdStream};
use time::OffsetDateTime;

/// Where chunks go: locked stdout and stderr, each chunk to the stream it came from and
/// flushed at once; or two buffers.
pub struct Output {
    sink: Sink,
    /// Chunks the runner read before this time are not written.
    since: Option<OffsetDateTime>,
    /// Per stream (stdout, stderr), whether the next byte begins a line, when lines are
    /// stamped with their time.
    stamps: Option<[bool; 2]>,
}

enum Sink {
    Streams {
        stdout: StdoutLock<'static>,
        stderr: StderrLock<'static>,
    },
    Captured {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

impl Output {
    /// Locks both streams for the life of the value.
    pub fn lock() -> Self {
        Output {
            sink: Sink::Streams {
                stdout: io::stdout().lock(),
                stderr: io::stderr().lock(),
            },
            since: None,
            stamps: None,
        }
    }

    /// Keeps every chunk instead of writing it; [`Output::captured`] hands them over.
    pub fn capture() -> Self {
        Output {
            sink: Sink::Captured {
                stdout: Vec::new(),
                stderr: Vec::new(),
            },
            since: None,
            stamps: None,
        }
    }

    /// This output, leaving out chunks the runner read before `since`.
    pub fn since(mut self, since: Option<OffsetDateTime>) -> Self {
        self.since = since;
        self
    }

    /// This output, each line beginning with the time the runner read it (RFC 3339, UTC)
    /// and a space, as `docker logs -t` prints it.
    pub fn timestamps(mut self, on: bool) -> Self {
        self.stamps = on.then_some([true, true]);
        self
    }

    /// Whether [`Output::write`] writes `chunk` (it is not older than the `since` time).
    pub fn shows(&self, chunk: &LogChunk) -> bool {
        let Some(since) = self.since else {
            return true;
        };
        chunk
            .time
            .as_ref()
            .and_then(bus::timestamp::to_time)
            .is_none_or(|time| time >= since)
    }

    /// Writes `chunk` to its stream and flushes it (or keeps it).
    pub fn write(&mut self, chunk: &LogChunk) -> io::Result<()> {
        if !self.shows(chunk) {
            return Ok(());
        }
        let to_stderr = chunk.stream == StdStream::Stderr as i32;
        let data = match &mut self.stamps {
            Some(at_line_start) => {
                Cow::Owned(stamped(chunk, &mut at_line_start[usize::from(to_stderr)]))
            }
            None => Cow::Borrowed(&chunk.data),
        };
        match &mut self.sink {
            Sink::Streams { stdout, stderr } => {
                let out: &mut dyn Write = if to_stderr { stderr } else { stdout };
                out.write_all(&data)?;
                out.flush()
            }
            Sink::Captured { stdout, stderr } => {
                let out = if to_stderr { stderr } else { stdout };
                out.extend_from_slice(&data);
                Ok(())
            }
        }
    }

    /// The stdout and stderr bytes kept so far (empty when writing to the streams).
    pub fn captured(&mut self) -> (Vec<u8>, Vec<u8>) {
        match &mut self.sink {
            Sink::Streams { .. } => (Vec::new(), Vec::new()),
            Sink::Captured { stdout, stderr } => (std::mem::take(stdout), std::mem::take(stderr)),
        }
    }
}

/// `chunk`'s bytes with the chunk's time and a space before each line that begins in it;
/// `at_line_start` says whether its first byte begins one, and is left saying whether the
/// next chunk's does.
fn stamped(chunk: &LogChunk, at_line_start: &mut bool) -> Vec<u8> {
    let stamp =
        bus::timestamp::timestamp_rfc3339(chunk.time.as_ref()).unwrap_or_else(|| "-".to_owned());
    let mut out = Vec::with_capacity(chunk.data.len() + stamp.len() + 1);
    for &byte in &chunk.data {
        if *at_line_start {
            out.extend_from_slice(stamp.as_bytes());
            out.push(b' ');
        }
        out.push(byte);
        *at_line_start = byte == b'\n';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(stream: StdStream, seconds: i64, data: &str) -> LogChunk {
        LogChunk {
            stream: stream as i32,
            data: data.as_bytes().to_vec(),
            time: Some(bus::timestamp::from_unix(seconds)),
            ..Default::default()
        }
    }

    #[test]
    fn lines_are_stamped_with_the_time_of_the_chunk_they_begin_in_per_stream() {
        let mut output = Output::capture().timestamps(true);
        for c in [
            chunk(StdStream::Stdout, 0, "a\nb"),
            chunk(StdStream::Stderr, 60, "e\n"),
            chunk(StdStream::Stdout, 120, "c\nd\n"),
        ] {
            output.write(&c).unwrap();
        }
        let (stdout, stderr) = output.captured();
        assert_eq!(
            String::from_utf8(stdout).unwrap(),
            "1970-01-01T00:00:00Z a\n1970-01-01T00:00:00Z bc\n1970-01-01T00:02:00Z d\n"
        );
        assert_eq!(
            String::from_utf8(stderr).unwrap(),
            "1970-01-01T00:01:00Z e\n"
        );
    }

    #[test]
    fn chunks_read_before_since_are_left_out() {
        let since = OffsetDateTime::from_unix_timestamp(60).unwrap();
        let mut output = Output::capture().since(Some(since));
        for c in [
            chunk(StdStream::Stdout, 59, "old\n"),
            chunk(StdStream::Stdout, 60, "new\n"),
        ] {
            output.write(&c).unwrap();
        }
        assert_eq!(output.captured().0, b"new\n");
    }
}
