//! `bus.images.v1.ImagesService`: the account's images, through the runner.
//!
//! Pull and push end with exactly one `result`, or with an error status built from the
//! runner's problem (from its refusal or from the stream's `error` frame) — never an error
//! inside a successful stream. Registry credentials go from the request into the runner
//! request's body and nowhere else.

use std::sync::Arc;

use bus::proto::images::v1 as pb;
use bus::proto::images::v1::images_service_server::ImagesService;
use bus::timestamp::from_time as timestamp;
use bus_api::images::{
    ArchiveFormat, ImageDetail, ImageSummary, ProgressFrame, RegistryCredentials, RegistryRequest,
};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::DaemonState;
use crate::status::Error;
use crate::upstream::UpstreamError;
use crate::upstream::images::Upload;

/// Largest archive chunk sent to the caller.
pub const CHUNK: usize = 64 * 1024;

/// The Images service.
pub struct ImagesServiceImpl {
    state: Arc<DaemonState>,
}

impl ImagesServiceImpl {
    /// A service over the shared state.
    pub fn new(state: Arc<DaemonState>) -> Self {
        ImagesServiceImpl { state }
    }
}

/// An `INVALID_ARGUMENT` with what to do.
pub fn invalid(message: &str, guidance: &str) -> Status {
    Error::InvalidArgument {
        message: message.to_owned(),
        guidance: guidance.to_owned(),
    }
    .into()
}

fn reference(text: &str) -> Result<&str, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(
            "no image reference given",
            "name an image, e.g. localhost/app:1, or an id from `bus images ls`",
        ));
    }
    Ok(text)
}

fn image_to_proto(image: ImageSummary) -> pb::Image {
    pb::Image {
        id: image.id,
        references: image.references,
        created_at: image.created_at.map(timestamp),
        updated_at: image.updated_at.map(timestamp),
        size_bytes: image.size_bytes,
        public: image.public,
    }
}

fn detail_to_proto(image: ImageDetail) -> pb::ImageDetail {
    pb::ImageDetail {
        id: image.id,
        references: image.references,
        labels: image.labels.into_iter().collect(),
        created_at: image.created_at.map(timestamp),
        updated_at: image.updated_at.map(timestamp),
        target_media_type: image.target.media_type.unwrap_or_default(),
        target_digest: image.target.digest.unwrap_or_default(),
        manifests: image
            .manifests
            .into_iter()
            .map(|m| pb::Manifest {
                digest: m.digest,
                platform: m.platform,
            })
            .collect(),
        config: Some(pb::ImageConfig {
            env: image.config.env,
            cmd: image.config.cmd,
            entrypoint: image.config.entrypoint,
            working_dir: image.config.working_dir.unwrap_or_default(),
            user: image.config.user.unwrap_or_default(),
            exposed_ports: image.config.exposed_ports,
            os: image.config.os,
            architecture: image.config.architecture,
        }),
        layers: image.layers,
        content_size_bytes: image.content_size_bytes,
        public: image.public,
    }
}

fn registry_request(
    reference: String,
    credentials: Option<pb::RegistryCredentials>,
) -> RegistryRequest {
    RegistryRequest {
        reference: reference.trim().to_owned(),
        credentials: credentials
            .filter(|c| !c.username.is_empty() || !c.password.is_empty())
            .map(|c| RegistryCredentials {
                username: c.username,
                password: c.password,
            }),
    }
}

/// What a pull or push stream yields, before it becomes the call's message type.
enum Step {
    Progress(pb::Progress),
    Result(pb::Image),
}

/// Runs a pull or push and turns its frames into steps: progress, then one result, or the
/// error status the runner's problem maps to.
async fn registry_steps(
    state: &DaemonState,
    metadata: &tonic::metadata::MetadataMap,
    push: bool,
    request: RegistryRequest,
) -> Result<ReceiverStream<Result<Step, Status>>, Status> {
    reference(&request.reference)?;
    let upstream = state.upstream(metadata)?;
    let frames = upstream
        .registry_operation(push, &request)
        .await
        .map_err(Error::from)?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut frames = std::pin::pin!(frames);
        let origin = upstream.origin().to_string();
        while let Some(frame) = frames.next().await {
            let step = match frame {
                Ok(ProgressFrame::Progress {
                    id,
                    status,
                    current,
                    total,
                }) => Ok(Step::Progress(pb::Progress {
                    id: id.unwrap_or_default(),
                    status,
                    current: current.unwrap_or(0),
                    total: total.unwrap_or(0),
                })),
                Ok(ProgressFrame::Result { image }) => {
                    let _ = tx.send(Ok(Step::Result(image_to_proto(image)))).await;
                    return;
                }
                Ok(ProgressFrame::Error { problem }) => {
                    Err(Error::from(UpstreamError::Problem(Box::new(problem))).into())
                }
                Err(e) => Err(Error::from(e).into()),
            };
            let end = step.is_err();
            if tx.send(step).await.is_err() || end {
                return;
            }
        }
        let cut = UpstreamError::Unreachable {
            origin,
            reason: "the runner ended the operation's stream without a result".to_owned(),
        };
        let _ = tx.send(Err(Error::from(cut).into())).await;
    });
    Ok(ReceiverStream::new(rx))
}

/// The data chunks of a client-streamed upload, after its first message; a broken client
/// stream aborts the upload.
pub fn upload<T, F>(stream: Streaming<T>, data: F) -> Upload
where
    T: Send + 'static,
    F: Fn(T) -> Option<Bytes> + Send + Sync + 'static,
{
    stream
        .filter_map(move |item| {
            let out = match item {
                Ok(message) => data(message).map(Ok),
                Err(status) => Some(Err(std::io::Error::other(format!(
                    "the upload broke off: {}",
                    status.message()
                )))),
            };
            futures::future::ready(out)
        })
        .boxed()
}

