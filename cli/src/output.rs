//! Writing a run's output chunks to this process's stdout and stderr as they arrive, or
//! keeping them for one structured result (`run -o json`).

use std::io::{self, StderrLock, StdoutLock, Write};

use bus::proto::containers::v1::{LogChunk, StdStream};

/// Where chunks go: locked stdout and stderr, each chunk to the stream it came from and
/// flushed at once; or two buffers.
pub struct Output {
    sink: Sink,
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
        }
    }

    /// Keeps every chunk instead of writing it; [`Output::captured`] hands them over.
    pub fn capture() -> Self {
        Output {
            sink: Sink::Captured {
                stdout: Vec::new(),
                stderr: Vec::new(),
            },
        }
    }

    /// Writes `chunk` to its stream and flushes it (or keeps it).
    pub fn write(&mut self, chunk: &LogChunk) -> io::Result<()> {
        let to_stderr = chunk.stream == StdStream::Stderr as i32;
        match &mut self.sink {
            Sink::Streams { stdout, stderr } => {
                let out: &mut dyn Write = if to_stderr { stderr } else { stdout };
                out.write_all(&chunk.data)?;
                out.flush()
            }
            Sink::Captured { stdout, stderr } => {
                let out = if to_stderr { stderr } else { stdout };
                out.extend_from_slice(&chunk.data);
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
