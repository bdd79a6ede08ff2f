//! `bus.containers.v1.Containers`: runs, their output and the runner's status.

use std::sync::Arc;
use std::time::Duration;

use bus::proto::containers::v1 as pb;
use bus::proto::containers::v1::containers_server::Containers;
use bus::timestamp::from_time as timestamp;
use bus_api::images::RegistryCredentials;
use bus_api::runs::{DEFAULT_HOST_IP, ListRunsQuery, PullPolicy, RUN_ID_PREFIX, WaitFor};
use bus_api::{
    BillingState, BillingStatus, CreateRun, Port, Protocol, Run, RunState, StorageMount,
    Stream as StdStream,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::DaemonState;
use crate::fanout::{Chunk, Event as FanEvent, Exit, Follow, LogRead, Notice};
use crate::status::Error;
use crate::upstream::{CreateOptions, Upstream, UpstreamError};

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

type RunEvents = BoxStream<'static, Result<pb::RunEvent, Status>>;
type LogEvents = BoxStream<'static, Result<pb::LogEvent, Status>>;

/// A log read's events, as proto log events.
fn log_events(
    events: mpsc::Receiver<Result<FanEvent, UpstreamError>>,
) -> impl futures::Stream<Item = Result<pb::LogEvent, Status>> + Send + 'static {
    ReceiverStream::new(events).map(|event| {
        let event = log_event(event.map_err(Error::from)?);
        Ok(pb::LogEvent { event: Some(event) })
    })
}

/// The proto form of a log read's event: the one conversion.
fn log_event(event: FanEvent) -> pb::log_event::Event {
    match event {
        FanEvent::Chunk(chunk) => pb::log_event::Event::Output(chunk_to_proto(chunk)),
        FanEvent::Exit(exit) => pb::log_event::Event::Exited(exit_to_proto(exit)),
        FanEvent::Keepalive => pb::log_event::Event::Keepalive(pb::KeepAlive {}),
        FanEvent::Notice(notice) => pb::log_event::Event::Notice(notice_to_proto(&notice)),
        FanEvent::Gap {
            first_available_seq,
            reason,
        } => pb::log_event::Event::Gap(pb::StreamGap {
            first_available_seq,
            reason,
        }),
    }
}

/// A log event as `Run` streams it: output, notices and the exit; keepalives and gaps are
/// left out.
fn run_event(event: FanEvent) -> Option<pb::run_event::Event> {
    match log_event(event) {
        pb::log_event::Event::Output(chunk) => Some(pb::run_event::Event::Output(chunk)),
        pb::log_event::Event::Exited(exit) => Some(pb::run_event::Event::Exited(exit)),
        pb::log_event::Event::Notice(notice) => Some(pb::run_event::Event::Notice(notice)),
        pb::log_event::Event::Keepalive(_) | pb::log_event::Event::Gap(_) => None,
    }
}

