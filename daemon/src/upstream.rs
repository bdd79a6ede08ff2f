//! The REST client: the only part of busd that speaks HTTP.
//!
//! One pooled `reqwest::Client` per origin (keep-alive, HTTP/2 when offered, rustls). Every
//! call carries the bearer token; every non-2xx answer is parsed as an RFC 9457 problem.
//!
//! Robustness: a unary call is bounded by the caller's gRPC deadline (a reqwest timeout of the
//! time left); idempotent calls (GET, DELETE) and creates that carry an `Idempotency-Key` are
//! retried on connect errors and 502/503/504, [`MAX_TRIES`] times in all, with jittered
//! exponential backoff that never sleeps past the deadline. `Retry-After` is kept on the error.
//!
//! Log streams are not bounded by the deadline (they may outlive the call that opened them)
//! but by silence: keepalive frames are dropped here, and a stream that has shown the runner
//! sends them is cut as broken after [`SILENCE_INTERVALS`] keepalive intervals without a byte
//! (see [`KeepalivesSeen`]), so a half-open connection fails instead of hanging.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bus_api::auth::{TokenRequest, TokenResponse};
use bus_api::paths;
use bus_api::runs::{
    CreateRunQuery, KEEPALIVE_SECONDS, KEEPALIVE_SECONDS_RANGE, ListRunsQuery, LogsQuery,
    MAX_WAIT_MS, StopRun, WaitFor,
};
use bus_api::{BillingStatus, CreateRun, LogFrame, Problem, Run, RunPage, RunnerStatus};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

pub mod exec;
pub mod images;
pub mod ndjson;

use crate::config::ApiOrigin;
use crate::credentials::Token;

/// How long a TCP/TLS connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a retryable call is tried in all.
pub const MAX_TRIES: u32 = 3;
/// The first retry's backoff ceiling; each further retry doubles it, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// The largest backoff between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A `Retry-After` longer than this is not waited for: the error goes back to the caller with
/// the delay in its `RetryInfo`.
const MAX_HONOURED_RETRY_AFTER: Duration = Duration::from_secs(2);
/// The header that makes a create safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// How a create is to be answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The caller will follow the output: the runner refuses the create, before anything
    /// starts, when the token may not read logs.
    pub follow: bool,
    /// Answer once the run runs or has ended (within the deadline), not once it is recorded.
    pub wait_running: bool,
}
/// The runner's default keepalive interval on follow streams (its `KEEPALIVE_SECONDS`). busd
/// asks for it by leaving `keepalive_seconds` out, so runners from before the parameter
/// existed (which refuse unknown query parameters) still answer.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(KEEPALIVE_SECONDS);
/// Keepalive intervals without a byte after which a log stream is presumed broken.
pub const SILENCE_INTERVALS: u32 = 3;
/// Test-only override of the keepalive interval busd asks follow streams for, in whole
/// seconds (1 to 300, the runner's bounds); the silence bound follows it ([`SILENCE_INTERVALS`]
/// times). Read once, when busd starts. Any other value is ignored.
pub const KEEPALIVE_ENV: &str = "BUSD_UPSTREAM_KEEPALIVE_SECONDS";

/// What went wrong talking to the upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with a problem document.
    #[error("{}", .0.detail)]
    Problem(Box<Problem>),
    /// The upstream answered with a problem document and a `Retry-After` header.
    #[error("{}", .problem.detail)]
    RetryLater {
        /// The problem.
        problem: Box<Problem>,
        /// How long to wait before trying again.
        retry_after: Duration,
    },
    /// The call's deadline passed before the upstream answered.
    #[error("the container runner at {origin} did not answer within the call's deadline")]
    Timeout {
        /// The origin that was called.
        origin: String,
    },
    /// No connection could be made, or it broke.
    #[error("cannot reach the container runner at {origin}: {reason}")]
    Unreachable {
        /// The origin that was called.
        origin: String,
        /// The transport's reason.
        reason: String,
    },
    /// An `https://` origin answered the TLS handshake in plain HTTP.
    #[error(
        "the container runner at {origin} does not speak TLS there (it answered in plain HTTP)"
    )]
    NotTls {
        /// The origin that was called.
        origin: String,
    },
    /// A gateway (or the runner) answered 502, 503 or 504 without a problem document, on
    /// every try.
    #[error("the container runner at {origin} is unavailable: it answered HTTP {status}{}",
        if *.tries > 1 { format!(" to {} tries", .tries) } else { String::new() })]
    Unavailable {
        /// The origin that was called.
        origin: String,
        /// The last answer's status, e.g. `503 Service Unavailable`.
        status: String,
        /// How many times the call was sent.
        tries: u32,
        /// The last answer's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The upstream answered something that is not this API.
    #[error("the container runner at {origin} answered unexpectedly: {reason}")]
    Protocol {
        /// The origin that was called.
        origin: String,
        /// What was wrong.
        reason: String,
    },
}

