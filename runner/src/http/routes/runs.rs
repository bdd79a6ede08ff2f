//! `POST/GET /api/v1/containers/runs` (with `watch`, see [`watch`]) and
//! `GET/DELETE /api/v1/containers/runs/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bus_api::auth::Scope;
pub use bus_api::runs::MAX_WAIT_MS;
use bus_api::runs::{CreateRunQuery, ListRunsQuery, RunEvent, WaitFor};
use bus_api::{CreateRun, Run, RunOptions, RunPage, RunState};
use std::time::Duration;
use time::OffsetDateTime;

use crate::AppState;
use crate::engine::engine_message;
use crate::http::auth::{self, Caller};
use crate::http::openapi::{
    BadRequest, Conflict, EngineUnavailable, Forbidden, Internal, NotFound, PayloadTooLarge,
    PaymentRequired, TooManyRequests, Unprocessable,
};
use crate::http::problem::{ApiError, ApiJson, ApiQuery};
use crate::http::routes::{idempotency, watch};
use crate::images::Images;
use crate::runs::spec::RunSpec;
use crate::runs::{agent, executor};
use crate::store::{Entry, Inserted, NewRun, Replay, RunFilter, new_run_id};

/// Largest request body `POST /runs` accepts.
pub const BODY_LIMIT: usize = 256 * 1024;
/// How long `wait=running` waits when the query names no `wait_ms`.
pub const DEFAULT_START_WAIT: Duration = Duration::from_secs(60);
/// How long a started command must stay up before `wait=running` answers it running.
pub const START_SETTLE: Duration = Duration::from_millis(50);
/// How often `wait=ready` tries the published ports.
const READY_POLL: Duration = Duration::from_millis(100);
/// A service's timeout when the plan does not limit run-seconds: a year.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How long an answer waits for the end of a run whose container already stopped.
const ENDING_WAIT: Duration = Duration::from_secs(10);

/// The create query's wait, checked.
pub trait StartWait {
    /// What to wait for and how long at most; `None` without `wait`.
    fn start_wait(&self) -> Result<Option<(WaitFor, Duration)>, ApiError>;
}

impl StartWait for CreateRunQuery {
    fn start_wait(&self) -> Result<Option<(WaitFor, Duration)>, ApiError> {
        match (self.wait, self.wait_ms) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(ApiError::InvalidRequest(
                "wait_ms needs wait=running or wait=ready".to_owned(),
            )),
            (Some(what), None) => Ok(Some((what, DEFAULT_START_WAIT))),
            (Some(what), Some(ms)) if (1..=MAX_WAIT_MS).contains(&ms) => {
                Ok(Some((what, Duration::from_millis(ms))))
            }
            (Some(_), Some(ms)) => Err(ApiError::InvalidRequest(format!(
                "wait_ms must be from 1 to {MAX_WAIT_MS}, not {ms}"
            ))),
        }
    }
}

