//! # bus-runner — the container-runner REST API, served locally
//!
//! The "local compose" deployment of the service: an HTTP server (axum) that speaks the REST
//! contract of [`bus_api`] and runs real containers through the Docker Engine API (bollard),
//! here Podman's docker-compatible socket.
//!
//! # Layout: three layers
//! Imports go down only: the HTTP layer calls the domain, the domain calls the engine, and no
//! module imports one that imports it back.
//!
//! **HTTP** ([`http`]): [`serve`] / [`app`] and [`AppState`] here; the routes, one module per
//! resource (`http::routes`: status, auth, billing, runs, watch, logs, stop, exec, attach,
//! images, builds, idempotency, input); the bearer-token extractor with the scope each route
//! needs ([`http::auth`]) and the `bus-revision` header it feeds ([`http::revision`]); the one
//! mapping from every error to an `application/problem+json`
//! document ([`http::problem`]); HTTPS listeners ([`http::tls`]); the OpenAPI 3.1 document
//! ([`openapi`], served at `/api/v1/openapi.json` and checked in as `api/openapi.json`).
//!
//! **Domain**, each module with its own typed error:
//! - [`runs`]: a `CreateRun` validated into a `RunSpec` (`runs::spec`, with the field checks
//!   it shares with the config's profiles, `config::checks`), driven from create to removal
//!   and re-adopted after a restart (`runs::executor`), exec'd commands and detached execs
//!   (`runs::execs`), each account's storage volume (`runs::storage`).
//! - [`images`]: images and builds scoped to accounts (`images.db`): names held and claimed,
//!   references (`images::refs`), archives, pulls, pushes, loads and saves, builds.
//! - [`billing`]: plans, billing state and quotas, checked before a create reaches the engine.
//! - [`auth`]: the Ed25519 signing key, minting and verifying JWTs, scope names;
//!   [`config`]: run profiles, plans, accounts and their API keys, `[images]`, from TOML.
//! - [`store`]: run records and output frames in SQLite (`runs.db` in the state dir), with
//!   idempotency keys, retention, the usage ledger billing counts from, and each account's
//!   revisions of its runs, broadcast to watches.
//!
//! **Engine** ([`engine`]): the `Backend` trait the domain calls through the `Engine` handle
//! (containers, execs, volumes, images) with the engine's own types; the Podman backend
//! (`engine::podman`) holds the one bollard client and the one libpod client.
//!
//! [`util`] holds the small helpers every layer shares (RFC 3339, random ids, hex, SHA-256).
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
//!   label, and the next start re-adopts them ([`runs::executor::readopt`]).

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
    container_origin: std::sync::OnceLock<String>,
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
            container_origin: std::sync::OnceLock::new(),
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

    /// Sets the runner's origin as its runs' containers see it (`BUS_AI_API_URL`), once;
    /// see [`runs::agent::origin_for`].
    pub fn set_container_origin(&self, origin: String) {
        let _ = self.0.container_origin.set(origin);
    }

    /// The runner's origin as its runs' containers see it, when known.
    pub fn container_origin(&self) -> Option<&str> {
        self.0.container_origin.get().map(String::as_str)
    }

    /// Images and builds, scoped to accounts.
    pub fn images(&self) -> &Arc<images::Images> {
        &self.0.images
    }
}

/// The HTTP application: every route below `/api/v1`, with problem documents for unknown
/// routes and methods, and the `bus-revision` header on answers to verified callers.
pub fn app(state: AppState) -> Router {
    http::routes::router()
        .fallback(http::problem::route_not_found)
        .method_not_allowed_fallback(http::problem::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::revision::revision_header,
        ))
        .layer(axum::middleware::from_fn(http::access::log_request))
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
    // Runs of token profiles reach the API through the first plain-HTTP listener.
    let plain = listeners.iter().find_map(|l| match l {
        Listening::Http(tcp) => tcp.local_addr().ok(),
        Listening::Https(_) => None,
    });
    if let Some(addr) = plain {
        state.set_container_origin(runs::agent::origin_for(addr));
    }
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