/// Whether the runner has been seen sending keepalive frames on the streams of one follow;
/// shared by that follow's successive (resumed) streams.
///
/// The silence of a follow stream is bounded only once a keepalive has been seen on it, or on
/// an earlier stream of the same follow: a runner from before keepalives existed sends nothing
/// while a run is quiet, and its streams must not be cut for that. Knowing it across resumes
/// matters: a resumed stream that is half-open from its first byte shows no keepalive, and
/// would otherwise hang. (A runner replaced by an older one behind the same follow is cut
/// after each silence bound and resumed, and the follow ends when its resume budget is spent.)
#[derive(Debug, Clone, Default)]
pub struct KeepalivesSeen(Arc<AtomicBool>);

impl KeepalivesSeen {
    /// Whether a keepalive has been seen.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// When a log stream's silence means a broken connection.
#[derive(Debug, Clone)]
struct Silence {
    /// No bytes for this long is a broken connection.
    bound: Duration,
    /// Bound from the first byte: a stream that is not followed never pauses.
    always: bool,
    /// Otherwise bound once the runner has shown it sends keepalives.
    seen: KeepalivesSeen,
}

impl Silence {
    fn enforced(&self) -> bool {
        self.always || self.seen.get()
    }
}

/// The keepalive interval named by [`KEEPALIVE_ENV`]'s value, if it is a valid one.
pub fn keepalive_from_env(value: Option<&str>) -> Option<Duration> {
    let seconds: u64 = value?.trim().parse().ok()?;
    KEEPALIVE_SECONDS_RANGE
        .contains(&seconds)
        .then(|| Duration::from_secs(seconds))
}

impl UpstreamError {
    /// The problem document, if the upstream sent one.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            UpstreamError::Problem(problem) | UpstreamError::RetryLater { problem, .. } => {
                Some(problem)
            }
            _ => None,
        }
    }

    /// How long the upstream asked to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::RetryLater { retry_after, .. } => Some(*retry_after),
            UpstreamError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// CA certificates trusted for `https://` origins besides the built-in web roots: busd's
/// `--ca-file` (`BUS_CA_FILE`), for a runner whose certificate a private CA issued.
#[derive(Clone, Default)]
pub struct TrustedCas {
    /// For the REST client.
    http: Vec<reqwest::Certificate>,
    /// For the exec WebSocket: the web roots plus these; `None` without any.
    websocket: Option<Arc<rustls::ClientConfig>>,
    count: usize,
}

impl std::fmt::Debug for TrustedCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedCas({} certificates)", self.count)
    }
}

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use the CA file {}: {reason}; point --ca-file (or BUS_CA_FILE) at a PEM file of the CA certificates that issued the runner's certificate",
    .path.display()
)]
pub struct CaFileError {
    path: std::path::PathBuf,
    reason: String,
}

impl TrustedCas {
    /// Reads every certificate in the PEM file at `path`.
    pub fn load(path: &std::path::Path) -> Result<TrustedCas, CaFileError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject as _;
        let fail = |reason: String| CaFileError {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("it holds no CERTIFICATE block".to_owned()));
        }
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut http = Vec::with_capacity(certs.len());
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| fail(format!("a certificate in it is not usable: {e}")))?;
            http.push(
                reqwest::Certificate::from_der(cert)
                    .map_err(|e| fail(format!("a certificate in it is not usable: {e}")))?,
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let websocket = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TrustedCas {
            http,
            websocket: Some(Arc::new(websocket)),
            count: certs.len(),
        })
    }

    /// How many certificates are trusted beside the web roots.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A pool of REST clients, one per origin.
#[derive(Clone)]
pub struct Upstreams {
    clients: Arc<Mutex<HashMap<ApiOrigin, reqwest::Client>>>,
    /// The keepalive interval follow streams are asked for.
    keepalive: Duration,
    /// Extra CAs for https origins.
    cas: TrustedCas,
}

impl Default for Upstreams {
    /// An empty pool asking for [`DEFAULT_KEEPALIVE`], or for what [`KEEPALIVE_ENV`] names.
    fn default() -> Self {
        let env = std::env::var(KEEPALIVE_ENV).ok();
        Upstreams::with_keepalive(keepalive_from_env(env.as_deref()).unwrap_or(DEFAULT_KEEPALIVE))
    }
}

impl Upstreams {
    /// An empty pool whose follow streams ask for a keepalive every `keepalive` (whole seconds
    /// on the wire, at least one) and are presumed broken after [`SILENCE_INTERVALS`] times
    /// that without a byte.
    pub fn with_keepalive(keepalive: Duration) -> Self {
        Upstreams {
            clients: Arc::default(),
            keepalive,
            cas: TrustedCas::default(),
        }
    }

    /// This pool, trusting `cas` for https origins besides the web roots.
    pub fn with_cas(mut self, cas: TrustedCas) -> Self {
        self.cas = cas;
        self
    }

    /// The keepalive interval follow streams are asked for.
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// How many origins have a warm client.
    pub fn len(&self) -> usize {
        self.clients
            .lock()
            .expect("upstream pool lock poisoned")
            .len()
    }

