//! Everything the bench measures, started on temporary paths and stopped by PID: Podman's API
//! service, a certificate authority and a server certificate (openssl), bus-runner serving
//! HTTPS and plain HTTP, a token, and busd started by the `bus` CLI. The processes are
//! started by the workspace's test harness (bus-testkit), as the tests start theirs.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus_testkit::{Bins, Podman, RunnerProcess, Serve, stop_pid};

use crate::measure::Cmd;
use crate::{Failed, say};

/// The resources of the bench's token.
const SCOPES: &str = "container:read container:run container:delete";

/// The running stack. Dropping it stops what it started and removes its files.
pub struct Stack {
    /// The temporary directory everything lives in.
    pub tmp: PathBuf,
    /// Where bus, busd and bus-runner are.
    pub bin: PathBuf,
    /// The environment of engine commands (podman, docker, curl): the caller's, plus
    /// CONTAINERS_CONF.
    pub env: Vec<(OsString, OsString)>,
    /// The environment of `bus` commands: a private HOME, config dir and socket, the HTTPS
    /// origin and the CA file.
    pub bus_env: Vec<(OsString, OsString)>,
    /// Podman's API socket.
    pub podman_sock: PathBuf,
    /// The runner's HTTPS origin, e.g. `https://127.0.0.1:40123`.
    pub https: String,
    /// The runner's plain HTTP origin.
    pub http: String,
    /// The CA certificate that issued the runner's (PEM).
    pub ca: PathBuf,
    /// `Authorization: Bearer …` in a 0600 file, for curl's `-H @file`.
    pub header_file: PathBuf,
    /// The runner's log (stderr).
    pub runner_log: PathBuf,
    /// busd's socket.
    pub socket: PathBuf,
    /// busd's PID.
    pub busd_pid: u32,
    /// The podman API service's PID.
    pub podman_pid: u32,
    /// The runner's PID.
    pub runner_pid: u32,
    token: String,
    runner_state: PathBuf,
    podman: Option<Podman>,
    runner: Option<RunnerProcess>,
}

impl Stack {
    /// Starts everything; `bin` holds the release binaries.
    pub fn start(bin: &Path) -> Result<Stack, Failed> {
        for name in ["bus", "busd", "bus-runner"] {
            if !bin.join(name).is_file() {
                return Err(Failed(format!(
                    "{} is missing: build it with `cargo build --release --workspace --bins`",
                    bin.join(name).display()
                )));
            }
        }
        let bins = Bins::in_dir(bin);
        let tmp = std::env::temp_dir().join(format!("bus-bench-{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| Failed(format!("cannot create {}: {e}", tmp.display())))?;
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| k != "CONTAINERS_CONF" && k != "DOCKER_HOST")
            .collect();
        env.push((
            "CONTAINERS_CONF".into(),
            repo.join("deploy/containers.conf").into(),
        ));
        let mut stack = Stack {
            tmp: tmp.clone(),
            bin: bin.to_owned(),
            env,
            bus_env: Vec::new(),
            podman_sock: tmp.join("podman.sock"),
            https: String::new(),
            http: String::new(),
            ca: tmp.join("ca.pem"),
            header_file: tmp.join("auth-header"),
            runner_log: tmp.join("bus-runner.log"),
            socket: tmp.join("run/busd.sock"),
            busd_pid: 0,
            podman_pid: 0,
            runner_pid: 0,
            token: String::new(),
            runner_state: tmp.join("runner"),
            podman: None,
            runner: None,
        };
        stack.start_podman()?;
        say("making a CA and a server certificate");
        bus_testkit::tls::certificates(&stack.tmp).map_err(failed)?;
        stack.start_runner(&bins)?;
        stack.start_busd()?;
        Ok(stack)
    }

    fn start_podman(&mut self) -> Result<(), Failed> {
        say(&format!(
            "starting podman's API service on {}",
            self.podman_sock.display()
        ));
        let podman = Podman::builder()
            .in_dir(&self.tmp)
            .try_start()
            .map_err(failed)?;
        self.podman_pid = podman.pid();
        self.podman_sock = podman.socket.clone();
        self.podman = Some(podman);
        Ok(())
    }

    fn start_runner(&mut self, bins: &Bins) -> Result<(), Failed> {
        let runner = Serve::new(bins, &self.podman_sock, &self.runner_state)
            .map_err(failed)?
            .listen("127.0.0.1:0")
            .listen("https://127.0.0.1:0")
            .tls(self.tmp.join("server.pem"), self.tmp.join("server.key"))
            .log(&self.runner_log)
            .env("RUST_LOG", "warn,bus_runner::http::routes::logs=debug")
            .env("CONTAINERS_CONF", self.engine_env("CONTAINERS_CONF"))
            .try_spawn()
            .map_err(failed)?;
        self.runner_pid = runner.pid();
        self.http = runner.origins[0].clone();
        self.https = runner.origins[1].clone();
        self.runner = Some(runner);
        if !self.https.starts_with("https://") {
            return Err(Failed(format!(
                "bus-runner's second address is {}, not https://",
                self.https
            )));
        }
        say(&format!("bus-runner on {} and {}", self.https, self.http));

        let out = Command::new(bins.dir().join("bus-runner"))
            .args([
                "token",
                "--account",
                "bench",
                "--resources",
                SCOPES,
                "--ttl",
                "4h",
            ])
            .arg("--state-dir")
            .arg(&self.runner_state)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Failed(format!("cannot run bus-runner token: {e}")))?;
        if !out.status.success() {
            return Err(Failed("bus-runner token failed".to_owned()));
        }
        self.token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        write_secret(
            &self.header_file,
            &format!("Authorization: Bearer {}\n", self.token),
        )?;
        write_secret(&self.tmp.join("config/auth/api-token"), &self.token)
    }

