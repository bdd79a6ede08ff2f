//! Processes by PID, waiting, and private files.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends SIGTERM to `pid`, then SIGKILL if it has not gone within 5 s. Only for PIDs the
/// caller started.
pub fn stop_pid(pid: u32) {
    let Some(id) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if rustix::process::kill_process(id, rustix::process::Signal::TERM).is_err() {
        return;
    }
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if alive(pid) {
        let _ = rustix::process::kill_process(id, rustix::process::Signal::KILL);
    }
}

/// Sends SIGKILL to `pid` (no shutdown of any kind).
pub(crate) fn kill_pid(pid: u32) {
    if let Some(id) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(id, rustix::process::Signal::KILL);
    }
}

/// Waits until `ready` holds, checking with growing pauses, for at most `limit`; false if it
/// never did.
pub(crate) fn poll(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !ready() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    true
}

/// Waits until `ready` holds, for at most `limit`; panics naming `what` otherwise.
pub fn wait_until(what: &str, limit: Duration, ready: impl FnMut() -> bool) {
    assert!(poll(limit, ready), "{what} was not ready within {limit:?}");
}

/// Writes `content` to `path`, mode 0600, creating its directory.
pub fn write_secret(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().expect("a file in a directory")).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
