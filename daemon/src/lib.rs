//! # busd — the warm local daemon
//!
//! busd holds the account's bearer token and a warm HTTP connection pool to the
//! container-runner REST API, and serves the same operations as gRPC on a Unix socket.
//!
//! # Layout
//! - [`config`]: settings and their precedence (socket, API origin, token source).
//! - [`credentials`]: reading the token safely; never logs or echoes it.
//! - [`upstream`]: the REST client, the only module that speaks HTTP.
//! - [`fanout`]: one upstream log stream per run, shared by all its local followers.
//! - [`service`]: the gRPC services, the only module that sees proto types.
//! - [`status`]: the one place errors become gRPC statuses with rich details.
//! - [`socket`]: binding the socket with the right modes; same-uid peers only.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests and the binary run it
//! the same way.

pub mod config;
pub mod credentials;
pub mod fanout;
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
use crate::service::DaemonState;
use crate::service::containers::ContainersService;
use crate::service::daemon::DaemonService;

/// Serves busd's gRPC API (plus grpc.health.v1 and reflection) on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let state = Arc::new(DaemonState::new(config));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ContainersServer<ContainersService>>()
        .await;
    health_reporter
        .set_serving::<DaemonServer<DaemonService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(bus::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");

    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(ContainersServer::new(ContainersService::new(state.clone())))
        .add_service(DaemonServer::new(DaemonService::new(state)))
        .serve_with_incoming_shutdown(socket::same_uid_incoming(listener), shutdown)
        .await
}
