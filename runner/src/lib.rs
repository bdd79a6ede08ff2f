//! # bus-runner — the container-runner REST API, served locally
//!
//! The "local compose" deployment of the service: an HTTP server (axum) that speaks the REST
//! contract of [`bus_api`] and runs real containers through the Docker Engine API (bollard),
//! here Podman's docker-compatible socket.
//!
//! # Layout
//! - [`serve`] / [`app`]: the server, on a bound listener with a shutdown future.
//! - [`routes`]: one module per resource (`status`, `runs`, `logs`); handlers parse, then act.
//! - [`auth`]: the Ed25519 signing key, minting and verifying JWTs, the scope extractor.
//! - [`problem`]: the one place errors become `application/problem+json` responses.
//! - [`spec`]: a `CreateRun` request validated into a `RunSpec`.
//! - [`config`]: run profiles (built-in `codex`, plus an optional TOML file).
//! - [`store`]: run records and output frames (in memory for now; SQLite later).
//! - [`engine`]: the bollard client; [`executor`]: drives one run from create to removal.
//!
//! # Invariants
//! - The token never reaches a message or a log line.
//! - Another account's run and a missing run get the same 404.
//! - Output is captured from the attach stream and replayed from the store, never from the
//!   engine's log endpoint.
//! - On shutdown the server stops accepting, ends runs still in flight as `failed` and
//!   force-removes their containers (the store is in memory, so nothing could re-adopt them;
//!   with persistence, later work re-adopts instead), and drops connections still open after
//!   a short grace period.

use std::future::{Future, IntoFuture as _};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt as _;
use futures::FutureExt as _;

pub mod auth;
pub mod config;
pub mod engine;
pub mod executor;
pub mod problem;
pub mod routes;
pub mod spec;
pub mod store;

use auth::Keys;
use config::Config;
use engine::Engine;
use store::Store;

/// How long open connections (log followers) may linger after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every handler shares: keys, profiles, the store and the engine.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    keys: Keys,
    config: Config,
    store: Store,
    engine: Arc<Engine>,
}

impl AppState {
    /// State from its parts, with an empty store.
    pub fn new(keys: Keys, config: Config, engine: Engine) -> AppState {
        AppState(Arc::new(Shared {
            keys,
            config,
            store: Store::new(),
            engine: Arc::new(engine),
        }))
    }

    /// The token keys.
    pub fn keys(&self) -> &Keys {
        &self.0.keys
    }

    /// The run profiles.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The runs.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The container engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.0.engine
    }
}

/// The HTTP application: every route below `/api/v1`, with problem documents for unknown
/// routes and methods.
pub fn app(state: AppState) -> Router {
    routes::router()
        .fallback(problem::route_not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .with_state(state)
}

/// Serves `app(state)` on `listener` (TCP_NODELAY on every connection) until `shutdown`
/// completes; connections still open [`SHUTDOWN_GRACE`] later are dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let shutdown = shutdown.boxed().shared();
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(shutdown.clone());
    // Ending the runs also ends their log followers, so open connections close promptly.
    let abandon = tokio::spawn({
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            shutdown.await;
            executor::abandon_all(state.engine(), state.store(), SHUTDOWN_GRACE).await;
        }
    });
    let result = tokio::select! {
        result = server.into_future() => result,
        () = async { shutdown.clone().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::info!("closing connections still open after the shutdown grace period");
            Ok(())
        }
    };
    if shutdown.peek().is_some() {
        let _ = abandon.await;
    } else {
        abandon.abort();
    }
    result
}