    /// Whether no client has been made yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The client for `origin`, made on first use and kept warm afterwards.
    pub fn client(&self, origin: &ApiOrigin, token: Token) -> Upstream {
        let mut clients = self.clients.lock().expect("upstream pool lock poisoned");
        let http = clients
            .entry(origin.clone())
            .or_insert_with(|| {
                self.cas
                    .http
                    .iter()
                    .fold(reqwest::Client::builder(), |builder, cert| {
                        builder.add_root_certificate(cert.clone())
                    })
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .user_agent(concat!("busd/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .expect("the TLS backend initialises")
            })
            .clone();
        Upstream {
            http,
            origin: origin.clone(),
            token,
            deadline: None,
            keepalive: self.keepalive,
            websocket_tls: self.cas.websocket.clone(),
        }
    }
}

/// One call context: a pooled client, an origin and a token.
#[derive(Clone)]
pub struct Upstream {
    http: reqwest::Client,
    origin: ApiOrigin,
    token: Token,
    /// When the caller gives up: bounds unary calls (not streams, which may outlive it).
    deadline: Option<Instant>,
    /// The keepalive interval follow streams are asked for.
    keepalive: Duration,
    /// The exec WebSocket's TLS settings when extra CAs are trusted.
    websocket_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Upstream {
    /// This context with unary calls bounded by `timeout` from now (the caller's gRPC
    /// deadline); `None` leaves them unbounded.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.deadline = timeout.map(|t| Instant::now() + t);
        self
    }

    /// The origin this context calls.
    pub fn origin(&self) -> &ApiOrigin {
        &self.origin
    }

    /// The subject this context's token claims, decoded but NOT verified: it names an account
    /// only once the runner has accepted the token (see [`Upstream::authorize_logs`]).
    pub fn token_subject(&self) -> Option<&str> {
        self.token.claims().map(|claims| claims.sub.as_str())
    }

    /// A hash of this context's token, to tell tokens apart without keeping one in clear.
    pub fn token_hash(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        self.token.expose().hash(&mut hasher);
        hasher.finish()
    }

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
        if options.wait_running {
            query.wait = Some(WaitFor::Running);
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

    /// `GET /api/v1/containers/runs?page_size&page_token`.
    pub async fn list_runs(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<RunPage, UpstreamError> {
        let query = ListRunsQuery {
            page_size: (page_size > 0).then_some(page_size),
            page_token: (!page_token.is_empty()).then(|| page_token.to_owned()),
        };
        self.json(self.request(Method::GET, paths::RUNS).query(&query))
            .await
    }

    /// `DELETE /api/v1/containers/runs/{id}`.
    pub async fn delete_run(&self, id: &str) -> Result<(), UpstreamError> {
        self.json::<serde::de::IgnoredAny>(self.request(Method::DELETE, &paths::run(id)))
            .await
            .map(drop)
    }

    /// `GET /api/v1/containers/runs/{id}/logs?follow&after_seq`: the run's frames after
    /// `after_seq`, ending with the exit frame once the run has ended.
    pub async fn logs(
        &self,
        id: &str,
        after_seq: u64,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<LogFrame, UpstreamError>> + use<>, UpstreamError> {
        self.logs_with(id, &LogsQuery::after(after_seq, follow))
            .await
    }

    /// Asks the runner whether this context's token may read run `id`'s logs, reading none:
    /// `logs?tail=0`, answered like any logs request (`token_invalid`, `token_expired`,
    /// `scope_missing`, `logs_disabled`, `not_found`) and otherwise with at most the exit frame.
    pub async fn authorize_logs(&self, id: &str) -> Result<(), UpstreamError> {
        let query = LogsQuery {
            tail: Some(0),
            ..LogsQuery::after(0, false)
        };
        let frames = self.logs_with(id, &query).await?;
        // The answer is the verdict; the (tiny) body is read only so the connection is reused.
        let mut frames = std::pin::pin!(frames);
        while let Some(Ok(_)) = frames.next().await {}
        Ok(())
    }

    /// One stream of a follow that may be resumed: `logs?follow=true&after_seq`, whose
    /// silence is bounded once `seen` (shared by the follow's streams) says the runner sends
    /// keepalives.
    pub async fn follow_logs(
        &self,
        id: &str,
        after_seq: u64,
        seen: &KeepalivesSeen,
    ) -> Result<impl Stream<Item = Result<LogFrame, UpstreamError>> + use<>, UpstreamError> {
        self.logs_seen(id, &LogsQuery::after(after_seq, true), seen.clone())
            .await
    }

    /// `GET /api/v1/containers/runs/{id}/logs` with every option of [`LogsQuery`].
    ///
    /// Keepalive frames are dropped. The response's headers must come within the silence
    /// bound ([`SILENCE_INTERVALS`] keepalive intervals); then a stream that is not followed
    /// is cut as broken (`Unreachable`) after that long without a byte, and a followed one
    /// too once a keepalive has come on it.
    pub async fn logs_with(
        &self,
        id: &str,
        query: &LogsQuery,
    ) -> Result<impl Stream<Item = Result<LogFrame, UpstreamError>> + use<>, UpstreamError> {
        self.logs_seen(id, query, KeepalivesSeen::default()).await
    }

    /// How long a log stream may go without a byte once its silence is bounded.
    pub fn silence_bound(&self) -> Duration {
        self.keepalive.saturating_mul(SILENCE_INTERVALS)
    }

    async fn logs_seen(
        &self,
        id: &str,
        query: &LogsQuery,
        seen: KeepalivesSeen,
    ) -> Result<impl Stream<Item = Result<LogFrame, UpstreamError>> + use<>, UpstreamError> {
        let query = LogsQuery {
            // Named only when not the default: older runners refuse unknown parameters.
            keepalive_seconds: (query.follow && self.keepalive != DEFAULT_KEEPALIVE)
                .then(|| self.keepalive.as_secs().max(1)),
            ..query.clone()
        };
        let request = self
            .request(Method::GET, &paths::run_logs(id))
            .query(&query);
        let bound = self.silence_bound();
        let response = tokio::time::timeout(bound, self.send(request))
            .await
            .map_err(|_| UpstreamError::Unreachable {
                origin: self.origin.to_string(),
                reason: format!(
                    "no answer to a log request within {}; the connection is presumed broken",
                    seconds(bound)
                ),
            })??;
        let silence = Silence {
            bound,
            always: !query.follow,
            seen,
        };
        let origin = self.origin.to_string();
        let bytes = response.bytes_stream().map_err({
            let origin = origin.clone();
            move |e| UpstreamError::Unreachable {
                origin: origin.clone(),
                reason: e.to_string(),
            }
        });
        Ok(ndjson_frames(bytes, origin, silence))
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

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, self.origin.join(path));
        match self.token.bearer() {
            Some(bearer) => request.header(reqwest::header::AUTHORIZATION, bearer),
            None => request.bearer_auth(self.token.expose()),
        }
    }

    /// Sends `request` (retried when [`retry_policy`] allows) and returns a successful
    /// response with its body unread. Not bounded by the deadline: a stream's body may
    /// outlive the call that opened it.
    async fn send(&self, request: RequestBuilder) -> Result<Response, UpstreamError> {
        self.send_until(request, None).await
    }

    async fn send_until(
        &self,
        request: RequestBuilder,
        deadline: Option<Instant>,
    ) -> Result<Response, UpstreamError> {
        let request = request
            .build()
            .map_err(|e| self.protocol(format!("cannot build the request: {e}")))?;
        let retryable = retry_policy(
            request.method(),
            request.headers().contains_key(IDEMPOTENCY_KEY),
        );
        let mut next = Some(request);
        let mut tries = 0;
        loop {
            tries += 1;
            let current = next.take().expect("a request for every try");
            if retryable && tries < MAX_TRIES {
                next = current.try_clone();
            }
            let (error, retry_after) = match self.http.execute(current).await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    let error = self.problem_of(response, retry_after, tries).await;
                    if !retryable_status(status) {
                        return Err(error);
                    }
                    (error, retry_after)
                }
                Err(e) if e.is_timeout() => return Err(self.timeout()),
                // Plain HTTP behind https:// stays so however often it is asked.
                Err(e) if plain_http_answer(&e) => return Err(self.unreachable(&e)),
                Err(e) if e.is_connect() => (self.unreachable(&e), None),
                Err(e) => return Err(self.unreachable(&e)),
            };
            if next.is_none() || retry_after.is_some_and(|d| d > MAX_HONOURED_RETRY_AFTER) {
                return Err(error);
            }
            let pause = backoff(tries, fastrand::f64()).max(retry_after.unwrap_or_default());
            if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                return Err(error);
            }
            tracing::debug!(origin = %self.origin, tries, ?pause, error = %error, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    async fn problem_of(
        &self,
        response: Response,
        retry_after: Option<Duration>,
        tries: u32,
    ) -> UpstreamError {
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(e) => return self.unreachable(&e),
        };
        match serde_json::from_slice::<Problem>(&body) {
            // A gateway's own answer (HTML, plain text): the runner is briefly out of reach.
            Err(_) if retryable_status(status) => UpstreamError::Unavailable {
                origin: self.origin.to_string(),
                status: status.to_string(),
                tries,
                retry_after,
            },
            Ok(problem) => match retry_after {
                Some(retry_after) => UpstreamError::RetryLater {
                    problem: Box::new(problem),
                    retry_after,
                },
                None => UpstreamError::Problem(Box::new(problem)),
            },
            Err(_) => self.protocol(format!(
                "HTTP {status} without a problem document{}",
                hint_for_status(status)
            )),
        }
    }

    /// A unary call: sent, retried and read within the deadline, the body parsed as JSON.
    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, UpstreamError> {
        let call = async {
            let request = match self.time_left() {
                Some(left) => request.timeout(left),
                None => request,
            };
            let response = self.send_until(request, self.deadline).await?;
            let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
            if body.is_empty() {
                // 204 and friends: `IgnoredAny` (and `()`-like targets) accept `null`.
                return serde_json::from_slice(b"null")
                    .map_err(|e| self.protocol(format!("invalid JSON: {e}")));
            }
            serde_json::from_slice(&body).map_err(|e| self.protocol(format!("invalid JSON: {e}")))
        };
        match self.time_left() {
            // A belt to reqwest's braces: the backoff sleeps are bounded too.
            Some(left) => tokio::time::timeout(left, call)
                .await
                .unwrap_or_else(|_| Err(self.timeout())),
            None => call.await,
        }
    }

    /// Time left before the deadline, less a small margin so busd's own DEADLINE_EXCEEDED
    /// (with its details) reaches the caller before the caller's timer fires.
    fn time_left(&self) -> Option<Duration> {
        let left = self.deadline?.saturating_duration_since(Instant::now());
        Some(left.saturating_sub((left / 10).min(Duration::from_millis(100))))
    }

    fn timeout(&self) -> UpstreamError {
        UpstreamError::Timeout {
            origin: self.origin.to_string(),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            return self.timeout();
        }
        if plain_http_answer(e) {
            return UpstreamError::NotTls {
                origin: self.origin.to_string(),
            };
        }
        UpstreamError::Unreachable {
            origin: self.origin.to_string(),
            reason: transport_reason(e),
        }
    }

    fn protocol(&self, reason: String) -> UpstreamError {
        UpstreamError::Protocol {
            origin: self.origin.to_string(),
            reason,
        }
    }
}

/// Whether a request may be sent again after a failure that may or may not have reached the
/// runner: reads and deletes always, a create only with an `Idempotency-Key`.
pub fn retry_policy(method: &Method, has_idempotency_key: bool) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::PUT => true,
        Method::POST => has_idempotency_key,
        _ => false,
    }
}

/// The statuses worth another try: the gateway or the runner is briefly unavailable.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The pause after try number `tries` (1-based): "equal jitter" — half the exponential step
/// plus a random part of the other half (`random` in `[0, 1)`), the step capped at
/// [`MAX_BACKOFF`].
pub fn backoff(tries: u32, random: f64) -> Duration {
    let step = BASE_BACKOFF
        .saturating_mul(1u32 << tries.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    step / 2 + (step / 2).mul_f64(random.clamp(0.0, 1.0))
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past is 0.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let at = SystemTime::from(date);
    Some(at.duration_since(now).unwrap_or_default())
}

/// A fresh, random `Idempotency-Key` for one logical create (reused by its retries).
fn new_idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to a seeded generator (still unique per process run).
        bytes = fastrand::u128(..).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("busd-{hex}")
}

fn hint_for_status(status: StatusCode) -> &'static str {
    if status == StatusCode::NOT_FOUND {
        " (is the API URL the runner's origin?)"
    } else {
        ""
    }
}

