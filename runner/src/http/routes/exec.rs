//! `GET /api/v1/containers/runs/{id}/exec?command=..&command=..&tty=&stdin=&cols=&rows=&env=&workdir=`:
//! a command in the run's container, over a WebSocket.
//!
//! The request is checked (token, `container:run`, ownership, the run running, the query) and
//! the exec created in the engine before the upgrade, so every refusal is an ordinary problem
//! document. A run still starting is waited for, so an exec right after a create works. After the upgrade, frames follow [`bus_api::exec`]: stdin, resize and close-stdin
//! in; stdout, stderr and one final status out. The exit code is read from the engine only
//! after the output stream has ended and the engine reports the exec not running; when it
//! cannot be read, the status says `error` and carries no exit code.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use bus_api::exec::{
    CreateExec, ExecAttachQuery, ExecQuery, ExecRecord, ExecStatus, Frame, STDERR, STDOUT,
    encode_data,
};
use futures::{SinkExt as _, StreamExt as _};

use crate::AppState;
use crate::engine::Engine;
use crate::engine::{Chunk, EngineError, engine_message};
use crate::http::auth::{self, Caller};
use crate::http::openapi::{
    BadRequest, Conflict, EngineUnavailable, Forbidden, Internal, NotFound, PayloadTooLarge,
    Unprocessable,
};
use crate::http::problem::{ApiError, ApiJson, ApiQuery};
use crate::http::routes::input::{self, Target, Wiring};
use crate::runs::execs::{Detached, exit_status};
use crate::store::Entry;

/// Largest body of `POST .../execs`.
pub const BODY_LIMIT: usize = 256 * 1024;
/// Seconds of silence after which the runner sends a WebSocket ping.
pub const KEEPALIVE_SECONDS: u64 = 15;

/// Parses the query ([`ExecQuery`]); a bad one is a 400 naming the parameter.
pub fn parse_query(query: &str) -> Result<ExecQuery, ApiError> {
    ExecQuery::parse(query).map_err(ApiError::InvalidRequest)
}

/// Runs a command in a running run, over a WebSocket.
///
/// A `GET` with `Connection: Upgrade` and `Upgrade: websocket` (subprotocol
/// `v1.exec.bus.dev`, optional); every refusal comes before the upgrade, as a problem
/// document. After `101 Switching Protocols` every message is binary and starts with a channel
/// byte, as Kubernetes' `v5.channel.k8s.io`: 0 stdin (client → runner), 1 stdout, 2 stderr,
/// 3 status (JSON `ExecStatus`, the last frame, exactly once after the last output byte),
/// 4 resize (JSON `TerminalSize`, client → runner), 5 signal (JSON `SignalFrame`, client →
/// runner; with a terminal SIGINT, SIGQUIT and SIGTSTP are typed as ^C, ^\ and ^Z), 255 close
/// (payload `0`: close stdin, EOF). A command that died of a signal the session sent has
/// `signal` in its status.
/// The status carries `exit_code` only when the engine reported one; otherwise `reason` is
/// `error` and no exit code is made up. An idle session gets a WebSocket ping every 15 s.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs/{id}/exec",
    tag = "containers",
    operation_id = "execRun",
    security(("bearer" = ["container:run"])),
    params(
        ("id" = String, Path, description = "The run's id (`run_...`) or its name; it must be running."),
        ("command" = Vec<String>, Query, style = Form, explode,
            description = "The command and its arguments, one parameter each, in order."),
        ("env" = Option<Vec<String>>, Query, style = Form, explode,
            description = "`NAME=value` added to the command's environment (repeatable)."),
        ("workdir" = Option<String>, Query, description = "An absolute working directory."),
        ("tty" = Option<bool>, Query,
            description = "Allocate a terminal; output then comes on stdout only."),
        ("stdin" = Option<bool>, Query, description = "Attach the command's stdin."),
        ("cols" = Option<u16>, Query, minimum = 1,
            description = "With `tty`: the terminal's initial columns (with `rows`)."),
        ("rows" = Option<u16>, Query, minimum = 1,
            description = "With `tty`: the terminal's initial rows (with `cols`)."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket exec protocol."),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
    )
)]
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let entry = state.store().find(caller.account(), &id)?;
    // Named by its name, the run is its id from here on.
    let id = entry.id.clone();
    let spec = parse_query(query.as_deref().unwrap_or(""))?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::InvalidRequest(format!(
            "this endpoint speaks WebSocket only (GET with `Connection: Upgrade`, `Upgrade: \
             websocket`): {e}"
        ))
    })?;
    let container = running_container(&entry, &id).await?;
    let exec_id = create_exec(state.engine(), &container, &spec, &id).await?;
    tracing::info!(run = %id, owner = caller.account(), exec = %exec_id, tty = spec.tty, "exec");
    let engine = state.engine().clone();
    Ok(upgrade
        .protocols([bus_api::exec::SUBPROTOCOL])
        .on_upgrade(move |socket| session(engine, exec_id, spec, socket)))
}

