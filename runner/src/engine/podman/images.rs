//! Images and builds. Podman's own image inspect (`/libpod/images/{name}/json`) adds the
//! manifest's media type and digest, which the Docker-compatible inspect does not carry; on
//! another engine those stay unknown.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::models::{BuildInfo, CreateImageInfo, ImageInspect, ImageSummary, PushImageInfo};
use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, ImportImageOptions, ListImagesOptions, PushImageOptions,
    RemoveImageOptions, TagImageOptions,
};
use bus_api::images::ImageConfig;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use time::OffsetDateTime;

use super::Podman;
use crate::engine::{
    BuildMessage, ImageDetails, ListedImage, ManifestInfo, RegistryAuth, TransferProgress,
};

/// Bytes read from an upload file per chunk sent to the engine.
const FILE_CHUNK: usize = 256 * 1024;

/// A stream of bollard messages.
type DockerStream<T> = Pin<Box<dyn Stream<Item = Result<T, DockerError>> + Send>>;

impl Podman {
    /// Every tagged image in the engine's store.
    pub(super) async fn images_listed(&self) -> Result<Vec<ListedImage>, DockerError> {
        let list = self
            .images
            // Not `digests=true`: Podman 4.3 answers it with an empty body (the digests come
            // anyway).
            .list_images(Some(ListImagesOptions {
                all: false,
                ..Default::default()
            }))
            .await?;
        Ok(list.into_iter().map(listed).collect())
    }

