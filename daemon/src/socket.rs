//! The Unix socket: directory 0700, socket 0600, a stale socket removed only after a refused
//! connect, same-uid peers only; one busd per socket, held by an `flock` on `<socket>.pid`;
//! or the listener systemd hands over (socket activation).

use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::net::{UnixListener, UnixStream};

use crate::authority::AuthorityFix;

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another busd answers on the socket.
    #[error("another busd is already serving on {0}")]
    InUse(String),
    /// Another busd holds the instance lock of the socket.
    #[error("another busd{} is already serving on {socket} (it holds {lock})",
        .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The socket path.
        socket: String,
        /// The lock file.
        lock: String,
        /// The holder's PID, as it wrote it.
        pid: Option<u32>,
    },
    /// The filesystem refused.
    #[error("cannot bind {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// Why.
        source: io::Error,
    },
}

/// How long a new busd waits for the lock of one that is on its way out (draining).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Creates the socket's directory (0700) if it is missing.
pub fn ensure_dir(path: &Path) -> Result<(), BindError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| BindError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// `<socket>.pid`: the lock file that makes busd single-instance per socket.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".pid");
    PathBuf::from(name)
}

/// An exclusive `flock` on `<socket>.pid`, holding this busd's PID, for busd's lifetime. The
/// file itself stays (removing a lock file races with the next holder); the lock goes with
/// the process.
#[derive(Debug)]
pub struct InstanceLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock of `socket`. When another busd holds it and still answers on the socket,
    /// fails at once; when it holds it but no longer answers (it is draining or exiting),
    /// waits for it for a few seconds.
    pub async fn acquire(socket: &Path) -> Result<InstanceLock, BindError> {
        let path = lock_path(socket);
        let io_err = |source| BindError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        let started = Instant::now();
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    let answers = UnixStream::connect(socket).await.is_ok();
                    if answers || started.elapsed() >= LOCK_WAIT {
                        let mut text = String::new();
                        let _ = (&file).read_to_string(&mut text);
                        return Err(BindError::Locked {
                            socket: socket.display().to_string(),
                            lock: path.display().to_string(),
                            pid: text.trim().parse().ok(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => return Err(io_err(e.into())),
            }
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(InstanceLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether systemd handed this process its listening socket: `LISTEN_FDS=1` and `LISTEN_PID`
/// naming `pid` (sd_listen_fds(3)); `Err` when the variables are set for this process but
/// describe something busd cannot serve on. Pure, for tests; `env` looks variables up.
pub fn activation_requested(
    env: impl Fn(&str) -> Option<String>,
    pid: u32,
) -> Result<bool, String> {
    let Some(fds) = env("LISTEN_FDS") else {
        return Ok(false);
    };
    let for_us = env("LISTEN_PID")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == pid);
    if !for_us {
        return Ok(false);
    }
    match fds.trim().parse::<u32>() {
        Ok(1) => Ok(true),
        Ok(0) => Ok(false),
        _ => Err(format!(
            "LISTEN_FDS={fds}: busd serves exactly one socket; give its unit one ListenStream="
        )),
    }
}

/// Takes the listener systemd passed as fd 3. Call before any other thread starts: it
/// clears `LISTEN_FDS`/`LISTEN_PID` from the environment, as sd_listen_fds(3) does.
pub fn take_activated_listener() -> io::Result<std::os::unix::net::UnixListener> {
    let mut fds = listenfd::ListenFd::from_env();
    let listener = fds.take_unix_listener(0)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket activation: fd 3 is not a listening Unix stream socket",
        )
    })?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Binds the socket at `path`, creating its directory (0700) if needed and leaving the
/// socket 0600.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.display().to_string(),
        source,
    };
    ensure_dir(path)?;
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(_) => return Err(BindError::InUse(path.display().to_string())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "removing a stale socket");
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// How long the accept loop waits when the process or the system is out of file descriptors.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether an accept error means "out of descriptors or memory": retrying at once would spin.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(rustix::io::Errno::from_raw_os_error),
        Some(
            rustix::io::Errno::MFILE
                | rustix::io::Errno::NFILE
                | rustix::io::Errno::NOBUFS
                | rustix::io::Errno::NOMEM
        )
    )
}

