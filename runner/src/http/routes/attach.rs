//! `GET /api/v1/containers/runs/{id}/attach?cols=&rows=`: the run's own command over the exec
//! WebSocket protocol ([`bus_api::exec`]).
//!
//! Output comes from the run's stored output (from its first byte, so nothing written before
//! the client attached is lost), then the status once the run has ended: its exit code, or an
//! error status naming how it ended without one. Stdin frames reach the command when the run
//! was created with `stdin` (close-stdin is its EOF, for good); resize frames, and the initial
//! `cols`/`rows`, resize its terminal when it has one; signal frames go to its main process
//! (with a terminal and stdin, SIGINT, SIGQUIT and SIGTSTP are typed as control characters).
//! Input waits until the container runs; a run that already ended replays and reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, State};
use axum::response::Response;
use bus_api::exec::{ExecStatus, Frame, STDERR, STDOUT, encode_data};
use bus_api::runs::AttachQuery;
use bus_api::{LogFrame, RunState, Stream};
use futures::{SinkExt as _, StreamExt as _};

use crate::AppState;
use crate::engine::engine_message;
use crate::http::auth::{self, Caller};
use crate::http::openapi::{BadRequest, Forbidden, NotFound};
use crate::http::problem::{ApiError, ApiQuery};
use crate::http::routes::input::{self, Target, Wiring};
use crate::store::{Entry, StreamFilter};

/// Output bytes read from the store at once.
const BATCH_BYTES: usize = 256 * 1024;

/// Attaches to the run's own command, over a WebSocket.
///
/// The exec protocol of `GET /api/v1/containers/runs/{id}/exec`: the run's output from its
/// first byte (stdout and stderr frames), then one status frame once the run has ended (its
/// exit code; `reason` is the run's final state; without an exit code, `error`). Stdin frames
/// reach the command when the run was created with `stdin` (close-stdin is its EOF, for
/// good); resize frames, and `cols`/`rows`, resize its terminal when it has one; signal frames
/// go to its main process. Input waits until the container runs.
#[utoipa::path(
    get,
    path = "/api/v1/containers/runs/{id}/attach",
    tag = "containers",
    operation_id = "attachRun",
    security(("bearer" = ["container:run"])),
    params(
        ("id" = String, Path, description = "The run's id (`run_...`) or its name."),
        ("cols" = Option<u16>, Query, minimum = 1,
            description = "With a terminal: its columns (with `rows`)."),
        ("rows" = Option<u16>, Query, minimum = 1,
            description = "With a terminal: its rows (with `cols`)."),
    ),
    responses(
        (status = 101, description = "Switched to the WebSocket exec protocol."),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
    )
)]
pub async fn attach(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<AttachQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let entry = state.store().find(caller.account(), &id)?;
    // Named by its name, the run is its id from here on.
    let id = entry.id.clone();
    let size = match (query.cols, query.rows) {
        (Some(c), Some(r)) if c > 0 && r > 0 => Some((c, r)),
        (None, None) => None,
        _ => {
            return Err(ApiError::InvalidRequest(
                "give cols and rows together, each from 1 to 65535".to_owned(),
            ));
        }
    };
    let upgrade = upgrade.map_err(|e| {
        ApiError::InvalidRequest(format!(
            "this endpoint speaks WebSocket only (GET with `Connection: Upgrade`, `Upgrade: \
             websocket`): {e}"
        ))
    })?;
    tracing::info!(run = %id, owner = caller.account(), "attach");
    Ok(upgrade
        .protocols([bus_api::exec::SUBPROTOCOL])
        .on_upgrade(move |socket| session(state, entry, size, socket)))
}

/// Waits until the run's container runs; `None` when the run ended first.
async fn running_container(entry: &Entry) -> Option<String> {
    let mut changes = entry.subscribe();
    loop {
        changes.borrow_and_update();
        let run = entry.snapshot();
        match (run.state, entry.container()) {
            (RunState::Running, Some(container)) => return Some(container),
            (state, _) if state.is_terminal() => return None,
            _ => {}
        }
        changes.changed().await.ok()?;
    }
}

async fn session(state: AppState, entry: Arc<Entry>, size: Option<(u16, u16)>, socket: WebSocket) {
    let (mut tx, rx) = socket.split();
    let options = entry.snapshot().options;
    let signalled = Arc::new(AtomicI32::new(0));
    let input_task = tokio::spawn({
        let (engine, entry, signalled) = (state.engine().clone(), entry.clone(), signalled.clone());
        async move {
            let Some(container) = running_container(&entry).await else {
                return;
            };
            let target = Target::Container(container.clone());
            if let (true, Some((cols, rows))) = (options.tty, size) {
                target.resize(&engine, cols, rows).await;
            }
            let mut input = None;
            if options.stdin {
                match engine.attach_stdin(&container).await {
                    Ok(w) => input = Some(w),
                    Err(e) => {
                        tracing::info!(run = %entry.id, error = %engine_message(&e), "cannot attach to the run's stdin")
                    }
                }
            }
            let wiring = Wiring {
                tty: options.tty,
                stdin: options.stdin,
                signalled,
            };
            input::apply(rx, engine, target, input, wiring).await;
        }
    });
    let status = follow(&state, &entry, &mut tx, &signalled).await;
    if let Some(status) = status {
        let _ = tx
            .send(Message::Binary(Frame::Status(status).encode().into()))
            .await;
        let _ = tx.send(Message::Close(None)).await;
    }
    input_task.abort();
}

type WsTx = futures::stream::SplitSink<WebSocket, Message>;

/// Sends the run's output from its first byte until it ended; returns the status to send, or
/// `None` when the client went away.
async fn follow(
    state: &AppState,
    entry: &Arc<Entry>,
    tx: &mut WsTx,
    signalled: &AtomicI32,
) -> Option<ExecStatus> {
    let store = state.store();
    let mut changes = entry.subscribe();
    let mut closing = store.closing();
    let keepalive = Duration::from_secs(super::exec::KEEPALIVE_SECONDS);
    let mut cursor = 0;
    loop {
        changes.borrow_and_update();
        let read = match store
            .read(entry, cursor, StreamFilter::ALL, BATCH_BYTES)
            .await
        {
            Ok(read) => read,
            Err(e) => {
                return Some(ExecStatus::error(format!(
                    "the run's output cannot be read: {e}"
                )));
            }
        };
        cursor = read.last_seq;
        for frame in &read.frames {
            let channel = if frame.stream == Stream::Stderr {
                STDERR
            } else {
                STDOUT
            };
            tx.send(Message::Binary(encode_data(channel, &frame.data).into()))
                .await
                .ok()?;
        }
        if let Some(LogFrame::Exit {
            state,
            exit_code,
            reason,
            ..
        }) = read.exit
        {
            return Some(match exit_code {
                Some(code) => {
                    let sent = signalled.load(Ordering::Relaxed);
                    ExecStatus {
                        exit_code: Some(code),
                        signal: (sent != 0 && code == 128 + sent).then_some(sent),
                        reason: state.as_str().to_owned(),
                        message: reason,
                    }
                }
                None => ExecStatus::error(format!(
                    "the run ended {} without an exit code{}",
                    state.as_str(),
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                )),
            });
        }
        if !read.frames.is_empty() {
            continue;
        }
        if *closing.borrow() {
            return Some(ExecStatus::error(
                "the runner is shutting down; the run goes on",
            ));
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                return Some(ExecStatus::error("the run is gone"));
            },
            _ = closing.changed() => {}
            () = tokio::time::sleep(keepalive) => {
                tx.send(Message::Ping(Default::default())).await.ok()?;
            }
        }
    }
}
