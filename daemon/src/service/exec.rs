//! `bus.containers.v1.Exec`: a command in a running run, bridged to the runner's exec
//! WebSocket.
//!
//! Rules (each answering a known failure of other exec APIs): the first request must be
//! `start`; a `resize` sent before `started` waits in the request stream and is applied once
//! the command runs; output chunks carry byte offsets per stream; `exit` comes once, after the
//! last output byte, and only with the exit code the runner read from the engine; a session
//! that breaks ends with an error status and no `exit`. A half-close of the request stream
//! closes the command's stdin.

use std::sync::Arc;
use std::time::Duration;

use bus::proto::containers::v1 as pb;
use bus::proto::containers::v1::exec_server::Exec;
use bus_api::exec::{ExecQuery, ExecStatus, Frame, STDIN, TerminalSize, encode_data};
use futures::stream::BoxStream;
use futures::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tonic::{Request, Response, Status, Streaming};

use super::DaemonState;
use crate::status::Error;
use crate::upstream::exec::{EXEC_SILENCE, ExecParams, ExecSocket};

/// Largest output chunk sent to the caller.
const CHUNK: usize = 64 * 1024;
/// An idle session gets a `keepalive` this often.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The Exec service.
pub struct ExecService {
    state: Arc<DaemonState>,
}

impl ExecService {
    /// A service over the shared state.
    pub fn new(state: Arc<DaemonState>) -> Self {
        ExecService { state }
    }
}

fn invalid(message: &str, guidance: &str) -> Status {
    Error::InvalidArgument {
        message: message.to_owned(),
        guidance: guidance.to_owned(),
    }
    .into()
}

fn size_of(size: Option<&pb::TerminalSize>) -> Option<(u16, u16)> {
    let size = size?;
    let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
    (size.cols > 0 && size.rows > 0).then(|| (clamp(size.cols), clamp(size.rows)))
}

/// The runner parameters of a `start`.
pub fn params(start: pb::ExecStart) -> Result<ExecParams, Status> {
    if start.run_id.is_empty() {
        return Err(invalid(
            "start.run_id is empty",
            "name the run to execute in",
        ));
    }
    if start.argv.first().is_none_or(String::is_empty) {
        return Err(invalid(
            "start.argv is empty",
            "give the command and its arguments, e.g. [\"sh\", \"-c\", \"echo hi\"]",
        ));
    }
    if !start.exec_id.is_empty() {
        return Err(Status::unimplemented(
            "reattaching to an exec by exec_id is not supported yet; leave exec_id empty",
        ));
    }
    let mut env: Vec<String> = start.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    Ok(ExecParams {
        exec: ExecQuery {
            size: size_of(start.initial_size.as_ref()),
            argv: start.argv,
            env,
            workdir: (!start.workdir.is_empty()).then_some(start.workdir),
            tty: start.tty,
            stdin: start.stdin,
        },
        run_id: start.run_id,
    })
}

fn response(msg: pb::exec_response::Msg) -> Result<pb::ExecResponse, Status> {
    Ok(pb::ExecResponse { msg: Some(msg) })
}

/// A session that ended without an exit status.
fn broken(message: impl Into<String>) -> Status {
    let mut details = tonic_types::ErrorDetails::new();
    details.set_error_info(
        "EXEC_SESSION_GONE",
        crate::status::DOMAIN,
        std::collections::HashMap::new(),
    );
    details.set_localized_message(
        "en-US",
        "the command's exit code is unknown; check the runner and run the command again",
    );
    use tonic_types::StatusExt as _;
    Status::with_error_details(tonic::Code::Unavailable, message, details)
}

#[tonic::async_trait]
impl Exec for ExecService {
    type ExecStream = BoxStream<'static, Result<pb::ExecResponse, Status>>;

    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecRequest>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let mut requests = request.into_inner();
        let start = match requests.message().await? {
            Some(pb::ExecRequest {
                msg: Some(pb::exec_request::Msg::Start(start)),
            }) => start,
            _ => {
                return Err(invalid(
                    "the first Exec request must be `start`",
                    "send ExecRequest{start: {run_id, argv, ...}} first",
                ));
            }
        };
        let params = params(start)?;
        let socket = upstream.exec(&params).await.map_err(Error::from)?;
        let (tx, rx) = mpsc::channel(32);
        tokio::spawn(bridge(socket, requests, tx, params.exec.stdin));
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }
}

type Tx = mpsc::Sender<Result<pb::ExecResponse, Status>>;

