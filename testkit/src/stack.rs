//! A user's view of the whole stack: a runner, a config dir with a token, and the `bus` CLI
//! pointed at a busd socket of its own.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::process::{stop_pid, write_secret};
use crate::{ALL_SCOPES, Bins, Busd, Runner};

/// A runner, a temporary HOME with a config dir, and `bus` with that environment; busd is
/// started by the CLI itself (on [`Stack::socket`]) and stopped by its PID on drop.
pub struct Stack {
    /// The runner (and its engine).
    pub runner: Runner,
    /// The temporary HOME.
    pub home: tempfile::TempDir,
    /// busd's socket.
    pub socket: PathBuf,
}

impl Stack {
    /// A stack whose default token file holds a full-scope token for `alice`.
    pub fn start(bins: &Bins) -> Stack {
        let stack = Stack::without_token(bins);
        let token = stack.runner.token("alice", ALL_SCOPES);
        stack.write_token(&token);
        stack
    }

    /// A stack with no token anywhere.
    pub fn without_token(bins: &Bins) -> Stack {
        Stack::on(Runner::start(bins))
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

    /// The binaries it runs.
    pub fn bins(&self) -> &Bins {
        self.runner.bins()
    }

    /// `BUS_CONFIG_DIR`.
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
        let mut cmd = Command::new(self.bins().bus());
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

    /// The account's runs, from `bus containers runs -o json`.
    pub fn runs(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["containers", "runs", "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
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
        let mut cmd = Command::new(self.bins().busd());
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

    /// [`Stack::busd`], adjusted by `tweak` (flags, environment), started and waited for on
    /// this stack's socket; stopped by its PID on drop.
    pub fn start_busd(&self, tweak: impl FnOnce(&mut Command)) -> Busd {
        std::fs::create_dir_all(self.socket.parent().expect("a socket in a directory")).unwrap();
        let mut command = self.busd();
        tweak(&mut command);
        Busd::spawn(command, &self.socket)
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
