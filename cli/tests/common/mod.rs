//! The end-to-end harness, from the testkit crate: a real Podman API service, a real
//! bus-runner, and the real `bus` and `busd` binaries, each on temporary sockets and
//! directories, stopped by PID on drop.
//!
//! `bus` is this package's binary (`CARGO_BIN_EXE_bus`); `busd` and `bus-runner` are its
//! siblings in the same target directory (`cargo build --workspace --bins` builds them; the
//! README's test command does).

#![allow(dead_code, unused_imports)]

pub mod registry;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use bus_testkit::{
    ALL_SCOPES, Bins, Busd, Podman, Runner, Stack, Watched, alive, describe, expect_success,
    free_port, last_error_line, one_line_error, script, stdout, stop_pid, wait_until,
};

/// The workspace's binaries, found beside this package's `bus`.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| Bins::beside(env!("CARGO_BIN_EXE_bus")))
}

/// A workspace binary, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    bins().get(name)
}

/// The SHA-256 (hex) of an API key, for `api_key_sha256` in a runner config.
pub fn hash_key(key: &str) -> String {
    bus_testkit::hash_key(bins(), key)
}

/// Mints a token with the signing key in `state_dir`.
pub fn mint(state_dir: &Path, account: &str, resources: &str, extra: &[&str]) -> String {
    bus_testkit::mint(bins(), state_dir, account, resources, extra)
}

/// A socket at `path` that stands for a busd in its last moments: it accepts one connection,
/// sends an empty HTTP/2 SETTINGS frame first if `answer` (as busd does before it reads a
/// call), reads the client's connection preface, and closes the connection 100 ms later with
/// whatever else the client sent unread. The socket file stays, refusing connections, as a
/// killed busd leaves it.
pub fn dying_busd(path: &Path, answer: bool) -> std::thread::JoinHandle<()> {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::time::{Duration, Instant};
    let dir = path.parent().expect("a socket in a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("no client connected to the dying busd: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        if answer {
            // Length 0, type SETTINGS (4), no flags, stream 0.
            stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
        }
        let mut preface = [0u8; 24];
        stream.read_exact(&mut preface).unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        std::thread::sleep(Duration::from_millis(100));
    })
}
