//! The caller of a request: its `Authorization: Bearer` token verified with the runner's
//! keys ([`crate::auth::Keys`]) and checked for the scope the route needs, as an extractor.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::{header, request::Parts};
use bus_api::auth::{Claims, Scope};

use crate::AppState;
use crate::auth::Keys;
use crate::http::problem::ApiError;
use crate::http::revision::AccountSlot;

/// The routes that stream a run's output, which a grant with `logs: false` refuses (as
/// routes/mod.rs spells them): its logs, and an attach to its command (which replays them).
pub const OUTPUT_ROUTES: [&str; 2] = [
    "/api/v1/containers/runs/{id}/logs",
    "/api/v1/containers/runs/{id}/attach",
];

/// A scope an endpoint requires, as a type: [`Read`], [`Run`], [`Delete`] or [`BillingRead`].
pub trait Needs {
    /// The scope.
    const SCOPE: Scope;
}

/// Requires `container:read`.
#[derive(Debug)]
pub struct Read;
/// Requires `container:run`.
#[derive(Debug)]
pub struct Run;
/// Requires `container:delete`.
#[derive(Debug)]
pub struct Delete;

impl Needs for Read {
    const SCOPE: Scope = Scope::Read;
}
impl Needs for Run {
    const SCOPE: Scope = Scope::Run;
}
impl Needs for Delete {
    const SCOPE: Scope = Scope::Delete;
}

/// Requires `billing:read`.
#[derive(Debug)]
pub struct BillingRead;

impl Needs for BillingRead {
    const SCOPE: Scope = Scope::BillingRead;
}

/// Requires `image:read`.
#[derive(Debug)]
pub struct ImageRead;
/// Requires `image:write`.
#[derive(Debug)]
pub struct ImageWrite;
/// Requires `image:build`.
#[derive(Debug)]
pub struct ImageBuild;

impl Needs for ImageRead {
    const SCOPE: Scope = Scope::ImageRead;
}
impl Needs for ImageWrite {
    const SCOPE: Scope = Scope::ImageWrite;
}
impl Needs for ImageBuild {
    const SCOPE: Scope = Scope::ImageBuild;
}

/// The verified caller of a request whose token carries scope `S::SCOPE`.
///
/// As an extractor it rejects with `token_missing`, `token_invalid`, `token_expired` or
/// `scope_missing` before any other extractor (such as the body) runs; on [`OUTPUT_ROUTES`] it
/// also rejects with `logs_disabled` when the token's grant switches logs off (whether or not
/// the run exists, so the answer says nothing about other accounts' runs). It notes the
/// account in the request's [`AccountSlot`], for the `bus-revision` header.
#[derive(Debug)]
pub struct Caller<S> {
    /// The token's verified claims; `claims.sub` owns what the request creates.
    pub claims: Claims,
    _scope: PhantomData<S>,
}

impl<S> Caller<S> {
    /// The account the caller speaks for.
    pub fn account(&self) -> &str {
        &self.claims.sub
    }
}

/// Verifies a request's `Authorization` header and the scope it needs.
pub fn authorize(
    keys: &Keys,
    authorization: Option<&[u8]>,
    need: Scope,
) -> Result<Claims, ApiError> {
    let claims = authorize_token(keys, authorization)?;
    if !claims.has(need) {
        let held = claims.scopes().map(str::to_owned).collect();
        return Err(ApiError::ScopeMissing {
            missing: need,
            held,
        });
    }
    Ok(claims)
}

/// Verifies a request's `Authorization: Bearer` header, whatever its scopes.
pub fn authorize_token(keys: &Keys, authorization: Option<&[u8]>) -> Result<Claims, ApiError> {
    let value = authorization.ok_or(ApiError::TokenMissing)?;
    let value = std::str::from_utf8(value)
        .map_err(|_| ApiError::TokenInvalid("the Authorization header is not text".to_owned()))?
        .trim();
    if value.is_empty() {
        return Err(ApiError::TokenMissing);
    }
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::TokenInvalid(
            "the Authorization header must read `Bearer <token>`".to_owned(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::TokenMissing);
    }
    keys.verify(token).map_err(ApiError::from)
}

/// Refuses a run token (one with a `run` claim) once its run has ended or is gone.
pub fn check_run_live(state: &AppState, claims: &Claims) -> Result<(), ApiError> {
    let Some(run) = &claims.run else {
        return Ok(());
    };
    let live = state
        .store()
        .get(&claims.sub, run)
        .is_some_and(|entry| !entry.state().is_terminal());
    if live {
        Ok(())
    } else {
        Err(ApiError::RunTokenEnded { run: run.clone() })
    }
}

impl<S: Needs> FromRequestParts<AppState> for Caller<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let claims = authorize(state.keys(), header, S::SCOPE)?;
        check_run_live(state, &claims)?;
        let on_logs = parts
            .extensions
            .get::<MatchedPath>()
            .is_some_and(|p| OUTPUT_ROUTES.contains(&p.as_str()));
        if on_logs && claims.grant.as_ref().is_some_and(|g| !g.allows_logs()) {
            return Err(ApiError::LogsDisabled);
        }
        if let Some(slot) = parts.extensions.get::<AccountSlot>() {
            slot.fill(&claims.sub);
        }
        Ok(Caller {
            claims,
            _scope: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::tests::keys;

    fn code(err: ApiError) -> &'static str {
        err.problem().code.as_str()
    }

    #[test]
    fn authorize_checks_header_and_scope() {
        let (_d, k) = keys();
        let token = k.mint("a", &[Scope::Read], Duration::from_secs(60));
        let bearer = format!("Bearer {token}");
        assert_eq!(
            code(authorize(&k, None, Scope::Read).unwrap_err()),
            "token_missing"
        );
        assert_eq!(
            code(authorize(&k, Some(b"  "), Scope::Read).unwrap_err()),
            "token_missing"
        );
        assert_eq!(
            code(authorize(&k, Some(b"Bearer "), Scope::Read).unwrap_err()),
            "token_missing"
        );
        assert_eq!(
            code(authorize(&k, Some(b"Basic abc"), Scope::Read).unwrap_err()),
            "token_invalid"
        );
        assert!(authorize(&k, Some(bearer.as_bytes()), Scope::Read).is_ok());
        let err = authorize(&k, Some(bearer.as_bytes()), Scope::Delete).unwrap_err();
        assert!(!err.problem().detail.contains(&token));
        assert_eq!(code(err), "scope_missing");
    }
}
