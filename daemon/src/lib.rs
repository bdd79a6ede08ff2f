//! # busd — the warm local daemon
//!
//! busd holds the account's bearer token and a warm HTTP connection pool to the
//! container-runner REST API, and serves the same operations as gRPC on a Unix socket.
//!
//! # Layout
//! - [`authority`]: the adapter that lets stock gRPC clients send the socket path as
//!   `:authority`; the connection preface timeout.
//! - [`config`]: settings and their precedence (socket, API origin, token source).
//! - [`credentials`]: reading the token safely; never logs or echoes it.
//! - [`upstream`]: the REST client, the only module that speaks HTTP.
//! - [`fanout`]: one upstream log stream per run, shared by all its local followers.
//! - [`listing`]: each token's runs kept current by a watch, so `ListRuns` needs no round
//!   trip.
//! - [`service`]: the gRPC services, the only module that sees proto types.
//! - [`status`]: the one place errors become gRPC statuses with rich details.
//! - [`socket`]: binding the socket with the right modes; same-uid peers only; the instance
//!   lock; systemd socket activation.
//! - [`lifecycle`]: call and stream counts, shutdown (signal, RPC, idle exit) and the drain.
//! - [`deadline`]: a call's gRPC deadline, which bounds its REST call.
//! - [`protocol`]: busd's protocol revision; clients newer than it are refused.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests and the binary run it
//! the same way.

pub mod authority;
pub mod config;
pub mod credentials;
pub mod deadline;
pub mod fanout;
pub mod lifecycle;
pub mod listing;
pub mod protocol;
pub mod service;
pub mod socket;
pub mod status;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use bus::proto::containers::v1::containers_server::ContainersServer;
use bus::proto::daemon::v1::daemon_server::DaemonServer;
use tokio::net::UnixListener;

use crate::config::Config;
use crate::lifecycle::{ServeOptions, StopReason, TrackLayer};
use crate::service::DaemonState;
use crate::service::builds::BuildsServiceImpl;
use crate::service::containers::ContainersService;
use crate::service::daemon::DaemonService;
use crate::service::exec::ExecService;
use crate::service::images::ImagesServiceImpl;
use bus::proto::containers::v1::exec_server::ExecServer;
use bus::proto::images::v1::builds_service_server::BuildsServiceServer;
use bus::proto::images::v1::images_service_server::ImagesServiceServer;

/// How often busd PINGs an HTTP/2 connection (busy or idle) to learn that its peer lives.
pub const HTTP2_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// How long busd waits for a PING's answer before it closes the connection.
pub const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves busd's gRPC API (plus grpc.health.v1 and reflection) on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, config, ServeOptions::default(), shutdown).await
}

/// [`serve`] with [`ServeOptions`]. busd stops when `shutdown` completes, when a `Shutdown`
/// call asks, or after `idle_exit` without calls; it then accepts nothing new and lets open
/// calls finish for at most the drain bound before it returns.
pub async fn serve_with(
    listener: UnixListener,
    config: Config,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let state = Arc::new(DaemonState::new(config));
    let lifecycle = state.lifecycle().clone();
    lifecycle.set_options(options.clone());
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ContainersServer<ContainersService>>()
        .await;
    health_reporter
        .set_serving::<DaemonServer<DaemonService>>()
        .await;
    health_reporter
        .set_serving::<ExecServer<ExecService>>()
        .await;
    health_reporter
        .set_serving::<ImagesServiceServer<ImagesServiceImpl>>()
        .await;
    health_reporter
        .set_serving::<BuildsServiceServer<BuildsServiceImpl>>()
        .await;
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(bus::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    // v1alpha too: stock clients (grpcio-reflection, older grpcurl) still ask it.
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");

    let server = tonic::transport::Server::builder()
        // Dead or frozen peers are reaped: a PING unanswered for 20 s closes the connection.
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .layer(TrackLayer::new(lifecycle.clone()))
        .layer(crate::protocol::ProtocolLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ContainersServer::new(ContainersService::new(state.clone())))
        .add_service(ExecServer::new(ExecService::new(state.clone())))
        .add_service(ImagesServiceServer::new(ImagesServiceImpl::new(
            state.clone(),
        )))
        .add_service(BuildsServiceServer::new(BuildsServiceImpl::new(
            state.clone(),
        )))
        .add_service(DaemonServer::new(DaemonService::new(state)))
        // On stop the incoming stream drops the listener and ends, which starts tonic's
        // graceful shutdown (the never-ending signal only switches graceful mode on).
        .serve_with_incoming_shutdown(
            lifecycle::close_on_stop(socket::same_uid_incoming(listener), lifecycle.clone()),
            std::future::pending::<()>(),
        );
    let mut server = std::pin::pin!(server);
    let idle = async {
        match options.idle_exit {
            Some(limit) => lifecycle.idle_for(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = &mut server => return served,
        () = shutdown => lifecycle.request_stop(StopReason::Signal, options.drain),
        () = idle => lifecycle.request_stop(StopReason::Idle, options.drain),
        _ = lifecycle.stop_requested() => {}
    }
    let (reason, drain) = lifecycle.stop_requested().await;
    tracing::info!(
        ?reason,
        open_streams = lifecycle.open_streams(),
        drain_seconds = drain.as_secs_f32(),
        "stopping: accepting no new connections, draining open calls"
    );
    match tokio::time::timeout(drain, &mut server).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!(
                open_streams = lifecycle.open_streams(),
                "open calls did not finish within the drain bound; closing them"
            );
            Ok(())
        }
    }
}
