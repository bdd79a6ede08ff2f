//! `busd`: parse arguments, set up logging, bind the socket, serve until a signal.

use std::io::Write as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use busd::config::{self, ApiOrigin, Config};
use busd::credentials;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// The environment variable naming a Unix socket where busd reports readiness (`ready`) or
/// its start-up error (`error: ...`) — how `bus` waits for a daemon it started.
const NOTIFY_ENV: &str = "BUSD_NOTIFY";

/// busd: the warm local daemon in front of the container-runner API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The Unix socket to serve on [default: $BUS_SOCKET, else $XDG_RUNTIME_DIR/bus/busd.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The API origin, e.g. https://runner.example.com [env: BUS_AI_API_URL, BUS_API_BASE_URL]
    #[arg(long, value_name = "URL")]
    api_url: Option<String>,
    /// Read the bearer token from this file (mode 0600) [default: $BUS_AI_TOKEN,
    /// $BUS_API_TOKEN, then ~/.config/bus/auth/api-token]
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BUSD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let notify = std::env::var_os(NOTIFY_ENV).map(PathBuf::from);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return fail(notify.as_deref(), &format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let config = match configure(args) {
            Ok(config) => config,
            Err(message) => return fail(notify.as_deref(), &message),
        };
        let listener = match busd::socket::bind(&config.socket).await {
            Ok(listener) => listener,
            Err(e) => return fail(notify.as_deref(), &e.to_string()),
        };
        let socket = config.socket.clone();
        tracing::info!(
            socket = %socket.display(),
            upstream = %config.api_origin,
            token_source = %config.token_source,
            "busd listening"
        );
        if let Some(path) = &notify {
            report(path, "ready");
        }
        let served = busd::serve(listener, config, shutdown_signal()).await;
        let _ = std::fs::remove_file(&socket);
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
    let api_url = config::resolve_api_url(args.api_url.as_deref(), env);
    let api_origin = ApiOrigin::parse(&api_url).map_err(|e| format!("{e}; {}", e.guidance()))?;
    let token_source =
        credentials::resolve_source(args.token_file.as_deref(), env, &bus::config_dir());
    let socket = args.socket.unwrap_or_else(bus::default_socket_path);
    Ok(Config {
        socket,
        api_origin,
        token_source,
    })
}

fn fail(notify: Option<&Path>, message: &str) -> ExitCode {
    tracing::error!("{message}");
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
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
