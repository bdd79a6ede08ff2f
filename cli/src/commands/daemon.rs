//! `bus daemon start|stop|status|restart`: busd's lifecycle. Unlike every other command these
//! do not start busd on demand (except `start` and `restart`, which exist to).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bus::proto::daemon::v1::{DaemonInfo, GetInfoRequest, ShutdownRequest};
use time::OffsetDateTime;

use crate::context::{Ctx, Overrides};
use crate::daemon::{connect_existing, connect_or_start, log_path, wait_stopped};
use crate::error::CliError;
use crate::render::{self, Format, FormatArg};

/// The exit code of `bus daemon status` when no busd answers (as `systemctl status`).
pub const NOT_RUNNING: u8 = crate::error::exit::NOT_RUNNING;

/// How long `stop` waits beyond the drain bound for busd to exit.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// busd's lifecycle.
#[derive(Debug, clap::Subcommand)]
pub enum Lifecycle {
    /// Start busd unless it is running (every command does this on demand).
    Start(StartArgs),
    /// Stop busd: it finishes open streams (for a few seconds at most) and removes its socket.
    Stop(StopArgs),
    /// Show busd's version, upstream, identity, streams and pool; exit 3 when it is not running.
    Status(StatusArgs),
    /// Stop busd if it is running, then start it.
    Restart(StopArgs),
    /// Install systemd user units busd.socket + busd.service (socket activation); the CLI's
    /// own start-up stays the fallback.
    Install(InstallArgs),
}

/// `bus daemon install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Where to write the units [default: ${XDG_CONFIG_HOME:-~/.config}/systemd/user]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The busd binary the service runs [default: the one beside this bus]
    #[arg(long, value_name = "PATH")]
    busd: Option<PathBuf>,
}

/// The unit templates, shipped in deploy/systemd/.
const SOCKET_UNIT: &str = include_str!("../../../deploy/systemd/busd.socket");
const SERVICE_UNIT: &str = include_str!("../../../deploy/systemd/busd.service");

/// The two units for busd at `busd` serving `socket`: `(busd.socket, busd.service)`. A socket
/// under `$XDG_RUNTIME_DIR` is written with systemd's `%t`.
pub fn systemd_units(busd: &Path, socket: &Path, runtime_dir: Option<&Path>) -> (String, String) {
    let listen = match runtime_dir.and_then(|dir| socket.strip_prefix(dir).ok()) {
        Some(rest) => format!("%t/{}", rest.display()),
        None => socket.display().to_string(),
    };
    (
        SOCKET_UNIT.replace("@SOCKET@", &listen),
        SERVICE_UNIT.replace("@BUSD@", &busd.display().to_string()),
    )
}

fn install(args: InstallArgs, socket: &Path) -> Result<u8, CliError> {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = args.dir.unwrap_or_else(|| {
        env("XDG_CONFIG_HOME")
            .unwrap_or_else(|| env("HOME").unwrap_or_default().join(".config"))
            .join("systemd/user")
    });
    let busd = args.busd.unwrap_or_else(crate::daemon::busd_binary);
    let busd = std::path::absolute(&busd)?;
    let socket = std::path::absolute(socket)?;
    let (socket_unit, service_unit) =
        systemd_units(&busd, &socket, env("XDG_RUNTIME_DIR").as_deref());
    std::fs::create_dir_all(&dir)?;
    for (name, text) in [("busd.socket", socket_unit), ("busd.service", service_unit)] {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    println!(
        "enable with: systemctl --user daemon-reload && systemctl --user enable --now busd.socket"
    );
    Ok(0)
}

/// `bus daemon start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {}

/// `bus daemon stop` / `restart`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// How long open streams may take to finish, e.g. 10s [default: busd's, 5s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    drain: Option<Duration>,
}

/// `bus daemon status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    output: FormatArg,
}

impl Lifecycle {
    /// Runs the command against the busd on `socket`; returns the exit code.
    pub async fn run(self, socket: &Path, overrides: Overrides) -> Result<u8, CliError> {
        match self {
            Lifecycle::Start(_) => start(socket, overrides).await,
            Lifecycle::Stop(args) => stop(socket, &overrides, args.drain).await.map(|_| 0),
            Lifecycle::Status(args) => status(socket, overrides, args.output.format()).await,
            Lifecycle::Restart(args) => {
                stop(socket, &overrides, args.drain).await?;
                start(socket, overrides).await
            }
            Lifecycle::Install(args) => install(args, socket),
        }
    }
}

