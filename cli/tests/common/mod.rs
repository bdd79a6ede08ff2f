//! The end-to-end harness: a real Podman API service, a real bus-runner, and the real `bus`
//! and `busd` binaries, each on temporary sockets and directories, stopped by PID on drop.
//!
//! The binaries come from the same target directory as this test (`cargo build --workspace
//! --bins` first; the README's test command does).

#![allow(dead_code)]

pub mod registry;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every scope a skeleton token can carry.
pub const ALL_SCOPES: &str = "container:read container:run container:delete";

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A workspace binary, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Waits until `ready` holds, checking every few milliseconds, for at most `limit`.
fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "{what} was not ready within {limit:?}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Sends SIGTERM to `pid`, then SIGKILL if it has not gone within a few seconds.
pub fn stop_pid(pid: u32) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let gone = || {
        !Path::new(&format!("/proc/{}", pid.as_raw_nonzero())).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    };
    let start = Instant::now();
    while !gone() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !gone() {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// `podman system service` on a temporary socket.
pub struct Engine {
    child: Child,
    pub socket: PathBuf,
    /// Extra environment for the service, kept for restarts.
    env: Vec<(String, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Engine {
    pub fn start() -> Engine {
        Engine::start_with_env(&[])
    }

    /// An engine whose service runs with extra environment, e.g. `CONTAINERS_REGISTRIES_CONF`.
    pub fn start_with_env(env: &[(&str, &Path)]) -> Engine {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("podman.sock");
        let env: Vec<(String, PathBuf)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_path_buf()))
            .collect();
        let engine = Engine {
            child: podman_service(&socket, &env),
            socket,
            env,
            _dir: dir,
        };
        engine.wait_ready();
        engine
    }

    /// The service's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the service by its PID (SIGTERM) and starts a new one on the same socket; the
    /// containers it started keep running under conmon.
    pub fn restart(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
        self.child = podman_service(&self.socket, &self.env);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        wait_until("podman's API service", Duration::from_secs(20), || {
            UnixStream::connect(&self.socket).is_ok()
        });
    }
}

/// `podman system service` on `socket`, with the project's containers.conf and `env`.
fn podman_service(socket: &Path, env: &[(String, PathBuf)]) -> Child {
    Command::new("podman")
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .env(
            "CONTAINERS_CONF",
            repo_root().join("deploy/containers.conf"),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("podman is installed (scripts/setup-engine installs it)")
}

impl Drop for Engine {
    fn drop(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
    }
}

/// `bus-runner serve` on 127.0.0.1 and an ephemeral port, on its own state dir.
pub struct Runner {
    child: Child,
    pub origin: String,
    pub state_dir: tempfile::TempDir,
    pub engine: Engine,
}

impl Runner {
    pub fn start() -> Runner {
        Runner::start_with(None)
    }

    /// A runner with a TOML config (accounts, API keys, plans), written to its state dir.
    pub fn start_with_config(config: &str) -> Runner {
        Runner::start_with(Some(config))
    }

    fn start_with(config: Option<&str>) -> Runner {
        Runner::start_on(Engine::start(), config, false)
    }

    /// A runner on `engine`, with an optional config; with `logged`, its log (debug level)
    /// goes to `runner.log` in its state dir.
    pub fn start_on(engine: Engine, config: Option<&str>, logged: bool) -> Runner {
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
        let (child, origin) = serve(state_dir.path(), &engine.socket);
        Runner {
            child,
            origin,
            state_dir,
            engine,
        }
    }

    /// Mints a token for `account` with `resources`, through `bus-runner token`.
    pub fn token(&self, account: &str, resources: &str) -> String {
        mint(self.state_dir.path(), account, resources, &[])
    }

    /// A token that expired before it was minted.
    pub fn expired_token(&self, account: &str) -> String {
        mint(self.state_dir.path(), account, ALL_SCOPES, &["--expired"])
    }

    /// A raw HTTP/1.1 GET against the runner; returns the status code and body.
    pub fn get(&self, path: &str, token: &str) -> (u16, String) {
        let addr = self.origin.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
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
}

impl Runner {
    /// The runner process's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the runner with SIGKILL (no shutdown of any kind) and reaps it; its state dir,
    /// its engine and the containers it started stay.
    pub fn kill(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }

    /// Starts a new `bus-runner serve` on the same state dir (and config, if any) and engine,
    /// on a new ephemeral port: it re-adopts the runs left running. `origin` names it.
    pub fn restart(&mut self) {
        (self.child, self.origin) = serve(self.state_dir.path(), &self.engine.socket);
    }

    /// Like [`Runner::restart`], on the address it listened on before (as a runner restarted
    /// by its service manager would be), so busd finds it where it was.
    pub fn restart_in_place(&mut self) {
        let listen = self.origin.trim_start_matches("http://").to_owned();
        (self.child, self.origin) = serve_on(self.state_dir.path(), &self.engine.socket, &listen);
        assert_eq!(self.origin, format!("http://{listen}"));
    }
}

/// `bus-runner serve` on 127.0.0.1:0 with `state_dir` (and its `runner.toml`, if present) and
/// the engine at `engine_socket`; returns the process and its origin, read from the line the
/// runner prints once it listens.
fn serve(state_dir: &Path, engine_socket: &Path) -> (Child, String) {
    serve_on(state_dir, engine_socket, "127.0.0.1:0")
}

/// [`serve`] on `listen` (`HOST:PORT`).
fn serve_on(state_dir: &Path, engine_socket: &Path, listen: &str) -> (Child, String) {
    let mut command = Command::new(bin("bus-runner"));
    command.arg("serve");
    let config = state_dir.join("runner.toml");
    if config.is_file() {
        command.arg("--config").arg(config);
    }
    // A runner started with a `runner.log` in its state dir logs there, at debug level.
    let log = state_dir.join("runner.log");
    let (level, stderr) = match std::fs::OpenOptions::new().append(true).open(&log) {
        Ok(file) => ("debug", Stdio::from(file)),
        Err(_) => ("warn", Stdio::null()),
    };
    let mut child = command
        .args(["--listen", listen, "--engine"])
        .arg(format!("unix://{}", engine_socket.display()))
        .arg("--state-dir")
        .arg(state_dir)
        .env("RUST_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("bus-runner printed {line:?} instead of its address"))
        .to_owned();
    (child, format!("http://{addr}"))
}

/// The SHA-256 (hex) of an API key, for `api_key_sha256` in a runner config.
pub fn hash_key(key: &str) -> String {
    let mut child = Command::new(bin("bus-runner"))
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

/// Mints a token with the signing key in `state_dir`.
pub fn mint(state_dir: &Path, account: &str, resources: &str, extra: &[&str]) -> String {
    let out = Command::new(bin("bus-runner"))
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

impl Drop for Runner {
    fn drop(&mut self) {
        stop_pid(self.child.id());
        let _ = self.child.wait();
        // A stopped runner leaves its unfinished runs' containers for its next start to
        // re-adopt; there is no next start here, so remove them (by id, by this runner's label).
        let Ok(id) = std::fs::read_to_string(self.state_dir.path().join("runner-id")) else {
            return;
        };
        let podman = || {
            let mut command = Command::new("podman");
            command
                .arg("--url")
                .arg(format!("unix://{}", self.engine.socket.display()))
                .stdin(Stdio::null())
                .stderr(Stdio::null());
            command
        };
        let Ok(listed) = podman()
            .args(["ps", "-a", "-q", "--no-trunc", "--filter"])
            .arg(format!("label=bus.runner={}", id.trim()))
            .output()
        else {
            return;
        };
        for container in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = podman()
                .args(["rm", "-f", "--ignore", container])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// A user's view: a runner, a config dir with a token, and the `bus` CLI pointed at a busd
/// socket of its own. busd is started by the CLI itself, and stopped by PID on drop.
pub struct Stack {
    pub runner: Runner,
    pub home: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Stack {
    /// A stack whose default token file holds a full-scope token for `alice`.
    pub fn start() -> Stack {
        let stack = Stack::without_token();
        let token = stack.runner.token("alice", ALL_SCOPES);
        stack.write_token(&token);
        stack
    }

    /// A stack with no token anywhere.
    pub fn without_token() -> Stack {
        Stack::on(Runner::start())
    }

    /// A stack with no token anywhere, in front of `runner`.
    pub fn on(runner: Runner) -> Stack {
        let home = tempfile::tempdir().unwrap();
        let socket = home.path().join("run").join("busd.sock");
        Stack {
            runner,
            home,
            socket,
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join("config")
    }

    /// Writes `token` to the default token file, mode 0600.
    pub fn write_token(&self, token: &str) {
        let path = self.config_dir().join("auth").join("api-token");
        write_secret(&path, token);
    }

    /// Writes `token` to a file of its own, mode 0600, and returns its path.
    pub fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let path = self.home.path().join(name);
        write_secret(&path, token);
        path
    }

    /// `bus` with this stack's environment and nothing of the caller's.
    pub fn bus(&self) -> Command {
        let mut cmd = Command::new(bin("bus"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("BUS_CONFIG_DIR", self.config_dir())
            .env("BUS_SOCKET", &self.socket)
            .env("BUS_AI_API_URL", &self.runner.origin)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `bus ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.bus().args(args).output().unwrap()
    }

    /// `bus` like [`Stack::bus`], with `BUS_AI_API_URL` set to `api_url` (a proxy in front of
    /// the runner, say): the CLI sends it with each call, and a busd it starts takes it as
    /// its default origin.
    pub fn bus_at(&self, api_url: &str) -> Command {
        let mut cmd = self.bus();
        cmd.env("BUS_AI_API_URL", api_url);
        cmd
    }

    /// Runs `bus ARGS...` against `api_url` to completion.
    pub fn run_at(&self, api_url: &str, args: &[&str]) -> Output {
        self.bus_at(api_url).args(args).output().unwrap()
    }

    /// The log file busd writes when the CLI starts it:
    /// `${XDG_STATE_HOME:-~/.local/state}/bus/busd.log` (the harness sets only HOME).
    pub fn busd_log_path(&self) -> PathBuf {
        self.home.path().join(".local/state/bus/busd.log")
    }

    /// The log busd wrote when the CLI started it.
    pub fn busd_log(&self) -> String {
        std::fs::read_to_string(self.busd_log_path()).unwrap_or_default()
    }

    /// `busd` itself with this stack's environment, on this stack's socket.
    pub fn busd(&self) -> Command {
        let mut cmd = Command::new(bin("busd"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("BUS_CONFIG_DIR", self.config_dir())
            .env("BUS_AI_API_URL", &self.runner.origin)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null());
        cmd
    }

    /// busd's PID, from `bus daemon info`, if one is running.
    pub fn busd_pid(&self) -> Option<u32> {
        if !self.socket.exists() {
            return None;
        }
        let out = self.run(&["daemon", "info"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("pid:").map(|p| p.trim().parse().unwrap()))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The PID busd keeps in its instance lock file: it works even when the CLI cannot
        // (a test may leave a broken config or a bad token behind).
        let mut lock = self.socket.clone().into_os_string();
        lock.push(".pid");
        let from_lock = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        if let Some(pid) = from_lock.or_else(|| self.busd_pid()) {
            stop_pid(pid);
        }
    }
}

fn write_secret(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Asserts the command failed with exactly one line on stderr, and returns that line.
pub fn one_line_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line on stderr, got: {stderr}"
    );
    assert!(stderr.starts_with("bus: error: "), "{stderr}");
    stderr.trim_end().to_owned()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
