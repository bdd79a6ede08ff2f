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
//! - [`spec`]: a `CreateRun` request validated into a `RunSpec` (ports, tty, storage, limits).
//! - [`openapi`]: the OpenAPI 3.1 document of every route, served at `/api/v1/openapi.json`
//!   and checked in as `api/openapi.json`.
//! - [`storage`]: each account's persistent volume, and how runs mount it.
//! - [`config`]: run profiles (built-in `codex` and `agent`), plans and accounts, from an
//!   optional TOML file.
//! - [`billing`]: plans, billing state and quotas, checked before a create reaches the engine.
//! - [`store`]: run records and output frames, persisted in SQLite (`runs.db` in the state
//!   dir), with idempotency keys, retention and the usage ledger billing counts from.
//! - [`tls`]: HTTPS serving (`--tls-cert`, `--tls-key`) for `https://` listen addresses.
//! - [`execs`]: signals for exec'd commands and detached execs (output kept in the state dir).
//! - [`images`], [`builds`]: images and builds scoped to accounts (`images.db`), with an
//!   engine client of their own.
//! - [`engine`]: the bollard client; [`executor`]: drives one run from create to removal, and
//!   re-adopts the runs of an earlier runner process on start.
//!
//! # Invariants
//! - The token never reaches a message or a log line.
//! - Another account's run and a missing run get the same 404.
//! - Output is captured from the attach stream and replayed from the store, never from the
//!   engine's log endpoint.
//! - A frame a log reader sees is already stored; `seq` is dense per run across restarts.
//! - On shutdown the server stops accepting, ends log followers' streams (clients resume with
//!   `after_seq`), stores what is queued and drops connections still open after a short
//!   grace period. Runs in flight are left running: their containers carry this runner's
//!   label, and the next start re-adopts them ([`executor::readopt`]).

use std::future::{Future, IntoFuture as _};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt as _;
use futures::FutureExt as _;

pub mod auth;
pub mod billing;
pub mod config;
pub mod engine;
pub mod http;
pub mod images;
pub mod openapi;
pub mod runs;
pub mod store;
pub mod util;


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
    billing: billing::Billing,
    execs: runs::execs::Execs,
    images: Arc<images::Images>,
}

impl AppState {
    /// State from its parts, with an empty store in a temporary directory (removed with the
    /// state). Panics if that directory cannot be made; [`AppState::with_store`] does not.
    pub fn new(keys: Keys, config: Config, engine: Engine) -> AppState {
        let store = Store::temporary().expect("a temporary run store");
        AppState::with_store(keys, config, engine, store)
    }

    /// State from its parts and an opened store.
    pub fn with_store(keys: Keys, config: Config, engine: Engine, store: Store) -> AppState {
        let state_dir = store.path().parent().unwrap_or(std::path::Path::new("."));
        let execs = runs::execs::Execs::open(state_dir.join("execs"), &store);
        let images = Arc::new(images::Images::new(state_dir, &config));
        AppState(Arc::new(Shared {
            execs,
            images,
            keys,
            config,
            store,
            engine: Arc::new(engine),
            billing: billing::Billing::new(),
        }))
    }

    /// Admission locks for quota checks.
    pub fn billing(&self) -> &billing::Billing {
        &self.0.billing
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

    /// The detached execs.
    pub fn execs(&self) -> &runs::execs::Execs {
        &self.0.execs
    }

    /// Images and builds, scoped to accounts.
    pub fn images(&self) -> &Arc<images::Images> {
        &self.0.images
    }
}

/// The HTTP application: every route below `/api/v1`, with problem documents for unknown
/// routes and methods.
pub fn app(state: AppState) -> Router {
    http::routes::router()
        .fallback(http::problem::route_not_found)
        .method_not_allowed_fallback(http::problem::method_not_allowed)
        .with_state(state)
}

/// Serves `app(state)` on `listener` (TCP_NODELAY on every connection) until `shutdown`
/// completes; connections still open [`SHUTDOWN_GRACE`] later are dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_all(vec![Listening::Http(listener)], state, shutdown).await
}

/// A bound listener the API is served on.
pub enum Listening {
    /// Plain HTTP.
    Http(tokio::net::TcpListener),
    /// HTTPS (see [`http::tls`]).
    Https(http::tls::TlsListener),
}

/// Serves `app(state)` on every listener at once until `shutdown` completes, as [`serve`]
/// does on one.
pub async fn serve_all(
    listeners: Vec<Listening>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shutdown = shutdown.boxed().shared();
    let servers = listeners.into_iter().map(|listener| match listener {
        Listening::Http(tcp) => {
            let tcp = tcp.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(tcp, app(state.clone()))
                .with_graceful_shutdown(shutdown.clone())
                .into_future()
                .boxed()
        }
        Listening::Https(tls) => axum::serve(tls, app(state.clone()))
            .with_graceful_shutdown(shutdown.clone())
            .into_future()
            .boxed(),
    });
    let server = futures::future::try_join_all(servers);
    // Runs go on (the next start re-adopts them); ending their log followers lets open
    // connections close promptly.
    let closing = tokio::spawn({
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            shutdown.await;
            state.store().close_followers();
        }
    });
    let result = tokio::select! {
        result = server => result.map(drop),
        () = async { shutdown.clone().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::info!("closing connections still open after the shutdown grace period");
            Ok(())
        }
    };
    if shutdown.peek().is_some() {
        let _ = closing.await;
    } else {
        closing.abort();
    }
    state.store().flush().await;
    result
}
