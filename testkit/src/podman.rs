//! Podman's API service (`podman system service`) on a temporary socket.

use std::ffi::{OsStr, OsString};
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::Error;
use crate::process::{poll, stop_pid};

/// How long the service may take to answer `GET /_ping`.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// `podman system service` on a socket in a temporary directory, with the project's
/// deploy/containers.conf; stopped by its PID on drop. Its log is `podman.log` beside the
/// socket, and its working directory is that directory (conmon writes an `oom` file there).
pub struct Podman {
    child: Child,
    /// The service's socket.
    pub socket: PathBuf,
    env: Vec<(OsString, OsString)>,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start a [`Podman`].
#[derive(Default)]
pub struct PodmanBuilder {
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
}

impl PodmanBuilder {
    /// Extra environment for the service (e.g. `CONTAINERS_REGISTRIES_CONF`), kept for
    /// restarts.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Keep the socket and log in `dir` (which the caller owns) instead of a temporary one.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Starts the service and waits until it answers `GET /_ping`.
    pub fn try_start(self) -> Result<Podman, Error> {
        let (dir, tmp) = match self.dir {
            Some(dir) => (dir, None),
            None => {
                let tmp = tempfile::tempdir()
                    .map_err(|e| Error::Io("cannot create a temporary directory".into(), e))?;
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        let socket = dir.join("podman.sock");
        let child = spawn(&dir, &socket, &self.env)?;
        let mut podman = Podman {
            child,
            socket,
            env: self.env,
            dir,
            _tmp: tmp,
        };
        podman.wait_ready()?;
        Ok(podman)
    }

    /// Like [`PodmanBuilder::try_start`]; panics when it cannot.
    pub fn start(self) -> Podman {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Podman {
    /// A builder: extra environment, a directory of the caller's.
    pub fn builder() -> PodmanBuilder {
        PodmanBuilder::default()
    }

    /// Starts the service with the defaults.
    pub fn start() -> Podman {
        Podman::builder().start()
    }

    /// The service's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The engine URL for `bus-runner serve --engine` and `podman --url`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The service's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("podman.log")
    }

    /// Stops the service by its PID (SIGTERM) and starts a new one on the same socket; the
    /// containers it started keep running under conmon.
    pub fn restart(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
        self.child = spawn(&self.dir, &self.socket, &self.env).unwrap_or_else(|e| panic!("{e}"));
        self.wait_ready().unwrap_or_else(|e| panic!("{e}"));
    }

    /// `podman --url <this service>`, quiet on stdin and stderr.
    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--url")
            .arg(self.url())
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Whether the engine has a container by this name or id.
    pub fn container_exists(&self, name: &str) -> bool {
        self.command()
            .args(["container", "exists", name])
            .status()
            .unwrap()
            .success()
    }

    /// Force-removes a container by its name or id (cleanup after a failed test).
    pub fn remove_container(&self, name: &str) {
        let _ = self
            .command()
            .args(["rm", "-f", "--ignore", name])
            .stdout(Stdio::null())
            .status();
    }

    /// Force-removes every container labelled `label` (`key=value`).
    pub fn remove_labelled(&self, label: &str) {
        let Ok(listed) = self
            .command()
            .args(["ps", "-a", "-q", "--no-trunc", "--filter"])
            .arg(format!("label={label}"))
            .output()
        else {
            return;
        };
        for container in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            self.remove_container(container);
        }
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let mut exited = None;
        let ready = poll(READY_LIMIT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            ping(&self.socket)
        });
        let log = || std::fs::read_to_string(self.log_path()).unwrap_or_default();
        match exited {
            Some(status) => Err(Error::NotReady(format!(
                "podman system service exited with {status}: {}",
                log()
            ))),
            None if !ready => Err(Error::NotReady(format!(
                "podman's API service did not answer /_ping within {READY_LIMIT:?}: {}",
                log()
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
    }
}

/// `podman system service` on `socket`, in `dir`, with the project's containers.conf and `env`.
fn spawn(dir: &Path, socket: &Path, env: &[(OsString, OsString)]) -> Result<Child, Error> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("podman.log"))
        .map_err(|e| Error::Io(format!("cannot create {}", dir.display()), e))?;
    Command::new("podman")
        .current_dir(dir)
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .env(
            "CONTAINERS_CONF",
            repo_root().join("deploy/containers.conf"),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: "podman".into(),
            hint: "; scripts/setup-engine installs it",
            source,
        })
}

/// Whether the service at `socket` answers `GET /_ping` with 200.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.") && reply.contains(" 200 ")
}

/// The repository's root, for files the harness shares with deployments (deploy/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is inside the repository")
        .to_path_buf()
}
