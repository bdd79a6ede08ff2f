//! `bus-runner`: a `serve` process, and a runner owning its engine and state directory.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::process::{kill_pid, stop_pid};
use crate::{Bins, Error, Podman};

/// Every scope a skeleton token can carry.
pub const ALL_SCOPES: &str = "container:read container:run container:delete";

/// How to start `bus-runner serve`: on an engine and a state directory, by default on
/// `127.0.0.1:0` with no config, stderr discarded and `RUST_LOG` as the caller has it.
#[derive(Debug, Clone)]
pub struct Serve {
    bin: PathBuf,
    engine: String,
    state_dir: PathBuf,
    config: Option<PathBuf>,
    listen: Vec<String>,
    tls: Option<(PathBuf, PathBuf)>,
    log: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
}

impl Serve {
    /// `bus-runner serve --engine unix://<engine_socket> --state-dir <state_dir>`.
    pub fn new(bins: &Bins, engine_socket: &Path, state_dir: &Path) -> Result<Serve, Error> {
        Ok(Serve {
            bin: bins.try_get("bus-runner")?,
            engine: format!("unix://{}", engine_socket.display()),
            state_dir: state_dir.to_path_buf(),
            config: None,
            listen: Vec::new(),
            tls: None,
            log: None,
            env: Vec::new(),
        })
    }

    /// `--config <path>`.
    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// One more `--listen` (`HOST:PORT` or `https://HOST:PORT`); the default is `127.0.0.1:0`.
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen.push(addr.into());
        self
    }

    /// `--tls-cert` and `--tls-key`, for an `https://` listener.
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Its stderr appended to `path` (created private) instead of discarded.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// One more environment variable, e.g. `RUST_LOG`.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The command line, with the listeners given (none: the caller adds its own) and
    /// `args` after `serve`; stdin is closed and stdout and stderr are the caller's to set.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.arg("serve").args(args);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        for addr in &self.listen {
            command.args(["--listen", addr]);
        }
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        command
            .arg("--engine")
            .arg(&self.engine)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// Starts it (on `127.0.0.1:0` unless listeners were given) and reads the address it
    /// prints for each listener once it listens.
    pub fn try_spawn(&self) -> Result<RunnerProcess, Error> {
        if self.listen.is_empty() {
            return self.clone().listen("127.0.0.1:0").try_spawn();
        }
        let listen = &self.listen;
        let stderr = match &self.log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| Error::Io(format!("cannot open {}", path.display()), e))?,
            ),
            None => Stdio::null(),
        };
        let mut child = self
            .command(&[])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::Spawn {
                program: self.bin.display().to_string(),
                hint: "",
                source,
            })?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut origins = Vec::new();
        for _ in listen {
            let line = lines.next().and_then(Result::ok).unwrap_or_default();
            let Some(addr) = line.strip_prefix("listening on ") else {
                stop_pid(child.id());
                let _ = child.wait();
                let seen = self
                    .log
                    .as_ref()
                    .map_or(String::new(), |log| format!(" (see {})", log.display()));
                return Err(Error::NotReady(format!(
                    "bus-runner printed {line:?} instead of its address{seen}"
                )));
            };
            origins.push(if addr.contains("://") {
                addr.to_owned()
            } else {
                format!("http://{addr}")
            });
        }
        Ok(RunnerProcess { child, origins })
    }

    /// Like [`Serve::try_spawn`]; panics when it cannot.
    pub fn spawn(&self) -> RunnerProcess {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A running `bus-runner serve`; stopped by its PID on drop.
pub struct RunnerProcess {
    child: Child,
    /// Its origins, one per listener in order (`http://…` or `https://…`).
    pub origins: Vec<String>,
}

impl RunnerProcess {
    /// Its first origin.
    pub fn origin(&self) -> &str {
        &self.origins[0]
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        self.child
            .wait()
            .expect("bus-runner is this process's child")
    }

    /// Kills it with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill(&mut self) {
        kill_pid(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            stop_pid(self.child.id());
        }
        let _ = self.child.wait();
    }
}

/// A `bus-runner serve` on 127.0.0.1 and an ephemeral port, on its own state directory and
/// its own Podman service. On drop it stops the runner, then removes the containers it left
/// (by its `bus.runner` label), then stops the engine.
pub struct Runner {
    process: RunnerProcess,
    /// The runner's origin (`http://127.0.0.1:PORT`).
    pub origin: String,
    /// Its state directory (and `runner.toml`, `runner.log` when it has them).
    pub state_dir: tempfile::TempDir,
    /// Its engine.
    pub engine: Podman,
    bins: Bins,
}

impl Runner {
    /// A runner with the built-in config on a new engine.
    pub fn start(bins: &Bins) -> Runner {
        Runner::start_on(bins, Podman::start(), None, false)
    }

