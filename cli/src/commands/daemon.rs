//! `bus daemon start|stop|status|restart`: busd's lifecycle. Unlike every other command these
//! do not start busd on demand (except `start` and `restart`, which exist to).

use std::path::Path;
use std::time::Duration;

use bus::proto::daemon::v1::{DaemonInfo, GetInfoRequest, ShutdownRequest};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::context::{Ctx, Overrides};
use crate::daemon::{connect_existing, connect_or_start, log_path, wait_stopped};
use crate::error::CliError;

/// The exit code of `bus daemon status` when no busd answers (as `systemctl status`).
pub const NOT_RUNNING: u8 = 3;

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
pub struct StatusArgs {}

impl Lifecycle {
    /// Runs the command against the busd on `socket`; returns the exit code.
    pub async fn run(self, socket: &Path, overrides: Overrides) -> Result<u8, CliError> {
        match self {
            Lifecycle::Start(_) => start(socket, overrides).await,
            Lifecycle::Stop(args) => stop(socket, &overrides, args.drain).await.map(|_| 0),
            Lifecycle::Status(_) => status(socket, overrides).await,
            Lifecycle::Restart(args) => {
                stop(socket, &overrides, args.drain).await?;
                start(socket, overrides).await
            }
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
async fn stop(
    socket: &Path,
    overrides: &Overrides,
    drain: Option<Duration>,
) -> Result<bool, CliError> {
    let Some(channel) = connect_existing(socket).await? else {
        println!("busd is not running on {}", socket.display());
        return Ok(false);
    };
    let ctx = Ctx::new(channel, overrides.clone());
    let drain_seconds = drain.map_or(0, |d| d.as_secs().clamp(1, u32::MAX.into()) as u32);
    let stopping = ctx
        .daemon()
        .shutdown(ctx.request(ShutdownRequest { drain_seconds }))
        .await?
        .into_inner();
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
    println!("busd stopped (pid {})", stopping.pid);
    Ok(true)
}

async fn status(socket: &Path, overrides: Overrides) -> Result<u8, CliError> {
    let Some(channel) = connect_existing(socket).await? else {
        println!("busd is not running on {}", socket.display());
        return Ok(NOT_RUNNING);
    };
    let ctx = Ctx::new(channel, overrides);
    let info = get_info(&ctx).await?;
    print_info(&info);
    Ok(0)
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
    let text = at.format(&Rfc3339).unwrap_or_else(|_| at.to_string());
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
    println!("uptime:    {}s", info.uptime_seconds);
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
    if info.socket_activated {
        println!("socket:    activated by systemd");
    }
    println!("features:  {}", info.features.join(" "));
}