    /// One image; `None` when the engine has none by that name or id.
    pub(super) async fn image_details(
        &self,
        name: &str,
    ) -> Result<Option<ImageDetails>, DockerError> {
        match self.images.inspect_image(name).await {
            Ok(image) => Ok(Some(details(image))),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The manifest's media type and digest, when the engine is Podman (empty otherwise).
    pub(super) async fn manifest(&self, id: &str) -> ManifestInfo {
        let path = format!("/v4.0.0/libpod/images/{id}/json");
        match tokio::time::timeout(Duration::from_secs(10), self.libpod.get_json(&path)).await {
            Ok(Some(value)) => ManifestInfo {
                media_type: value["ManifestType"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                digest: value["Digest"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            },
            _ => ManifestInfo::default(),
        }
    }

    /// Removes one reference (untags it; the image goes when no reference is left). Never
    /// forced, so an image a container uses stays.
    pub(super) async fn untag(&self, reference: &str) -> Result<(), DockerError> {
        self.images
            .remove_image(
                reference,
                Some(RemoveImageOptions {
                    force: false,
                    noprune: false,
                    ..Default::default()
                }),
                None,
            )
            .await
            .map(drop)
    }

    /// Gives the image `source` (a name or id) the name `repository[:tag]`.
    pub(super) async fn name_image(
        &self,
        source: &str,
        repository: &str,
        tag: Option<&str>,
    ) -> Result<(), DockerError> {
        let options = TagImageOptions {
            repo: Some(repository.to_owned()),
            tag: tag.map(str::to_owned),
        };
        self.images.tag_image(source, Some(options)).await
    }

    /// Pulls `repository` at `reference` (a tag or digest) from its registry.
    pub(super) fn pull_stream(
        &self,
        repository: &str,
        reference: Option<&str>,
        auth: Option<RegistryAuth>,
    ) -> DockerStream<CreateImageInfo> {
        let options = CreateImageOptions {
            from_image: Some(repository.to_owned()),
            tag: reference.map(str::to_owned),
            ..Default::default()
        };
        self.images
            .create_image(Some(options), None, auth.map(credentials))
            .boxed()
    }

    /// Pushes `repository[:tag]` to its registry.
    pub(super) fn push_stream(
        &self,
        repository: &str,
        tag: Option<&str>,
        auth: Option<RegistryAuth>,
    ) -> DockerStream<PushImageInfo> {
        let options = PushImageOptions {
            tag: tag.map(str::to_owned),
            ..Default::default()
        };
        self.images
            .push_image(repository, Some(options), auth.map(credentials))
            .boxed()
    }

    /// Loads the archive in `file` (docker-archive or OCI).
    pub(super) fn load_stream(&self, file: &Path) -> DockerStream<BuildInfo> {
        self.images
            .import_image_stream(ImportImageOptions::default(), file_chunks(file), None)
            .boxed()
    }

    /// Builds the context tar in `file`, untagged and without network; intermediate
    /// containers are removed whether it succeeds or not.
    pub(super) fn build_stream(&self, dockerfile: &str, file: &Path) -> DockerStream<BuildInfo> {
        let options = BuildImageOptions {
            dockerfile: dockerfile.to_owned(),
            rm: true,
            forcerm: true,
            networkmode: Some("none".to_owned()),
            ..Default::default()
        };
        let body = bollard::body_try_stream(file_chunks(file));
        // `build_image`'s stream borrows the client, so a task owns a clone (cheap: a shared
        // connection pool) and forwards the stream; dropping the returned stream ends the task
        // at its next message, and with it the engine call.
        let docker = self.images.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(docker.build_image(options, None, Some(body)));
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(item) => {
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }
}

/// Reads `file` in chunks, as a body stream.
fn file_chunks(file: &Path) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let path = file.to_owned();
    futures::stream::unfold(None, move |state: Option<tokio::fs::File>| {
        let path = path.clone();
        async move {
            use tokio::io::AsyncReadExt as _;
            let mut file = match state {
                Some(file) => file,
                None => match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(e) => return Some((Err(e), None)),
                },
            };
            let mut buf = vec![0u8; FILE_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// Credentials for the engine's `X-Registry-Auth`.
fn credentials(auth: RegistryAuth) -> DockerCredentials {
    DockerCredentials {
        username: Some(auth.username),
        password: Some(auth.password),
        serveraddress: Some(auth.server),
        ..Default::default()
    }
}

/// A listed image in the engine's terms.
fn listed(image: ImageSummary) -> ListedImage {
    ListedImage {
        id: image.id,
        repo_tags: image.repo_tags,
        repo_digests: image.repo_digests,
        created_at: OffsetDateTime::from_unix_timestamp(image.created).ok(),
        size_bytes: u64::try_from(image.size).unwrap_or(0),
    }
}

/// An inspected image in the engine's terms.
fn details(image: ImageInspect) -> ImageDetails {
    let config = image.config.unwrap_or_default();
    ImageDetails {
        id: image.id.unwrap_or_default(),
        repo_tags: image.repo_tags.unwrap_or_default(),
        repo_digests: image.repo_digests.unwrap_or_default(),
        created_at: image.created.as_deref().and_then(|c| {
            OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
        }),
        size_bytes: image.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        labels: labels(config.labels),
        config: ImageConfig {
            env: config.env.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            entrypoint: config.entrypoint.unwrap_or_default(),
            working_dir: config.working_dir.filter(|w| !w.is_empty()),
            user: config.user.filter(|u| !u.is_empty()),
            exposed_ports: config.exposed_ports.unwrap_or_default(),
            os: image.os.unwrap_or_default(),
            architecture: image.architecture.unwrap_or_default(),
        },
        layers: image.root_fs.and_then(|r| r.layers).unwrap_or_default(),
    }
}

/// Labels as a sorted map.
fn labels(map: Option<HashMap<String, String>>) -> std::collections::BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}

/// A pull's progress message in the engine's terms.
pub(super) fn pull_progress(info: CreateImageInfo) -> TransferProgress {
    let detail = info.progress_detail.unwrap_or_default();
    TransferProgress {
        id: info.id,
        status: info.status,
        current: detail.current,
        total: detail.total,
    }
}

/// A push's progress message in the engine's terms (it names no layer).
pub(super) fn push_progress(info: PushImageInfo) -> TransferProgress {
    let detail = info.progress_detail.unwrap_or_default();
    TransferProgress {
        id: None,
        status: info.status,
        current: detail.current,
        total: detail.total,
    }
}

/// A build's or load's message in the engine's terms.
pub(super) fn build_message(info: BuildInfo) -> BuildMessage {
    BuildMessage {
        stream: info.stream,
        status: info.status,
        image_id: info.aux.and_then(|aux| aux.id),
    }
}
