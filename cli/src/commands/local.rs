//! `bus local up|down|status`: the whole deployment on this machine, for one user.
//!
//! `up` starts (or finds running) Podman's API service on a per-user socket and `bus-runner`
//! with a generated config (a `dev` account and its API key, kept in `<config dir>/auth/api-key`
//! where `bus auth token` finds it), writes a token for `dev` into the token file, and starts
//! busd. Every process it starts is recorded in a pidfile in the state
//! directory, `${XDG_STATE_HOME:-~/.local/state}/bus/local/` unless `--state-dir` (or
//! `BUS_LOCAL_STATE_DIR`) names another; `down` stops exactly those, by PID, and removes the
//! Podman socket. The CLI speaks no HTTP: readiness is a connect.

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus::config::{Key, Settings};
use bus::proto::daemon::v1::GetInfoRequest;

use crate::context::{Ctx, Overrides};
use crate::daemon::{connect_existing, connect_or_start, sibling_binary};
use crate::error::{CliError, exit};
use crate::render::{self, Format, FormatArg};

/// The runner's address unless `--listen` names another.
const DEFAULT_LISTEN: &str = "127.0.0.1:8650";
/// The scopes of the `dev` account and of the token `up` writes.
const SCOPES: &str = "container:read container:run container:delete billing:read image:read \
                      image:write image:build";
/// How the API keys `up` makes begin (another key in the key file is the user's own).
const KEY_PREFIX: &str = "bus_dev_";
/// The account `up` creates.
const ACCOUNT: &str = "dev";
/// How long a starting service may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(30);
/// The engine settings the deployment runs with (runc, no default ulimits).
const CONTAINERS_CONF: &str = include_str!("../../../deploy/containers.conf");

/// The local deployment.
#[derive(Debug, clap::Subcommand)]
pub enum Local {
    /// Start Podman's API service, bus-runner and busd (reusing what runs) and write a token.
    Up(UpArgs),
    /// Stop what `up` started, by PID, and remove its sockets.
    Down(StateDirArg),
    /// Show what runs; exit 3 unless everything does.
    Status(StatusArgs),
}

/// Where the deployment keeps its state.
#[derive(Debug, clap::Args)]
pub struct StateDirArg {
    /// The state directory: pidfiles, logs, Podman's socket, the runner's config and state
    /// (the token, config.toml and busd's socket follow --token-file, BUS_CONFIG_DIR and
    /// --socket) [env: BUS_LOCAL_STATE_DIR] [default: ${XDG_STATE_HOME:-~/.local/state}/bus/local]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// `bus local status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    state: StateDirArg,
    #[command(flatten)]
    format: FormatArg,
}

/// `bus local up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The runner's listen address (host:port). When it is not the default, `api_url` is
    /// saved in config.toml unless the file already names one.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Lifetime of the token written to the token file (at most 24h).
    #[arg(long, value_name = "DURATION", default_value = "12h")]
    ttl: String,
    /// More runner configuration (plans, accounts) appended to the one `up` generates.
    #[arg(long, value_name = "FILE")]
    runner_config: Option<PathBuf>,
    #[command(flatten)]
    state: StateDirArg,
}

/// The state directory's files.
struct Paths {
    dir: PathBuf,
}

impl Paths {
    /// `--state-dir`, else `$BUS_LOCAL_STATE_DIR`, else `$XDG_STATE_HOME/bus/local`, else
    /// `~/.local/state/bus/local`.
    fn new(arg: &StateDirArg) -> Paths {
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let chosen = arg
            .state_dir
            .clone()
            .filter(|d| !d.as_os_str().is_empty())
            .or_else(|| env("BUS_LOCAL_STATE_DIR").map(PathBuf::from));
        if let Some(dir) = chosen {
            // Absolute: the services it starts run in other working directories.
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            return Paths { dir };
        }
        let state = env("XDG_STATE_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(env("HOME").unwrap_or_else(|| "/".into())).join(".local/state")
        });
        Paths {
            dir: state.join("bus").join("local"),
        }
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn podman_socket(&self) -> PathBuf {
        self.file("podman.sock")
    }
    fn runner_state(&self) -> PathBuf {
        self.file("runner")
    }
}

