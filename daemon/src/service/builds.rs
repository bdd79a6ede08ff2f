//! `bus.images.v1.BuildsService`: builds of the caller's account, through the runner. A build
//! runs in the runner; these calls start it, read it and stop it.

use std::sync::Arc;

use bus::proto::images::v1 as pb;
use bus::proto::images::v1::builds_service_server::BuildsService;
use bus::timestamp::from_time as timestamp;
use bus_api::builds::{Build, BuildLogFrame, BuildState};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::DaemonState;
use super::images::{invalid, upload};
use crate::status::Error;

/// The Builds service.
pub struct BuildsServiceImpl {
    state: Arc<DaemonState>,
}

impl BuildsServiceImpl {
    /// A service over the shared state.
    pub fn new(state: Arc<DaemonState>) -> Self {
        BuildsServiceImpl { state }
    }
}

fn state_to_proto(state: BuildState) -> pb::BuildState {
    match state {
        BuildState::Queued => pb::BuildState::Queued,
        BuildState::Running => pb::BuildState::Running,
        BuildState::Succeeded => pb::BuildState::Succeeded,
        BuildState::Failed => pb::BuildState::Failed,
        BuildState::Cancelled => pb::BuildState::Cancelled,
    }
}

fn build_to_proto(build: Build) -> pb::Build {
    pb::Build {
        id: build.id,
        state: state_to_proto(build.state) as i32,
        tags: build.tags,
        dockerfile: build.dockerfile,
        context_bytes: build.context_bytes,
        image_id: build.image_id.unwrap_or_default(),
        error: build.error.unwrap_or_default(),
        created_at: Some(timestamp(build.created_at)),
        started_at: build.started_at.map(timestamp),
        finished_at: build.finished_at.map(timestamp),
    }
}

fn build_id(id: &str) -> Result<&str, Status> {
    let id = id.trim();
    if id.is_empty() {
        return Err(invalid(
            "no build id given",
            "name a build id from `bus builds ls` (bld_...)",
        ));
    }
    Ok(id)
}

#[tonic::async_trait]
impl BuildsService for BuildsServiceImpl {
    type StreamBuildLogsStream = BoxStream<'static, Result<pb::StreamBuildLogsResponse, Status>>;

    async fn create_build(
        &self,
        request: Request<Streaming<pb::CreateBuildRequest>>,
    ) -> Result<Response<pb::CreateBuildResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let mut stream = request.into_inner();
        let options = match stream.message().await?.and_then(|m| m.part) {
            Some(pb::create_build_request::Part::Options(options)) => options,
            _ => {
                return Err(invalid(
                    "the first CreateBuild message must be `options`",
                    "send `options` (tags, dockerfile, context size), then `context` chunks",
                ));
            }
        };
        let size = (options.context_bytes > 0).then_some(options.context_bytes);
        let context = upload(stream, |m: pb::CreateBuildRequest| match m.part {
            Some(pb::create_build_request::Part::Context(data)) => Some(Bytes::from(data)),
            _ => None,
        });
        let build = upstream
            .create_build(&options.tags, &options.dockerfile, context, size)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::CreateBuildResponse {
            build: Some(build_to_proto(build)),
        }))
    }

    async fn list_builds(
        &self,
        request: Request<pb::ListBuildsRequest>,
    ) -> Result<Response<pb::ListBuildsResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let list = upstream.list_builds().await.map_err(Error::from)?;
        Ok(Response::new(pb::ListBuildsResponse {
            builds: list.builds.into_iter().map(build_to_proto).collect(),
        }))
    }

    async fn get_build(
        &self,
        request: Request<pb::GetBuildRequest>,
    ) -> Result<Response<pb::GetBuildResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let build = upstream
            .get_build(build_id(&request.get_ref().id)?)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::GetBuildResponse {
            build: Some(build_to_proto(build)),
        }))
    }

    async fn stream_build_logs(
        &self,
        request: Request<pb::StreamBuildLogsRequest>,
    ) -> Result<Response<Self::StreamBuildLogsStream>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let req = request.into_inner();
        let frames = upstream
            .build_logs(build_id(&req.id)?, req.follow, req.after_seq)
            .await
            .map_err(Error::from)?;
        let events = frames.map(|frame| {
            let event = match frame.map_err(Error::from)? {
                BuildLogFrame::Line { seq, text, time } => {
                    pb::stream_build_logs_response::Event::Line(pb::BuildLogLine {
                        seq,
                        text,
                        time: Some(timestamp(time)),
                    })
                }
                BuildLogFrame::End { build, last_seq } => {
                    pb::stream_build_logs_response::Event::Ended(pb::BuildEnded {
                        build: Some(build_to_proto(build)),
                        last_seq,
                    })
                }
                BuildLogFrame::Keepalive => {
                    pb::stream_build_logs_response::Event::Keepalive(pb::BuildKeepalive {})
                }
            };
            Ok(pb::StreamBuildLogsResponse { event: Some(event) })
        });
        Ok(Response::new(events.boxed()))
    }

    async fn cancel_build(
        &self,
        request: Request<pb::CancelBuildRequest>,
    ) -> Result<Response<pb::CancelBuildResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let build = upstream
            .cancel_build(build_id(&request.get_ref().id)?)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::CancelBuildResponse {
            build: Some(build_to_proto(build)),
        }))
    }

    async fn delete_build(
        &self,
        request: Request<pb::DeleteBuildRequest>,
    ) -> Result<Response<pb::DeleteBuildResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        upstream
            .delete_build(build_id(&request.get_ref().id)?)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::DeleteBuildResponse {}))
    }
}