async fn start(socket: &Path, overrides: Overrides) -> Result<u8, CliError> {
    let already = connect_existing(socket).await?.is_some();
    let ctx = Ctx::new(connect_or_start(socket).await?, overrides);
    let info = get_info(&ctx).await?;
    println!(
        "busd {} (pid {}) on {}{}",
        if already {
            "is already running"
        } else {
            "started"
        },
        info.pid,
        socket.display(),
        if already {
            String::new()
        } else {
            format!("; log: {}", log_path().display())
        }
    );
    Ok(0)
}

/// Stops the busd on `socket`, if any; `true` when one was stopped.
pub async fn stop(
    socket: &Path,
    overrides: &Overrides,
    drain: Option<Duration>,
) -> Result<bool, CliError> {
    match stop_quietly(socket, overrides, drain).await? {
        Some(pid) => {
            println!("busd stopped (pid {pid})");
            Ok(true)
        }
        None => {
            println!("busd is not running on {}", socket.display());
            Ok(false)
        }
    }
}

/// Stops the busd on `socket`, if any, and returns its PID. A busd that accepts but does not
/// answer (stopped, wedged) is sent SIGTERM and SIGCONT, then SIGKILL if it does not exit.
pub async fn stop_quietly(
    socket: &Path,
    overrides: &Overrides,
    drain: Option<Duration>,
) -> Result<Option<u32>, CliError> {
    let channel = match connect_existing(socket).await {
        Ok(Some(channel)) => channel,
        Ok(None) => return Ok(None),
        Err(CliError::Unresponsive { pid: Some(pid), .. }) => {
            return force_stop(socket, pid).await.map(Some);
        }
        Err(e) => return Err(e),
    };
    let ctx = Ctx::new(channel, overrides.clone());
    let drain_seconds = drain.map_or(0, |d| d.as_secs().clamp(1, u32::MAX.into()) as u32);
    let stopping = match ctx
        .daemon()
        .shutdown(ctx.request(ShutdownRequest { drain_seconds }))
        .await
        .map_err(CliError::from)
    {
        Ok(stopping) => stopping.into_inner(),
        Err(CliError::Unresponsive { pid: Some(pid), .. }) => {
            drop(ctx);
            return force_stop(socket, pid).await.map(Some);
        }
        Err(e) => return Err(e),
    };
    // Our own connection must not hold up the drain.
    drop(ctx);
    let limit = drain.unwrap_or(Duration::from_secs(5)) + EXIT_GRACE;
    let activated = stopping.socket.is_empty();
    if !wait_stopped(socket, stopping.pid, activated, limit).await {
        return Err(CliError::DaemonStop(format!(
            "busd (pid {}) did not stop within {}s; its log is {}",
            stopping.pid,
            limit.as_secs(),
            log_path().display()
        )));
    }
    Ok(Some(stopping.pid))
}

/// Ends the busd with `pid` that does not answer on `socket`: SIGTERM and SIGCONT (a stopped
/// busd then drains and exits as on any SIGTERM), SIGKILL when it has not exited after the
/// drain bound. Only a process named busd is signalled.
async fn force_stop(socket: &Path, pid: u32) -> Result<u32, CliError> {
    use rustix::process::{Pid, Signal, kill_process};
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let target = Pid::from_raw(pid as i32).filter(|_| comm.trim() == "busd");
    let Some(target) = target else {
        return Err(CliError::DaemonStop(format!(
            "busd at {} does not answer and its lock file names pid {pid}, which is not a busd; \
             stop it yourself and run `bus daemon start`",
            socket.display()
        )));
    };
    let _ = kill_process(target, Signal::TERM);
    let _ = kill_process(target, Signal::CONT);
    if !wait_stopped(socket, pid, true, Duration::from_secs(5) + EXIT_GRACE / 2).await {
        let _ = kill_process(target, Signal::KILL);
        if !wait_stopped(socket, pid, true, EXIT_GRACE).await {
            return Err(CliError::DaemonStop(format!(
                "busd (pid {pid}) did not exit even on SIGKILL; its log is {}",
                log_path().display()
            )));
        }
    }
    Ok(pid)
}

async fn status(socket: &Path, overrides: Overrides, format: Format) -> Result<u8, CliError> {
    let Some(channel) = connect_existing(socket).await? else {
        if format == Format::Json {
            render::print_json(&serde_json::json!({ "running": false }))?;
        } else {
            println!("busd is not running on {}", socket.display());
        }
        return Ok(NOT_RUNNING);
    };
    let ctx = Ctx::new(channel, overrides);
    let info = get_info(&ctx).await?;
    show_info(&info, format)?;
    Ok(0)
}