/// The innermost cause of a transport error, which is the useful part ("connection refused").
fn transport_reason(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        "timed out".to_owned()
    } else {
        source.to_string()
    }
}

/// Whether the TLS handshake failed because the peer answered with something that is not a
/// TLS record: a plain-HTTP server behind an `https://` origin.
fn plain_http_answer(e: &reqwest::Error) -> bool {
    fn is_plain_http(error: &(dyn std::error::Error + 'static)) -> bool {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
            );
        }
        // An io::Error's `source` skips the error it wraps: look inside it.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if is_plain_http(inner) {
                return true;
            }
        }
        error.source().is_some_and(is_plain_http)
    }
    is_plain_http(e)
}

/// A duration as whole or fractional seconds, for messages: "45 s", "0.3 s".
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// What a broken NDJSON stream from `origin` means: a stream cut mid-line is a connection
/// that broke, anything else an answer that is not the API's.
fn frame_error(origin: &str, e: ndjson::FrameError) -> UpstreamError {
    match e {
        ndjson::FrameError::Truncated => UpstreamError::Unreachable {
            origin: origin.to_owned(),
            reason: e.to_string(),
        },
        _ => UpstreamError::Protocol {
            origin: origin.to_owned(),
            reason: e.to_string(),
        },
    }
}

