//! `bus.containers.v1.Exec`: a command in a running run, bridged to the runner's exec
//! WebSocket.
//!
//! Rules (each answering a known failure of other exec APIs): the first request must be
//! `start`; a `resize` sent before `started` waits in the request stream and is applied once
//! the command runs; output chunks carry byte offsets per stream; `exit` comes once, after the
//! last output byte, and only with the exit code the runner read from the engine; a session
//! that breaks ends with an error status and no `exit`. A half-close of the request stream
//! closes the command's stdin. `signal` becomes the runner's signal frame.
//!
//! A `detach` start is one `POST` to the runner; an `exec_id` start opens the detached exec's
//! replay socket, an `attach` start the run's own attach socket; all three then follow the
//! same rules (`started` carries the exec id where there is one).

use std::sync::Arc;
use std::time::Duration;

use bus::proto::containers::v1 as pb;
use bus::proto::containers::v1::exec_server::Exec;
use bus_api::exec::{
    CreateExec, ExecQuery, ExecRecord, ExecState, ExecStatus, Frame, SignalFrame, TerminalSize,
};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::DaemonState;
use crate::status::Error;
use crate::upstream::exec::{ExecParams, ExecSession, Session, SessionError};

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
        if start.detach {
            let record = detach(&upstream, start).await?;
            let started = response(pb::exec_response::Msg::Started(pb::ExecStarted {
                exec_id: record.id,
            }));
            return Ok(Response::new(futures::stream::iter([started]).boxed()));
        }
        let (session, stdin, exec_id) = session(&upstream, start).await?;
        let session = upstream.session(&session).await.map_err(Error::from)?;
        let (tx, rx) = mpsc::channel(32);
        tokio::spawn(bridge(session, requests, tx, stdin, exec_id));
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn get_exec(
        &self,
        request: Request<pb::GetExecRequest>,
    ) -> Result<Response<pb::GetExecResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let exec_id = request.into_inner().exec_id;
        if exec_id.is_empty() {
            return Err(invalid(
                "exec_id is empty",
                "name the exec that `bus containers exec -d` printed",
            ));
        }
        let record = upstream.get_exec(&exec_id).await.map_err(Error::from)?;
        Ok(Response::new(pb::GetExecResponse {
            exec: Some(exec_info(record)),
        }))
    }
}

/// The proto form of a detached exec's record.
pub fn exec_info(record: ExecRecord) -> pb::ExecInfo {
    use bus::timestamp::from_time as timestamp;
    let state = match record.state {
        ExecState::Running => pb::ExecState::Running,
        ExecState::Exited => pb::ExecState::Exited,
        ExecState::Failed => pb::ExecState::Failed,
    };
    pb::ExecInfo {
        exec_id: record.id,
        run_id: record.run_id,
        argv: record.command,
        state: state as i32,
        exit_code: record.exit_code,
        signal: record.signal,
        message: record.message.unwrap_or_default(),
        output_bytes: record.output_bytes,
        created_at: Some(timestamp(record.created_at)),
        finished_at: record.finished_at.map(timestamp),
    }
}

/// Starts a detached exec.
async fn detach(
    upstream: &crate::upstream::Upstream,
    start: pb::ExecStart,
) -> Result<ExecRecord, Status> {
    if start.stdin || start.tty {
        return Err(invalid(
            "a detached exec has no stdin and no terminal",
            "leave start.stdin and start.tty false with start.detach",
        ));
    }
    if !start.exec_id.is_empty() || start.attach {
        return Err(invalid(
            "start.detach starts a new command",
            "leave start.exec_id empty and start.attach false with it",
        ));
    }
    let params = params(start)?;
    let body = CreateExec {
        command: params.exec.argv,
        env: params.exec.env,
        workdir: params.exec.workdir,
    };
    Ok(upstream
        .create_exec(&params.run_id, &body)
        .await
        .map_err(Error::from)?)
}