/// Accepted connections from processes of this user only (others are closed at once), each
/// read through [`AuthorityFix`]. Out of descriptors (EMFILE, ENFILE), the loop waits
/// [`ACCEPT_BACKOFF`] before it tries again and logs once until an accept succeeds; other
/// accept errors (a peer gone before its accept) are skipped. Established connections are
/// not touched either way.
pub fn same_uid_incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<AuthorityFix<UnixStream>>> {
    let uid = rustix::process::getuid().as_raw();
    futures::stream::unfold(
        (listener, false),
        move |(listener, mut exhausted)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        if exhausted {
                            exhausted = false;
                            tracing::info!(
                                "file descriptors are free again; accepting connections"
                            );
                        }
                        match stream.peer_cred() {
                            Ok(cred) if cred.uid() == uid => {
                                return Some((
                                    Ok(AuthorityFix::new(stream)),
                                    (listener, exhausted),
                                ));
                            }
                            Ok(cred) => tracing::warn!(
                                peer_uid = cred.uid(),
                                "refused a connection from another user"
                            ),
                            Err(e) => tracing::warn!(
                                error = %e,
                                "refused a connection without peer credentials"
                            ),
                        }
                    }
                    Err(e) if is_resource_exhaustion(&e) => {
                        if !exhausted {
                            exhausted = true;
                            tracing::warn!(
                                error = %e,
                                "cannot accept connections: out of file descriptors; retrying every \
                                 100 ms, open calls go on (raise busd's open-file limit, \
                                 `ulimit -n`, or close idle clients)"
                            );
                        }
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "an accept failed; skipped"),
                }
            }
        },
    )
}

/// Raises this process's soft limit on open files to its hard limit, so many clients can
/// hold connections; returns the limit now in force (`None` when it could not be read).
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit to its hard limit");
            return getrlimit(Resource::Nofile).current;
        }
    }
    limit.current
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn bind_sets_modes_and_replaces_only_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("busd.sock");
        let listener = bind(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );

        // A live socket is not taken over.
        assert!(matches!(bind(&path).await, Err(BindError::InUse(_))));
        // A dead one is.
        drop(listener);
        bind(&path).await.unwrap();
    }

    #[tokio::test]
    async fn one_instance_lock_per_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("busd.sock");
        let lock = InstanceLock::acquire(&socket).await.unwrap();
        assert_eq!(lock.path(), dir.path().join("busd.sock.pid"));
        let pid = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        assert_eq!(
            std::fs::metadata(lock.path()).unwrap().mode() & 0o777,
            0o600
        );

        // Held, and the holder answers on the socket: refused at once, naming the holder.
        let _listener = bind(&socket).await.unwrap();
        let err = InstanceLock::acquire(&socket).await.unwrap_err();
        assert!(
            matches!(&err, BindError::Locked { pid: Some(p), .. } if *p == std::process::id()),
            "{err}"
        );
        assert!(err.to_string().contains("another busd (pid "), "{err}");

        // Released: taken again.
        drop(lock);
        InstanceLock::acquire(&socket).await.unwrap();
    }

    #[test]
    fn socket_activation_needs_one_fd_for_this_pid() {
        let env = |fds: &'static str, pid: &'static str| {
            move |name: &str| match name {
                "LISTEN_FDS" => Some(fds.to_owned()),
                "LISTEN_PID" => Some(pid.to_owned()),
                _ => None,
            }
        };
        assert_eq!(activation_requested(|_| None, 42), Ok(false));
        assert_eq!(activation_requested(env("1", "42"), 42), Ok(true));
        assert_eq!(activation_requested(env("1", "41"), 42), Ok(false));
        assert_eq!(activation_requested(env("1", ""), 42), Ok(false));
        assert_eq!(activation_requested(env("0", "42"), 42), Ok(false));
        assert!(activation_requested(env("2", "42"), 42).is_err());
    }
}