/// Everything after `after_seq`, followed until the run ends.
fn follow_from(after_seq: u64, keepalive: Option<Duration>, output: bool) -> LogRead {
    LogRead {
        follow: Follow {
            after_seq,
            stdout: output,
            stderr: output,
            keepalive,
        },
        tail: None,
        follow_on: true,
    }
}

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
        // The runner refuses, before anything starts, a run whose output may not be read.
        let options = CreateOptions {
            follow: true,
            wait: None,
        };
        let run = upstream
            .create_run(&spec, options)
            .await
            .map_err(Error::from)?;
        let accepted = pb::RunEvent {
            event: Some(pb::run_event::Event::Accepted(run_to_proto(run.clone()))),
        };
        // Created with `follow`: the runner has accepted this caller for the run's logs.
        let events = self
            .state
            .fanout
            .follow_created(upstream, &run.id, Follow::after(0));
        let events = ReceiverStream::new(events).filter_map(|event| async move {
            match event {
                Ok(event) => Some(Ok(pb::RunEvent {
                    event: Some(run_event(event)?),
                })),
                Err(e) => Some(Err(Status::from(Error::from(e)))),
            }
        });
        Ok(Response::new(Box::pin(
            futures::stream::once(async { Ok(accepted) }).chain(events),
        )))
    }

    async fn create_run(
        &self,
        request: Request<pb::CreateRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let pb::CreateRunRequest {
            spec,
            wait_running,
            wait_ready,
        } = request.into_inner();
        let spec = create_run(spec)?;
        // A run with a terminal or stdin is made to be attached to, and an attach replays its
        // output: the runner refuses it before anything starts when the output may not be read.
        let options = CreateOptions {
            follow: spec.tty || spec.stdin,
            wait: if wait_ready {
                Some(WaitFor::Ready)
            } else {
                wait_running.then_some(WaitFor::Running)
            },
        };
        let run = upstream
            .create_run(&spec, options)
            .await
            .map_err(Error::from)?;
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
        let query = list_query(request.into_inner())?;
        let page = match self.state.listings.answer(&upstream, &query).await {
            Some(page) => page,
            None => upstream.list_runs(&query).await.map_err(Error::from)?,
        };
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

    type StreamLogsStream = LogEvents;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let req = request.into_inner();
        let run_id = run_key(&upstream, &req.run_id).await?;
        let wanted = |s: pb::StdStream| {
            !req.exit_only && (req.streams.is_empty() || req.streams.contains(&(s as i32)))
        };
        let follow = Follow {
            after_seq: req.after_seq,
            stdout: wanted(pb::StdStream::Stdout),
            stderr: wanted(pb::StdStream::Stderr),
            keepalive: (req.keepalive_seconds > 0)
                .then(|| Duration::from_secs(req.keepalive_seconds.into())),
        };
        let read = LogRead {
            follow,
            tail: (req.tail > 0 && req.after_seq == 0).then_some(u64::from(req.tail)),
            follow_on: req.follow,
        };
        let events = self
            .state
            .fanout
            .read(upstream, &run_id, read)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(Box::pin(log_events(events))))
    }

    async fn wait_run(
        &self,
        request: Request<pb::WaitRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let id = run_key(&upstream, &request.get_ref().run_id).await?;
        let mut events = self
            .state
            .fanout
            .read(upstream.clone(), &id, follow_from(0, None, false))
            .await
            .map_err(Error::from)?;
        while let Some(event) = events.recv().await {
            match event {
                Ok(FanEvent::Exit(_)) => break,
                Ok(_) => {}
                Err(e) => return Err(Error::from(e).into()),
            }
        }
        let run = upstream.get_run(&id).await.map_err(Error::from)?;
        Ok(Response::new(run_to_proto(run)))
    }

    async fn get_billing(
        &self,
        request: Request<pb::GetBillingRequest>,
    ) -> Result<Response<pb::BillingStatus>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let status = upstream.billing().await.map_err(Error::from)?;
        Ok(Response::new(billing_to_proto(status)))
    }

    async fn stop_run(
        &self,
        request: Request<pb::StopRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let pb::StopRunRequest {
            run_id: id,
            grace_seconds,
            force,
        } = request.into_inner();
        let id = run_id(&id)?;
        let grace = (grace_seconds > 0).then_some(grace_seconds);
        let run = upstream
            .stop_run(id, grace, force)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(run_to_proto(run)))
    }
}

/// The id of the run `id_or_name` names, for the calls that share one upstream stream per
/// run: a name is asked of the runner first, so that readers of one run meet in one stream
/// whichever way they named it.
async fn run_key(upstream: &Upstream, id_or_name: &str) -> Result<String, Error> {
    let id = run_id(id_or_name)?;
    if id.starts_with(RUN_ID_PREFIX) {
        return Ok(id.to_owned());
    }
    Ok(upstream.get_run(id).await?.id)
}

fn run_id(id: &str) -> Result<&str, Error> {
    if id.trim().is_empty() {
        return Err(Error::InvalidArgument {
            message: "no run id given".into(),
            guidance: "pass a run id or name as `bus containers runs` prints them".into(),
        });
    }
    Ok(id)
}