/// How long an exec into a run that is still starting waits for it to run. The client's own
/// deadline usually ends the wait first: a client that hangs up ends the request.
pub const START_WAIT: Duration = Duration::from_secs(60);

/// The container of `entry` once the run is running: a run still queued or starting is waited
/// for (at most [`START_WAIT`]); one that ended, or did not start in time, is
/// `run_not_running` with its state.
async fn running_container(entry: &Entry, id: &str) -> Result<String, ApiError> {
    entry.wait_started(START_WAIT).await;
    let run_state = entry.state();
    match entry.container() {
        Some(c) if run_state == bus_api::RunState::Running => Ok(c),
        _ => Err(ApiError::RunNotRunning {
            id: id.to_owned(),
            state: run_state.as_str().to_owned(),
        }),
    }
}

/// Creates the engine's exec; an engine that refuses because the container stopped answers
/// `run_not_running`.
async fn create_exec(
    engine: &Engine,
    container: &str,
    spec: &ExecQuery,
    run_id: &str,
) -> Result<String, ApiError> {
    match engine.create_exec(container, spec).await {
        Ok(exec_id) => Ok(exec_id),
        Err(EngineError::Status {
            status: 404 | 409,
            message,
        }) => {
            tracing::debug!(run = %run_id, %message, "exec refused by the engine");
            Err(ApiError::RunNotRunning {
                id: run_id.to_owned(),
                state: "not running".to_owned(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// How long a terminal session waits for the engine to report its command running before
/// sizing it anyway.
const START_PATIENCE: Duration = Duration::from_secs(2);

/// Waits (bounded) until the engine reports the exec's process started. The engine sizes a new
/// terminal itself as the process starts, so a resize applied before that can be overwritten:
/// sizing after this wait means the size a client sent first is the one the command sees.
async fn wait_running(engine: &Engine, exec_id: &str) {
    let deadline = tokio::time::Instant::now() + START_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        match engine.exec_started(exec_id).await {
            Ok(true) => return,
            Ok(false) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => {
                tracing::debug!(exec = %exec_id, error = %e, "exec inspect failed");
                return;
            }
        }
    }
}

/// Bridges one upgraded WebSocket to a created exec until the status frame is sent or the
/// client goes away.
async fn session(engine: Arc<Engine>, exec_id: String, spec: ExecQuery, socket: WebSocket) {
    let (mut tx, rx) = socket.split();
    let streams = match engine.start_exec(&exec_id, spec.tty).await {
        Ok(streams) => streams,
        Err(e) => {
            let status = ExecStatus::error(format!(
                "the engine could not start the command: {}",
                engine_message(&e)
            ));
            let _ = tx
                .send(Message::Binary(Frame::Status(status).encode().into()))
                .await;
            let _ = tx.send(Message::Close(None)).await;
            return;
        }
    };
    if spec.tty {
        wait_running(&engine, &exec_id).await;
    }
    if let (true, Some((cols, rows))) = (spec.tty, spec.size) {
        // Engines that ignore ConsoleSize still get the size before any input arrives.
        Target::Exec(exec_id.clone())
            .resize(&engine, cols, rows)
            .await;
    }
    // The last signal sent (0: none), to tell a death by it from an ordinary exit.
    let signalled = Arc::new(AtomicI32::new(0));
    let input_task = tokio::spawn(input::apply(
        rx,
        engine.clone(),
        Target::Exec(exec_id.clone()),
        Some(streams.input),
        Wiring {
            tty: spec.tty,
            stdin: spec.stdin,
            signalled: signalled.clone(),
        },
    ));
    let mut output = streams.output;
    let keepalive = Duration::from_secs(KEEPALIVE_SECONDS);
    let mut failure = None;
    loop {
        let item = match tokio::time::timeout(keepalive, output.next()).await {
            Ok(item) => item,
            Err(_) => {
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    input_task.abort();
                    return;
                }
                continue;
            }
        };
        let frame = match item {
            None => break,
            Some(Ok(Chunk::Stdout(message))) => encode_data(STDOUT, &message),
            Some(Ok(Chunk::Stderr(message))) => encode_data(STDERR, &message),
            Some(Err(e)) => {
                failure = Some(format!(
                    "the engine's output stream broke: {}",
                    engine_message(&e)
                ));
                break;
            }
        };
        if tx.send(Message::Binary(frame.into())).await.is_err() {
            // The client went away.
            input_task.abort();
            return;
        }
    }
    let status = match failure {
        Some(message) => ExecStatus::error(message),
        None => {
            let signal = signalled.load(Ordering::Relaxed);
            exit_status(&engine, &exec_id, (signal != 0).then_some(signal)).await
        }
    };
    tracing::debug!(exec = %exec_id, ?status, "exec ended");
    let _ = tx
        .send(Message::Binary(Frame::Status(status).encode().into()))
        .await;
    let _ = tx.send(Message::Close(None)).await;
    input_task.abort();
}

/// Starts a command in a running run, detached.
///
/// The runner captures its output (kept in its state dir, with the run); read it, and its exit
/// status, with `GET /api/v1/containers/execs/{exec_id}/attach`.
#[utoipa::path(
    post,
    path = "/api/v1/containers/runs/{id}/execs",
    tag = "containers",
    operation_id = "createExec",
    security(("bearer" = ["container:run"])),
    params(("id" = String, Path, description = "The run's id (`run_...`) or its name; it must be running.")),
    request_body(content = CreateExec, content_type = "application/json"),
    responses(
        (status = 201, description = "The exec, `running`.", body = ExecRecord),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 422, response = Unprocessable),
        (status = 500, response = Internal),
        (status = 503, response = EngineUnavailable),
    )
)]
pub async fn create_detached(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<CreateExec>,
) -> Result<(StatusCode, Json<ExecRecord>), ApiError> {
    let entry = state.store().find(caller.account(), &id)?;
    // Named by its name, the run is its id from here on.
    let id = entry.id.clone();
    let spec = request.to_query().map_err(ApiError::InvalidRequest)?;
    let container = running_container(&entry, &id).await?;
    let engine = state.engine();
    let engine_exec = create_exec(engine, &container, &spec, &id).await?;
    let streams = engine.start_exec(&engine_exec, false).await?;
    drop(streams.input);
    let exec = state
        .execs()
        .start(
            engine.clone(),
            &entry,
            spec.argv,
            engine_exec,
            streams.output,
        )
        .await
        .map_err(ApiError::ExecOutput)?;
    tracing::info!(run = %id, owner = caller.account(), exec = exec.id(), "detached exec");
    Ok((StatusCode::CREATED, Json(exec.record())))
}

/// One detached exec: its state and, once it ended, its exit code.
#[utoipa::path(
    get,
    path = "/api/v1/containers/execs/{exec_id}",
    tag = "containers",
    operation_id = "getExec",
    security(("bearer" = ["container:run"])),
    params(("exec_id" = String, Path, description = "The exec's id (`exec_...`).")),
    responses(
        (status = 200, description = "The exec.", body = ExecRecord),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub async fn get_detached(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    Path(exec_id): Path<String>,
) -> Result<Json<ExecRecord>, ApiError> {
    let exec = state
        .execs()
        .get(state.store(), caller.account(), &exec_id)
        .ok_or(ApiError::ExecNotFound(exec_id))?;
    Ok(Json(exec.record()))
}

/// A detached exec's output and status, over a WebSocket.
///
/// The exec protocol of `GET /api/v1/containers/runs/{id}/exec`, output only: every byte
/// captured from the start (stdout and stderr frames), then, with `follow` (the default), new
/// output as it comes, then the status frame. Without `follow`, an exec that still runs ends
/// the replay with a status whose `reason` is `running` (no exit code). Frames sent in are
/// ignored.
#[utoipa::path(
    get,
    path = "/api/v1/containers/execs/{exec_id}/attach",
    tag = "containers",
    operation_id = "attachExec",
    security(("bearer" = ["container:run"])),
    params(
        ("exec_id" = String, Path, description = "The exec's id (`exec_...`)."),
        ("follow" = Option<bool>, Query,
            description = "Keep sending output until the exec ends (default true)."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket exec protocol."),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub async fn attach_detached(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    Path(exec_id): Path<String>,
    ApiQuery(query): ApiQuery<ExecAttachQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let exec = state
        .execs()
        .get(state.store(), caller.account(), &exec_id)
        .ok_or(ApiError::ExecNotFound(exec_id))?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::InvalidRequest(format!(
            "this endpoint speaks WebSocket only (GET with `Connection: Upgrade`, `Upgrade: \
             websocket`): {e}"
        ))
    })?;
    Ok(upgrade
        .protocols([bus_api::exec::SUBPROTOCOL])
        .on_upgrade(move |socket| replay(exec, query.follow, socket)))
}

/// Largest read from an output file at once (whole records of at most 64 KiB each).
const REPLAY_READ: u64 = 1024 * 1024;

/// Sends a detached exec's output from its file, then (following) what comes, then the status.
async fn replay(exec: Arc<Detached>, follow: bool, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    // Frames in are read (so pings are answered) and dropped.
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let result = send_replay(&exec, follow, &mut tx).await;
    if let Err(message) = result {
        let status = ExecStatus::error(message);
        let _ = tx
            .send(Message::Binary(Frame::Status(status).encode().into()))
            .await;
    }
    let _ = tx.send(Message::Close(None)).await;
    reader.abort();
}

type WsTx = futures::stream::SplitSink<WebSocket, Message>;

/// Ok once the status was sent; Err(message) when the file could not be read. A client gone
/// is Ok too (nothing to tell it).
async fn send_replay(exec: &Detached, follow: bool, tx: &mut WsTx) -> Result<(), String> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let path = exec.output_path();
    let broken =
        |e: std::io::Error| format!("the exec's output cannot be read: {}: {e}", path.display());
    let mut file = tokio::fs::File::open(path).await.map_err(broken)?;
    let mut watch = exec.watch();
    let mut pos = 0u64;
    let keepalive = Duration::from_secs(KEEPALIVE_SECONDS);
    loop {
        let progress = watch.borrow_and_update().clone();
        if pos < progress.file_len {
            let want = (progress.file_len - pos).min(REPLAY_READ);
            let mut buf = vec![0u8; want as usize];
            file.seek(std::io::SeekFrom::Start(pos))
                .await
                .map_err(broken)?;
            file.read_exact(&mut buf).await.map_err(broken)?;
            let mut used = 0u64;
            for (stream, data) in crate::runs::execs::records(&buf) {
                used += (data.len() + 5) as u64;
                if tx
                    .send(Message::Binary(encode_data(stream, data).into()))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            if used == 0 {
                return Err(format!(
                    "the exec's output file {} is damaged",
                    path.display()
                ));
            }
            pos += used;
            continue;
        }
        let status = match (progress.status, follow) {
            (Some(status), _) => status,
            (None, false) => ExecStatus::running(),
            (None, true) => {
                match tokio::time::timeout(keepalive, watch.changed()).await {
                    Ok(Ok(())) => continue,
                    // The exec's record is gone (its run was deleted).
                    Ok(Err(_)) => ExecStatus::error("the exec's run was deleted"),
                    Err(_) => {
                        if tx.send(Message::Ping(Default::default())).await.is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
        };
        let _ = tx
            .send(Message::Binary(Frame::Status(status).encode().into()))
            .await;
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let spec = parse_query("command=sh&command=-c&command=echo%20hi&tty=true&stdin=1&cols=80&rows=24&env=A%3Db&workdir=%2Ftmp").unwrap();
        assert_eq!(spec.argv, ["sh", "-c", "echo hi"]);
        assert!(spec.tty && spec.stdin);
        assert_eq!(spec.size, Some((80, 24)));
        assert_eq!(spec.env, ["A=b"]);
        assert_eq!(spec.workdir.as_deref(), Some("/tmp"));
        let plain = parse_query("command=true").unwrap();
        assert!(!plain.tty && !plain.stdin && plain.size.is_none());
        for bad in [
            "",
            "tty=true",
            "command=",
            "command=x&cols=80",
            "command=x&cols=0&rows=1",
            "command=x&tty=maybe",
            "command=x&env=NOEQUALS",
            "command=x&workdir=relative",
            "command=x&bogus=1",
        ] {
            assert_eq!(parse_query(bad).unwrap_err().problem().status, 400, "{bad}");
        }
    }
}
