//! The one place errors become HTTP responses: [`ApiError`] renders as an RFC 9457
//! `application/problem+json` document carrying a stable [`ProblemCode`] and, where a person can
//! act, guidance.
//!
//! Also the extractors whose rejections must be problem documents too ([`ApiJson`],
//! [`ApiQuery`]) and the fallbacks for unknown routes and methods.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bus_api::auth::Scope;
use bus_api::problem::PROBLEM_JSON;
use bus_api::{Problem, ProblemCode};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::auth::TokenError;
use crate::billing::BillingError;
use crate::engine::{EngineError, engine_message};
use crate::images::ImageError;
use crate::images::stored::StoragePathError;
use crate::runs::spec::SpecError;
use crate::store::{FindError, StoreError};
use crate::util::rfc3339;

/// How to get a token, for people who have none or a bad one.
pub const MINT_HINT: &str = "bus-runner token --state-dir DIR --account ID --resources \"container:read container:run container:delete\"";

/// How a `bus` user gets a token this runner accepts.
pub const RENEW_HINT: &str = "get one this runner accepts: `bus local up` for the local runner, \
     or `bus auth token` with the account's API key (from --api-key-file, BUS_API_KEY or \
     ~/.config/bus/auth/api-key); it is saved to ~/.config/bus/auth/api-token and \
     busd picks it up without a restart";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer` header, or a blank one.
    #[error("no bearer token")]
    TokenMissing,
    /// The token is malformed, signed by another key, or for another audience or issuer.
    #[error("invalid token: {0}")]
    TokenInvalid(String),
    /// The token's `exp` has passed.
    #[error("token expired")]
    TokenExpired {
        /// When it expired.
        at: OffsetDateTime,
    },
    /// The token lacks the scope the endpoint needs.
    #[error("scope {missing} missing")]
    ScopeMissing {
        /// The scope the endpoint needs.
        missing: Scope,
        /// The scopes the token has, to build the fix from.
        held: Vec<String>,
    },
    /// No such run for this account (or it is another account's: the two look the same).
    #[error("no run {0} in this account")]
    RunNotFound(String),
    /// A run token whose run has ended (or was deleted).
    #[error("this token was minted for run {run}, which has ended")]
    RunTokenEnded {
        /// The run the token was minted for.
        run: String,
    },
    /// A run token asked for what only an account's token may do (mint another token, use a
    /// proxy its run's profile does not list).
    #[error("{0}")]
    RunTokenRefused(String),
    /// No egress proxy of that name on this runner.
    #[error("no proxy {0} on this runner")]
    ProxyNotFound(String),
    /// A proxy's upstream failed or cannot be reached.
    #[error("the proxy's upstream failed: {0}")]
    ProxyUpstream(String),
    /// The name matches several ended runs of the account and no live one.
    #[error("the name {name} matches several runs")]
    RunNameAmbiguous {
        /// The name.
        name: String,
        /// The matching runs, newest first.
        ids: Vec<String>,
    },
    /// A live run of the account already has the name a new run asks for.
    #[error("the name {name} is taken by {id}")]
    RunNameTaken {
        /// The name.
        name: String,
        /// The run that has it.
        id: String,
    },
    /// No such detached exec for this account (or its run is gone).
    #[error("no exec {0} in this account")]
    ExecNotFound(String),
    /// A detached exec's output file could not be made.
    #[error("cannot keep the exec's output: {0}")]
    ExecOutput(String),
    /// No such route.
    #[error("no route {method} {path}")]
    RouteNotFound {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// The route exists but not with this method.
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// The request is malformed or a field is out of bounds; the text names which.
    #[error("{0}")]
    InvalidRequest(String),
    /// The body is larger than the endpoint accepts.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The named profile does not exist.
    #[error("no profile {name}")]
    UnknownProfile {
        /// The name asked for.
        name: String,
        /// The profiles that exist.
        valid: Vec<String>,
    },
    /// The `Idempotency-Key` was used before with a different request body.
    #[error("Idempotency-Key reused with a different request")]
    IdempotencyKeyReused,
    /// The run store failed.
    #[error("store: {0}")]
    Store(StoreError),
    /// The container engine failed or cannot be reached.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// `POST /auth/token` got no API key, or one that matches no account; the text says which.
    #[error("API key invalid: {0}")]
    ApiKeyInvalid(String),
    /// A token request asks for resources the account may not hold.
    #[error("resources not allowed: {not_allowed:?}")]
    ScopeNotAllowed {
        /// The requested resources the account may not hold.
        not_allowed: Vec<Scope>,
        /// What it may hold.
        allowed: Vec<Scope>,
    },
    /// The token's grant does not cover the run's image.
    #[error("image {image} not allowed")]
    ImageNotAllowed {
        /// The image the run would use.
        image: String,
        /// The grant's image names and prefixes.
        allowed: Vec<String>,
    },
    /// The token's grant switches off log streaming.
    #[error("logs disabled")]
    LogsDisabled,
    /// A run the caller would follow, refused (before anything starts) because the token's
    /// grant switches off log streaming.
    #[error("logs disabled, so the run cannot be followed")]
    FollowDisabled,
    /// The account must set up billing before runs start.
    #[error("billing required for {account}")]
    BillingRequired {
        /// The account.
        account: String,
    },
    /// The run is not running, so an exec cannot go into it.
    #[error("run {id} is {state}")]
    RunNotRunning {
        /// The run.
        id: String,
        /// Its state, e.g. `exited`.
        state: String,
    },
    /// A plan limit is reached (see [`crate::billing`]).
    #[error("{detail}")]
    QuotaExhausted {
        /// Which limit, and the usage.
        detail: String,
        /// What to do.
        guidance: String,
        /// Seconds until a retry may succeed (the `Retry-After` header).
        retry_after: u64,
    },
    /// An image or build request failed; [`image_problem`] renders it.
    #[error("{0}")]
    Image(#[from] ImageError),
}

impl ApiError {
    /// The problem document this error renders as.
    pub fn problem(&self) -> Problem {
        use ProblemCode as C;
        let p = |code, status: StatusCode, title: &str, detail: String| {
            Problem::new(code, status.as_u16(), title, detail)
        };
        match self {
            ApiError::Image(err) => image_problem(err),
            ApiError::TokenMissing => p(
                C::TokenMissing,
                StatusCode::UNAUTHORIZED,
                "Token missing",
                "this endpoint needs an `Authorization: Bearer <token>` header".to_owned(),
            )
            .with_guidance(format!(
                "mint one with `{MINT_HINT}` and save it to ~/.config/bus/auth/api-token (mode 0600), \
                 or point --token-file / BUS_AI_TOKEN at it"
            )),
            ApiError::TokenInvalid(why) => p(
                C::TokenInvalid,
                StatusCode::UNAUTHORIZED,
                "Token invalid",
                why.clone(),
            )
            .with_guidance(RENEW_HINT),
            ApiError::TokenExpired { at } => p(
                C::TokenExpired,
                StatusCode::UNAUTHORIZED,
                "Token expired",
                format!("the token expired at {}", rfc3339(*at)),
            )
            .with_guidance(RENEW_HINT),
            ApiError::ScopeMissing { missing, held } => {
                let mut scopes: Vec<&str> = held.iter().map(String::as_str).collect();
                if !scopes.contains(&missing.as_str()) {
                    scopes.push(missing.as_str());
                }
                p(
                    C::ScopeMissing,
                    StatusCode::FORBIDDEN,
                    "Scope missing",
                    format!("this token lacks the scope `{missing}`, which this endpoint needs"),
                )
                .with_guidance(format!(
                    "get a token that includes it: `bus auth token --resources \"{}\"`",
                    scopes.join(" ")
                ))
            }
            ApiError::RunTokenEnded { run } => p(
                C::TokenExpired,
                StatusCode::UNAUTHORIZED,
                "Token expired",
                format!("this token was minted for run {run}, which has ended"),
            )
            .with_guidance(
                "a run token lives only as long as its run: start a new run, or use the                  account's own token",
            ),
            ApiError::RunTokenRefused(why) => p(
                C::ScopeNotAllowed,
                StatusCode::FORBIDDEN,
                "Not allowed with a run token",
                why.clone(),
            )
            .with_guidance("use the account's own token for this"),
            ApiError::ProxyNotFound(name) => p(
                C::NotFound,
                StatusCode::NOT_FOUND,
                "Not found",
                format!("no proxy \"{name}\" on this runner"),
            )
            .with_guidance(
                "use the NAME_BASE_URL the run was given; the runner's operator defines \
                 proxies as [proxies.NAME] in its config",
            ),
            ApiError::ProxyUpstream(why) => p(
                C::Internal,
                StatusCode::BAD_GATEWAY,
                "Proxy upstream failed",
                format!("the proxy's upstream failed: {why}"),
            )
            .with_guidance("retry; if it persists, the runner's operator should check the proxy's upstream"),
            ApiError::RunNotFound(id) => p(
                C::NotFound,
                StatusCode::NOT_FOUND,
                "Not found",
                format!("no run {id} in this account"),
            )
            .with_guidance("check the id: `bus containers runs` lists this account's runs"),
            ApiError::RunNameAmbiguous { name, ids } => p(
                C::RunNameAmbiguous,
                StatusCode::CONFLICT,
                "Ambiguous run name",
                format!(
                    "the name \"{name}\" matches {} ended runs: {}",
                    ids.len(),
                    ids.join(", ")
                ),
            )
            .with_guidance("use one of these ids instead of the name"),
            ApiError::RunNameTaken { name, id } => p(
                C::RunNameTaken,
                StatusCode::CONFLICT,
                "Run name taken",
                format!("the run {id} already has the name \"{name}\" and has not ended"),
            )
            .with_guidance(format!(
                "choose another name, or stop it first: `bus containers stop {name}`"
            )),
            ApiError::ExecNotFound(id) => p(
                C::NotFound,
                StatusCode::NOT_FOUND,
                "Not found",
                format!("no exec {id} in this account"),
            )
            .with_guidance(
                "use an exec id that `bus containers exec -d RUN -- CMD` printed for this \
                 account; a deleted run's execs are gone with it",
            ),
            ApiError::ExecOutput(message) => p(
                C::Internal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Storage failed",
                format!("the runner could not keep the exec's output: {message}"),
            )
            .with_guidance("retry; if it persists, check the runner's disk and its log"),
            ApiError::RouteNotFound { method, path } => p(
                C::NotFound,
                StatusCode::NOT_FOUND,
                "Not found",
                format!("no endpoint {method} {path}"),
            )
            .with_guidance(
                "--api-url (or BUS_AI_API_URL) takes the runner's origin only: scheme, host and \
                 port, no path",
            ),
            ApiError::MethodNotAllowed { method, path } => p(
                C::InvalidRequest,
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                format!("{path} does not accept {method}"),
            ),
            ApiError::InvalidRequest(detail) => p(
                C::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "Invalid request",
                detail.clone(),
            ),
            ApiError::PayloadTooLarge(detail) => p(
                C::PayloadTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload too large",
                detail.clone(),
            ),
            ApiError::UnknownProfile { name, valid } => p(
                C::UnknownProfile,
                StatusCode::BAD_REQUEST,
                "Unknown profile",
                format!("there is no run profile \"{name}\"; valid profiles: {}", valid.join(", ")),
            )
            .with_guidance(
                "name one of the valid profiles with --profile, or leave --profile out for the \
                 default",
            ),
            ApiError::IdempotencyKeyReused => p(
                C::IdempotencyKeyReused,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency key reused",
                "this Idempotency-Key was already used, within the last 24 hours, with a \
                 different request body"
                    .to_owned(),
            )
            .with_guidance(
                "send a new Idempotency-Key for a new request; retry a request only with its \
                 original body",
            ),
            ApiError::RunNotRunning { id, state } => p(
                C::RunNotRunning,
                StatusCode::CONFLICT,
                "Run not running",
                format!("run {id} is {state}; exec needs a running run"),
            )
            .with_guidance(
                "start a run that stays up (`bus containers run -d -- sleep 3600`) and exec into \
                 its id",
            ),
            ApiError::Store(err) => p(
                C::Internal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Storage failed",
                format!("the runner could not store the run: {err}"),
            )
            .with_guidance("retry; if it persists, check the runner's disk and its log"),
            ApiError::Engine(err) => p(
                C::EngineUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "Engine unavailable",
                format!("the container engine failed: {}", engine_message(err)),
            )
            .with_guidance("check that the engine (podman system service) is running, then retry"),
            ApiError::ApiKeyInvalid(detail) => p(
                C::ApiKeyInvalid,
                StatusCode::UNAUTHORIZED,
                "API key invalid",
                detail.clone(),
            )
            .with_guidance(
                "check the account's API key that `bus auth token` sends (BUS_API_KEY or \
                 --api-key-file); the runner's operator lists accounts in its config file \
                 ([[accounts]] with api_key_sha256 from `bus-runner hash-key`); for the local \
                 runner, `bus local up` renews the token with the key it keeps",
            ),
            ApiError::ScopeNotAllowed {
                not_allowed,
                allowed,
            } => {
                let names = |s: &[Scope]| s.iter().map(|s| s.as_str()).collect::<Vec<_>>();
                p(
                    C::ScopeNotAllowed,
                    StatusCode::FORBIDDEN,
                    "Resource not allowed",
                    format!(
                        "this account may not hold {}; it may hold: {}",
                        names(not_allowed)
                            .iter()
                            .map(|n| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        names(allowed).join(" ")
                    ),
                )
                .with_guidance(format!(
                    "ask for a subset, e.g. `bus auth token --resources \"{}\"`, or ask the \
                     runner's operator to add the resource to the account's `resources`",
                    names(allowed).join(" ")
                ))
            }
            ApiError::ImageNotAllowed { image, allowed } => p(
                C::ImageNotAllowed,
                StatusCode::FORBIDDEN,
                "Image not allowed",
                format!(
                    "this account may not run the image \"{image}\"; allowed images: {}",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                ),
            )
            .with_guidance(
                "name an allowed image (or a profile that uses one), or ask the runner's operator \
                 to add it to the account's `images`",
            ),
            ApiError::LogsDisabled => p(
                C::LogsDisabled,
                StatusCode::FORBIDDEN,
                "Logs disabled",
                "log streaming is switched off for this account".to_owned(),
            )
            .with_guidance(
                "read the run's state and exit code with `bus containers get RUN_ID`, or ask the \
                 runner's operator to set `logs = true` for the account",
            ),
            ApiError::FollowDisabled => p(
                C::LogsDisabled,
                StatusCode::FORBIDDEN,
                "Logs disabled",
                "log streaming is switched off for this account, so a run cannot be followed; \
                 no run was started"
                    .to_owned(),
            )
            .with_guidance(
                "start the run detached with `bus containers run -d`, then read its state and \
                 exit code with `bus containers wait RUN_ID`",
            ),
            ApiError::BillingRequired { account } => p(
                C::BillingRequired,
                StatusCode::PAYMENT_REQUIRED,
                "Billing required",
                format!("the account \"{account}\" has no billing set up, so no run can start"),
            )
            .with_guidance(format!(
                "set up billing at {}, then retry; `bus billing` shows the account's state",
                crate::billing::SETUP_URL
            ))
            .with_guidance_url(crate::billing::SETUP_URL),
            ApiError::QuotaExhausted {
                detail, guidance, ..
            } => p(
                C::QuotaExhausted,
                StatusCode::TOO_MANY_REQUESTS,
                "Quota exhausted",
                detail.clone(),
            )
            .with_guidance(guidance.clone())
            .with_guidance_url(crate::billing::UPGRADE_URL),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        if problem.status >= 500 {
            tracing::warn!(code = problem.code.as_str(), detail = %problem.detail, "request failed");
        }
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let ApiError::QuotaExhausted { retry_after, .. } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        let challenge = match self {
            ApiError::TokenMissing => Some("Bearer realm=\"bus\""),
            ApiError::TokenInvalid(_)
            | ApiError::TokenExpired { .. }
            | ApiError::RunTokenEnded { .. }
            | ApiError::ApiKeyInvalid(_) => Some("Bearer realm=\"bus\", error=\"invalid_token\""),
            _ => None,
        };
        if let Some(challenge) = challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl From<crate::runs::agent::AgentError> for ApiError {
    fn from(err: crate::runs::agent::AgentError) -> ApiError {
        ApiError::RunTokenRefused(err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            StoreError::NameTaken { name, id } => ApiError::RunNameTaken { name, id },
            other => ApiError::Store(other),
        }
    }
}

impl From<FindError> for ApiError {
    fn from(err: FindError) -> ApiError {
        match err {
            FindError::NotFound(id) => ApiError::RunNotFound(id),
            FindError::Ambiguous { name, ids } => ApiError::RunNameAmbiguous { name, ids },
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> ApiError {
        match err {
            TokenError::Invalid(why) => ApiError::TokenInvalid(why),
            TokenError::Expired { at } => ApiError::TokenExpired { at },
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(err: SpecError) -> ApiError {
        match err {
            SpecError::Invalid(detail) => ApiError::InvalidRequest(detail),
            SpecError::UnknownProfile { name, valid } => ApiError::UnknownProfile { name, valid },
        }
    }
}

impl From<BillingError> for ApiError {
    fn from(err: BillingError) -> ApiError {
        match err {
            BillingError::ImageNotAllowed { image, allowed } => {
                ApiError::ImageNotAllowed { image, allowed }
            }
            BillingError::BillingRequired { account } => ApiError::BillingRequired { account },
            BillingError::QuotaExhausted {
                detail,
                guidance,
                retry_after,
            } => ApiError::QuotaExhausted {
                detail,
                guidance,
                retry_after,
            },
            BillingError::Store(err) => err.into(),
        }
    }
}

/// The problem document an image or build error renders as.
pub fn image_problem(err: &ImageError) -> Problem {
    use ProblemCode as C;
    let p = |code, status: StatusCode, title: &str| {
        Problem::new(code, status.as_u16(), title, err.to_string())
    };
    match err {
        ImageError::NotFound(_) => p(C::NotFound, StatusCode::NOT_FOUND, "Not found")
            .with_guidance(
                "`bus images ls` lists the images this account may use; pull, load or build \
                 the image first",
            ),
        ImageError::NotPulled(image) => p(C::NotFound, StatusCode::NOT_FOUND, "Not found")
            .with_guidance(format!(
                "pull it first (`bus images pull {image}`), or run with `--pull missing`"
            )),
        ImageError::Invalid(_) => p(
            C::InvalidRequest,
            StatusCode::BAD_REQUEST,
            "Invalid request",
        ),
        ImageError::NotAllowed { allowed, .. } => p(
            C::ImageNotAllowed,
            StatusCode::FORBIDDEN,
            "Image not allowed",
        )
        .with_guidance(format!(
            "this account's grant allows only: {}; name one of those, or ask the runner's \
             operator to add the image to the account's `images`",
            if allowed.is_empty() {
                "no images".to_owned()
            } else {
                allowed.join(", ")
            }
        )),
        ImageError::Public(_) => p(
            C::ImageNotAllowed,
            StatusCode::FORBIDDEN,
            "Image provided by the deployment",
        )
        .with_guidance(
            "every account may use it as it is; to change it, tag it under a name of your \
             own (`bus images tag SOURCE TARGET`)",
        ),
        ImageError::NameTaken(_) => p(C::ImageNameTaken, StatusCode::CONFLICT, "Image name taken")
            .with_guidance("choose another name (another repository or tag)"),
        ImageError::Busy(_) => p(C::ImageNameTaken, StatusCode::CONFLICT, "Image name busy")
            .with_guidance("retry once the other operation has ended"),
        ImageError::InUse(_) => p(C::ImageInUse, StatusCode::CONFLICT, "Image in use")
            .with_guidance(
                "stop or delete the runs that use it (`bus containers runs`), then retry",
            ),
        ImageError::RegistryDenied(_) => {
            p(C::RegistryDenied, StatusCode::FORBIDDEN, "Registry denied").with_guidance(
                "pass the registry's user name and password with --credentials-file FILE (a \
             0600 JSON file with `username` and `password`) and check them",
            )
        }
        ImageError::RegistryNotFound(_) => {
            p(C::NotFound, StatusCode::NOT_FOUND, "Not in the registry").with_guidance(
                "check the registry, repository and tag; the registry has no such image",
            )
        }
        ImageError::RegistryFailed(_) => p(
            C::RegistryFailed,
            StatusCode::BAD_GATEWAY,
            "Registry failed",
        )
        .with_guidance("check that the registry is reachable from the runner, then retry"),
        ImageError::TooLarge { .. } => p(
            C::UploadTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Upload too large",
        )
        .with_guidance(
            "send less (leave files out of the build context), or ask the runner's operator \
             to raise [images] max_build_context_mb / max_load_archive_mb",
        ),
        ImageError::Storage(e) => storage_problem(e, p),
        ImageError::BuildNotFound(_) => p(C::NotFound, StatusCode::NOT_FOUND, "Not found")
            .with_guidance("`bus builds ls` lists this account's builds"),
        ImageError::Engine(_) => p(
            C::EngineUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "Engine unavailable",
        )
        .with_guidance("check that the engine (podman system service) is running, then retry"),
        ImageError::Db(_) => p(
            C::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Storage failed",
        )
        .with_guidance("retry; if it persists, check the runner's disk and its log"),
        ImageError::Unavailable(_) => p(
            C::EngineUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "Images unavailable",
        )
        .with_guidance("start the runner with --engine naming the engine's socket"),
    }
}

/// How to name an archive in the account's storage, for every refusal of a storage path.
const STORAGE_PATH_HINT: &str = "name the archive relative to the storage root, as a run of \
     the `agent` profile sees it below /data (e.g. `images/app.tar` for /data/images/app.tar)";

/// The problem of an archive in the account's storage that cannot be loaded.
fn storage_problem(
    err: &StoragePathError,
    p: impl Fn(ProblemCode, StatusCode, &str) -> Problem,
) -> Problem {
    use ProblemCode as C;
    use StoragePathError as E;
    match err {
        E::Empty | E::Absolute(_) | E::Parent(_) | E::Nul => p(
            C::InvalidRequest,
            StatusCode::BAD_REQUEST,
            "Not a storage path",
        )
        .with_guidance(STORAGE_PATH_HINT),
        E::Symlink { .. } => p(
            C::InvalidRequest,
            StatusCode::BAD_REQUEST,
            "Symlink in the storage path",
        )
        .with_guidance(
            "loads from storage follow no symlinks: name the archive itself, or copy it there \
             (`cp -L` in a run of the `agent` profile)",
        ),
        E::NotAFile(_) => p(C::InvalidRequest, StatusCode::BAD_REQUEST, "Not a file")
            .with_guidance("name the archive file itself, not a directory"),
        E::Missing(_) => p(C::NotFound, StatusCode::NOT_FOUND, "Not in the storage").with_guidance(
            "write the archive there first, e.g. `bus containers run --profile agent -i -- sh -c \
             'mkdir -p /data/images && cat > /data/images/app.tar' < app.tar`, or check the \
             path with `bus containers run --profile agent -- ls -R /data`",
        ),
        E::Unreachable(_) => p(
            C::EngineUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "Storage unreachable",
        )
        .with_guidance(
            "loads from storage need the runner on the engine's host; upload the archive \
             instead (`bus images load FILE`)",
        ),
    }
}

/// The largest request body a route accepts; [`limit_body`] puts it in the request's
/// extensions, so a body found too large while it is read is refused naming the right limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit(pub usize);

impl BodyLimit {
    /// The 413 for a body over this limit.
    pub fn exceeded(self) -> ApiError {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than the {} bytes this endpoint accepts",
            self.0
        ))
    }
}

/// Middleware (with `axum::middleware::from_fn_with_state(limit, limit_body)`, beside
/// `DefaultBodyLimit::max(limit)`): a request whose `Content-Length` exceeds `limit` is
/// refused with 413 at once, before a byte of its body is read; a body without a length
/// (chunked) is refused once it has grown past `limit`.
pub async fn limit_body(
    axum::extract::State(limit): axum::extract::State<usize>,
    mut req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = BodyLimit(limit);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.0 as u64) {
        return limit.exceeded().into_response();
    }
    req.extensions_mut().insert(limit);
    next.run(req).await
}

/// A JSON object body whose rejections are problem documents (400, or 413 when too large).
/// Only an object is accepted: serde would also read a struct from an array of its fields.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().copied();
        let value = match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection, limit)),
        };
        if !value.is_object() {
            return Err(ApiError::InvalidRequest(
                "the request body must be a JSON object".to_owned(),
            ));
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| ApiError::InvalidRequest(format!("the request body does not fit: {e}")))
    }
}

