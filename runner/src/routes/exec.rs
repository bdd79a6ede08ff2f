//! `GET /api/v1/containers/runs/{id}/exec?command=..&command=..&tty=&stdin=&cols=&rows=&env=&workdir=`:
//! a command in the run's container, over a WebSocket.
//!
//! The request is checked (token, `container:run`, ownership, the run running, the query) and
//! the exec created in the engine before the upgrade, so every refusal is an ordinary problem
//! document. After the upgrade, frames follow [`bus_api::exec`]: stdin, resize and close-stdin
//! in; stdout, stderr and one final status out. The exit code is read from the engine only
//! after the output stream has ended and the engine reports the exec not running; when it
//! cannot be read, the status says `error` and carries no exit code.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use bollard::container::LogOutput;
use bus_api::exec::{ExecQuery, ExecStatus, Frame, STDERR, STDOUT, encode_data};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;

use crate::AppState;
use crate::auth::{self, Caller};
use crate::engine::Engine;
use crate::problem::{ApiError, engine_message};

/// Seconds of silence after which the runner sends a WebSocket ping.
pub const KEEPALIVE_SECONDS: u64 = 15;
/// How long the engine may take to report an exit code after the output ended.
const EXIT_CODE_LIMIT: Duration = Duration::from_secs(30);

/// Parses the query ([`ExecQuery`]); a bad one is a 400 naming the parameter.
pub fn parse_query(query: &str) -> Result<ExecQuery, ApiError> {
    ExecQuery::parse(query).map_err(ApiError::InvalidRequest)
}

/// Checks the request, creates the exec, then upgrades and bridges the WebSocket to it.
pub async fn exec(
    State(state): State<AppState>,
    caller: Caller<auth::Run>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let entry = state
        .store()
        .get(caller.account(), &id)
        .ok_or_else(|| ApiError::RunNotFound(id.clone()))?;
    let spec = parse_query(query.as_deref().unwrap_or(""))?;
    let run_state = entry.snapshot().state;
    let container = match entry.container() {
        Some(c) if run_state == bus_api::RunState::Running => c,
        _ => {
            return Err(ApiError::RunNotRunning {
                id,
                state: run_state.as_str().to_owned(),
            });
        }
    };
    let upgrade = upgrade.map_err(|e| {
        ApiError::InvalidRequest(format!(
            "this endpoint speaks WebSocket only (GET with `Connection: Upgrade`, `Upgrade: \
             websocket`): {e}"
        ))
    })?;
    let exec_id = match state.engine().create_exec(&container, &spec).await {
        Ok(exec_id) => exec_id,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            message,
        }) => {
            tracing::debug!(run = %id, %message, "exec refused by the engine");
            return Err(ApiError::RunNotRunning {
                id,
                state: "not running".to_owned(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(run = %id, owner = caller.account(), exec = %exec_id, tty = spec.tty, "exec");
    let engine = state.engine().clone();
    Ok(upgrade
        .protocols([bus_api::exec::SUBPROTOCOL])
        .on_upgrade(move |socket| session(engine, exec_id, spec, socket)))
}

/// Bridges one upgraded WebSocket to a created exec until the status frame is sent or the
/// client goes away.
async fn session(engine: Arc<Engine>, exec_id: String, spec: ExecQuery, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
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
    if let (true, Some((cols, rows))) = (spec.tty, spec.size) {
        // Engines that ignore ConsoleSize still get the size before any input arrives.
        if let Err(e) = engine.resize_exec(&exec_id, cols, rows).await {
            tracing::debug!(exec = %exec_id, error = %e, "initial resize failed");
        }
    }
    let mut input = Some(streams.input);
    let stdin = spec.stdin;
    let tty = spec.tty;
    let input_task = tokio::spawn({
        let engine = engine.clone();
        let exec_id = exec_id.clone();
        async move {
            while let Some(message) = rx.next().await {
                let bytes = match message {
                    Ok(Message::Binary(bytes)) => bytes,
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                match Frame::decode(&bytes) {
                    Ok(Frame::Stdin(data)) => {
                        if let Some(w) = input.as_mut()
                            && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                        {
                            input = None;
                        }
                    }
                    Ok(Frame::Resize(size)) if tty => {
                        if let Err(e) = engine.resize_exec(&exec_id, size.cols, size.rows).await {
                            tracing::debug!(exec = %exec_id, error = %e, "resize failed");
                        }
                    }
                    Ok(Frame::CloseStdin) if stdin => {
                        if let Some(mut w) = input.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    Ok(frame) => {
                        tracing::debug!(exec = %exec_id, channel = frame.channel(), "frame ignored")
                    }
                    Err(e) => tracing::debug!(exec = %exec_id, error = %e, "bad frame ignored"),
                }
            }
            // Keep stdin open until the session ends, unless it was closed on request.
            std::future::pending::<()>().await;
        }
    });
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
            Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                encode_data(STDOUT, &message)
            }
            Some(Ok(LogOutput::StdErr { message })) => encode_data(STDERR, &message),
            Some(Ok(LogOutput::StdIn { .. })) => continue,
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
        None => exit_status(&engine, &exec_id).await,
    };
    tracing::debug!(exec = %exec_id, ?status, "exec ended");
    let _ = tx
        .send(Message::Binary(Frame::Status(status).encode().into()))
        .await;
    let _ = tx.send(Message::Close(None)).await;
    input_task.abort();
}

/// The exec's exit code once the engine reports it ended, or an error status; never made up.
async fn exit_status(engine: &Engine, exec_id: &str) -> ExecStatus {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match engine.exec_exit_code(exec_id).await {
            Ok(Some(code)) => {
                return match i32::try_from(code) {
                    Ok(code) => ExecStatus::exited(code),
                    Err(_) => ExecStatus::error(format!("the engine reported exit code {code}")),
                };
            }
            Ok(None) => {}
            Err(e) => {
                return ExecStatus::error(format!(
                    "the engine did not report the exit code: {}",
                    engine_message(&e)
                ));
            }
        }
        if started.elapsed() > EXIT_CODE_LIMIT {
            return ExecStatus::error(format!(
                "the engine reported no exit code within {} s of the output's end",
                EXIT_CODE_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
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