/// Sends `data` as chunks at their stream's offset; false when the caller is gone.
async fn output(tx: &Tx, offset: &mut u64, data: &[u8], stderr: bool) -> bool {
    for piece in data.chunks(CHUNK) {
        let chunk = pb::OutputChunk {
            offset: *offset,
            data: piece.to_vec(),
        };
        *offset += piece.len() as u64;
        let msg = if stderr {
            pb::exec_response::Msg::Stderr(chunk)
        } else {
            pb::exec_response::Msg::Stdout(chunk)
        };
        if tx.send(response(msg)).await.is_err() {
            return false;
        }
    }
    true
}

/// Moves requests to the runner and frames back until the status frame, a broken session or
/// the caller's departure.
async fn bridge(socket: ExecSocket, mut requests: Streaming<pb::ExecRequest>, tx: Tx, stdin: bool) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    if tx
        .send(response(pb::exec_response::Msg::Started(pb::ExecStarted {
            exec_id: String::new(),
        })))
        .await
        .is_err()
    {
        return;
    }
    let (mut out_offset, mut err_offset) = (0u64, 0u64);
    let mut requests_open = true;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    loop {
        tokio::select! {
            request = requests.message(), if requests_open => {
                let frame = match request {
                    Ok(Some(pb::ExecRequest { msg: Some(msg) })) => match msg {
                        pb::exec_request::Msg::Stdin(data) => encode_data(STDIN, &data),
                        pb::exec_request::Msg::Resize(size) => match size_of(Some(&size)) {
                            Some((cols, rows)) => Frame::Resize(TerminalSize { cols, rows }).encode(),
                            None => continue,
                        },
                        pb::exec_request::Msg::CloseStdin(_) => Frame::CloseStdin.encode(),
                        pb::exec_request::Msg::Signal(_) => {
                            let _ = tx.send(Err(Status::unimplemented(
                                "signals for exec'd commands are not supported yet; with a TTY, \
                                 send the terminal's control character (e.g. \\x03 for SIGINT) as stdin",
                            ))).await;
                            return;
                        }
                        pb::exec_request::Msg::Start(_) => {
                            let _ = tx.send(Err(invalid("`start` may be sent only once", "send stdin, resize or close_stdin"))).await;
                            return;
                        }
                    },
                    Ok(Some(pb::ExecRequest { msg: None })) => continue,
                    Ok(None) => {
                        // Half-close: EOF on stdin; output and resizes go on.
                        requests_open = false;
                        if !stdin {
                            continue;
                        }
                        Frame::CloseStdin.encode()
                    }
                    // The caller went away.
                    Err(_) => return,
                };
                if let Err(e) = ws_tx.send(Message::Binary(frame.into())).await {
                    let _ = tx.send(Err(broken(format!("the exec session to the runner broke: {e}")))).await;
                    return;
                }
            }
            message = tokio::time::timeout(EXEC_SILENCE, ws_rx.next()) => {
                let bytes = match message {
                    Err(_) => {
                        let _ = tx.send(Err(broken(format!("the runner sent nothing for {} s; the exec session is taken as broken", EXEC_SILENCE.as_secs())))).await;
                        return;
                    }
                    Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                        let _ = tx.send(Err(broken("the runner closed the exec session without an exit status"))).await;
                        return;
                    }
                    Ok(Some(Err(e))) => {
                        let _ = tx.send(Err(broken(format!("the exec session to the runner broke: {e}")))).await;
                        return;
                    }
                    Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
                    Ok(Some(Ok(_))) => continue,
                };
                keepalive.reset();
                let alive = match Frame::decode(&bytes) {
                    Ok(Frame::Stdout(data)) => output(&tx, &mut out_offset, &data, false).await,
                    Ok(Frame::Stderr(data)) => output(&tx, &mut err_offset, &data, true).await,
                    Ok(Frame::Status(ExecStatus { exit_code: Some(code), signal, reason, .. })) => {
                        let _ = tx.send(response(pb::exec_response::Msg::Exit(pb::ExecExited {
                            exit_code: code,
                            signal,
                            reason,
                        }))).await;
                        let _ = ws_tx.close().await;
                        return;
                    }
                    Ok(Frame::Status(status)) => {
                        let message = status.message.unwrap_or_else(|| "the runner reported no exit code".to_owned());
                        let _ = tx.send(Err(broken(message))).await;
                        return;
                    }
                    Ok(other) => {
                        tracing::debug!(channel = other.channel(), "unexpected exec frame ignored");
                        true
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Error::Upstream(crate::upstream::UpstreamError::Protocol {
                            origin: String::new(),
                            reason: e.to_string(),
                        }).into())).await;
                        return;
                    }
                };
                if !alive {
                    return;
                }
            }
            _ = keepalive.tick() => {
                if tx.send(response(pb::exec_response::Msg::Keepalive(pb::ExecKeepAlive {}))).await.is_err() {
                    return;
                }
            }
        }
    }
}