/// A pidfile's PID when that process is alive.
fn live_pid(pidfile: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn local(message: String) -> CliError {
    CliError::Local(message)
}

fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) -> Result<(), CliError> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > START_LIMIT {
            return Err(local(format!(
                "{what} did not come up within {}s; see {}",
                START_LIMIT.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Spawns `command` in its own process group, output to `log`, and records its PID.
fn spawn(mut command: Command, log: &Path, pidfile: &Path) -> Result<u32, CliError> {
    use std::os::unix::process::CommandExt as _;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .map_err(|e| local(format!("cannot run {:?}: {e}", command.get_program())))?;
    std::fs::write(pidfile, format!("{}\n", child.id()))?;
    Ok(child.id())
}

/// Stops the process in `pidfile` (SIGTERM, then SIGKILL after 10 s) and removes the file;
/// its PID when one was running.
fn stop_pidfile(pidfile: &Path) -> Option<u32> {
    let pid = live_pid(pidfile);
    if let Some(pid) = pid
        && let Some(p) = rustix::process::Pid::from_raw(pid as i32)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    let _ = std::fs::remove_file(pidfile);
    pid
}

fn random_hex(bytes: usize) -> Result<String, CliError> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_private(path: &Path, content: &str) -> Result<(), CliError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("tmp"),
        std::process::id()
    ));
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Where the dev account's API key lives: `<config dir>/auth/api-key`, where `bus auth token`
/// looks by default, unless that file holds another key (the user's own, kept untouched);
/// then the state directory. A key an older `up` left in the state directory moves over.
fn local_key_file(paths: &Paths, say: &impl Fn(String)) -> Result<PathBuf, CliError> {
    let default = crate::commands::auth::default_api_key_file();
    let in_state = paths.file("api-key");
    match std::fs::read_to_string(&default) {
        Ok(key) if !key.trim().starts_with(KEY_PREFIX) => {
            say(format!(
                "{} holds another API key, left alone; the {ACCOUNT} key is in {}: `bus auth \
                 token --api-key-file {}`",
                default.display(),
                in_state.display(),
                in_state.display()
            ));
            Ok(in_state)
        }
        Ok(_) => Ok(default),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(local(format!(
            "cannot read {}: {e}; fix its permissions (chmod 600) or move it away",
            default.display()
        ))),
        Err(_) => {
            if let Ok(key) = std::fs::read_to_string(&in_state) {
                write_private(&default, &key)?;
                std::fs::remove_file(&in_state)?;
                say(format!(
                    "moved the API key of account {ACCOUNT} to {}",
                    default.display()
                ));
            }
            Ok(default)
        }
    }
}

/// Runs `bus-runner ARGS` with `stdin`, returning its stdout.
fn runner_tool(args: &[&std::ffi::OsStr], stdin: &str) -> Result<String, CliError> {
    use std::io::Write as _;
    let binary = sibling_binary("bus-runner");
    let mut child = Command::new(&binary)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| local(format!("cannot run {}: {e}", binary.display())))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(local(format!(
            "bus-runner {} failed: {}",
            args.first().and_then(|a| a.to_str()).unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Local {
    /// Runs the command; returns the exit code.
    pub async fn run(
        self,
        socket: &Path,
        overrides: Overrides,
        token_file: Option<&Path>,
    ) -> Result<u8, CliError> {
        match self {
            Local::Up(args) => {
                let paths = Paths::new(&args.state);
                up(&paths, args, socket, overrides, token_file).await
            }
            Local::Down(state) => down(&Paths::new(&state), socket, &overrides).await,
            Local::Status(args) => status(&Paths::new(&args.state), socket, args.format.format()),
        }
    }
}

async fn up(
    paths: &Paths,
    args: UpArgs,
    socket: &Path,
    mut overrides: Overrides,
    token_file: Option<&Path>,
) -> Result<u8, CliError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.dir)?;
    let say = |line: String| eprintln!("bus local: {line}");
    // Read before anything starts, so a bad file starts nothing.
    let extra_config = match &args.runner_config {
        Some(path) => Some((
            path,
            std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!(
                    "cannot read --runner-config {}: {e}; name a readable TOML file",
                    path.display()
                ))
            })?,
        )),
        None => None,
    };

    // Podman's API service.
    let podman_socket = paths.podman_socket();
    let podman_pidfile = paths.file("podman.pid");
    match live_pid(&podman_pidfile) {
        Some(pid) if UnixStream::connect(&podman_socket).is_ok() => {
            say(format!("podman API service is running (pid {pid})"));
        }
        stale => {
            if stale.is_some() {
                stop_pidfile(&podman_pidfile);
            }
            let conf = paths.file("containers.conf");
            std::fs::write(&conf, CONTAINERS_CONF)?;
            let _ = std::fs::remove_file(&podman_socket);
            let mut command = Command::new("podman");
            // conmon writes an `oom` file into the service's working directory: keep it here.
            command
                .current_dir(&paths.dir)
                .args(["system", "service", "--time=0"])
                .arg(format!("unix://{}", podman_socket.display()))
                .env("CONTAINERS_CONF", &conf);
            let log = paths.file("podman.log");
            let pid = spawn(command, &log, &podman_pidfile)?;
            wait_for("podman's API service", &log, || {
                UnixStream::connect(&podman_socket).is_ok()
            })?;
            say(format!(
                "started podman API service (pid {pid}) on {}",
                podman_socket.display()
            ));
        }
    }

    // The dev account's API key, made once, where `bus auth token` finds it; and the runner's
    // config, rewritten when it no longer says what this version would (a runner that read an
    // older one is restarted below).
    let config = paths.file("runner.toml");
    let key_file = local_key_file(paths, &say)?;
    if !key_file.is_file() {
        let key = format!("{KEY_PREFIX}{}", random_hex(24)?);
        write_private(&key_file, &format!("{key}\n"))?;
        say(format!(
            "generated an API key for account {ACCOUNT} in {}",
            key_file.display()
        ));
    }
    let key = std::fs::read_to_string(&key_file)?;
    let hash = runner_tool(&["hash-key".as_ref()], key.trim())?;
    let resources = SCOPES
        .split_whitespace()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut wanted = format!(
        "# Generated by `bus local up`: one account, `{ACCOUNT}`, whose API key is in\n\
         # {key}.\n[[accounts]]\nid = \"{ACCOUNT}\"\napi_key_sha256 = \"{hash}\"\n\
         plan = \"local\"\nbilling = \"active\"\nresources = [{resources}]\n",
        key = key_file.display()
    );
    if let Some((extra, more)) = &extra_config {
        wanted.push_str(&format!("\n# From {}:\n{more}", extra.display()));
    }
    let config_changed = std::fs::read_to_string(&config).ok().as_deref() != Some(&wanted);
    if config_changed {
        write_private(&config, &wanted)?;
        say(format!(
            "wrote {} (account {ACCOUNT}: {SCOPES})",
            config.display()
        ));
    }

    // bus-runner.
    let origin = format!("http://{}", args.listen);
    let runner_pidfile = paths.file("bus-runner.pid");
    let listening = || TcpStream::connect_timeout(&args.listen, Duration::from_millis(200)).is_ok();
    match live_pid(&runner_pidfile) {
        Some(pid) if listening() && !config_changed => {
            say(format!("bus-runner is running (pid {pid}) on {origin}"))
        }
        stale => {
            if let Some(pid) = stale {
                // Its runs keep running; the new runner adopts them.
                stop_pidfile(&runner_pidfile);
                say(format!(
                    "stopped bus-runner (pid {pid}) to load the new config"
                ));
            }
            if listening() {
                return Err(local(format!(
                    "{} is taken by a process `bus local` did not start; pick another address \
                     with --listen",
                    args.listen
                )));
            }
            let mut command = Command::new(sibling_binary("bus-runner"));
            command
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .arg("--listen")
                .arg(args.listen.to_string())
                .arg("--engine")
                .arg(format!("unix://{}", podman_socket.display()))
                .arg("--state-dir")
                .arg(paths.runner_state());
            let log = paths.file("bus-runner.log");
            let pid = spawn(command, &log, &runner_pidfile)?;
            wait_for("bus-runner", &log, || listening() || !alive(pid))?;
            if !alive(pid) {
                let _ = std::fs::remove_file(&runner_pidfile);
                return Err(local(format!("bus-runner exited; see {}", log.display())));
            }
            say(format!("started bus-runner (pid {pid}) on {origin}"));
        }
    }

    // A token for dev, into the token file busd reads.
    let token = runner_tool(
        &[
            "token".as_ref(),
            "--state-dir".as_ref(),
            paths.runner_state().as_os_str(),
            "--account".as_ref(),
            ACCOUNT.as_ref(),
            "--resources".as_ref(),
            SCOPES.as_ref(),
            "--ttl".as_ref(),
            args.ttl.as_ref(),
        ],
        "",
    )?;
    let token_path = token_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| bus::config_dir().join("auth").join("api-token"));
    write_private(&token_path, &format!("{token}\n"))?;
    say(format!(
        "token for account {ACCOUNT} written to {}",
        token_path.display()
    ));

    // The origin, for later commands.
    if args.listen.to_string() != DEFAULT_LISTEN {
        let path = bus::config::file_path();
        let mut file = Settings::load(&path).map_err(|e| CliError::Usage(e.0))?;
        if file.get(Key::ApiUrl).is_none() {
            file.set(Key::ApiUrl, Some(&origin));
            file.save(&path).map_err(|e| local(e.0))?;
            say(format!("api_url = {origin} saved in {}", path.display()));
        }
    }
    if overrides.api_url.is_none() {
        overrides.api_url = Some(origin.clone());
    }

    // busd.
    let ctx = Ctx::new(connect_or_start(socket).await?, overrides);
    let info = ctx
        .daemon()
        .get_info(ctx.request(GetInfoRequest {}))
        .await?
        .into_inner();
    std::fs::write(paths.file("busd.pid"), format!("{}\n", info.pid))?;
    say(format!(
        "busd is running (pid {}) on {}",
        info.pid,
        socket.display()
    ));
    println!("ready: try `bus containers run -- sh -c 'echo hi'`");
    Ok(0)
}

