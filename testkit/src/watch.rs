//! A process whose output is read as it comes.

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::stop_pid;

/// A process (a `bus` command, say) whose stdout and stderr are read as they come, counting
/// the lines of stdout so far.
pub struct Watched {
    child: Child,
    /// Newlines read from stdout so far.
    lines: Arc<AtomicU64>,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

impl Watched {
    /// Spawns `command` with its stdout and stderr piped to reader threads.
    pub fn spawn(mut command: Command) -> Watched {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(AtomicU64::new(0));
        let counter = lines.clone();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => return all,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        let count = all.iter().filter(|b| **b == b'\n').count();
                        counter.store(count as u64, Ordering::SeqCst);
                    }
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = err.read_to_end(&mut all);
            all
        });
        Watched {
            child,
            lines,
            stdout,
            stderr,
        }
    }

    /// The process's PID, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until at least `n` lines were printed to stdout, for at most a minute.
    pub fn reached(&self, n: u64) {
        let start = Instant::now();
        while self.lines.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the CLI printed {} lines within a minute, not {n}",
                self.lines.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process (at most `limit`, then stops it by its PID and fails); returns
    /// its exit code, stdout and stderr.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                stop_pid(self.child.id());
                let _ = self.child.wait();
                panic!("the CLI did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text =
            |h: JoinHandle<Vec<u8>>| String::from_utf8_lossy(&h.join().unwrap()).into_owned();
        (status.code(), text(self.stdout), text(self.stderr))
    }
}
