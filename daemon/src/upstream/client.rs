//! The pool of REST clients and one call context: requests with the bearer token, sent and
//! retried ([`super::retry`]), answers read as JSON or as RFC 9457 problems.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bus_api::Problem;
use bus_api::runs::REVISION_HEADER;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;

use super::error::{hint_for_status, plain_http_answer, transport_reason};
use super::logs::{DEFAULT_KEEPALIVE, KEEPALIVE_ENV, keepalive_from_env};
use super::origin::ApiOrigin;
use super::retry::{
    IDEMPOTENCY_KEY, MAX_HONOURED_RETRY_AFTER, MAX_TRIES, backoff, parse_retry_after, retry_policy,
    retryable_status,
};
use super::{TrustedCas, UpstreamError};
use crate::credentials::Token;

/// How long a TCP/TLS connect may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of REST clients, two per origin (see [`Clients`]).
#[derive(Clone)]
pub struct Upstreams {
    clients: Arc<Mutex<HashMap<ApiOrigin, Clients>>>,
    /// The revisions the runners' answers reported.
    revisions: Revisions,
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
    /// on the wire, at least one) and are presumed broken after
    /// [`SILENCE_INTERVALS`](super::SILENCE_INTERVALS) times that without a byte.
    pub fn with_keepalive(keepalive: Duration) -> Self {
        Upstreams {
            clients: Arc::default(),
            revisions: Revisions::default(),
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

    /// The clients for `origin`, made on first use and kept warm afterwards.
    pub fn client(&self, origin: &ApiOrigin, token: Token) -> Upstream {
        let mut clients = self.clients.lock().expect("upstream pool lock poisoned");
        let Clients { unary, streams } = clients
            .entry(origin.clone())
            .or_insert_with(|| Clients {
                unary: self.builder().build().expect("the TLS backend initialises"),
                streams: self
                    .builder()
                    .http1_only()
                    .build()
                    .expect("the TLS backend initialises"),
            })
            .clone();
        Upstream {
            http: streams,
            unary,
            origin: origin.clone(),
            token,
            revisions: self.revisions.clone(),
            deadline: None,
            keepalive: self.keepalive,
            websocket_tls: self.cas.websocket.clone(),
        }
    }

    fn builder(&self) -> reqwest::ClientBuilder {
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
    }
}

/// One origin's clients. Unary calls share HTTP/2 connections where the runner offers it
/// (ALPN over TLS): many calls on one connection cost fewer reads, writes and wake-ups.
/// Streams (log follows, uploads, downloads) keep HTTP/1.1 connections of their own, so
/// however many are open, none waits for a free HTTP/2 stream and none makes a unary call
/// wait for one.
#[derive(Clone)]
struct Clients {
    unary: reqwest::Client,
    streams: reqwest::Client,
}

/// One call context: pooled clients, an origin and a token.
#[derive(Clone)]
pub struct Upstream {
    /// For streams: HTTP/1.1, a connection per stream.
    pub(super) http: reqwest::Client,
    /// For unary calls ([`Upstream::json`]): HTTP/2 when the runner offers it.
    unary: reqwest::Client,
    pub(super) origin: ApiOrigin,
    pub(super) token: Token,
    /// Where answers' revisions are noted (shared by the pool).
    revisions: Revisions,
    /// When the caller gives up: bounds unary calls (not streams, which may outlive it).
    pub(super) deadline: Option<Instant>,
    /// The keepalive interval follow streams are asked for.
    pub(super) keepalive: Duration,
    /// The exec WebSocket's TLS settings when extra CAs are trusted.
    pub(super) websocket_tls: Option<Arc<rustls::ClientConfig>>,
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

    /// This context's token.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The highest revision of this context's account (its token's subject) that an answer
    /// from this context's origin has reported; 0 when none has.
    pub fn account_revision(&self) -> u64 {
        self.token_subject()
            .map_or(0, |account| self.revisions.get(&self.origin, account))
    }

    /// A hash of this context's token, to tell tokens apart without keeping one in clear.
    pub fn token_hash(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        self.token.expose().hash(&mut hasher);
        hasher.finish()
    }

    pub(super) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, self.origin.join(path));
        match self.token.bearer() {
            Some(bearer) => request.header(reqwest::header::AUTHORIZATION, bearer),
            None => request.bearer_auth(self.token.expose()),
        }
    }

    /// Sends `request` (retried when [`retry_policy`] allows) and returns a successful
    /// response with its body unread. Not bounded by the deadline: a stream's body may
    /// outlive the call that opened it.
    pub(super) async fn send(&self, request: RequestBuilder) -> Result<Response, UpstreamError> {
        self.send_on(&self.http, request, None).await
    }

    /// Sends `request` on `client`, retried when allowed while `deadline` leaves time.
    async fn send_on(
        &self,
        client: &reqwest::Client,
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
            let (error, retry_after) = match client.execute(current).await {
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
    pub(super) async fn json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, UpstreamError> {
        let call = async {
            let request = match self.time_left() {
                Some(left) => request.timeout(left),
                None => request,
            };
            let response = self.send_on(&self.unary, request, self.deadline).await?;
            self.note_revision(&response);
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

    /// Notes the account revision a successful answer reports ([`REVISION_HEADER`]).
    fn note_revision(&self, response: &Response) {
        let revision = response
            .headers()
            .get(REVISION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if let (Some(revision), Some(account)) = (revision, self.token_subject()) {
            self.revisions.note(&self.origin, account, revision);
        }
    }

    /// Time left before the deadline, less a small margin so busd's own DEADLINE_EXCEEDED
    /// (with its details) reaches the caller before the caller's timer fires.
    pub fn time_left(&self) -> Option<Duration> {
        let left = self.deadline?.saturating_duration_since(Instant::now());
        Some(left.saturating_sub((left / 10).min(Duration::from_millis(100))))
    }

    pub(super) fn timeout(&self) -> UpstreamError {
        UpstreamError::Timeout {
            origin: self.origin.to_string(),
        }
    }

    pub(super) fn unreachable(&self, e: &reqwest::Error) -> UpstreamError {
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

    pub(super) fn protocol(&self, reason: String) -> UpstreamError {
        UpstreamError::Protocol {
            origin: self.origin.to_string(),
            reason,
        }
    }
}

/// The highest account revision ([`REVISION_HEADER`]) each origin's answers reported, per
/// account (a token's subject, decoded but not verified: only answers the runner gave to the
/// token are noted, so a forged subject notes nothing).
#[derive(Clone, Default)]
pub struct Revisions(Arc<Mutex<HashMap<ApiOrigin, HashMap<String, u64>>>>);

impl Revisions {
    fn note(&self, origin: &ApiOrigin, account: &str, revision: u64) {
        let mut origins = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let accounts = match origins.get_mut(origin) {
            Some(accounts) => accounts,
            None => origins.entry(origin.clone()).or_default(),
        };
        match accounts.get_mut(account) {
            Some(highest) => *highest = (*highest).max(revision),
            None => {
                accounts.insert(account.to_owned(), revision);
            }
        }
    }

    fn get(&self, origin: &ApiOrigin, account: &str) -> u64 {
        let origins = self.0.lock().unwrap_or_else(|e| e.into_inner());
        origins
            .get(origin)
            .and_then(|accounts| accounts.get(account))
            .copied()
            .unwrap_or(0)
    }
}