/// Splits an NDJSON byte stream into frames ([`ndjson::FrameDecoder`]), dropping keepalive
/// frames; past `silence`'s bound without a byte, once it is enforced, the stream ends with
/// `Unreachable`.
fn ndjson_frames<S>(
    bytes: S,
    origin: String,
    silence: Silence,
) -> impl Stream<Item = Result<LogFrame, UpstreamError>>
where
    S: Stream<Item = Result<bytes::Bytes, UpstreamError>> + Unpin,
{
    let protocol = frame_error;
    futures::stream::unfold(
        (bytes, ndjson::FrameDecoder::new(), origin, silence, false),
        move |(mut bytes, mut decoder, origin, silence, done)| async move {
            if done {
                return None;
            }
            loop {
                match decoder.next_frame() {
                    Some(Ok(LogFrame::Keepalive)) => {
                        silence.seen.set();
                        continue;
                    }
                    Some(Ok(frame)) => {
                        return Some((Ok(frame), (bytes, decoder, origin, silence, false)));
                    }
                    Some(Err(e)) => {
                        let err = protocol(&origin, e);
                        return Some((Err(err), (bytes, decoder, origin, silence, true)));
                    }
                    None => {}
                }
                let next = if silence.enforced() {
                    match tokio::time::timeout(silence.bound, bytes.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            let err = UpstreamError::Unreachable {
                                origin: origin.clone(),
                                reason: format!(
                                    "the log stream sent nothing for {}, although the runner sends keepalives; the connection is presumed broken",
                                    seconds(silence.bound)
                                ),
                            };
                            return Some((Err(err), (bytes, decoder, origin, silence, true)));
                        }
                    }
                } else {
                    bytes.next().await
                };
                match next {
                    Some(Ok(chunk)) => decoder.push(&chunk),
                    Some(Err(e)) => return Some((Err(e), (bytes, decoder, origin, silence, true))),
                    None => {
                        let end = decoder.finish().map_err(|e| protocol(&origin, e));
                        return end
                            .err()
                            .map(|err| (Err(err), (bytes, decoder, origin, silence, true)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(chunks: Vec<&'static [u8]>) -> Vec<Result<LogFrame, String>> {
        let bytes = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, UpstreamError>(bytes::Bytes::from_static(c))),
        );
        let frames = ndjson_frames(bytes, "http://o".into(), unbounded())
            .map(|r| r.map_err(|e| e.to_string()));
        futures::executor::block_on(frames.collect())
    }

    #[test]
    fn frames_split_across_chunks_are_joined() {
        let got = frames_of(vec![
            b"{\"type\":\"output\",\"seq\":1,\"stream\":\"stdout\",\"da",
            b"ta\":\"T0s=\",\"time\":\"2024-01-01T00:00:00Z\"}\n{\"type\":\"exit\",\"state\":\"exited\",",
            b"\"exit_code\":0,\"last_seq\":1}\n",
        ]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0].as_ref().unwrap().output_bytes().unwrap().unwrap(),
            b"OK"
        );
        assert!(matches!(
            got[1],
            Ok(LogFrame::Exit {
                exit_code: Some(0),
                last_seq: 1,
                ..
            })
        ));
    }

    /// A silence that is never enforced (no keepalive comes in these streams).
    fn unbounded() -> Silence {
        Silence {
            bound: Duration::from_secs(45),
            always: false,
            seen: KeepalivesSeen::default(),
        }
    }

    const OUTPUT_1: &[u8] =
        b"{\"type\":\"output\",\"seq\":1,\"stream\":\"stdout\",\"data\":\"T0s=\",\"time\":\"2024-01-01T00:00:00Z\"}\n";
    const KEEPALIVE: &[u8] = b"{\"type\":\"keepalive\"}\n";

    /// A byte stream fed by hand, and frames read from it with `silence`.
    fn fed(
        silence: Silence,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<&'static [u8]>,
        impl Stream<Item = Result<LogFrame, UpstreamError>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<&'static [u8]>();
        let bytes = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|b| Ok::<_, UpstreamError>(bytes::Bytes::from_static(b)));
        (
            tx,
            Box::pin(ndjson_frames(bytes, "http://o".into(), silence)),
        )
    }

    fn bounded(always: bool, seen: &KeepalivesSeen) -> Silence {
        Silence {
            bound: Duration::from_secs(3),
            always,
            seen: seen.clone(),
        }
    }

    #[tokio::test]
    async fn keepalive_frames_are_dropped_and_noted() {
        let seen = KeepalivesSeen::default();
        let bytes = futures::stream::iter(
            [KEEPALIVE, OUTPUT_1, KEEPALIVE]
                .map(|c| Ok::<_, UpstreamError>(bytes::Bytes::from_static(c))),
        );
        let silence = Silence {
            seen: seen.clone(),
            ..unbounded()
        };
        let got: Vec<_> = ndjson_frames(bytes, "http://o".into(), silence)
            .collect()
            .await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(matches!(got[0], Ok(LogFrame::Output { seq: 1, .. })));
        assert!(seen.get());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_a_keepalive_is_a_broken_connection() {
        let seen = KeepalivesSeen::default();
        let (tx, mut frames) = fed(bounded(false, &seen));
        tx.send(OUTPUT_1).unwrap();
        tx.send(KEEPALIVE).unwrap();
        assert!(matches!(
            frames.next().await,
            Some(Ok(LogFrame::Output { seq: 1, .. }))
        ));
        let started = tokio::time::Instant::now();
        let err = frames.next().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(
            matches!(&err, UpstreamError::Unreachable { reason, .. } if reason.contains("sent nothing for 3 s")),
            "{err:?}"
        );
        assert!(frames.next().await.is_none(), "the stream ends there");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn each_byte_restarts_the_silence_bound() {
        let seen = KeepalivesSeen::default();
        let (tx, mut frames) = fed(bounded(false, &seen));
        tx.send(KEEPALIVE).unwrap();
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                tx.send(KEEPALIVE).unwrap();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            tx.send(OUTPUT_1).unwrap();
            tx
        });
        let started = tokio::time::Instant::now();
        assert!(matches!(
            frames.next().await,
            Some(Ok(LogFrame::Output { seq: 1, .. }))
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(12));
        drop(feeder.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_follow_stream_without_keepalives_is_never_cut() {
        // An older runner: no keepalives, so a quiet run's stream must stay open.
        let (tx, mut frames) = fed(bounded(false, &KeepalivesSeen::default()));
        tx.send(OUTPUT_1).unwrap();
        assert!(frames.next().await.unwrap().is_ok());
        let waited = tokio::time::timeout(Duration::from_secs(3600), frames.next()).await;
        assert!(waited.is_err(), "still open after an hour: {waited:?}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_stream_is_bounded_from_its_first_byte() {
        // The follow's earlier stream saw a keepalive; this one is half-open from the start.
        let seen = KeepalivesSeen::default();
        seen.set();
        let (tx, mut frames) = fed(bounded(false, &seen));
        let started = tokio::time::Instant::now();
        assert!(matches!(
            frames.next().await,
            Some(Err(UpstreamError::Unreachable { .. }))
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_is_not_followed_is_always_bounded() {
        let (tx, mut frames) = fed(bounded(true, &KeepalivesSeen::default()));
        assert!(matches!(
            frames.next().await,
            Some(Err(UpstreamError::Unreachable { .. }))
        ));
        drop(tx);
    }

    #[test]
    fn the_keepalive_override_takes_whole_seconds_in_the_runners_bounds() {
        assert_eq!(keepalive_from_env(Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(
            keepalive_from_env(Some(" 300 ")),
            Some(Duration::from_secs(300))
        );
        for bad in [
            None,
            Some(""),
            Some("0"),
            Some("301"),
            Some("1.5"),
            Some("x"),
        ] {
            assert_eq!(keepalive_from_env(bad), None, "{bad:?}");
        }
        let upstreams = Upstreams::with_keepalive(Duration::from_secs(2));
        let origin = ApiOrigin::parse("http://o").unwrap();
        assert_eq!(
            upstreams
                .client(&origin, Token::new("eyJ.a.b"))
                .silence_bound(),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_an_end() {
        let got = frames_of(vec![b"{\"type\":\"exit\""]);
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().unwrap_err().contains("ended in the middle"));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let got = frames_of(vec![b"<html>\n"]);
        assert!(got[0].as_ref().unwrap_err().contains("invalid frame"));
    }

    #[test]
    fn only_idempotent_calls_and_keyed_creates_are_retried() {
        assert!(retry_policy(&Method::GET, false));
        assert!(retry_policy(&Method::DELETE, false));
        assert!(retry_policy(&Method::POST, true));
        assert!(!retry_policy(&Method::POST, false));
        assert!(!retry_policy(&Method::PATCH, false));
        for code in [502, 503, 504] {
            assert!(
                retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400, 401, 402, 403, 404, 409, 429, 500, 501] {
            assert!(
                !retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        for tries in 1..=8 {
            let step = (BASE_BACKOFF * (1 << (tries - 1))).min(MAX_BACKOFF);
            let low = backoff(tries, 0.0);
            let high = backoff(tries, 0.999_999);
            assert_eq!(low, step / 2, "try {tries}");
            assert!(
                high <= step && high > step * 9 / 10,
                "try {tries}: {high:?}"
            );
        }
        assert_eq!(backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(u32::MAX, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(1, 7.0), BASE_BACKOFF, "random is clamped");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767); // 1994-11-06T08:49:27Z
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn idempotency_keys_are_fresh_and_header_safe() {
        let (a, b) = (new_idempotency_key(), new_idempotency_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), "busd-".len() + 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
    }

    /// A scripted HTTP/1.1 upstream for fault injection: answers each request with the next
    /// scripted reply (the last one repeats) and records method, path and idempotency key.
    struct Fake {
        origin: ApiOrigin,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    /// A request the fake saw: method, path and `Idempotency-Key`.
    type Seen = (String, String, Option<String>);

    /// One scripted reply: status, extra headers, body; `None` status = accept and never answer.
    type Reply = (Option<u16>, &'static str, &'static str);

    async fn fake(replies: Vec<Reply>) -> Fake {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin =
            ApiOrigin::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (status, headers, body) = replies[n.min(replies.len() - 1)];
                n += 1;
                let log = log.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap().split(' ');
                    let (method, path) = (first.next().unwrap(), first.next().unwrap());
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                    };
                    let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
                    let mut rest = vec![0u8; length];
                    conn.read_exact(&mut rest).await.unwrap();
                    log.lock().unwrap().push((
                        method.to_owned(),
                        path.to_owned(),
                        header("idempotency-key"),
                    ));
                    let Some(status) = status else {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        Fake { origin, seen }
    }

    fn upstream_for(fake: &Fake) -> Upstream {
        Upstreams::default().client(&fake.origin, Token::new("eyJ.a.b"))
    }

    const UNAVAILABLE: Reply = (
        Some(503),
        "",
        r#"{"title":"t","status":503,"detail":"engine down","code":"engine_unavailable"}"#,
    );
    const STATUS_OK: Reply = (
        Some(200),
        "",
        r#"{"state":"ready","engine":"podman","engine_api_version":"1.41","profiles":[]}"#,
    );

    #[tokio::test]
    async fn a_read_is_retried_through_brief_unavailability() {
        let fake = fake(vec![UNAVAILABLE, UNAVAILABLE, STATUS_OK]).await;
        let status = upstream_for(&fake).status().await.unwrap();
        assert_eq!(status.state, "ready");
        assert_eq!(fake.seen.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_read_gives_up_after_three_tries() {
        let fake = fake(vec![UNAVAILABLE]).await;
        let err = upstream_for(&fake).status().await.unwrap_err();
        assert_eq!(err.problem().unwrap().detail, "engine down");
        assert_eq!(fake.seen.lock().unwrap().len(), MAX_TRIES as usize);
    }

    #[tokio::test]
    async fn a_create_is_retried_with_one_idempotency_key() {
        let created = (
            Some(201),
            "",
            r#"{"id":"run_1","state":"queued","image":"i","argv":[],"created_at":"2024-01-01T00:00:00Z"}"#,
        );
        let fake = fake(vec![UNAVAILABLE, created]).await;
        let run = upstream_for(&fake)
            .create_run(&CreateRun::default(), CreateOptions::default())
            .await
            .unwrap();
        assert_eq!(run.id, "run_1");
        let seen = fake.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2);
        let key = seen[0]
            .2
            .clone()
            .expect("the create carries an Idempotency-Key");
        assert_eq!(
            seen[1].2.as_deref(),
            Some(key.as_str()),
            "the retry reuses it"
        );

        // The next logical create gets a key of its own.
        let second = upstream_for(&fake)
            .create_run(&CreateRun::default(), CreateOptions::default())
            .await;
        assert!(second.is_ok());
        assert_ne!(
            fake.seen.lock().unwrap()[2].2.as_deref(),
            Some(key.as_str())
        );
    }

    #[tokio::test]
    async fn a_post_without_a_key_is_not_retried() {
        let fake = fake(vec![UNAVAILABLE]).await;
        let err = upstream_for(&fake)
            .create_token(Some("container:read"), None)
            .await;
        assert!(err.is_err());
        assert_eq!(fake.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried_and_retry_after_is_kept() {
        let quota = (
            Some(429),
            "retry-after: 30\r\n",
            r#"{"title":"t","status":429,"detail":"plan limit","code":"quota_exhausted"}"#,
        );
        let fake = fake(vec![quota]).await;
        let err = upstream_for(&fake).status().await.unwrap_err();
        assert!(
            matches!(&err, UpstreamError::RetryLater { retry_after, .. } if *retry_after == Duration::from_secs(30)),
            "{err:?}"
        );
        assert_eq!(fake.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_long_retry_after_is_not_waited_for() {
        let busy = (Some(503), "retry-after: 120\r\n", UNAVAILABLE.2);
        let fake = fake(vec![busy, STATUS_OK]).await;
        let err = upstream_for(&fake).status().await.unwrap_err();
        assert!(matches!(err, UpstreamError::RetryLater { .. }), "{err:?}");
        assert_eq!(fake.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_deadline_bounds_a_unary_call() {
        let fake = fake(vec![(None, "", "")]).await;
        let started = Instant::now();
        let err = upstream_for(&fake)
            .with_timeout(Some(Duration::from_millis(300)))
            .status()
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Timeout { .. }), "{err:?}");
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(300),
            "gave up before the caller: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_log_request_without_an_answer_is_a_broken_connection() {
        let fake = fake(vec![(None, "", "")]).await;
        let upstream = Upstreams::with_keepalive(Duration::from_millis(100))
            .client(&fake.origin, Token::new("eyJ.a.b"));
        let started = Instant::now();
        let Err(err) = upstream.logs("run_1", 0, true).await else {
            panic!("a log stream without headers");
        };
        let took = started.elapsed();
        assert!(
            matches!(&err, UpstreamError::Unreachable { reason, .. } if reason.contains("no answer to a log request within 0.3 s")),
            "{err:?}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn follow_requests_name_the_keepalive_only_when_it_is_not_the_default() {
        let empty = (Some(200), "", "");
        let fake = fake(vec![empty]).await;
        let token = || Token::new("eyJ.a.b");
        let seen = KeepalivesSeen::default();
        for upstreams in [
            Upstreams::with_keepalive(DEFAULT_KEEPALIVE),
            Upstreams::with_keepalive(Duration::from_secs(2)),
        ] {
            let upstream = upstreams.client(&fake.origin, token());
            let frames: Vec<_> = upstream
                .follow_logs("run_1", 4, &seen)
                .await
                .unwrap()
                .collect()
                .await;
            assert!(frames.is_empty(), "{frames:?}");
            // A read that is not followed never asks for keepalives.
            let _ = upstream.logs("run_1", 0, false).await.unwrap();
        }
        let paths: Vec<String> = fake
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.1.clone())
            .collect();
        assert_eq!(
            paths,
            [
                "/api/v1/containers/runs/run_1/logs?follow=true&after_seq=4",
                "/api/v1/containers/runs/run_1/logs?follow=false&after_seq=0",
                "/api/v1/containers/runs/run_1/logs?follow=true&after_seq=4&keepalive_seconds=2",
                "/api/v1/containers/runs/run_1/logs?follow=false&after_seq=0",
            ]
        );
    }

    #[tokio::test]
    async fn connect_errors_are_retried_then_reported() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let origin = ApiOrigin::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let err = Upstreams::default()
            .client(&origin, Token::new("eyJ.a.b"))
            .status()
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Unreachable { .. }), "{err:?}");
        // Two pauses of at least 50 ms and 100 ms: it was tried three times.
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
