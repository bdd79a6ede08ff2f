//! Writing a run's output chunks to this process's stdout and stderr as they arrive.

use std::io::{self, StderrLock, StdoutLock, Write};

use bus::proto::containers::v1::{LogChunk, StdStream};

/// Locked stdout and stderr; each chunk goes to the stream it came from, flushed at once.
pub struct Output {
    stdout: StdoutLock<'static>,
    stderr: StderrLock<'static>,
}

impl Output {
    /// Locks both streams for the life of the value.
    pub fn lock() -> Self {
        Output {
            stdout: io::stdout().lock(),
            stderr: io::stderr().lock(),
        }
    }

    /// Writes `chunk` to its stream and flushes it.
    pub fn write(&mut self, chunk: &LogChunk) -> io::Result<()> {
        let out: &mut dyn Write = if chunk.stream == StdStream::Stderr as i32 {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        out.write_all(&chunk.data)?;
        out.flush()
    }
}
