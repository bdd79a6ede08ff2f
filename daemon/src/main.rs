//! `busd`: parse arguments, set up logging, take the instance lock, bind the socket (or take
//! systemd's), serve until a signal, a `Shutdown` call or idle exit, drain, remove the socket.

use std::io::Write as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use busd::config::{self, ApiOrigin, Config};
use busd::credentials;
use busd::lifecycle::{DEFAULT_DRAIN, ServeOptions};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// mimalloc rather than the C library's allocator: each proxied call allocates and frees a
/// few dozen small buffers, and glibc's malloc and free were a tenth of busd's CPU under a
/// unary load (docs/performance.md). mimalloc also gives freed pages back to the system by
/// itself, a short while after a burst. Without transparent huge pages (`no_thp`): with them an
/// idle busd kept 8 MiB more resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The environment variable naming a Unix socket where busd reports readiness (`ready`) or
/// its start-up error (`error: ...`) — how `bus` waits for a daemon it started.
const NOTIFY_ENV: &str = "BUSD_NOTIFY";

/// busd: the warm local daemon in front of the container-runner API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The Unix socket to serve on [default: $BUS_SOCKET, else `socket` in config.toml, else
    /// $XDG_RUNTIME_DIR/bus/busd.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The API origin, e.g. https://runner.example.com [env: BUS_AI_API_URL, BUS_API_BASE_URL;
    /// then `api_url` in config.toml]
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
    /// Read the bearer token from this file (mode 0600) [default: $BUS_AI_TOKEN,
    /// $BUS_API_TOKEN, then ~/.config/bus/auth/api-token]
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file for an https:// API origin, besides the
    /// built-in web roots (for a runner whose certificate a private CA issued)
    #[arg(long, value_name = "PATH", env = "BUS_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Exit after this long without any call, e.g. 30m (the CLI starts busd again on demand)
    /// [default: never]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    idle_exit: Option<Duration>,
    /// How long a log stream goes on resuming when the runner is lost under it, e.g. 5m
    /// [env: BUS_RESUME_FOR; then `resume_for` in config.toml; default: 2m]
    #[arg(long, value_name = "DURATION")]
    resume_for: Option<String>,
    /// How long open streams may take to finish when busd is asked to stop
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "5s")]
    drain: Duration,
}

/// The log filter: `BUS_LOG`, else `BUSD_LOG` (the older name), else `info`.
fn log_filter() -> tracing_subscriber::EnvFilter {
    ["BUS_LOG", "BUSD_LOG"]
        .iter()
        .find_map(|name| {
            let value = std::env::var(name).ok().filter(|v| !v.trim().is_empty())?;
            tracing_subscriber::EnvFilter::try_new(value).ok()
        })
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        // Colour only on a terminal: the CLI points stderr at a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let notify = std::env::var_os(NOTIFY_ENV).map(PathBuf::from);
    // The CLI starts busd with a notify socket; it may then restart a busd it finds stale.
    busd::protocol::init(notify.is_some());
    // Every client connection holds a descriptor: allow as many as the hard limit lets.
    if let Some(limit) = busd::socket::raise_open_file_limit() {
        tracing::debug!(limit, "open-file limit");
    }
    // Before any other thread exists: taking systemd's listener edits the environment.
    let env = |name: &str| std::env::var(name).ok();
    let activated = match busd::socket::activation_requested(env, std::process::id()) {
        Ok(false) => None,
        Ok(true) => match busd::socket::take_activated_listener() {
            Ok(listener) => Some(listener),
            Err(e) => return fail(notify.as_deref(), &e.to_string()),
        },
        Err(message) => return fail(notify.as_deref(), &message),
    };

    // One thread: busd only forwards, and under a unary load a single-threaded runtime spends
    // less CPU per call than work-stealing between threads (no cross-thread wake-ups).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(notify.as_deref(), &format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let options = ServeOptions {
            idle_exit: args.idle_exit,
            drain: if args.drain.is_zero() {
                DEFAULT_DRAIN
            } else {
                args.drain
            },
            socket_activated: activated.is_some(),
        };
        let mut config = match configure(args) {
            Ok(config) => config,
            Err(message) => return fail(notify.as_deref(), &message),
        };
        if let Some(path) = activated
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        {
            config.socket = path;
        }
        if let Err(e) = busd::socket::ensure_dir(&config.socket) {
            return fail(notify.as_deref(), &e.to_string());
        }
        let _lock = match busd::socket::InstanceLock::acquire(&config.socket).await {
            Ok(lock) => lock,
            Err(e) => return fail(notify.as_deref(), &e.to_string()),
        };
        let listener = match activated {
            Some(listener) => match tokio::net::UnixListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => return fail(notify.as_deref(), &format!("socket activation: {e}")),
            },
            None => match busd::socket::bind(&config.socket).await {
                Ok(listener) => listener,
                Err(e) => return fail(notify.as_deref(), &e.to_string()),
            },
        };
        let socket = config.socket.clone();
        tracing::info!(
            socket = %socket.display(),
            socket_activated = options.socket_activated,
            idle_exit = ?options.idle_exit,
            upstream = %config.api_origin,
            token_source = %config.token_source,
            "busd listening"
        );
        if let Some(path) = &notify {
            report(path, "ready");
        }
        let socket_activated = options.socket_activated;
        let served = busd::serve_with(listener, config, options, shutdown_signal()).await;
        // systemd owns an activated socket; ours goes before the lock does (on return).
        if !socket_activated {
            let _ = std::fs::remove_file(&socket);
        }
        match served {
            Ok(()) => {
                tracing::info!("busd stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "busd failed");
                ExitCode::FAILURE
            }
        }
    })
}

fn configure(args: Args) -> Result<Config, String> {
    let env = |name: &str| std::env::var(name).ok();
    let settings = config::Settings::load_default().map_err(|e| e.to_string())?;
    let api_url = config::resolve_api_url(args.api_url.as_deref(), env, &settings);
    let api_origin = ApiOrigin::parse(&api_url).map_err(|e| format!("{e}; {}", e.guidance()))?;
    let token_source =
        credentials::resolve_source(args.token_file.as_deref(), env, &bus::config_dir());
    let (socket, _) = bus::config::resolve_socket(args.socket.as_deref(), env, &settings);
    let resume_for = config::resolve_resume_for(args.resume_for.as_deref(), env, &settings)?;
    let trusted_cas = match args
        .ca_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        Some(path) => busd::upstream::TrustedCas::load(path).map_err(|e| e.to_string())?,
        None => busd::upstream::TrustedCas::default(),
    };
    Ok(Config {
        socket,
        api_origin,
        token_source,
        trusted_cas,
        resume_for,
    })
}

fn fail(notify: Option<&Path>, message: &str) -> ExitCode {
    // One plain line, whoever reads stderr: a terminal, the CLI's log file, journald.
    eprintln!("busd: error: {message}");
    if let Some(path) = notify {
        report(path, &format!("error: {message}"));
    }
    ExitCode::FAILURE
}

fn report(path: &Path, line: &str) {
    if let Err(e) = StdUnixStream::connect(path).and_then(|mut s| writeln!(s, "{line}")) {
        tracing::warn!(error = %e, "could not report readiness to {}", path.display());
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