/// Starts a run.
///
/// Validates the request (every field bounded), checks grant, billing and quota before any
/// container work, records the run as `queued` and starts it in the background.
/// Follow it with the logs endpoint. With an `Idempotency-Key` that this account used in the
/// last 24 hours with the same body, answers with the original run instead of starting
/// another (`Idempotent-Replayed: true`). `owner` and `account_id` in the body are ignored:
/// the run belongs to the token's account.
#[utoipa::path(
    post,
    path = "/api/v1/containers/runs",
    tag = "containers",
    operation_id = "createRun",
    security(("bearer" = ["container:run"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "1 to 255 printable ASCII characters without spaces, e.g. a UUID."),
        ("wait" = Option<String>, Query, pattern = "^running$",
            description = "`running`: answer once the run runs or has ended (a command that \
                exits at once is answered ended, with its exit code or the reason it failed to \
                start), at most `wait_ms`; then the run as it is."),
        ("wait_ms" = Option<u64>, Query, minimum = 1, maximum = 600000,
            description = "With `wait`: the longest wait in milliseconds (default 60000)."),
        ("follow" = Option<bool>, Query,
            description = "The caller will follow the run's output: refused before anything \
                starts when the token lacks `container:read` (`scope_missing`) or its grant \
                switches logs off (`logs_disabled`)."),
    ),
    request_body(content = CreateRun, content_type = "application/json"),
    responses(
        (status = 201, description = "The run: `queued`, or with `wait` as it is once it runs \
            or has ended.", body = Run,
            headers(
                ("Location" = String, description = "The run's URL path."),
                ("Idempotent-Replayed" = String,
                    description = "`true` when this is the response to an earlier request with the same key."),
            )),
        (status = 400, response = BadRequest),
        (status = 402, response = PaymentRequired),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 409, response = Conflict),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    )
)]
// Starts a run: validates the request, records it as `queued`, and hands it to the executor.
// With an `Idempotency-Key` already used by this account (24 h), answers with the original
// response instead (see [`idempotency`]). With `wait=running`, answers once the run runs or
// has ended (see [`answer_started`]).
pub async fn create(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<CreateRunQuery>,
    ApiJson(mut request): ApiJson<CreateRun>,
) -> Result<Response, ApiError> {
    let start_wait = query.start_wait()?;
    // A caller that will follow the output is refused before anything starts when it may
    // not read it: without `container:read`, or under a grant that switches logs off. So a
    // create with `follow` answers for the logs read too.
    if query.follow {
        if !caller.claims.has(Scope::Read) {
            return Err(ApiError::ScopeMissing {
                missing: Scope::Read,
                held: caller.claims.scopes().map(str::to_owned).collect(),
            });
        }
        if caller
            .claims
            .grant
            .as_ref()
            .is_some_and(|g| !g.allows_logs())
        {
            return Err(ApiError::FollowDisabled);
        }
    }
    // Used for this request's pull only: never part of the run, its record or the stored
    // request an idempotent replay is compared with.
    let credentials = request.credentials.take();
    let idempotency = idempotency::from_request(&headers, &request)?;
    if let Some(key) = &idempotency {
        if let Some(replay) = state.store().find_replay(caller.account(), key).await? {
            return Ok(replayed(&state, caller.account(), replay, start_wait).await);
        }
    }
    let pull = request.pull.unwrap_or_default();
    let mut spec = RunSpec::parse(request, state.config())?;
    agent::check(state.config(), &caller.claims, &spec)?;
    // A pull first, when the run asks for one (it can take a while; nothing is held
    // meanwhile). The pull checks the token's image grant itself.
    state
        .images()
        .pull_for_run(&caller.claims, &spec.image, pull, credentials)
        .await?;
    // Grant, billing and quota, before any engine call; held until the run is recorded.
    let admission = crate::billing::admit(
        state.billing(),
        state.config(),
        state.store(),
        &caller.claims,
        &spec.image,
    )
    .await?;
    // Only an image the account may see: public, or one it pulled, loaded, built or tagged.
    state
        .images()
        .check_run(caller.account(), &spec.image)
        .await
        .map_err(|e| Images::not_pulled(&spec.image, pull, e))?;
    let record = Run {
        id: new_run_id(),
        state: RunState::Queued,
        exit_code: None,
        profile: Some(spec.profile.clone()),
        image: spec.image.clone(),
        argv: spec.argv.clone(),
        name: spec.name.clone(),
        participant: spec.participant.clone(),
        role: spec.role.clone(),
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
            max_output_mb: spec.max_output_mb,
            service: spec.service,
            restarts: 0,
            auto_remove: spec.auto_remove,
        },
    };
    // A service runs until stopped, or until the plan's run-seconds are used up; the spec
    // says so to all that reads its timeout (the executor, a run token's expiry).
    if spec.service {
        spec.timeout = admission
            .run_seconds_left()
            .map_or(SERVICE_TIMEOUT, Duration::from_secs)
            .min(SERVICE_TIMEOUT);
    }
    let new = NewRun {
        record,
        timeout: spec.timeout,
        idempotency,
    };
    let entry = match state.store().insert(caller.account(), new).await? {
        Inserted::Created(entry) => entry,
        Inserted::Replayed(replay) => {
            return Ok(replayed(&state, caller.account(), replay, start_wait).await);
        }
    };
    let run = entry.snapshot();
    tracing::info!(run = %run.id, owner = caller.account(), image = %run.image, "run accepted");
    let origin = state.container_origin();
    agent::equip(
        state.keys(),
        state.config(),
        origin,
        &caller.claims,
        &run.id,
        &mut spec,
    );
    let mounts_dir = crate::runs::storage::mounts_dir(state.store());
    executor::spawn(
        state.engine().clone(),
        entry.clone(),
        spec,
        mounts_dir,
        state.store().clone(),
    );
    drop(admission);
    let run = match start_wait {
        Some(wait) => answer_waited(&entry, wait).await,
        None => run,
    };
    let location = format!("/api/v1/containers/runs/{}", run.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(run),
    )
        .into_response())
}