async fn down(paths: &Paths, socket: &Path, overrides: &Overrides) -> Result<u8, CliError> {
    let say = |line: String| eprintln!("bus local: {line}");
    let busd_pidfile = paths.file("busd.pid");
    if let Some(pid) = live_pid(&busd_pidfile) {
        // Only the busd `up` started (or found), by its PID.
        let serving = match connect_existing(socket).await? {
            Some(channel) => {
                let ctx = Ctx::new(channel, overrides.clone());
                ctx.daemon()
                    .get_info(ctx.request(GetInfoRequest {}))
                    .await
                    .ok()
                    .map(|info| info.into_inner().pid)
            }
            None => None,
        };
        if serving == Some(pid) {
            crate::commands::daemon::stop(socket, overrides, None).await?;
        } else {
            stop_pidfile(&busd_pidfile);
            say(format!("stopped busd (pid {pid})"));
        }
    }
    let _ = std::fs::remove_file(&busd_pidfile);
    if let Some(pid) = stop_pidfile(&paths.file("bus-runner.pid")) {
        say(format!("stopped bus-runner (pid {pid})"));
    }
    if let Some(pid) = stop_pidfile(&paths.file("podman.pid")) {
        say(format!("stopped podman API service (pid {pid})"));
    }
    let _ = std::fs::remove_file(paths.podman_socket());
    Ok(0)
}

