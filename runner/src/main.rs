//! `bus-runner`: serve the container-runner REST API, or mint a token for it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bus_runner::AppState;
use bus_runner::auth::{self, Keys};
use bus_runner::config::Config;
use bus_runner::engine::Engine;
use bus_runner::problem::engine_message;
use clap::{Parser, Subcommand};

/// The container-runner REST API, served locally on the Docker Engine API.
#[derive(Debug, Parser)]
#[command(name = "bus-runner", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST API until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Mint a token with the state dir's signing key and print it on stdout.
    Token(TokenArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout
    /// as `listening on ADDR`.
    #[arg(long, env = "BUS_RUNNER_LISTEN", default_value = "127.0.0.1:8650")]
    listen: SocketAddr,
    /// The container engine's Docker-compatible API socket, e.g. unix:///run/podman/podman.sock.
    #[arg(long, env = "BUS_RUNNER_ENGINE")]
    engine: String,
    /// Directory for the signing key (created 0700).
    #[arg(long, env = "BUS_RUNNER_STATE_DIR")]
    state_dir: PathBuf,
    /// A TOML file with run profiles, added to the built-in `codex` profile.
    #[arg(long, env = "BUS_RUNNER_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// Directory holding the signing key (created with the key if absent).
    #[arg(long, env = "BUS_RUNNER_STATE_DIR")]
    state_dir: PathBuf,
    /// The account the token speaks for (owner of the runs it creates).
    #[arg(long)]
    account: String,
    /// Space-separated resources: container:read container:run container:delete.
    #[arg(long)]
    resources: String,
    /// How long the token lives: 30s, 15m, 1h, 2d ...
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// Mint a token that has already expired (for tests).
    #[arg(long, hide = true)]
    expired: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bus-runner: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn token(args: TokenArgs) -> Result<(), String> {
    let account = args.account.trim();
    if account.is_empty()
        || account.len() > 128
        || account.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("--account must be 1 to 128 characters without spaces".to_owned());
    }
    let scopes = auth::parse_scopes(&args.resources)?;
    let ttl = auth::parse_ttl(&args.ttl)?;
    let keys = Keys::load_or_create(&args.state_dir).map_err(|e| e.to_string())?;
    let token = if args.expired {
        keys.mint_expired(account, &scopes)
    } else {
        keys.mint(account, &scopes, ttl)
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the token: {e}"))
}

fn serve(args: ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve_async(args))
}

async fn serve_async(args: ServeArgs) -> Result<(), String> {
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::builtin(),
    };
    let keys = Keys::load_or_create(&args.state_dir).map_err(|e| e.to_string())?;
    let engine = Engine::connect(&args.engine).map_err(|e| {
        format!(
            "cannot use the engine at {}: {}; start one with `podman system service --time=0 {}`",
            args.engine,
            engine_message(&e),
            args.engine
        )
    })?;
    match engine.info().await {
        Ok(info) => tracing::info!(engine = %info.engine, api = %info.api_version, "engine ready"),
        Err(e) => {
            tracing::warn!(error = %engine_message(&e), "the engine does not answer yet; status is degraded")
        }
    }
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "listening beyond loopback without TLS: tokens cross the network in clear");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    tracing::info!(%addr, profiles = ?config.profile_names(), "serving");
    let state = AppState::new(keys, config, engine);
    bus_runner::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| format!("the server failed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
