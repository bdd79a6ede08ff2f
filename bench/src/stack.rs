//! Everything the bench measures, started on temporary paths and stopped by PID: Podman's API
//! service, a certificate authority and a server certificate (openssl), bus-runner serving
//! HTTPS and plain HTTP, a token, and busd started by the `bus` CLI.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    children: Vec<Child>,
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
            children: Vec::new(),
        };
        stack.start_podman()?;
        stack.make_certificates()?;
        stack.start_runner()?;
        stack.start_busd()?;
        Ok(stack)
    }

    fn start_podman(&mut self) -> Result<(), Failed> {
        say(&format!(
            "starting podman's API service on {}",
            self.podman_sock.display()
        ));
        let log = self.file("podman.log")?;
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", self.podman_sock.display()))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Failed(format!("cannot run podman: {e}; run scripts/setup-engine")))?;
        self.podman_pid = child.id();
        self.children.push(child);
        let sock = self.podman_sock.clone();
        wait_for("podman's API service", Duration::from_secs(20), || {
            UnixStream::connect(&sock).is_ok()
        })
    }

    /// A CA and a server certificate for 127.0.0.1 it issued, as a remote deployment would
    /// have (ECDSA P-256).
    fn make_certificates(&mut self) -> Result<(), Failed> {
        let dir = &self.tmp;
        let ext = dir.join("server.ext");
        fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| Failed(format!("cannot write {}: {e}", ext.display())))?;
        let p = |name: &str| dir.join(name).into_os_string();
        let steps: [Vec<OsString>; 3] = [
            vec![
                "req".into(),
                "-x509".into(),
                "-newkey".into(),
                "ec".into(),
                "-pkeyopt".into(),
                "ec_paramgen_curve:P-256".into(),
                "-nodes".into(),
                "-keyout".into(),
                p("ca.key"),
                "-out".into(),
                p("ca.pem"),
                "-days".into(),
                "2".into(),
                "-subj".into(),
                "/CN=bus bench CA".into(),
                "-addext".into(),
                "basicConstraints=critical,CA:TRUE".into(),
                "-addext".into(),
                "keyUsage=critical,keyCertSign,cRLSign".into(),
            ],
            vec![
                "req".into(),
                "-newkey".into(),
                "ec".into(),
                "-pkeyopt".into(),
                "ec_paramgen_curve:P-256".into(),
                "-nodes".into(),
                "-keyout".into(),
                p("server.key"),
                "-out".into(),
                p("server.csr"),
                "-subj".into(),
                "/CN=localhost".into(),
            ],
            vec![
                "x509".into(),
                "-req".into(),
                "-in".into(),
                p("server.csr"),
                "-CA".into(),
                p("ca.pem"),
                "-CAkey".into(),
                p("ca.key"),
                "-set_serial".into(),
                "2".into(),
                "-days".into(),
                "2".into(),
                "-extfile".into(),
                ext.into_os_string(),
                "-out".into(),
                p("server.pem"),
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| {
                    Failed(format!(
                        "cannot run openssl: {e}; install it (apt-get install openssl)"
                    ))
                })?;
            if !out.status.success() {
                return Err(Failed(format!(
                    "openssl {} failed: {}",
                    args[0].to_string_lossy(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    }

    fn start_runner(&mut self) -> Result<(), Failed> {
        let log = self.file("bus-runner.log")?;
        let mut child = Command::new(self.bin.join("bus-runner"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--listen",
                "https://127.0.0.1:0",
            ])
            .arg("--tls-cert")
            .arg(self.tmp.join("server.pem"))
            .arg("--tls-key")
            .arg(self.tmp.join("server.key"))
            .arg("--engine")
            .arg(format!("unix://{}", self.podman_sock.display()))
            .arg("--state-dir")
            .arg(&self.runner_state)
            .env("RUST_LOG", "warn,bus_runner::http::routes::logs=debug")
            .env("CONTAINERS_CONF", self.engine_env("CONTAINERS_CONF"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| Failed(format!("cannot run bus-runner: {e}")))?;
        self.runner_pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        self.children.push(child);
        let mut lines = BufReader::new(stdout).lines();
        let mut next = || -> Result<String, Failed> {
            let line = lines
                .next()
                .transpose()
                .map_err(|e| Failed(format!("reading bus-runner's stdout: {e}")))?
                .unwrap_or_default();
            line.strip_prefix("listening on ")
                .map(str::to_owned)
                .ok_or_else(|| {
                    Failed(format!(
                        "bus-runner printed {line:?} instead of its address (see {})",
                        self.runner_log.display()
                    ))
                })
        };
        self.http = format!("http://{}", next()?);
        self.https = next()?;
        if !self.https.starts_with("https://") {
            return Err(Failed(format!(
                "bus-runner's second address is {}, not https://",
                self.https
            )));
        }
        say(&format!("bus-runner on {} and {}", self.https, self.http));

        let out = Command::new(self.bin.join("bus-runner"))
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
    /// (`tail=0`, not followed) are not among them.
    pub fn runner_log_requests(&self, run_id: &str) -> usize {
        fs::read_to_string(&self.runner_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("log stream opened") && l.contains("follow=true") && l.contains(run_id)
            })
            .count()
    }

    /// The engine's container id of a run (waits until it exists).
    pub fn container_of(&self, run_id: &str) -> Result<String, Failed> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("podman")
                .arg("--url")
                .arg(format!("unix://{}", self.podman_sock.display()))
                .args(["ps", "-q", "--no-trunc", "--filter"])
                .arg(format!("label=bus.run-id={run_id}"))
                .env_clear()
                .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    fn file(&self, name: &str) -> Result<File, Failed> {
        File::create(self.tmp.join(name)).map_err(|e| Failed(format!("cannot create {name}: {e}")))
    }

    /// Containers labelled with this runner's id (normally none are left).
    fn remove_runner_containers(&self) {
        let Ok(id) = fs::read_to_string(self.runner_state.join("runner-id")) else {
            return;
        };
        let podman = |args: &[&str]| {
            Command::new("podman")
                .arg("--url")
                .arg(format!("unix://{}", self.podman_sock.display()))
                .args(args)
                .env_clear()
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
        };
        let filter = format!("label=bus.runner={}", id.trim());
        if let Ok(out) = podman(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter]) {
            for container in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = podman(&["rm", "-f", "--ignore", container]);
            }
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
        let mut children = std::mem::take(&mut self.children);
        while let Some(mut child) = children.pop() {
            if child.id() == self.podman_pid {
                self.remove_runner_containers();
            }
            stop_pid(child.id());
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// SIGTERM, then SIGKILL after 5 s; only PIDs this bench started.
pub fn stop_pid(pid: u32) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())) {
            Ok(stat) if !stat.contains(") Z ") => std::thread::sleep(Duration::from_millis(20)),
            _ => return,
        }
    }
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), Failed> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            return Err(Failed(format!(
                "{what} was not ready within {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
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