/// The JSON shape of `bus daemon info|status -o json`.
#[derive(Debug, serde::Serialize)]
struct InfoJson<'a> {
    running: bool,
    version: &'a str,
    protocol: u32,
    pid: u32,
    uptime_seconds: u64,
    upstream: &'a str,
    identity: Option<&'a str>,
    scopes: &'a [String],
    token_expires_at: Option<String>,
    token_source: &'a str,
    token_error: Option<&'a str>,
    open_streams: u32,
    upstream_clients: u32,
    run_list_watches: u32,
    run_lists_answered: u64,
    socket_activated: bool,
    features: &'a [String],
}

/// Prints busd's info as `format`.
pub fn show_info(info: &DaemonInfo, format: Format) -> Result<(), CliError> {
    if format == Format::Table {
        print_info(info);
        return Ok(());
    }
    fn some(s: &str) -> Option<&str> {
        (!s.is_empty()).then_some(s)
    }
    render::print_json(&InfoJson {
        running: true,
        version: &info.version,
        protocol: info.protocol,
        pid: info.pid,
        uptime_seconds: info.uptime_seconds,
        upstream: &info.upstream_origin,
        identity: some(&info.identity),
        scopes: &info.scopes,
        token_expires_at: info
            .token_expires_at
            .as_ref()
            .and_then(|t| bus::timestamp::unix_rfc3339(t.seconds)),
        token_source: &info.token_source,
        token_error: some(&info.token_error),
        open_streams: info.open_streams,
        upstream_clients: info.upstream_clients,
        run_list_watches: info.run_list_watches,
        run_lists_answered: info.run_lists_answered,
        socket_activated: info.socket_activated,
        features: &info.features,
    })?;
    Ok(())
}

async fn get_info(ctx: &Ctx) -> Result<DaemonInfo, CliError> {
    Ok(ctx
        .daemon()
        .get_info(ctx.request(GetInfoRequest {}))
        .await?
        .into_inner())
}

/// A token expiry as RFC 3339, with "(expired)" when it has passed; "-" without one.
pub fn expiry(at: Option<&prost_types::Timestamp>) -> String {
    let Some(at) = at.and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok()) else {
        return "-".to_owned();
    };
    let text = bus::timestamp::rfc3339(at).unwrap_or_else(|| at.to_string());
    if at <= OffsetDateTime::now_utc() {
        format!("{text} (expired)")
    } else {
        text
    }
}

/// The lines of `bus daemon info` / `status`. The first ones are stable (scripts and tests
/// read `pid:` and `identity:`); never the token.
pub fn print_info(info: &DaemonInfo) {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    println!("version:   {} (protocol {})", info.version, info.protocol);
    println!("pid:       {}", info.pid);
    println!(
        "uptime:    {}",
        crate::render::human_duration(info.uptime_seconds as f64)
    );
    println!("upstream:  {}", info.upstream_origin);
    println!("identity:  {}", dash(&info.identity));
    println!("scopes:    {}", info.scopes.join(" "));
    println!("expires:   {}", expiry(info.token_expires_at.as_ref()));
    println!("token:     {}", info.token_source);
    if !info.token_error.is_empty() {
        println!("problem:   {}", info.token_error);
    }
    println!("streams:   {}", info.open_streams);
    println!("pool:      {} upstream client(s)", info.upstream_clients);
    println!(
        "lists:     {} watched, {} answered from them",
        info.run_list_watches, info.run_lists_answered
    );
    if info.socket_activated {
        println!("socket:    activated by systemd");
    }
    println!("features:  {}", info.features.join(" "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_units_name_the_binary_and_the_socket() {
        let (socket, service) = systemd_units(
            Path::new("/opt/bus/busd"),
            Path::new("/run/user/7/bus/busd.sock"),
            Some(Path::new("/run/user/7")),
        );
        assert!(
            socket.contains("\nListenStream=%t/bus/busd.sock\n"),
            "{socket}"
        );
        assert!(socket.contains("\nSocketMode=0600\n"), "{socket}");
        assert!(socket.contains("WantedBy=sockets.target"), "{socket}");
        assert!(
            service.contains("\nExecStart=/opt/bus/busd --idle-exit 30m\n"),
            "{service}"
        );
        assert!(service.contains("Requires=busd.socket"), "{service}");
        assert!(!socket.contains('@') && !service.contains('@'));
        let (socket, _) = systemd_units(Path::new("/b"), Path::new("/tmp/x.sock"), None);
        assert!(socket.contains("\nListenStream=/tmp/x.sock\n"), "{socket}");
    }
}