#[tonic::async_trait]
impl ImagesService for ImagesServiceImpl {
    type PullImageStream = BoxStream<'static, Result<pb::PullImageResponse, Status>>;
    type PushImageStream = BoxStream<'static, Result<pb::PushImageResponse, Status>>;
    type SaveImageStream = BoxStream<'static, Result<pb::SaveImageResponse, Status>>;

    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let list = upstream.list_images().await.map_err(Error::from)?;
        Ok(Response::new(pb::ListImagesResponse {
            images: list.images.into_iter().map(image_to_proto).collect(),
        }))
    }

    async fn inspect_image(
        &self,
        request: Request<pb::InspectImageRequest>,
    ) -> Result<Response<pb::InspectImageResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let image = upstream
            .inspect_image(reference(&request.get_ref().reference)?)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::InspectImageResponse {
            image: Some(detail_to_proto(image)),
        }))
    }

    async fn remove_image(
        &self,
        request: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        upstream
            .remove_image(reference(&request.get_ref().reference)?)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::RemoveImageResponse {}))
    }

    async fn tag_image(
        &self,
        request: Request<pb::TagImageRequest>,
    ) -> Result<Response<pb::TagImageResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let req = request.get_ref();
        let image = upstream
            .tag_image(reference(&req.source)?, reference(&req.target)?)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::TagImageResponse {
            image: Some(image_to_proto(image)),
        }))
    }

    async fn pull_image(
        &self,
        request: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        let steps = registry_steps(
            &self.state,
            &metadata,
            false,
            registry_request(req.reference, req.credentials),
        )
        .await?;
        let events = steps.map(|step| {
            step.map(|step| pb::PullImageResponse {
                event: Some(match step {
                    Step::Progress(p) => pb::pull_image_response::Event::Progress(p),
                    Step::Result(image) => pb::pull_image_response::Event::Result(image),
                }),
            })
        });
        Ok(Response::new(events.boxed()))
    }

    async fn push_image(
        &self,
        request: Request<pb::PushImageRequest>,
    ) -> Result<Response<Self::PushImageStream>, Status> {
        let metadata = request.metadata().clone();
        let req = request.into_inner();
        let steps = registry_steps(
            &self.state,
            &metadata,
            true,
            registry_request(req.reference, req.credentials),
        )
        .await?;
        let events = steps.map(|step| {
            step.map(|step| pb::PushImageResponse {
                event: Some(match step {
                    Step::Progress(p) => pb::push_image_response::Event::Progress(p),
                    Step::Result(image) => pb::push_image_response::Event::Result(image),
                }),
            })
        });
        Ok(Response::new(events.boxed()))
    }

    async fn load_image(
        &self,
        request: Request<Streaming<pb::LoadImageRequest>>,
    ) -> Result<Response<pb::LoadImageResponse>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let mut stream = request.into_inner();
        let first = stream.message().await?.and_then(|m| m.part);
        let start = match first {
            Some(pb::load_image_request::Part::Start(start)) => start,
            _ => {
                return Err(invalid(
                    "the first LoadImage message must be `start`",
                    "send `start` (with the archive's size, if known), then `data` chunks",
                ));
            }
        };
        if !start.storage_path.is_empty() {
            if let Some(pb::LoadImageRequest { part: Some(_) }) = stream.message().await? {
                return Err(invalid(
                    "a LoadImage whose `start` names a storage_path takes no `data`",
                    "send either `start` with storage_path alone, or `start` then `data` chunks",
                ));
            }
            let result = upstream
                .load_image_from_storage(&start.storage_path)
                .await
                .map_err(Error::from)?;
            return Ok(Response::new(pb::LoadImageResponse {
                images: result.images.into_iter().map(image_to_proto).collect(),
            }));
        }
        let size = (start.size_bytes > 0).then_some(start.size_bytes);
        let archive = upload(stream, |m: pb::LoadImageRequest| match m.part {
            Some(pb::load_image_request::Part::Data(data)) => Some(Bytes::from(data)),
            _ => None,
        });
        let result = upstream
            .load_image(archive, size)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::LoadImageResponse {
            images: result.images.into_iter().map(image_to_proto).collect(),
        }))
    }

    async fn save_image(
        &self,
        request: Request<pb::SaveImageRequest>,
    ) -> Result<Response<Self::SaveImageStream>, Status> {
        let upstream = self.state.upstream(request.metadata())?;
        let req = request.get_ref();
        let format = match pb::ArchiveFormat::try_from(req.format) {
            Ok(pb::ArchiveFormat::Unspecified | pb::ArchiveFormat::Docker) => ArchiveFormat::Docker,
            Ok(pb::ArchiveFormat::Oci) => ArchiveFormat::Oci,
            Err(_) => {
                return Err(invalid(
                    &format!("unknown archive format {}", req.format),
                    "ask for ARCHIVE_FORMAT_DOCKER or ARCHIVE_FORMAT_OCI",
                ));
            }
        };
        let bytes = upstream
            .save_image(reference(&req.reference)?, format)
            .await
            .map_err(Error::from)?;
        let chunks = bytes.flat_map(|item| {
            let out: Vec<Result<pb::SaveImageResponse, Status>> = match item {
                Ok(bytes) => bytes
                    .chunks(CHUNK)
                    .map(|c| Ok(pb::SaveImageResponse { data: c.to_vec() }))
                    .collect(),
                Err(e) => vec![Err(Error::from(e).into())],
            };
            futures::stream::iter(out)
        });
        Ok(Response::new(chunks.boxed()))
    }
}
