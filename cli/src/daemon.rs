//! Reaching busd: connect to its socket, or start it and wait for its readiness report.
//!
//! Start-up is serialised by a lock file beside the socket, so two CLIs started at once
//! spawn one daemon. busd reports `ready` (or its start-up error) on a notify socket the CLI
//! bound before spawning it: no sleeps, no polling. busd's stderr (its log) goes to
//! [`log_path`], `${XDG_STATE_HOME:-~/.local/state}/bus/busd.log`.
//!
//! The connection is watched ([`Link`]) so that a busd which stopped answering is told apart
//! from one that went away (see [`crate::link`]).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::CliError;
use crate::link::{ANSWER_BOUND, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, Link};

/// How long a starting busd may take to report readiness.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a report busd sent just before it exited may take to be read.
const REPORT_AFTER_EXIT: Duration = Duration::from_millis(500);

/// A stream that records each completed read in its [`Link`].
struct Watched {
    stream: UnixStream,
    link: Arc<Link>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining());
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        match &polled {
            // Bytes (or a read into no room at all): busd is there.
            Poll::Ready(Ok(())) if buf.filled().len() > before || room == 0 => self.link.touch(),
            // End of stream or an error: busd went away.
            Poll::Ready(_) => self.link.close(),
            Poll::Pending => {}
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A channel to busd on `socket` that notices a busd which stopped answering (see the
/// module docs). A busd that accepts but does not finish the set-up within [`ANSWER_BOUND`]
/// is [`CliError::Unresponsive`].
async fn connect(socket: &Path) -> Result<Result<Channel, tonic::transport::Error>, CliError> {
    let path = socket.to_path_buf();
    // The authority is required by the URI type but unused: the connector ignores it.
    let endpoint = Endpoint::from_static("http://busd.local")
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false);
    let connecting = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let stream = UnixStream::connect(&path).await?;
            let link = Link::open(path);
            Ok::<_, io::Error>(TokioIo::new(Watched { stream, link }))
        }
    }));
    tokio::time::timeout(ANSWER_BOUND, connecting)
        .await
        .map_err(|_| CliError::unresponsive(socket))
}

/// A channel to the busd serving on `socket`, starting one if none answers.
pub async fn connect_or_start(socket: &Path) -> Result<Channel, CliError> {
    if let Some(channel) = reach(socket).await? {
        return Ok(channel);
    }
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CliError::DaemonStart(format!("cannot create {}: {e}", dir.display())))?;
    let _lock = StartLock::acquire(&socket.with_extension("lock"))?;
    // Another CLI may have started busd while this one waited for the lock.
    if let Some(channel) = reach(socket).await? {
        return Ok(channel);
    }
    start(socket, dir).await?;
    connect(socket)
        .await?
        .map_err(|e| CliError::connect(socket, &e))
}

/// How often, and how far apart, a connection that a busd closed at once is tried again: a
/// busd on its way out (killed, or exiting) can still accept for a few milliseconds.
const CLOSING_RETRIES: u32 = 10;
const CLOSING_PAUSE: Duration = Duration::from_millis(20);

/// A channel to the busd serving on `socket`, or `None` when none does: no socket, a stale
/// one, or one whose busd kept closing connections until it stopped accepting them.
async fn reach(socket: &Path) -> Result<Option<Channel>, CliError> {
    // Another user's busd would accept and close at once; say why instead.
    if let Ok(owner) = std::fs::metadata(socket).map(|m| m.uid()) {
        if owner != rustix::process::getuid().as_raw() {
            return Err(CliError::Connect {
                socket: socket.display().to_string(),
                reason: format!("the socket belongs to another user (uid {owner})"),
            });
        }
    }
    let mut retries = 0;
    loop {
        let error = match connect(socket).await? {
            Ok(channel) => return Ok(Some(channel)),
            Err(e) => e,
        };
        match connect_failure(&error) {
            ConnectFailure::Absent => return Ok(None),
            ConnectFailure::Closed if retries < CLOSING_RETRIES => {
                retries += 1;
                tokio::time::sleep(CLOSING_PAUSE).await;
            }
            _ => return Err(CliError::connect(socket, &error)),
        }
    }
}

/// What a failed connect says about the busd behind the socket.
#[derive(Debug, PartialEq)]
enum ConnectFailure {
    /// Nobody listens: no socket, or a stale one.
    Absent,
    /// Something accepted and closed the connection at once: a busd on its way out (or one
    /// refusing another user, which stays so).
    Closed,
    /// Anything else (permissions, say).
    Other,
}

/// Classifies a connect error by the first I/O error in its chain.
fn connect_failure(error: &(dyn std::error::Error + 'static)) -> ConnectFailure {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ConnectFailure::Absent
                }
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => ConnectFailure::Closed,
                _ => ConnectFailure::Other,
            };
        }
        source = e.source();
    }
    ConnectFailure::Other
}

