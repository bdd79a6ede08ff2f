//! `bus-runner`: serve the container-runner REST API, or mint a token for it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bus_runner::AppState;
use bus_runner::auth::{self, Keys};
use bus_runner::config::Config;
use bus_runner::engine::Engine;
use bus_runner::engine::engine_message;
use bus_runner::runs::executor;
use bus_runner::store::{self, Retention, Store};
use clap::{Parser, Subcommand};

/// How often retention looks for runs to delete.
const RETENTION_EVERY: Duration = Duration::from_secs(10 * 60);

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
    ///
    /// For local use: it needs no config, and an account the config does not list gets the
    /// built-in `local` plan (billing active, no limits) and no grant.
    Token(TokenArgs),
    /// Read an API key on stdin and print its SHA-256 (hex), for `api_key_sha256` in the config.
    ///
    /// The key is read from stdin, never from the command line: `bus-runner hash-key < KEY_FILE`.
    HashKey,
    /// Print the REST API's OpenAPI 3.1 document (what `GET /api/v1/openapi.json` serves).
    ///
    /// `bus-runner openapi > api/openapi.json` regenerates the checked-in copy.
    Openapi,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on: HOST:PORT for plain HTTP, https://HOST:PORT for HTTPS (needs
    /// --tls-cert and --tls-key); repeat it (or separate with commas) to serve on several.
    /// Port 0 picks a free port. Each bound address is printed on stdout, in the order given,
    /// as `listening on ADDR` (`listening on https://ADDR` for HTTPS).
    #[arg(long, env = "BUS_RUNNER_LISTEN", default_value = "127.0.0.1:8650", value_delimiter = ',', value_parser = parse_listen)]
    listen: Vec<Listen>,
    /// The certificate chain (PEM: the server's certificate, then any intermediates) that
    /// https:// listen addresses present.
    #[arg(
        long,
        env = "BUS_RUNNER_TLS_CERT",
        value_name = "PEM_FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "BUS_RUNNER_TLS_KEY",
        value_name = "PEM_FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The container engine's Docker-compatible API socket, e.g. unix:///run/podman/podman.sock.
    #[arg(long, env = "BUS_RUNNER_ENGINE")]
    engine: String,
    /// Directory for the signing key and the run database `runs.db` (created 0700).
    #[arg(long, env = "BUS_RUNNER_STATE_DIR")]
    state_dir: PathBuf,
    /// Delete ended runs (with their output) this long after they finished: 12h, 7d ...
    #[arg(long, env = "BUS_RUNNER_RETAIN_RUNS_FOR", default_value = "7d", value_parser = store::parse_age)]
    retain_runs_for: Duration,
    /// Keep at most this many runs per account; older ended runs are deleted.
    #[arg(long, env = "BUS_RUNNER_RETAIN_RUNS_PER_ACCOUNT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    retain_runs_per_account: u64,
    /// A TOML file with run profiles (added to the built-in `codex` profile), plans and
    /// accounts; without one the runner has no accounts, and tokens come from `bus-runner token`.
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
    /// Space-separated resources: container:read container:run container:delete billing:read.
    #[arg(long)]
    resources: String,
    /// How long the token lives: 30s, 15m, 1h, 2d ...
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// Mint a token that has already expired (for tests).
    #[arg(long, hide = true)]
    expired: bool,
}

/// One `--listen` address.
#[derive(Debug, Clone, Copy)]
struct Listen {
    addr: SocketAddr,
    tls: bool,
}

fn parse_listen(value: &str) -> Result<Listen, String> {
    let (rest, tls) = match value.split_once("://") {
        Some(("https", rest)) => (rest, true),
        Some(("http", rest)) => (rest, false),
        Some((scheme, _)) => {
            return Err(format!(
                "{scheme}:// is not served; use HOST:PORT for HTTP or https://HOST:PORT"
            ));
        }
        None => (value, false),
    };
    let addr = rest.trim_end_matches('/').parse().map_err(|_| {
        format!("{value:?} is not HOST:PORT or https://HOST:PORT with an IP address, e.g. 127.0.0.1:8650")
    })?;
    Ok(Listen { addr, tls })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => token(args),
        Command::HashKey => hash_key(),
        Command::Openapi => {
            let mut out = std::io::stdout().lock();
            out.write_all(bus_runner::http::routes::document().as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write the document: {e}"))
        }
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

fn hash_key() -> Result<(), String> {
    use std::io::{IsTerminal as _, Read as _};
    let mut stdin = std::io::stdin().lock();
    if stdin.is_terminal() {
        eprintln!(
            "bus-runner: type the API key, then Enter and Ctrl-D (or pipe it: `bus-runner hash-key < KEY_FILE`)"
        );
    }
    let mut key = String::new();
    stdin
        .read_to_string(&mut key)
        .map_err(|e| format!("cannot read the API key from stdin (it must be UTF-8 text): {e}"))?;
    // The runner trims the key it is sent the same way.
    let key = key.trim();
    if key.is_empty() {
        return Err(
            "stdin held no API key; pipe one in: `bus-runner hash-key < KEY_FILE`".to_owned(),
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", auth::to_hex(&auth::sha256(key.as_bytes())))
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write the hash: {e}"))
}

fn serve(args: ServeArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    tokio::spawn(bus_heap::trim_periodically());
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::builtin(),
    };
    let keys = Keys::load_or_create(&args.state_dir).map_err(|e| e.to_string())?;
    let store = Store::open(&args.state_dir).map_err(|e| e.to_string())?;
    // Staging mounts of storage subpaths left by a runner process that died mid-start.
    bus_runner::runs::storage::clean_stale(&bus_runner::runs::storage::mounts_dir(&store));
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
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(bus_runner::http::tls::acceptor(cert, key).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    match (args.listen.iter().any(|l| l.tls), acceptor.is_some()) {
        (true, false) => {
            return Err("an https:// --listen address needs --tls-cert and --tls-key".to_owned());
        }
        (false, true) => {
            return Err(
                "--tls-cert and --tls-key are used only by an https:// --listen address; add one, e.g. --listen https://0.0.0.0:8443".to_owned(),
            );
        }
        _ => {}
    }
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for listen in &args.listen {
        if !listen.tls && !listen.addr.ip().is_loopback() {
            tracing::warn!(listen = %listen.addr, "listening beyond loopback without TLS: tokens cross the network in clear");
        }
        let listener = tokio::net::TcpListener::bind(listen.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", listen.addr))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        match &acceptor {
            Some(acceptor) if listen.tls => {
                let tls = bus_runner::http::tls::TlsListener::new(listener, acceptor.clone())
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                listeners.push(bus_runner::Listening::Https(tls));
                bound.push(format!("https://{addr}"));
            }
            _ => {
                listeners.push(bus_runner::Listening::Http(listener));
                bound.push(addr.to_string());
            }
        }
    }
    {
        let mut out = std::io::stdout().lock();
        bound
            .iter()
            .try_for_each(|addr| writeln!(out, "listening on {addr}"))
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    tracing::info!(addr = ?bound, profiles = ?config.profile_names(), "serving");
    let state = AppState::with_store(keys, config, engine, store);
    state.images().connect_engine(state.engine().clone());
    // Runs left by an earlier runner process: their containers may still run.
    executor::spawn_readopt(state.engine().clone(), state.store().clone());
    let retention = Retention {
        max_age: args.retain_runs_for,
        per_account: usize::try_from(args.retain_runs_per_account).unwrap_or(usize::MAX),
    };
    state.store().spawn_retention(retention, RETENTION_EVERY);
    bus_runner::serve_all(listeners, state, shutdown_signal())
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