    fn start_busd(&mut self) -> Result<(), Failed> {
        let home = self.tmp.join("home");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&home)
            .map_err(|e| Failed(format!("cannot create {}: {e}", home.display())))?;
        self.bus_env = vec![
            (
                "PATH".into(),
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            ),
            ("HOME".into(), home.into()),
            ("BUS_CONFIG_DIR".into(), self.tmp.join("config").into()),
            ("BUS_SOCKET".into(), self.socket.clone().into()),
            ("BUS_AI_API_URL".into(), self.https.clone().into()),
            ("BUS_CA_FILE".into(), self.ca.clone().into()),
        ];
        self.bus(&["daemon", "start"])?;
        let info = self.bus(&["daemon", "info", "-o", "json"])?;
        let info: serde_json::Value = serde_json::from_str(&info)
            .map_err(|e| Failed(format!("`bus daemon info -o json` printed no JSON: {e}")))?;
        self.busd_pid = info["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| Failed(format!("`bus daemon info` shows no pid: {info}")))?;
        say(&format!(
            "busd (pid {}) on {}",
            self.busd_pid,
            self.socket.display()
        ));
        Ok(())
    }

    /// Runs `bus ARGS` to completion: its stdout, or an error with its stderr.
    pub fn bus(&self, args: &[&str]) -> Result<String, Failed> {
        let out = Command::new(self.bin.join("bus"))
            .args(args)
            .env_clear()
            .envs(self.bus_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Failed(format!("cannot run bus: {e}")))?;
        if !out.status.success() {
            return Err(Failed(format!(
                "`bus {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// How many `ListRuns` calls busd has answered from its watched lists (`bus daemon info`).
    pub fn lists_answered(&self) -> Result<u64, Failed> {
        let info = self.bus(&["daemon", "info", "-o", "json"])?;
        let info: serde_json::Value = serde_json::from_str(&info)
            .map_err(|e| Failed(format!("`bus daemon info -o json` printed no JSON: {e}")))?;
        info["run_lists_answered"].as_u64().ok_or_else(|| {
            Failed(format!(
                "`bus daemon info` shows no run_lists_answered: {info}"
            ))
        })
    }

    /// `bus ARGS` as a measurable command.
    pub fn bus_cmd(&self, label: &str, args: &[&str]) -> Cmd {
        let mut argv = vec![self.bin.join("bus").into_os_string()];
        argv.extend(args.iter().map(OsString::from));
        Cmd::new(label, argv, &self.bus_env)
    }

    /// An engine-side command (podman, curl, docker) as a measurable command.
    pub fn engine_cmd(&self, label: &str, argv: &[&str]) -> Cmd {
        Cmd::new(label, argv, &self.env)
    }

    /// `curl` of `path` on `origin`, with the token header from its file; a fresh process and
    /// a cold connection every time.
    pub fn curl_cmd(&self, label: &str, origin: &str, path: &str) -> Cmd {
        let header = format!("@{}", self.header_file.display());
        let url = format!("{origin}{path}");
        let ca = self.ca.to_string_lossy().into_owned();
        let mut argv = vec!["curl", "-sf", "-o", "/dev/null", "-H", &header];
        if origin.starts_with("https://") {
            argv.extend(["--cacert", &ca]);
        }
        argv.push(&url);
        Cmd::new(label, argv, &self.env)
    }

    /// The CA certificate (PEM), for the bench's own in-process REST clients.
    pub fn ca_pem(&self) -> Result<Vec<u8>, Failed> {
        fs::read(&self.ca).map_err(|e| Failed(format!("cannot read {}: {e}", self.ca.display())))
    }

    /// The token, for the bench's own in-process REST clients (never printed).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A value of the engine environment.
    pub fn engine_env(&self, name: &str) -> OsString {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// How many followed log streams (`log stream opened` lines with `follow=true`) the
    /// runner has logged for `run_id` so far; busd's per-follower authorizations
    /// (`tail=0`, not followed) are not among them. The log's colour codes are ignored.
    pub fn runner_log_requests(&self, run_id: &str) -> usize {
        fs::read_to_string(&self.runner_log)
            .unwrap_or_default()
            .lines()
            .map(without_ansi)
            .filter(|l| {
                l.contains("log stream opened") && l.contains("follow=true") && l.contains(run_id)
            })
            .count()
    }

    /// `podman --url unix://SOCKET ARGS…` against the stack's API service, in the engine's
    /// environment.
    pub fn podman(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--url")
            .arg(format!("unix://{}", self.podman_sock.display()))
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The engine's container id of a run (waits until it exists).
    pub fn container_of(&self, run_id: &str) -> Result<String, Failed> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let label = format!("label=bus.run-id={run_id}");
        loop {
            let out = self
                .podman(&["ps", "-q", "--no-trunc", "--filter", &label])
                .output()
                .map_err(|e| Failed(format!("cannot run podman ps: {e}")))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(id) = text.split_whitespace().next() {
                return Ok(id.to_owned());
            }
            if Instant::now() > deadline {
                return Err(Failed(format!("run {run_id} has no running container")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        say("stopping what it started");
        if self.busd_pid != 0 {
            stop_pid(self.busd_pid);
        }
        // The runner first (it leaves runs running), then their containers, then podman.
        drop(self.runner.take());
        if let Some(podman) = self.podman.take() {
            if let Ok(id) = fs::read_to_string(self.runner_state.join("runner-id")) {
                podman.remove_labelled(&format!("bus.runner={}", id.trim()));
            }
        }
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// `line` without its ANSI escape sequences (`ESC [ … letter`).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A harness error as the bench's.
fn failed(e: bus_testkit::Error) -> Failed {
    Failed(e.to_string())
}

fn write_secret(path: &Path, content: &str) -> Result<(), Failed> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Failed(format!("cannot create {}: {e}", dir.display())))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .map_err(|e| Failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::without_ansi;

    #[test]
    fn colour_codes_are_dropped_from_log_lines() {
        let line = "\u{1b}[3mfollow\u{1b}[0m\u{1b}[2m=\u{1b}[0mtrue run_1";
        assert_eq!(without_ansi(line), "follow=true run_1");
        assert_eq!(without_ansi("plain"), "plain");
    }
}