/// Which socket a (not detached) start opens: the session, whether stdin is attached, and the
/// exec id for `started`.
async fn session(
    upstream: &crate::upstream::Upstream,
    start: pb::ExecStart,
) -> Result<(Session, bool, String), Status> {
    if !start.exec_id.is_empty() {
        if !start.argv.is_empty() || start.stdin || start.tty || start.attach {
            return Err(invalid(
                "start.exec_id attaches to a detached exec, which has no new command, stdin or \
                 terminal",
                "send only start.exec_id (and start.snapshot) to re-attach",
            ));
        }
        if !start.run_id.is_empty() {
            let record = upstream
                .get_exec(&start.exec_id)
                .await
                .map_err(Error::from)?;
            if record.run_id != start.run_id {
                return Err(Error::NotFound {
                    message: format!("exec {} is not in run {}", start.exec_id, start.run_id),
                    guidance: "leave start.run_id empty, or name the run the exec was started in"
                        .to_owned(),
                }
                .into());
            }
        }
        let session = Session::Detached {
            exec_id: start.exec_id.clone(),
            follow: !start.snapshot,
        };
        return Ok((session, false, start.exec_id));
    }
    if start.attach {
        if start.run_id.is_empty() || !start.argv.is_empty() {
            return Err(invalid(
                "start.attach connects to the run's own command",
                "name the run in start.run_id and leave start.argv empty",
            ));
        }
        let session = Session::Run {
            run_id: start.run_id,
            size: size_of(start.initial_size.as_ref()),
        };
        return Ok((session, true, String::new()));
    }
    let params = params(start)?;
    let stdin = params.exec.stdin;
    Ok((Session::Command(params), stdin, String::new()))
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

/// Ends the session with `error` as the caller's status.
async fn fail(tx: &Tx, error: impl Into<Error>) {
    let _ = tx.send(Err(error.into().into())).await;
}

/// Moves requests to the runner and frames back until the status frame, a broken session or
/// the caller's departure.
async fn bridge(
    session: ExecSession,
    mut requests: Streaming<pb::ExecRequest>,
    tx: Tx,
    stdin: bool,
    exec_id: String,
) {
    let (mut sink, mut source) = session.split();
    if tx
        .send(response(pb::exec_response::Msg::Started(pb::ExecStarted {
            exec_id,
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
                        pb::exec_request::Msg::Stdin(data) => Frame::Stdin(data),
                        pb::exec_request::Msg::Resize(size) => match size_of(Some(&size)) {
                            Some((cols, rows)) => Frame::Resize(TerminalSize { cols, rows }),
                            None => continue,
                        },
                        pb::exec_request::Msg::CloseStdin(_) => Frame::CloseStdin,
                        pb::exec_request::Msg::Signal(pb::ExecSignal { signal }) => {
                            if !(1..=64).contains(&signal) {
                                let _ = tx.send(Err(invalid(&format!("{signal} is not a signal number"), "send a POSIX signal number from 1 to 64, e.g. 15 for SIGTERM"))).await;
                                return;
                            }
                            Frame::Signal(SignalFrame { signal })
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
                        Frame::CloseStdin
                    }
                    // The caller went away.
                    Err(_) => return,
                };
                if let Err(e) = sink.send(&frame).await {
                    fail(&tx, e).await;
                    return;
                }
            }
            frame = source.next() => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        fail(&tx, e).await;
                        return;
                    }
                };
                keepalive.reset();
                let alive = match frame {
                    Frame::Stdout(data) => output(&tx, &mut out_offset, &data, false).await,
                    Frame::Stderr(data) => output(&tx, &mut err_offset, &data, true).await,
                    Frame::Status(ExecStatus { exit_code: Some(code), signal, reason, .. }) => {
                        let _ = tx.send(response(pb::exec_response::Msg::Exit(pb::ExecExited {
                            exit_code: code,
                            signal,
                            reason,
                        }))).await;
                        sink.close().await;
                        return;
                    }
                    Frame::Status(status) if status.reason == "running" => {
                        // A replay without following ended; the exec goes on.
                        sink.close().await;
                        return;
                    }
                    Frame::Status(status) => {
                        let message = status.message.unwrap_or_else(|| "the runner reported no exit code".to_owned());
                        fail(&tx, SessionError::Gone(message)).await;
                        return;
                    }
                    other => {
                        tracing::debug!(channel = other.channel(), "unexpected exec frame ignored");
                        true
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