/// The REST list query of a `ListRuns` request.
fn list_query(request: pb::ListRunsRequest) -> Result<ListRunsQuery, Error> {
    let mut states = Vec::with_capacity(request.states.len());
    for state in request.states {
        match pb::RunState::try_from(state)
            .ok()
            .and_then(state_from_proto)
        {
            Some(state) => states.push(state.as_str()),
            None => {
                return Err(Error::InvalidArgument {
                    message: format!("states holds {state}, which is not a run state"),
                    guidance: "name states from RUN_STATE_QUEUED (1) to RUN_STATE_TIMED_OUT (7), or none for all".into(),
                });
            }
        }
    }
    Ok(ListRunsQuery {
        page_size: (request.page_size > 0).then_some(request.page_size),
        page_token: non_empty(request.page_token),
        state: (!states.is_empty()).then(|| states.join(",")),
        name: non_empty(request.name),
        participant: non_empty(request.participant),
        role: non_empty(request.role),
        watch: false,
    })
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn create_run(spec: Option<pb::RunSpec>) -> Result<CreateRun, Error> {
    let spec = spec.unwrap_or_default();
    let pull = match pb::PullPolicy::try_from(spec.pull) {
        Ok(pb::PullPolicy::Unspecified) => None,
        Ok(pb::PullPolicy::Missing) => Some(PullPolicy::Missing),
        Ok(pb::PullPolicy::Always) => Some(PullPolicy::Always),
        Ok(pb::PullPolicy::Never) => Some(PullPolicy::Never),
        Err(_) => {
            return Err(Error::InvalidArgument {
                message: format!("pull is {}, which is not a pull policy", spec.pull),
                guidance: "use PULL_POLICY_MISSING, PULL_POLICY_ALWAYS or PULL_POLICY_NEVER".into(),
            });
        }
    };
    let ports = spec
        .ports
        .into_iter()
        .enumerate()
        .map(|(i, p)| port_from_proto(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CreateRun {
        profile: non_empty(spec.profile),
        image: non_empty(spec.image),
        argv: spec.argv,
        env: spec.env.into_iter().collect(),
        workdir: non_empty(spec.workdir),
        name: non_empty(spec.name),
        labels: spec.labels.into_iter().collect(),
        timeout_seconds: (spec.timeout_seconds > 0).then_some(spec.timeout_seconds),
        tty: spec.tty,
        stdin: spec.stdin,
        ports,
        storage: spec.storage.map(|s| StorageMount {
            mount_path: s.mount_path,
            subpath: non_empty(s.subpath),
        }),
        participant: non_empty(spec.participant),
        role: non_empty(spec.role),
        pull,
        credentials: spec.credentials.map(|c| RegistryCredentials {
            username: c.username,
            password: c.password,
        }),
        service: spec.service,
        auto_remove: spec.auto_remove,
    })
}

/// A published port of a `RunSpec`; out-of-range numbers are left for the runner, which
/// names the bound (only a value too large for the REST field is refused here).
fn port_from_proto(i: usize, port: pb::PortMapping) -> Result<Port, Error> {
    let number = |field: &str, value: u32| {
        u16::try_from(value).map_err(|_| Error::InvalidArgument {
            message: format!("ports[{i}].{field} is {value}; it must be between 1 and 65535"),
            guidance: "publish ports as CONTAINER_PORT or HOST_PORT:CONTAINER_PORT".into(),
        })
    };
    let protocol = match port.protocol.as_str() {
        "" | "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return Err(Error::InvalidArgument {
                message: format!(
                    "ports[{i}].protocol is \"{}\"; use tcp or udp",
                    other.escape_debug()
                ),
                guidance: "publish ports as CONTAINER_PORT/tcp or CONTAINER_PORT/udp".into(),
            });
        }
    };
    Ok(Port {
        container_port: number("container_port", port.container_port)?,
        host_port: match port.host_port {
            0 => None,
            n => Some(number("host_port", n)?),
        },
        protocol,
        host_ip: non_empty(port.host_ip).unwrap_or_else(|| DEFAULT_HOST_IP.to_owned()),
    })
}

fn port_to_proto(port: Port) -> pb::PortMapping {
    pb::PortMapping {
        container_port: port.container_port.into(),
        host_port: port.host_port.map_or(0, u32::from),
        protocol: port.protocol.as_str().to_owned(),
        host_ip: port.host_ip,
    }
}

fn state_from_proto(state: pb::RunState) -> Option<RunState> {
    Some(match state {
        pb::RunState::Unspecified => return None,
        pb::RunState::Queued => RunState::Queued,
        pb::RunState::Starting => RunState::Starting,
        pb::RunState::Running => RunState::Running,
        pb::RunState::Exited => RunState::Exited,
        pb::RunState::Failed => RunState::Failed,
        pb::RunState::Stopped => RunState::Stopped,
        pb::RunState::TimedOut => RunState::TimedOut,
    })
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
        ports: run.options.ports.into_iter().map(port_to_proto).collect(),
        storage: run.options.storage.map(|s| pb::StorageMount {
            mount_path: s.mount_path,
            subpath: s.subpath.unwrap_or_default(),
        }),
        participant: run.participant.unwrap_or_default(),
        role: run.role.unwrap_or_default(),
        service: run.options.service,
        restarts: run.options.restarts,
        tty: run.options.tty,
        stdin: run.options.stdin,
    }
}