    /// A runner with a TOML config (accounts, API keys, plans), written to its state dir.
    pub fn start_with_config(bins: &Bins, config: &str) -> Runner {
        Runner::start_on(bins, Podman::start(), Some(config), false)
    }

    /// A runner on `engine`, with an optional config; with `logged`, its log (debug level)
    /// goes to `runner.log` in its state dir.
    pub fn start_on(bins: &Bins, engine: Podman, config: Option<&str>, logged: bool) -> Runner {
        let state_dir = tempfile::tempdir().unwrap();
        if let Some(config) = config {
            std::fs::write(state_dir.path().join("runner.toml"), config).unwrap();
        }
        if logged {
            // Private, as any log that may hold run details should be.
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(state_dir.path().join("runner.log"))
                .unwrap();
        }
        let process = serve(bins, state_dir.path(), &engine.socket, "127.0.0.1:0");
        Runner {
            origin: process.origin().to_owned(),
            process,
            state_dir,
            engine,
            bins: bins.clone(),
        }
    }

    /// The binaries it runs with.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// Mints a token for `account` with `resources`, through `bus-runner token`.
    pub fn token(&self, account: &str, resources: &str) -> String {
        mint(&self.bins, self.state_dir.path(), account, resources, &[])
    }

    /// A token that expired before it was minted.
    pub fn expired_token(&self, account: &str) -> String {
        mint(
            &self.bins,
            self.state_dir.path(),
            account,
            ALL_SCOPES,
            &["--expired"],
        )
    }

    /// A raw HTTP/1.1 GET against the runner; returns the status code and body.
    pub fn get(&self, path: &str, token: &str) -> (u16, String) {
        self.request("GET", path, token, None)
    }

    /// A raw HTTP/1.1 request against the runner, as a client other than busd would send it,
    /// with a JSON `body` if given; returns the status code and body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (u16, String) {
        let addr = self.origin.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        let body = body.unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The runner process's PID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the runner with SIGKILL (no shutdown of any kind) and reaps it; its state dir,
    /// its engine and the containers it started stay.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts a new `bus-runner serve` on the same state dir (and config, if any) and engine,
    /// on a new ephemeral port: it re-adopts the runs left running. `origin` names it.
    pub fn restart(&mut self) {
        self.respawn("127.0.0.1:0");
    }

    /// Like [`Runner::restart`], on the address it listened on before (as a runner restarted
    /// by its service manager would be), so busd finds it where it was.
    pub fn restart_in_place(&mut self) {
        let listen = self.origin.trim_start_matches("http://").to_owned();
        self.respawn(&listen);
        assert_eq!(self.origin, format!("http://{listen}"));
    }

    fn respawn(&mut self, listen: &str) {
        self.process = serve(
            &self.bins,
            self.state_dir.path(),
            &self.engine.socket,
            listen,
        );
        self.origin = self.process.origin().to_owned();
    }
}

/// `bus-runner serve` on `listen` with `state_dir` (and its `runner.toml`, if present) and the
/// engine at `engine_socket`. A state dir holding a `runner.log` gets the runner's log there,
/// at debug level.
fn serve(bins: &Bins, state_dir: &Path, engine_socket: &Path, listen: &str) -> RunnerProcess {
    let mut serve = Serve::new(bins, engine_socket, state_dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .listen(listen);
    let config = state_dir.join("runner.toml");
    if config.is_file() {
        serve = serve.config(config);
    }
    let log = state_dir.join("runner.log");
    serve = if log.is_file() {
        serve.log(log).env("RUST_LOG", "debug")
    } else {
        serve.env("RUST_LOG", "warn")
    };
    serve.spawn()
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.process.kill_gently();
        // A stopped runner leaves its unfinished runs' containers for its next start to
        // re-adopt; there is no next start here, so remove them (by this runner's label).
        if let Ok(id) = std::fs::read_to_string(self.state_dir.path().join("runner-id")) {
            self.engine
                .remove_labelled(&format!("bus.runner={}", id.trim()));
        }
    }
}

impl RunnerProcess {
    /// Stops it by its PID (SIGTERM, then SIGKILL) and reaps it.
    pub fn kill_gently(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
    }
}

/// The SHA-256 (hex) of an API key, for `api_key_sha256` in a runner config, from
/// `bus-runner hash-key`.
pub fn hash_key(bins: &Bins, key: &str) -> String {
    let mut child = Command::new(bins.runner())
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "bus-runner hash-key failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Mints a token with the signing key in `state_dir`, through `bus-runner token`.
pub fn mint(
    bins: &Bins,
    state_dir: &Path,
    account: &str,
    resources: &str,
    extra: &[&str],
) -> String {
    let out = Command::new(bins.runner())
        .args(["token", "--state-dir"])
        .arg(state_dir)
        .args(["--account", account, "--resources", resources])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bus-runner token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "the token is printed alone");
    token.trim().to_owned()
}
