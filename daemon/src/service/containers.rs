//! `bus.containers.v1.Containers`: runs, their output and the runner's status.

use std::sync::Arc;
use std::time::Duration;

use bus::proto::containers::v1 as pb;
use bus::proto::containers::v1::containers_server::Containers;
use bus_api::{CreateRun, LogFrame, Run, RunState, Stream as StdStream};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::DaemonState;
use crate::status::Error;
use crate::upstream::{Upstream, UpstreamError};

/// How many times a broken log stream is resumed in a row before the call fails.
const MAX_RESUMES: u32 = 5;
/// Events buffered per `Run` stream before the upstream reader waits for the client.
const STREAM_BUFFER: usize = 64;

/// The Containers service.
pub struct ContainersService {
    state: Arc<DaemonState>,
}

impl ContainersService {
    /// A service over the shared state.
    pub fn new(state: Arc<DaemonState>) -> Self {
        ContainersService { state }
    }
}

type RunEvents = ReceiverStream<Result<pb::RunEvent, Status>>;

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::RunnerStatus>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let status = upstream.status().await.map_err(Error::from)?;
        Ok(Response::new(pb::RunnerStatus {
            state: status.state,
            engine: status.engine,
            engine_api_version: status.engine_api_version,
            profiles: status.profiles,
        }))
    }

    type RunStream = RunEvents;

    async fn run(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<Self::RunStream>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let spec = create_run(request.into_inner().spec)?;
        let run = upstream.create_run(&spec).await.map_err(Error::from)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(follow_run(upstream, run, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_run(
        &self,
        request: Request<pb::CreateRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let spec = create_run(request.into_inner().spec)?;
        let run = upstream.create_run(&spec).await.map_err(Error::from)?;
        Ok(Response::new(run_to_proto(run)))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let id = run_id(&request.get_ref().run_id)?;
        let run = upstream.get_run(id).await.map_err(Error::from)?;
        Ok(Response::new(run_to_proto(run)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let pb::ListRunsRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let page = upstream
            .list_runs(page_size, &page_token)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: page.runs.into_iter().map(run_to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn delete_run(
        &self,
        request: Request<pb::DeleteRunRequest>,
    ) -> Result<Response<pb::DeleteRunResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let id = run_id(&request.get_ref().run_id)?;
        upstream.delete_run(id).await.map_err(Error::from)?;
        Ok(Response::new(pb::DeleteRunResponse {}))
    }
}

/// Streams a run's events to `tx`: accepted, output in seq order, exited exactly once.
///
/// A broken upstream stream is resumed after the last seq seen, so the client sees neither a
/// gap nor a duplicate. If the client goes away the upstream request is dropped; the run
/// itself goes on.
async fn follow_run(upstream: Upstream, run: Run, tx: mpsc::Sender<Result<pb::RunEvent, Status>>) {
    let id = run.id.clone();
    if send(&tx, pb::run_event::Event::Accepted(run_to_proto(run)))
        .await
        .is_err()
    {
        return;
    }
    let mut after_seq = 0;
    let mut resumes = 0;
    loop {
        let failure = match upstream.logs(&id, after_seq, true).await {
            Ok(frames) => {
                let mut frames = std::pin::pin!(frames);
                let mut failure = None;
                while let Some(frame) = frames.next().await {
                    let event = match frame {
                        Ok(LogFrame::Output { seq, .. }) if seq <= after_seq => continue,
                        Ok(frame @ LogFrame::Output { .. }) => {
                            resumes = 0;
                            let chunk = chunk_to_proto(&frame);
                            after_seq = chunk.as_ref().map_or(after_seq, |c| c.seq);
                            match chunk {
                                Ok(chunk) => pb::run_event::Event::Output(chunk),
                                Err(e) => {
                                    let _ = tx.send(Err(Error::from(e).into())).await;
                                    return;
                                }
                            }
                        }
                        Ok(LogFrame::Exit {
                            state,
                            exit_code,
                            reason,
                            last_seq,
                            finished_at,
                        }) => {
                            let exited = pb::RunExited {
                                exit_code: exit_code.unwrap_or_default(),
                                state: state_to_proto(state) as i32,
                                reason: reason.unwrap_or_default(),
                                last_seq,
                                finished_at: finished_at.map(timestamp),
                            };
                            let _ = send(&tx, pb::run_event::Event::Exited(exited)).await;
                            return;
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    };
                    if send(&tx, event).await.is_err() {
                        return;
                    }
                }
                failure.unwrap_or_else(|| UpstreamError::Unreachable {
                    origin: String::from("the runner"),
                    reason: "the log stream closed before the run's exit frame".into(),
                })
            }
            Err(e) => e,
        };
        let retryable = matches!(failure, UpstreamError::Unreachable { .. });
        resumes += 1;
        if !retryable || resumes > MAX_RESUMES {
            let _ = tx.send(Err(Error::from(failure).into())).await;
            return;
        }
        tracing::warn!(run = %id, after_seq, resumes, "log stream broke; resuming");
        tokio::time::sleep(Duration::from_millis(100 << resumes)).await;
    }
}

async fn send(
    tx: &mpsc::Sender<Result<pb::RunEvent, Status>>,
    event: pb::run_event::Event,
) -> Result<(), ()> {
    tx.send(Ok(pb::RunEvent { event: Some(event) }))
        .await
        .map_err(drop)
}

fn run_id(id: &str) -> Result<&str, Error> {
    if id.trim().is_empty() {
        return Err(Error::InvalidArgument {
            message: "no run id given".into(),
            guidance: "pass a run id as printed by `bus containers runs`".into(),
        });
    }
    Ok(id)
}

fn create_run(spec: Option<pb::RunSpec>) -> Result<CreateRun, Error> {
    let spec = spec.unwrap_or_default();
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    Ok(CreateRun {
        profile: non_empty(spec.profile),
        image: non_empty(spec.image),
        argv: spec.argv,
        env: spec.env.into_iter().collect(),
        workdir: non_empty(spec.workdir),
        name: non_empty(spec.name),
        labels: spec.labels.into_iter().collect(),
        timeout_seconds: (spec.timeout_seconds > 0).then_some(spec.timeout_seconds),
    })
}

fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

fn state_to_proto(state: RunState) -> pb::RunState {
    match state {
        RunState::Queued => pb::RunState::Queued,
        RunState::Starting => pb::RunState::Starting,
        RunState::Running => pb::RunState::Running,
        RunState::Exited => pb::RunState::Exited,
        RunState::Failed => pb::RunState::Failed,
        RunState::Stopped => pb::RunState::Stopped,
        RunState::TimedOut => pb::RunState::TimedOut,
    }
}

fn run_to_proto(run: Run) -> pb::Run {
    pb::Run {
        id: run.id,
        state: state_to_proto(run.state) as i32,
        exit_code: run.exit_code,
        profile: run.profile.unwrap_or_default(),
        image: run.image,
        argv: run.argv,
        name: run.name.unwrap_or_default(),
        labels: run.labels.into_iter().collect(),
        created_at: Some(timestamp(run.created_at)),
        started_at: run.started_at.map(timestamp),
        finished_at: run.finished_at.map(timestamp),
        reason: run.reason.unwrap_or_default(),
    }
}

fn chunk_to_proto(frame: &LogFrame) -> Result<pb::LogChunk, UpstreamError> {
    let LogFrame::Output {
        seq, stream, time, ..
    } = frame
    else {
        unreachable!("only output frames are chunks");
    };
    let data = match frame.output_bytes() {
        Some(Ok(data)) => data,
        _ => {
            return Err(UpstreamError::Protocol {
                origin: "the runner".into(),
                reason: format!("log frame {seq} has invalid base64 data"),
            });
        }
    };
    let stream = match stream {
        StdStream::Stdout => pb::StdStream::Stdout,
        StdStream::Stderr => pb::StdStream::Stderr,
    };
    Ok(pb::LogChunk {
        seq: *seq,
        stream: stream as i32,
        data,
        time: Some(timestamp(*time)),
    })
}