fn billing_to_proto(status: BillingStatus) -> pb::BillingStatus {
    let billing = match status.billing {
        BillingState::Active => pb::BillingState::Active,
        BillingState::Required => pb::BillingState::Required,
        BillingState::Unknown => pb::BillingState::Unspecified,
    };
    pb::BillingStatus {
        account: status.account,
        plan: status.plan,
        billing: billing as i32,
        period_start: Some(timestamp(status.period_start)),
        period_end: Some(timestamp(status.period_end)),
        run_seconds: status.usage.run_seconds,
        concurrent_runs: status.usage.concurrent_runs,
        max_concurrent_runs: status.limits.max_concurrent_runs,
        run_seconds_per_period: status.limits.run_seconds_per_period,
        period_seconds: status.limits.period_seconds,
        guidance_url: status.guidance_url.unwrap_or_default(),
    }
}

fn chunk_to_proto(chunk: Chunk) -> pb::LogChunk {
    let stream = match chunk.stream {
        StdStream::Stdout => pb::StdStream::Stdout,
        StdStream::Stderr => pb::StdStream::Stderr,
    };
    pb::LogChunk {
        seq: chunk.seq,
        stream: stream as i32,
        data: chunk.data.to_vec(),
        time: Some(timestamp(chunk.time)),
    }
}

fn notice_to_proto(notice: &Notice) -> pb::StreamNotice {
    let (kind, retry_for) = match notice {
        Notice::Unreachable { retry_for, .. } => (
            pb::NoticeKind::UpstreamUnreachable,
            u32::try_from(retry_for.as_secs()).unwrap_or(u32::MAX),
        ),
        Notice::Restored { .. } => (pb::NoticeKind::UpstreamRestored, 0),
    };
    pb::StreamNotice {
        kind: kind as i32,
        message: notice.message(),
        retry_for_seconds: retry_for,
    }
}

fn exit_to_proto(exit: Exit) -> pb::RunExited {
    pb::RunExited {
        exit_code: exit.exit_code,
        state: state_to_proto(exit.state) as i32,
        reason: exit.reason.unwrap_or_default(),
        last_seq: exit.last_seq,
        finished_at: exit.finished_at.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(err: Error) -> String {
        match err {
            Error::InvalidArgument { message, guidance } => {
                assert!(!guidance.is_empty(), "{message}: no next step");
                message
            }
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    /// What a stub may send that REST cannot carry is refused here, one line each; what
    /// REST can carry is left for the runner to judge.
    #[test]
    fn run_specs_map_to_rest_and_bad_values_are_refused() {
        let spec = pb::RunSpec {
            ports: vec![pb::PortMapping {
                container_port: 80,
                host_port: 0,
                protocol: String::new(),
                host_ip: String::new(),
            }],
            storage: Some(pb::StorageMount {
                mount_path: "/data".into(),
                subpath: String::new(),
            }),
            pull: pb::PullPolicy::Never as i32,
            service: true,
            ..pb::RunSpec::default()
        };
        let rest = create_run(Some(spec.clone())).unwrap();
        assert_eq!(
            (
                &rest.ports[0].host_ip[..],
                rest.ports[0].host_port,
                rest.ports[0].protocol
            ),
            (DEFAULT_HOST_IP, None, Protocol::Tcp)
        );
        assert_eq!(rest.storage.unwrap().subpath, None);
        assert_eq!((rest.pull, rest.service), (Some(PullPolicy::Never), true));
        assert_eq!(
            create_run(None).unwrap().pull,
            None,
            "UNSPECIFIED is the runner's default"
        );

        let bad = |tweak: fn(&mut pb::RunSpec)| {
            let mut spec = spec.clone();
            tweak(&mut spec);
            invalid(create_run(Some(spec)).unwrap_err())
        };
        assert!(
            bad(|s| s.ports[0].container_port = 70_000)
                .contains("ports[0].container_port is 70000")
        );
        assert!(bad(|s| s.ports[0].host_port = 65_536).contains("ports[0].host_port"));
        assert!(bad(|s| s.ports[0].protocol = "sctp".into()).contains("use tcp or udp"));
        assert!(bad(|s| s.pull = 9).contains("not a pull policy"));
    }

    #[test]
    fn list_filters_map_to_the_rest_query_and_unknown_states_are_refused() {
        let query = list_query(pb::ListRunsRequest {
            states: vec![pb::RunState::Running as i32, pb::RunState::TimedOut as i32],
            role: "agent".into(),
            ..pb::ListRunsRequest::default()
        })
        .unwrap();
        assert_eq!(query.state.as_deref(), Some("running,timed_out"));
        assert_eq!((query.role.as_deref(), query.name), (Some("agent"), None));
        for state in [pb::RunState::Unspecified as i32, 42] {
            let message = invalid(
                list_query(pb::ListRunsRequest {
                    states: vec![state],
                    ..pb::ListRunsRequest::default()
                })
                .unwrap_err(),
            );
            assert!(message.contains("not a run state"), "{message}");
        }
    }
}