async fn start(socket: &Path, dir: &Path) -> Result<(), CliError> {
    let notify_path = dir.join(format!(".busd-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixListener::bind(&notify_path).map_err(|e| {
        CliError::DaemonStart(format!("cannot bind {}: {e}", notify_path.display()))
    })?;
    let _cleanup = RemoveOnDrop(notify_path.clone());

    let log_path = log_path();
    if let Some(log_dir) = log_path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(log_dir)
            .map_err(|e| {
                CliError::DaemonStart(format!("cannot create {}: {e}", log_dir.display()))
            })?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| CliError::DaemonStart(format!("cannot open {}: {e}", log_path.display())))?;
    let busd = busd_binary();
    let mut child = tokio::process::Command::new(&busd)
        .arg("--socket")
        .arg(socket)
        .env("BUSD_NOTIFY", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| CliError::DaemonStart(format!("cannot run {}: {e}", busd.display())))?;

    let report = async {
        let (stream, _) = notify.accept().await?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await?;
        Ok::<_, io::Error>(line.trim().to_owned())
    };
    let mut report = std::pin::pin!(report);
    let outcome = tokio::select! {
        line = &mut report => line.map_err(|e| format!("no readiness report: {e}")),
        status = child.wait() => match tokio::time::timeout(REPORT_AFTER_EXIT, &mut report).await {
            // busd reports why it cannot start, then exits: the report may be read second.
            Ok(Ok(line)) if !line.is_empty() => Ok(line),
            _ => Err(format!("busd exited ({}) before it was ready",
                status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
        },
        _ = tokio::time::sleep(START_TIMEOUT) => Err(format!(
            "busd did not report readiness within {}s", START_TIMEOUT.as_secs())),
    };
    match outcome {
        Ok(line) if line == "ready" => Ok(()),
        Ok(line) => Err(CliError::DaemonStart(
            line.strip_prefix("error: ").unwrap_or(&line).to_owned(),
        )),
        Err(why) => Err(CliError::DaemonStart(format!(
            "{why}; its log is {}",
            log_path.display()
        ))),
    }
}

/// Where busd logs when the CLI starts it: `${XDG_STATE_HOME:-~/.local/state}/bus/busd.log`.
pub fn log_path() -> PathBuf {
    log_path_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

/// [`log_path`] with the environment supplied by `env`; pure, for tests.
fn log_path_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let state = env("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            env("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".local")
                .join("state")
        });
    state.join("bus").join("busd.log")
}

/// A channel to the busd serving on `socket`, or `None` when none answers (no socket, a
/// stale one, or a busd on its way out). Never starts busd.
pub async fn connect_existing(socket: &Path) -> Result<Option<Channel>, CliError> {
    reach(socket).await
}

/// Waits until the busd with `pid` has exited and, unless it was socket-activated, removed
/// `socket`; `false` when that did not happen within `limit`.
pub async fn wait_stopped(
    socket: &Path,
    pid: u32,
    socket_activated: bool,
    limit: Duration,
) -> bool {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let socket_gone = socket_activated || !socket.exists();
        if socket_gone && process_gone(pid) {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether `pid` has exited (a zombie waiting for its parent counts as exited).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "pid (comm) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// `busd` beside this executable, else the one on `PATH`.
pub fn busd_binary() -> PathBuf {
    sibling_binary("busd")
}

/// The program `name` beside this executable, else the one on `PATH`.
pub fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(name))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// An exclusive `flock`, held until the file is closed on drop.
struct StartLock {
    _file: std::fs::File,
}

impl StartLock {
    fn acquire(path: &Path) -> Result<Self, CliError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| CliError::DaemonStart(format!("cannot open {}: {e}", path.display())))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| CliError::DaemonStart(format!("cannot lock {}: {e}", path.display())))?;
        Ok(StartLock { _file: file })
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn the_log_lives_in_the_state_dir() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            log_path_from(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.local/state/bus/busd.log")
        );
        assert_eq!(
            log_path_from(env(&[("HOME", "/h"), ("XDG_STATE_HOME", "/s")])),
            PathBuf::from("/s/bus/busd.log")
        );
        // The XDG spec ignores relative paths.
        assert_eq!(
            log_path_from(env(&[("HOME", "/h"), ("XDG_STATE_HOME", "rel")])),
            PathBuf::from("/h/.local/state/bus/busd.log")
        );
    }

    #[test]
    fn a_connection_closed_at_once_is_told_from_no_busd_and_from_other_failures() {
        let io = |kind| io::Error::new(kind, "x");
        let cases = [
            (io::ErrorKind::NotFound, ConnectFailure::Absent),
            (io::ErrorKind::ConnectionRefused, ConnectFailure::Absent),
            (io::ErrorKind::ConnectionReset, ConnectFailure::Closed),
            (io::ErrorKind::BrokenPipe, ConnectFailure::Closed),
            (io::ErrorKind::UnexpectedEof, ConnectFailure::Closed),
            (io::ErrorKind::PermissionDenied, ConnectFailure::Other),
        ];
        for (kind, want) in cases {
            // As tonic wraps it: the I/O error is a source, not the error itself.
            let wrapped = Wrapped(io(kind));
            assert_eq!(connect_failure(&wrapped), want, "{kind:?}");
        }
        assert_eq!(
            connect_failure(&Wrapped(std::fmt::Error)),
            ConnectFailure::Other
        );
    }

    /// An error whose source is the given one.
    #[derive(Debug)]
    struct Wrapped<E>(E);

    impl<E: std::fmt::Debug> std::fmt::Display for Wrapped<E> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl<E: std::error::Error + 'static> std::error::Error for Wrapped<E> {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_gone() {
        assert!(!process_gone(std::process::id()));
        assert!(process_gone(u32::MAX / 2));
    }
}