fn json_rejection(rejection: JsonRejection, limit: Option<BodyLimit>) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return match limit {
            Some(limit) => limit.exceeded(),
            None => ApiError::PayloadTooLarge(
                "the request body is larger than this endpoint accepts".to_owned(),
            ),
        };
    }
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::InvalidRequest(
            "the request body must be JSON sent with `Content-Type: application/json`".to_owned(),
        ),
        JsonRejection::JsonDataError(e) => ApiError::InvalidRequest(format!(
            "the request body does not fit: {}",
            source_text(&e)
        )),
        JsonRejection::JsonSyntaxError(e) => ApiError::InvalidRequest(format!(
            "the request body is not valid JSON: {}",
            source_text(&e)
        )),
        other => ApiError::InvalidRequest(other.body_text()),
    }
}

/// The innermost message of an error chain (serde's own words, without axum's prefix).
fn source_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A query string whose rejections are 400 problem documents.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::InvalidRequest(format!(
                    "the query string does not fit: {}",
                    source_text(&e)
                )))
            }
            Err(other) => Err(ApiError::InvalidRequest(other.body_text())),
        }
    }
}

/// The fallback for paths no route matches: a 404 problem.
pub async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method,
        path: uri.path().to_owned(),
    }
}

/// The fallback for known paths asked with the wrong method: a 405 problem.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_guidance_names_the_missing_scope() {
        let e = ApiError::ScopeMissing {
            missing: Scope::Run,
            held: vec!["container:read".into()],
        };
        let p = e.problem();
        assert_eq!(p.status, 403);
        assert_eq!(p.code, ProblemCode::ScopeMissing);
        assert!(p.detail.contains("`container:run`"), "{}", p.detail);
        let guidance = p.guidance.unwrap();
        assert!(
            guidance.contains("`bus auth token --resources \"container:read container:run\"`"),
            "guidance names the fix: {guidance}"
        );
    }

    #[tokio::test]
    async fn json_bodies_must_be_objects() {
        let request = |body: &'static str| {
            Request::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(body))
                .unwrap()
        };
        // serde alone would read `[null, null]` as a CreateRun of two absent fields.
        for body in ["[null, null]", "null", "3"] {
            let err = ApiJson::<bus_api::CreateRun>::from_request(request(body), &())
                .await
                .unwrap_err();
            assert_eq!(
                err.problem().detail,
                "the request body must be a JSON object"
            );
        }
        let err = ApiJson::<bus_api::CreateRun>::from_request(request(r#"{"imgae": "x"}"#), &())
            .await
            .unwrap_err();
        assert!(
            err.problem()
                .detail
                .starts_with("the request body does not fit: unknown field `imgae`"),
            "{}",
            err.problem().detail
        );
        let ApiJson(run) =
            ApiJson::<bus_api::CreateRun>::from_request(request(r#"{"argv": ["true"]}"#), &())
                .await
                .unwrap();
        assert_eq!(run.argv, ["true"]);
    }

    #[test]
    fn problems_are_problem_json() {
        let r = ApiError::TokenMissing.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