/// One component of `bus local status`.
#[derive(Debug, serde::Serialize)]
struct Component {
    name: &'static str,
    running: bool,
    pid: Option<u32>,
}

fn status(paths: &Paths, socket: &Path, format: Format) -> Result<u8, CliError> {
    let podman = live_pid(&paths.file("podman.pid"))
        .filter(|_| UnixStream::connect(paths.podman_socket()).is_ok());
    let runner = live_pid(&paths.file("bus-runner.pid"));
    let busd = live_pid(&paths.file("busd.pid")).filter(|_| UnixStream::connect(socket).is_ok());
    let components =
        [("podman", podman), ("bus-runner", runner), ("busd", busd)].map(|(name, pid)| Component {
            name,
            running: pid.is_some(),
            pid,
        });
    let all = components.iter().all(|c| c.running);
    if format == Format::Json {
        render::print_json(&serde_json::json!({
            "running": all,
            "state_dir": paths.dir,
            "components": components,
        }))?;
    } else {
        for c in &components {
            match c.pid {
                Some(pid) => println!("{:<11} running (pid {pid})", format!("{}:", c.name)),
                None => println!("{:<11} stopped", format!("{}:", c.name)),
            }
        }
        println!("{:<11} {}", "state:", paths.dir.display());
    }
    Ok(if all { 0 } else { exit::NOT_RUNNING })
}
