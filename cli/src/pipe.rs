//! A closed stdout ends `bus` the way it ends `ls` or `cat`: killed by SIGPIPE, with nothing
//! on stderr (`bus containers runs -q | head -1`; a shell reports 141 under `pipefail`).
//!
//! Rust starts programs with SIGPIPE ignored, so a write into a closed pipe is an `EPIPE`
//! error rather than a kill. `bus` keeps it that way, because its socket to busd must give an
//! error, not a kill, when busd dies (the CLI then starts busd again and resumes); only a
//! write to stdout (or stderr) that meets `EPIPE` ends the process, through [`die`].

use std::fmt;
use std::io::{self, Write as _};

/// Whether `error` says the reader of our output went away.
pub fn closed(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::BrokenPipe
}

/// Ends the process as an untouched SIGPIPE would: killed by the signal (exit 141 if the
/// signal somehow does not end it).
#[allow(unsafe_code)]
pub fn die() -> ! {
    // SAFETY: signal(2) with SIG_DFL installs no handler code, and raise(3) only sends a
    // signal to this thread; neither touches memory of ours.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// `print!`/`println!` for this crate (the macros in `main.rs`): like std's, but a closed
/// stdout ends the process through [`die`] instead of panicking, and any other write error
/// is one error line and exit 1.
pub fn print(args: fmt::Arguments<'_>, newline: bool) {
    let mut out = io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| {
        if newline {
            out.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    if let Err(error) = written {
        if closed(&error) {
            die();
        }
        eprintln!("bus: error: cannot write output: {error}");
        std::process::exit(1);
    }
}
