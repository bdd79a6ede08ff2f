//! The gRPC services: thin adapters between proto types and the upstream REST client.
//! This is the only module of busd that sees proto types.

pub mod builds;
pub mod containers;
pub mod daemon;
pub mod exec;
pub mod images;

use std::sync::Arc;
use std::time::Instant;

use tonic::metadata::MetadataMap;

use crate::config::{ApiOrigin, Config};
use crate::credentials::{self, Token, TokenCache, TokenSource};
use crate::fanout::Fanout;
use crate::lifecycle::Lifecycle;
use crate::listing::Listings;
use crate::status::Error;
use crate::upstream::{Upstream, Upstreams};

/// Metadata key: an API origin the caller wants instead of busd's default.
pub const META_API_URL: &str = "bus-api-url";
/// Metadata key: a token file the caller wants instead of busd's default.
pub const META_TOKEN_FILE: &str = "bus-token-file";
/// Metadata key: a token from the caller's environment (`BUS_AI_TOKEN`/`BUS_API_TOKEN`).
pub const META_TOKEN: &str = "bus-token";

/// What every service shares: configuration, the upstream pool and the start time.
pub struct DaemonState {
    config: Config,
    upstreams: Upstreams,
    tokens: TokenCache,
    fanout: Arc<Fanout>,
    listings: Arc<Listings>,
    started: Instant,
    lifecycle: Arc<Lifecycle>,
}

impl DaemonState {
    /// State for a daemon started with `config`.
    pub fn new(config: Config) -> Self {
        DaemonState {
            upstreams: Upstreams::default().with_cas(config.trusted_cas.clone()),
            fanout: Arc::new(Fanout::new(config.resume_for)),
            listings: Arc::default(),
            config,
            tokens: TokenCache::default(),
            started: Instant::now(),
            lifecycle: Arc::default(),
        }
    }

    /// Call and stream counts, and the stop switch.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The upstream for one call, honouring the caller's per-call overrides.
    pub(crate) fn upstream(&self, metadata: &MetadataMap) -> Result<Upstream, Error> {
        let origin = match metadata.get(META_API_URL).and_then(|v| v.to_str().ok()) {
            Some(url) => ApiOrigin::parse(url)?,
            None => self.config.api_origin.clone(),
        };
        let token = self.token(metadata)?;
        let timeout = crate::deadline::from_metadata(metadata);
        Ok(self.upstreams.client(&origin, token).with_timeout(timeout))
    }

    /// The caller's token, refused before any upstream call when its `exp` has passed.
    fn token(&self, metadata: &MetadataMap) -> Result<Token, Error> {
        let (source, token) = self.load_token(metadata);
        let token = token?;
        credentials::check_expiry(&token, &source, time::OffsetDateTime::now_utc())?;
        Ok(token)
    }

    /// Reads (or reuses, when unchanged) the token the caller's overrides name (a token file, a token from its
    /// environment), else busd's own source; with the source, for reports.
    pub(crate) fn load_token(
        &self,
        metadata: &MetadataMap,
    ) -> (TokenSource, Result<Token, credentials::CredentialError>) {
        if let Some(path) = metadata.get(META_TOKEN_FILE).and_then(|v| v.to_str().ok()) {
            let source = TokenSource::File(path.into());
            let token = self.tokens.load(&source, env_var);
            return (source, token);
        }
        if let Some(token) = metadata.get(META_TOKEN).and_then(|v| v.to_str().ok()) {
            let from_caller = |_: &str| Some(token.to_owned());
            let source = TokenSource::Env("BUS_AI_TOKEN");
            let token = self.tokens.load(&source, from_caller);
            return (source, token);
        }
        let source = self.config.token_source.clone();
        let token = self.tokens.load(&source, env_var);
        (source, token)
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
