//! `POST /api/v1/auth/token`: exchange an account's API key for a scoped, short-lived token.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderValue, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bus_api::auth::{
    DEFAULT_TOKEN_TTL_SECONDS, MAX_TOKEN_TTL_SECONDS, Scope, TokenRequest, TokenResponse,
};
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::parse_scopes;
use crate::config::{Account, account_for_api_key};
use crate::http::openapi::{BadRequest, Forbidden, PayloadTooLarge, Unauthorized};
use crate::http::problem::{ApiError, ApiJson};

/// The account whose API key the request carries as `Authorization: Bearer <API key>`.
#[derive(Debug)]
pub struct KeyHolder(pub Account);

impl FromRequestParts<AppState> for KeyHolder {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let missing = || {
            ApiError::ApiKeyInvalid(
                "this endpoint needs the account's API key as `Authorization: Bearer <API key>`"
                    .to_owned(),
            )
        };
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .ok_or_else(missing)?;
        let (scheme, key) = value.split_once(' ').unwrap_or((value, ""));
        let key = key.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
            return Err(missing());
        }
        if state.config().accounts.is_empty() {
            return Err(ApiError::ApiKeyInvalid(
                "this runner has no accounts configured, so it accepts no API keys".to_owned(),
            ));
        }
        match account_for_api_key(state.config(), key) {
            Some(account) => Ok(KeyHolder(account.clone())),
            None if looks_like_jwt(key) => Err(ApiError::ApiKeyInvalid(
                "this is a token, not an API key; this endpoint exchanges an account's API key \
                 for a token"
                    .to_owned(),
            )),
            None => Err(ApiError::ApiKeyInvalid(
                "the API key matches no account of this runner".to_owned(),
            )),
        }
    }
}

fn looks_like_jwt(key: &str) -> bool {
    key.starts_with("eyJ") && key.split('.').count() == 3
}

/// Largest request body the endpoint accepts (a scope list and a TTL).
pub const BODY_LIMIT: usize = 4 * 1024;

/// Issues a token.
///
/// Exchanges an account's API key (as `Authorization: Bearer <API key>`) for a token carrying
/// the requested resources (a subset of the account's) for `ttl_seconds` (default 3600, at
/// most 86400). Only a runner whose config lists accounts accepts API keys.
#[utoipa::path(
    post,
    path = "/api/v1/auth/token",
    tag = "auth",
    operation_id = "issueToken",
    security(("api_key" = [])),
    request_body(content = TokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The token; never cached (`Cache-Control: no-store`).",
            body = TokenResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
    )
)]
pub async fn token(
    State(state): State<AppState>,
    KeyHolder(account): KeyHolder,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    // Absent: everything the account may hold.
    let Some(resources) = request.resources else {
        return issue(
            &state,
            &account,
            account.resources.clone(),
            request.ttl_seconds,
        );
    };
    if resources.trim().is_empty() {
        return Err(ApiError::InvalidRequest(
            "resources must name at least one resource, e.g. \"container:read container:run\"; \
             leave it out for every resource the account may hold"
                .to_owned(),
        ));
    }
    let scopes = parse_scopes(&resources).map_err(ApiError::InvalidRequest)?;
    let not_allowed: Vec<Scope> = scopes
        .iter()
        .copied()
        .filter(|s| !account.resources.contains(s))
        .collect();
    if !not_allowed.is_empty() {
        return Err(ApiError::ScopeNotAllowed {
            not_allowed,
            allowed: account.resources.clone(),
        });
    }
    issue(&state, &account, scopes, request.ttl_seconds)
}

/// Mints a token for `account` with `scopes` (already checked against what it may hold).
fn issue(
    state: &AppState,
    account: &Account,
    scopes: Vec<Scope>,
    ttl_seconds: Option<u64>,
) -> Result<Response, ApiError> {
    let ttl = ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECONDS);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECONDS {
        return Err(ApiError::InvalidRequest(format!(
            "ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECONDS} (24 hours); \
             leave it out for {DEFAULT_TOKEN_TTL_SECONDS}"
        )));
    }
    let (token, claims) = state.keys().mint_with_grant(
        &account.id,
        &scopes,
        Duration::from_secs(ttl),
        account.grant.clone(),
    );
    tracing::info!(account = %account.id, scope = %claims.scope, ttl, "token issued");
    let body = TokenResponse {
        token,
        expires_at: OffsetDateTime::from_unix_timestamp(claims.exp)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        scope: claims.scope,
    };
    let mut response = Json(body).into_response();
    // RFC 6749 §5.1: responses carrying tokens are not cached.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
