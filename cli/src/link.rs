//! What this process knows of its link to busd, for telling failures apart: the deadline in
//! force, whether busd still answers on the connection in use, and busd's PID.
//!
//! A busd that accepts but does not answer (stopped, wedged) is noticed without a deadline
//! on the call: the connection sends an HTTP/2 PING after [`KEEPALIVE_INTERVAL`] without a
//! byte from busd and gives up when no answer came [`KEEPALIVE_TIMEOUT`] later. A live busd
//! answers PINGs whatever its calls are doing, so a long wait or a quiet log follow is never
//! cut; [`unresponsive`] tells such a failure apart from busd going away.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Silence from busd after which the connection PINGs it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a PING may go unanswered before busd counts as not answering.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// The bound on connecting (socket and HTTP/2 set-up) to a busd that accepted.
pub const ANSWER_BOUND: Duration = Duration::from_secs(5);

/// `--timeout` (or the setting) of this invocation, for [`deadline_in_force`].
static EXPLICIT_TIMEOUT: Mutex<Option<Duration>> = Mutex::new(None);

/// The connection to busd in use, for [`unresponsive`].
static LINK: Mutex<Option<Arc<Link>>> = Mutex::new(None);

/// The deadline of a single call when no `timeout` is set: [`bus::config::DEFAULT_TIMEOUT`].
pub fn default_timeout() -> Duration {
    humantime::parse_duration(bus::config::DEFAULT_TIMEOUT).expect("a valid default")
}

/// Records this invocation's `--timeout` (or setting), for [`deadline_in_force`].
pub fn set_timeout(timeout: Option<Duration>) {
    *EXPLICIT_TIMEOUT.lock().expect("timeout lock") = timeout;
}

/// The deadline a call that ran out of time had, and whether it was the built-in default
/// (which only single calls get).
pub fn deadline_in_force() -> (Duration, bool) {
    match *EXPLICIT_TIMEOUT.lock().expect("timeout lock") {
        Some(timeout) => (timeout, false),
        None => (default_timeout(), true),
    }
}

/// One connection's liveness: when busd last sent a byte (or closed it).
#[derive(Debug)]
pub struct Link {
    socket: PathBuf,
    opened: Instant,
    /// Milliseconds after `opened` of the last completed read.
    last_read_ms: AtomicU64,
    /// busd closed the connection (or it failed): busd went away rather than went silent.
    closed: AtomicBool,
    /// busd sent a byte on this connection (its HTTP/2 settings come before any answer).
    answered: AtomicBool,
}

impl Link {
    /// A connection to busd on `socket` just opened, now the one in use.
    pub fn open(socket: PathBuf) -> Arc<Link> {
        let link = Arc::new(Link {
            socket,
            opened: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            answered: AtomicBool::new(false),
        });
        *LINK.lock().expect("link lock") = Some(link.clone());
        link
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// Notes that busd sent something.
    pub fn touch(&self) {
        self.answered.store(true, Ordering::Relaxed);
        self.stamp();
    }

    fn stamp(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_read_ms.store(now, Ordering::Relaxed);
    }

    /// Notes that the connection ended: busd went away.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.stamp();
    }
}

/// When the connection in use has heard nothing from busd (not even its closing) for as long
/// as the keep-alive allows: the socket of that busd. A call that failed then failed because
/// busd does not answer, not because it went away.
pub fn unresponsive() -> Option<PathBuf> {
    let link = LINK.lock().expect("link lock").clone()?;
    let silent = !link.closed.load(Ordering::Relaxed) && link.silent_for() >= KEEPALIVE_TIMEOUT;
    silent.then(|| link.socket.clone())
}

/// A connection to busd that busd closed.
#[derive(Debug, PartialEq)]
pub struct Gone {
    /// busd's socket.
    pub socket: PathBuf,
    /// Whether busd had sent anything first. A busd that never did had read no call: it
    /// sends its HTTP/2 settings before it reads one.
    pub answered: bool,
}

/// When busd closed the connection in use (it exited, or was killed): what it had sent.
pub fn went_away() -> Option<Gone> {
    let link = LINK.lock().expect("link lock").clone()?;
    link.closed.load(Ordering::Relaxed).then(|| Gone {
        socket: link.socket.clone(),
        answered: link.answered.load(Ordering::Relaxed),
    })
}

/// The PID in busd's instance lock file `<socket>.pid`, if it holds one.
pub fn lock_pid(socket: &Path) -> Option<u32> {
    let mut name = socket.as_os_str().to_owned();
    name.push(".pid");
    std::fs::read_to_string(name).ok()?.trim().parse().ok()
}