/// The original answer to a repeated request; with `wait=running`, the run as it is once it
/// runs or has ended (the original answer when it was deleted meanwhile).
async fn replayed(
    state: &AppState,
    owner: &str,
    replay: Replay,
    start_wait: Option<(WaitFor, Duration)>,
) -> Response {
    let entry = state.store().get(owner, &replay.run_id);
    match (start_wait, entry) {
        (Some(wait), Some(entry)) => {
            let run = answer_waited(&entry, wait).await;
            let mut response = idempotency::replay(replay);
            *response.body_mut() =
                axum::body::Body::from(serde_json::to_vec(&run).expect("a run always serializes"));
            response
        }
        _ => idempotency::replay(replay),
    }
}

/// The run as `wait` asks for it: running ([`answer_started`]) or ready ([`answer_ready`]).
async fn answer_waited(entry: &Entry, (what, limit): (WaitFor, Duration)) -> Run {
    match what {
        WaitFor::Running => answer_started(entry, limit).await,
        WaitFor::Ready => answer_ready(entry, limit).await,
    }
}

/// The run once every TCP port it publishes accepts a connection on the host, or once it
/// has ended, or as it is when `limit` passed first.
pub async fn answer_ready(entry: &Entry, limit: Duration) -> Run {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let run = entry.snapshot();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if run.state.is_terminal() || left.is_zero() {
            return run;
        }
        if run.state == RunState::Running && ports_accept(&run.options.ports).await {
            return run;
        }
        let mut changed = entry.subscribe();
        let _ = tokio::time::timeout(READY_POLL.min(left), changed.changed()).await;
    }
}

/// Whether every published TCP port (whose host port is known) accepts a connection.
async fn ports_accept(ports: &[bus_api::Port]) -> bool {
    for port in ports
        .iter()
        .filter(|p| p.protocol == bus_api::Protocol::Tcp)
    {
        let Some(host_port) = port.host_port else {
            return false;
        };
        // A wildcard bind is reached through loopback.
        let ip = match port.host_ip.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
            Ok(ip) => ip,
            Err(_) => return false,
        };
        let connect = tokio::net::TcpStream::connect((ip, host_port));
        if !matches!(tokio::time::timeout(READY_POLL, connect).await, Ok(Ok(_))) {
            return false;
        }
    }
    true
}

