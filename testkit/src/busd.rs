//! `busd` started directly (not through the CLI).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::process::{kill_pid, poll, stop_pid};

/// A `busd` process started from a prepared command; stopped by its PID on drop.
pub struct Busd {
    child: Child,
    /// The socket it serves.
    pub socket: PathBuf,
}

impl Busd {
    /// Spawns `command` (a `busd --socket <socket> …`) and waits, at most 20 s, until
    /// `socket` accepts connections or the process ends.
    pub fn spawn(mut command: Command, socket: impl Into<PathBuf>) -> Busd {
        let socket = socket.into();
        let mut busd = Busd {
            child: command.spawn().expect("busd runs"),
            socket,
        };
        let ready = poll(Duration::from_secs(20), || {
            UnixStream::connect(&busd.socket).is_ok() || !matches!(busd.child.try_wait(), Ok(None))
        });
        assert!(
            ready,
            "busd did not serve {} within 20 s",
            busd.socket.display()
        );
        busd
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it to exit by itself.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("busd is this process's child")
    }

    /// Kills it with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        kill_pid(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for Busd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            stop_pid(self.child.id());
        }
        let _ = self.child.wait();
    }
}
