//! Reaching busd: connect to its socket, or start it and wait for its readiness report.
//!
//! Start-up is serialised by a lock file beside the socket, so two CLIs started at once
//! spawn one daemon. busd reports `ready` (or its start-up error) on a notify socket the CLI
//! bound before spawning it: no sleeps, no polling.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::net::UnixListener;
use tonic::transport::Channel;

use crate::error::CliError;

/// How long a starting busd may take to report readiness.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A channel to the busd serving on `socket`, starting one if none answers.
pub async fn connect_or_start(socket: &Path) -> Result<Channel, CliError> {
    match bus::connect(socket).await {
        Ok(channel) => return Ok(channel),
        Err(e) if !daemon_absent(&e) => return Err(CliError::connect(socket, &e)),
        Err(_) => {}
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
    if let Ok(channel) = bus::connect(socket).await {
        return Ok(channel);
    }
    start(socket, dir).await?;
    bus::connect(socket)
        .await
        .map_err(|e| CliError::connect(socket, &e))
}

/// Whether a connect error means "nobody is listening" (absent or stale socket).
fn daemon_absent(error: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            );
        }
        source = e.source();
    }
    false
}

async fn start(socket: &Path, dir: &Path) -> Result<(), CliError> {
    let notify_path = dir.join(format!(".busd-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixListener::bind(&notify_path).map_err(|e| {
        CliError::DaemonStart(format!("cannot bind {}: {e}", notify_path.display()))
    })?;
    let _cleanup = RemoveOnDrop(notify_path.clone());

    let log_path = dir.join("busd.log");
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
    let outcome = tokio::select! {
        line = report => line.map_err(|e| format!("no readiness report: {e}")),
        status = child.wait() => Err(format!("busd exited ({}) before it was ready",
            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))),
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

/// `busd` beside this executable, else the one on `PATH`.
fn busd_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("busd"))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("busd"))
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
