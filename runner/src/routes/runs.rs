//! `POST/GET /api/v1/containers/runs` and `GET/DELETE /api/v1/containers/runs/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bus_api::runs::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use bus_api::{CreateRun, Run, RunOptions, RunPage, RunState};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::{self, Caller};
use crate::executor;
use crate::problem::{ApiError, ApiJson, ApiQuery, engine_message};
use crate::routes::idempotency;
use crate::spec::RunSpec;
use crate::store::{Inserted, NewRun, new_run_id};

/// Largest request body `POST /runs` accepts.
pub const BODY_LIMIT: usize = 256 * 1024;

/// Starts a run: validates the request, records it as `queued`, and hands it to the executor.
/// With an `Idempotency-Key` already used by this account (24 h), answers with the original
/// response instead (see [`idempotency`]).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CreateRun>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency::from_request(&headers, &request)?;
    if let Some(key) = &idempotency {
        if let Some(replay) = state.store().find_replay(caller.account(), key).await? {
            return Ok(idempotency::replay(replay));
        }
    }
    let spec = RunSpec::parse(request, state.config())?;
    // Grant, billing and quota, before any engine call; held until the run is recorded.
    let _admission = crate::billing::admit(&state, &caller.claims, &spec.image).await?;
    // Only an image the account may see: public, or one it pulled, loaded, built or tagged.
    state
        .images()
        .check_run(caller.account(), &spec.image)
        .await?;
    let record = Run {
        id: new_run_id(),
        state: RunState::Queued,
        exit_code: None,
        profile: Some(spec.profile.clone()),
        image: spec.image.clone(),
        argv: spec.argv.clone(),
        name: spec.name.clone(),
        labels: spec.labels.clone(),
        created_at: OffsetDateTime::now_utc(),
        started_at: None,
        finished_at: None,
        reason: None,
        wall_seconds: None,
        options: RunOptions {
            ports: spec.ports.clone(),
            tty: spec.tty,
            stdin: spec.stdin,
            storage: spec.storage.clone(),
            memory_mb: spec.memory_mb,
        },
    };
    let new = NewRun {
        record,
        timeout: spec.timeout,
        idempotency,
    };
    let entry = match state.store().insert(caller.account(), new).await? {
        Inserted::Created(entry) => entry,
        Inserted::Replayed(replay) => return Ok(idempotency::replay(replay)),
    };
    let run = entry.snapshot();
    tracing::info!(run = %run.id, owner = caller.account(), image = %run.image, "run accepted");
    let mounts_dir = crate::storage::mounts_dir(state.store());
    executor::spawn(state.engine().clone(), entry, spec, mounts_dir);
    let location = format!("/api/v1/containers/runs/{}", run.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(run),
    )
        .into_response())
}

/// The query of `GET /runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Runs per page; 0 or absent means the default, larger than the maximum means the maximum.
    pub page_size: Option<u32>,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
}

const PAGE_TOKEN_PREFIX: &str = "runs.v1.";

/// Encodes a listing cursor (the creation serial to continue below) as an opaque token.
pub fn encode_page_token(serial: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{serial}"))
}

/// Decodes a token from [`encode_page_token`]; anything else is a 400.
pub fn decode_page_token(token: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(
            "page_token is not one this runner issued; pass next_page_token from the previous page"
                .to_owned(),
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|n| n.parse().ok())
        .ok_or_else(bad)
}

/// The caller's runs, newest first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller<auth::Read>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<RunPage>, ApiError> {
    let size = match query.page_size {
        None | Some(0) => DEFAULT_PAGE_SIZE,
        Some(n) => n.min(MAX_PAGE_SIZE),
    };
    let before = query
        .page_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(decode_page_token)
        .transpose()?;
    let (runs, next) = state.store().list(caller.account(), before, size as usize);
    Ok(Json(RunPage {
        runs,
        next_page_token: next.map(encode_page_token),
    }))
}

/// One run.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller<auth::Read>,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    let entry = state
        .store()
        .get(caller.account(), &id)
        .ok_or(ApiError::RunNotFound(id))?;
    Ok(Json(entry.snapshot()))
}

/// Deletes a run; a live run's container is force-removed first.
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller<auth::Delete>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.store();
    let entry = store
        .get(caller.account(), &id)
        .ok_or_else(|| ApiError::RunNotFound(id.clone()))?;
    // Remove a live container before forgetting the run, so an engine failure changes nothing.
    if let Some(container) = entry.container() {
        if !entry.snapshot().state.is_terminal() {
            entry.set_deleting(true);
            if let Err(e) = state.engine().remove(&container).await {
                entry.set_deleting(false);
                return Err(e.into());
            }
        }
    }
    let entry = store
        .remove(caller.account(), &id)
        .ok_or(ApiError::RunNotFound(id))?;
    // The executor may have created the container meanwhile (it removes it itself when it
    // sees the run deleted before it recorded the container).
    if let Some(container) = entry.container() {
        if let Err(e) = state.engine().remove(&container).await {
            tracing::warn!(run = %entry.id, error = %engine_message(&e), "removing the container failed");
        }
    }
    state.execs().remove_run(&entry.id);
    tracing::info!(run = %entry.id, owner = caller.account(), "run deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_token_round_trip() {
        for serial in [0, 1, 42, u64::MAX] {
            assert_eq!(
                decode_page_token(&encode_page_token(serial)).unwrap(),
                serial
            );
        }
        for bad in [
            "",
            "abc",
            "!!",
            &URL_SAFE_NO_PAD.encode("runs.v1.x"),
            &URL_SAFE_NO_PAD.encode("7"),
        ] {
            let err = decode_page_token(bad).unwrap_err();
            assert_eq!(err.problem().status, 400, "{bad}");
        }
    }
}