/// The run once it runs or has ended, or as it is when `limit` passed first. A run counts as
/// running once its command has stayed up for [`START_SETTLE`] (as supervisord's
/// `startsecs`): a command that exits sooner (a typo in a script, a missing file) is answered
/// once its end is recorded, so the caller learns that it ended and how.
pub async fn answer_started(entry: &Entry, limit: Duration) -> Run {
    if entry.wait_started(limit).await
        && entry.state() == RunState::Running
        && entry.wait_output_ended(START_SETTLE).await
    {
        entry.wait_ended(ENDING_WAIT).await;
    }
    entry.snapshot()
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

/// Lists the caller's runs.
///
/// Newest first, a page at a time. With `watch=true` (and no other parameter), an NDJSON
/// stream of `RunEvent` lines instead: one `changed` line per run, newest first, then a
/// `listed` line, then each change to the caller's runs as the runner numbers them (the run
/// as it is then, or `deleted`), and `alive` every 2 seconds when nothing changes. Each line
/// carries the account's revision it brings the reader up to, comparable with the
/// `bus-revision` header of every other call. The stream ends when the token expires, when
/// the watch falls too far behind, when the runner stops, or, for a run token, once its run
/// has ended; the reader watches again.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs",
    tag = "containers",
    operation_id = "listRuns",
    security(("bearer" = ["container:read"])),
    params(
        ("watch" = Option<bool>, Query,
            description = "Answer with an NDJSON stream of `RunEvent` lines: the runs, then \
                each change to them. Takes no other parameter."),
        ("page_size" = Option<u32>, Query, minimum = 0,
            description = "Runs per page: 0 or absent means 50; more than 200 means 200."),
        ("page_token" = Option<String>, Query,
            description = "`next_page_token` of the previous page."),
        ("state" = Option<String>, Query,
            description = "Only runs in these states, comma-separated, e.g. `running,queued`."),
        ("name" = Option<String>, Query, description = "Only runs with this name."),
        ("participant" = Option<String>, Query, description = "Only runs for this participant."),
        ("role" = Option<String>, Query, description = "Only runs in this role."),
    ),
    responses(
        (status = 200, description = "A page of runs; with `watch`, NDJSON: one `RunEvent` \
            per line.",
            content(
                (RunPage = "application/json"),
                (RunEvent = "application/x-ndjson"),
            )),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller<auth::Read>,
    ApiQuery(query): ApiQuery<ListRunsQuery>,
) -> Result<Response, ApiError> {
    if query.watch {
        if query != ListRunsQuery::watch() {
            return Err(ApiError::InvalidRequest(
                "watch takes no other parameter".to_owned(),
            ));
        }
        return Ok(watch::respond(state, caller.claims));
    }
    let size = query.page_size_or_default();
    let before = query
        .page_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(decode_page_token)
        .transpose()?;
    let filter = RunFilter::of(&query).map_err(ApiError::InvalidRequest)?;
    let (runs, next) = state
        .store()
        .list(caller.account(), &filter, before, size as usize);
    Ok(Json(RunPage {
        runs,
        next_page_token: next.map(encode_page_token),
    })
    .into_response())
}

/// Gets one run.
///
/// Its state, exit code, reason, times and usage.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs/{id}",
    tag = "containers",
    operation_id = "getRun",
    security(("bearer" = ["container:read"])),
    params(("id" = String, Path, description = "The run's id (`run_...`) or its name.")),
    responses(
        (status = 200, description = "The run.", body = Run),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller<auth::Read>,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    let entry = state.store().find(caller.account(), &id)?;
    Ok(Json(entry.snapshot()))
}

/// Deletes a run.
///
/// The run and its output are forgotten; a live run's container is removed first.
#[utoipa::path(
    delete,
    path = "/api/v1/containers/runs/{id}",
    tag = "containers",
    operation_id = "deleteRun",
    security(("bearer" = ["container:delete"])),
    params(("id" = String, Path, description = "The run's id (`run_...`) or its name.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 503, response = EngineUnavailable),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller<auth::Delete>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.store();
    let entry = store.find(caller.account(), &id)?;
    // Remove a live container before forgetting the run, so an engine failure changes nothing.
    if let Some(container) = entry.container() {
        if !entry.state().is_terminal() {
            entry.set_deleting(true);
            if let Err(e) = state.engine().remove(&container).await {
                entry.set_deleting(false);
                return Err(e.into());
            }
        }
    }
    let entry = store
        .remove(caller.account(), &entry.id)
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
    fn a_create_waits_only_when_asked_and_within_bounds() {
        let query = |wait, wait_ms| CreateRunQuery {
            wait,
            wait_ms,
            follow: false,
        };
        assert_eq!(query(None, None).start_wait().unwrap(), None);
        assert_eq!(
            query(Some(WaitFor::Running), None).start_wait().unwrap(),
            Some((WaitFor::Running, DEFAULT_START_WAIT))
        );
        assert_eq!(
            query(Some(WaitFor::Ready), Some(250)).start_wait().unwrap(),
            Some((WaitFor::Ready, Duration::from_millis(250)))
        );
        for bad in [
            query(None, Some(10)),
            query(Some(WaitFor::Running), Some(0)),
            query(Some(WaitFor::Running), Some(MAX_WAIT_MS + 1)),
        ] {
            let err = bad.start_wait().unwrap_err();
            assert_eq!(err.problem().status, 400, "{bad:?}");
        }
    }

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
