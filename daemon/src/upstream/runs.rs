//! The runs' REST calls (create, get, list, delete, stop), the runner's status, billing and
//! the token exchange, and the watch of runs.

use std::time::Duration;

use bus_api::auth::{TokenRequest, TokenResponse};
use bus_api::paths;
use bus_api::runs::{
    CreateRunQuery, ListRunsQuery, MAX_WAIT_MS, StopRun, WATCH_ALIVE_SECONDS, WaitFor,
};
use bus_api::{BillingStatus, CreateRun, Run, RunEvent, RunPage, RunnerStatus};
use reqwest::Method;

use super::ndjson::FrameDecoder;
use super::retry::{IDEMPOTENCY_KEY, new_idempotency_key};
use super::{Upstream, UpstreamError};

/// How long a watch of runs may go without a byte before it is cut as broken: three of the
/// runner's alive intervals.
pub const WATCH_SILENCE: Duration = Duration::from_secs(3 * WATCH_ALIVE_SECONDS);

/// How a create is to be answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The caller will follow the output: the runner refuses the create, before anything
    /// starts, when the token may not read logs.
    pub follow: bool,
    /// Answer once the run runs (or is ready) or has ended, within the deadline, not once it
    /// is recorded.
    pub wait: Option<WaitFor>,
}

impl Upstream {
    /// `GET /api/v1/containers/status`.
    pub async fn status(&self) -> Result<RunnerStatus, UpstreamError> {
        self.json(self.request(Method::GET, paths::STATUS)).await
    }

    /// `POST /api/v1/containers/runs` with a fresh `Idempotency-Key`, so the create is retried
    /// safely (the runner answers a repeated key with the run it already made).
    pub async fn create_run(
        &self,
        spec: &CreateRun,
        options: CreateOptions,
    ) -> Result<Run, UpstreamError> {
        let mut query = CreateRunQuery {
            follow: options.follow,
            ..CreateRunQuery::default()
        };
        if options.wait.is_some() {
            query.wait = options.wait;
            // Answer before the caller gives up, with the run as it is by then.
            query.wait_ms = self.time_left().map(|left| {
                let ms = (left.as_millis() * 9 / 10).clamp(1, u128::from(MAX_WAIT_MS));
                u64::try_from(ms).expect("clamped below MAX_WAIT_MS")
            });
        }
        self.json(
            self.request(Method::POST, paths::RUNS)
                .query(&query)
                .header(IDEMPOTENCY_KEY, new_idempotency_key())
                .json(spec),
        )
        .await
    }

    /// `GET /api/v1/billing/status`: the account's plan, usage in the period and limits.
    pub async fn billing(&self) -> Result<BillingStatus, UpstreamError> {
        self.json(self.request(Method::GET, paths::BILLING_STATUS))
            .await
    }

    /// `POST /api/v1/auth/token`: exchanges the API key this context carries (in place of a
    /// token) for a token. Not retried: it has no idempotency key.
    /// `resources` `None` asks for every scope the account may hold.
    pub async fn create_token(
        &self,
        resources: Option<&str>,
        ttl_seconds: Option<u64>,
    ) -> Result<TokenResponse, UpstreamError> {
        let body = TokenRequest {
            resources: resources.map(str::to_owned),
            ttl_seconds,
        };
        self.json(self.request(Method::POST, paths::AUTH_TOKEN).json(&body))
            .await
    }

    /// `GET /api/v1/containers/runs/{id}`.
    pub async fn get_run(&self, id: &str) -> Result<Run, UpstreamError> {
        self.json(self.request(Method::GET, &paths::run(id))).await
    }

    /// `GET /api/v1/containers/runs?page_size&page_token&state&name&participant&role`.
    pub async fn list_runs(&self, query: &ListRunsQuery) -> Result<RunPage, UpstreamError> {
        self.json(self.request(Method::GET, paths::RUNS).query(query))
            .await
    }

    /// `GET /api/v1/containers/runs?watch=true`: the caller's runs, then each change to them,
    /// on a connection of its own and with no deadline.
    pub async fn watch_runs(&self) -> Result<RunWatch, UpstreamError> {
        let request = self
            .request(Method::GET, paths::RUNS)
            .query(&ListRunsQuery::watch());
        let response = tokio::time::timeout(WATCH_SILENCE, self.send(request))
            .await
            .map_err(|_| self.silent())??;
        Ok(RunWatch {
            response,
            decoder: FrameDecoder::new(),
            upstream: self.clone(),
        })
    }

    fn silent(&self) -> UpstreamError {
        UpstreamError::Unreachable {
            origin: self.origin.to_string(),
            reason: format!(
                "the watch of runs sent nothing for {} s; the connection is presumed broken",
                WATCH_SILENCE.as_secs()
            ),
        }
    }

    /// `DELETE /api/v1/containers/runs/{id}`.
    pub async fn delete_run(&self, id: &str) -> Result<(), UpstreamError> {
        self.json::<serde::de::IgnoredAny>(self.request(Method::DELETE, &paths::run(id)))
            .await
            .map(drop)
    }

    /// `POST /api/v1/containers/runs/{id}/stop`.
    pub async fn stop_run(
        &self,
        id: &str,
        grace_seconds: Option<u32>,
        force: bool,
    ) -> Result<Run, UpstreamError> {
        let body = StopRun {
            grace_seconds,
            force,
        };
        self.json(self.request(Method::POST, &paths::run_stop(id)).json(&body))
            .await
    }
}

/// An open watch of the caller's runs ([`Upstream::watch_runs`]).
pub struct RunWatch {
    response: reqwest::Response,
    decoder: FrameDecoder<RunEvent>,
    upstream: Upstream,
}

impl RunWatch {
    /// The next line; `None` once the runner has ended the stream. A stream silent for
    /// [`WATCH_SILENCE`] fails as unreachable; after an error, nothing more comes.
    pub async fn next(&mut self) -> Option<Result<RunEvent, UpstreamError>> {
        loop {
            if let Some(line) = self.decoder.next_frame() {
                return Some(line.map_err(|e| self.upstream.protocol(e.to_string())));
            }
            match tokio::time::timeout(WATCH_SILENCE, self.response.chunk()).await {
                Err(_) => return Some(Err(self.upstream.silent())),
                Ok(Ok(Some(chunk))) => self.decoder.push(&chunk),
                Ok(Ok(None)) => {
                    return self
                        .decoder
                        .finish()
                        .err()
                        .map(|e| Err(self.upstream.protocol(e.to_string())));
                }
                Ok(Err(e)) => return Some(Err(self.upstream.unreachable(&e))),
            }
        }
    }
}
