//! `bus.daemon.v1.Daemon`: what this daemon is and whom it speaks for.

use std::sync::Arc;

use bus::proto::daemon::v1::{DaemonInfo, GetInfoRequest, daemon_server::Daemon};
use tonic::{Request, Response, Status};

use super::DaemonState;
use crate::credentials;

/// The Daemon service.
pub struct DaemonService {
    state: Arc<DaemonState>,
}

impl DaemonService {
    /// A service over the shared state.
    pub fn new(state: Arc<DaemonState>) -> Self {
        DaemonService { state }
    }
}

#[tonic::async_trait]
impl Daemon for DaemonService {
    async fn get_info(&self, _: Request<GetInfoRequest>) -> Result<Response<DaemonInfo>, Status> {
        let config = &self.state.config;
        let claims = credentials::load(&config.token_source, super::env_var)
            .ok()
            .and_then(|token| token.claims());
        Ok(Response::new(DaemonInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: bus::PROTOCOL,
            upstream_origin: config.api_origin.to_string(),
            identity: claims.as_ref().map(|c| c.sub.clone()).unwrap_or_default(),
            scopes: claims
                .as_ref()
                .map(|c| c.scopes().map(str::to_owned).collect())
                .unwrap_or_default(),
            token_expires_at: claims.as_ref().map(|c| prost_types::Timestamp {
                seconds: c.exp,
                nanos: 0,
            }),
            token_source: config.token_source.to_string(),
            uptime_seconds: self.state.started.elapsed().as_secs(),
            pid: std::process::id(),
        }))
    }
}
