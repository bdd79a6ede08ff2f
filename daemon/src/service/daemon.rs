//! `bus.daemon.v1.Daemon`: what this daemon is and whom it speaks for; its credentials; its
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use bus::proto::daemon::v1::{
    CreateTokenRequest, CreateTokenResponse, DaemonInfo, GetInfoRequest, ReloadCredentialsRequest,
    ReloadCredentialsResponse, ShutdownRequest, ShutdownResponse, daemon_server::Daemon,
};
use bus::timestamp::from_unix as timestamp;
use bus_api::auth::Claims;
use tonic::{Request, Response, Status};

use super::{DaemonState, META_API_URL};
use crate::config::ApiOrigin;
use crate::credentials::{self, Token};
use crate::lifecycle::StopReason;
use crate::status::Error;

/// Metadata key: the account's API key, for `CreateToken` only. Never a message field, so it
/// cannot end up in a logged request.
pub const META_API_KEY: &str = "bus-api-key";

/// What this busd can do beyond v1's first calls (`DaemonInfo.features`).
pub const FEATURES: &[&str] = &[
    "shutdown",
    "reload-credentials",
    "create-token",
    "idle-exit",
    "socket-activation",
    "upstream-retries",
    "idempotent-creates",
    "images",
    "builds",
    "create-wait-running",
    "billing",
];

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

/// What a token says of its holder; empty without readable claims.
struct Holder {
    identity: String,
    scopes: Vec<String>,
    expires_at: Option<prost_types::Timestamp>,
}

impl Holder {
    fn of(claims: Option<&Claims>) -> Holder {
        Holder {
            identity: claims.map(|c| c.sub.clone()).unwrap_or_default(),
            scopes: claims
                .map(|c| c.scopes().map(str::to_owned).collect())
                .unwrap_or_default(),
            expires_at: claims.map(|c| timestamp(c.exp)),
        }
    }
}

#[tonic::async_trait]
impl Daemon for DaemonService {
    async fn get_info(
        &self,
        request: Request<GetInfoRequest>,
    ) -> Result<Response<DaemonInfo>, Status> {
        let config = &self.state.config;
        let lifecycle = self.state.lifecycle();
        let (source, token) = self.state.load_token(request.metadata());
        let describe = |e: &credentials::CredentialError| format!("{e}; {}", e.guidance());
        let token_error = match &token {
            Ok(token) => credentials::check_expiry(token, &source, time::OffsetDateTime::now_utc())
                .err()
                .map(|e| describe(&e)),
            Err(e) => Some(describe(e)),
        }
        .unwrap_or_default();
        let holder = Holder::of(token.as_ref().ok().and_then(Token::claims));
        Ok(Response::new(DaemonInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: crate::protocol::revision(),
            upstream_origin: match request.metadata().get(META_API_URL) {
                Some(url) => url.to_str().unwrap_or_default().to_owned(),
                None => config.api_origin.to_string(),
            },
            identity: holder.identity,
            scopes: holder.scopes,
            token_expires_at: holder.expires_at,
            token_source: source.to_string(),
            uptime_seconds: self.state.started.elapsed().as_secs(),
            pid: std::process::id(),
            upstream_clients: self.state.upstreams.len() as u32,
            open_streams: lifecycle.open_streams() as u32,
            fanout_groups: self.state.fanout.groups() as u32,
            upstream_log_streams: self.state.fanout.upstream_streams(),
            run_list_watches: self.state.listings.current() as u32,
            run_lists_answered: self.state.listings.answered(),
            features: FEATURES.iter().map(|f| (*f).to_owned()).collect(),
            token_error,
            socket_activated: lifecycle.options().socket_activated,
        }))
    }

    async fn reload_credentials(
        &self,
        request: Request<ReloadCredentialsRequest>,
    ) -> Result<Response<ReloadCredentialsResponse>, Status> {
        let (source, token) = self.state.load_token(request.metadata());
        let token = token.map_err(Error::from)?;
        credentials::check_expiry(&token, &source, time::OffsetDateTime::now_utc())
            .map_err(Error::from)?;
        let claims = token.claims();
        tracing::info!(
            token_source = %source,
            identity = claims.as_ref().map_or("", |c| c.sub.as_str()),
            "credentials reloaded"
        );
        let holder = Holder::of(claims);
        Ok(Response::new(ReloadCredentialsResponse {
            identity: holder.identity,
            scopes: holder.scopes,
            token_expires_at: holder.expires_at,
            token_source: source.to_string(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let metadata = request.metadata();
        let api_key = metadata
            .get(META_API_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Token::new)
            .ok_or_else(|| Error::InvalidArgument {
                message: "no API key came with the call".into(),
                guidance: "set BUS_API_KEY, or pass --api-key-file PATH (mode 0600)".into(),
            })?;
        let origin = match metadata.get(META_API_URL).and_then(|v| v.to_str().ok()) {
            Some(url) => ApiOrigin::parse(url).map_err(Error::from)?,
            None => self.state.config.api_origin.clone(),
        };
        let timeout = crate::deadline::from_metadata(metadata);
        let CreateTokenRequest {
            resources,
            ttl_seconds,
        } = request.into_inner();
        // None: every resource the account may hold.
        let resources = Some(resources.trim()).filter(|r| !r.is_empty());
        let upstream = self
            .state
            .upstreams
            .client(&origin, api_key)
            .with_timeout(timeout);
        let issued = upstream
            .create_token(resources, (ttl_seconds > 0).then_some(ttl_seconds))
            .await
            .map_err(Error::from)?;
        tracing::info!(upstream = %origin, scope = %issued.scope, "token issued");
        Ok(Response::new(CreateTokenResponse {
            token: issued.token,
            expires_at: Some(timestamp(issued.expires_at.unix_timestamp())),
            scope: issued.scope,
        }))
    }

    async fn shutdown(
        &self,
        request: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        let lifecycle = self.state.lifecycle();
        let options = lifecycle.options();
        let drain = match request.get_ref().drain_seconds {
            0 => options.drain,
            seconds => Duration::from_secs(seconds.into()),
        };
        let open_streams = lifecycle.open_streams() as u32;
        tracing::info!(open_streams, "shutdown requested");
        lifecycle.request_stop(StopReason::Requested, drain);
        Ok(Response::new(ShutdownResponse {
            pid: std::process::id(),
            open_streams,
            socket: if options.socket_activated {
                String::new()
            } else {
                self.state.config.socket.display().to_string()
            },
        }))
    }
}
