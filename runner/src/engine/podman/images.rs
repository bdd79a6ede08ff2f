//! Images and builds. Podman's own image inspect (`/libpod/images/{name}/json`) adds the
//! manifest's media type and digest, which the Docker-compatible inspect does not carry; on
//! another engine those stay unknown.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::models::{BuildInfo, CreateImageInfo, ImageInspect, ImageSummary, PushImageInfo};
use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, ImportImageOptions, ListImagesOptions, PushImageOptions,
    RemoveImageOptions, TagImageOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use super::Engine;
use crate::engine::{EngineError, EngineStream, ManifestInfo};
use crate::images::refs::Name;

/// Bytes read from an upload file per chunk sent to the engine.
const FILE_CHUNK: usize = 256 * 1024;

impl Engine {
    /// Every tagged image in the engine's store.
    pub async fn list_images(&self) -> Result<Vec<ImageSummary>, EngineError> {
        self.images
            // Not `digests=true`: Podman 4.3 answers it with an empty body (the digests come
            // anyway).
            .list_images(Some(ListImagesOptions {
                all: false,
                ..Default::default()
            }))
            .await
    }

    /// One image; `None` when the engine has none by that name or id.
    pub async fn inspect_image(&self, name: &str) -> Result<Option<ImageInspect>, EngineError> {
        match self.images.inspect_image(name).await {
            Ok(image) => Ok(Some(image)),
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The manifest's media type and digest, when the engine is Podman (empty otherwise).
    pub async fn manifest_info(&self, id: &str) -> ManifestInfo {
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
    pub async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
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

    /// Gives the image `source` (a name or id) the name `target`.
    pub async fn tag_image(&self, source: &str, target: &Name) -> Result<(), EngineError> {
        let options = TagImageOptions {
            repo: Some(target.repository().to_owned()),
            tag: target.tag().map(str::to_owned),
        };
        self.images.tag_image(source, Some(options)).await
    }

    /// Pulls `name` from its registry.
    pub fn pull(
        &self,
        name: &Name,
        credentials: Option<DockerCredentials>,
    ) -> EngineStream<CreateImageInfo> {
        let options = CreateImageOptions {
            from_image: Some(name.repository().to_owned()),
            tag: name.digest().or(name.tag()).map(str::to_owned),
            ..Default::default()
        };
        self.images
            .create_image(Some(options), None, credentials)
            .boxed()
    }

    /// Pushes `name` to its registry.
    pub fn push(
        &self,
        name: &Name,
        credentials: Option<DockerCredentials>,
    ) -> EngineStream<PushImageInfo> {
        let options = PushImageOptions {
            tag: name.tag().map(str::to_owned),
            ..Default::default()
        };
        self.images
            .push_image(name.repository(), Some(options), credentials)
            .boxed()
    }

    /// Loads the archive in `file` (docker-archive or OCI).
    pub fn load(&self, file: &Path) -> EngineStream<BuildInfo> {
        self.images
            .import_image_stream(ImportImageOptions::default(), file_chunks(file), None)
            .boxed()
    }

    /// `name` as a docker-archive tar.
    pub fn save(&self, name: &str) -> EngineStream<Bytes> {
        self.images.export_image(name).boxed()
    }

    /// Builds the context tar in `file`, untagged and without network; intermediate
    /// containers are removed whether it succeeds or not.
    pub fn build(&self, dockerfile: &str, file: &Path) -> EngineStream<BuildInfo> {
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

/// Credentials for the engine's `X-Registry-Auth`, for the registry `domain`.
pub fn docker_credentials(
    credentials: &bus_api::images::RegistryCredentials,
    domain: &str,
) -> DockerCredentials {
    DockerCredentials {
        username: Some(credentials.username.clone()),
        password: Some(credentials.password.clone()),
        serveraddress: Some(domain.to_owned()),
        ..Default::default()
    }
}

/// Labels as a sorted map.
pub fn labels(map: Option<HashMap<String, String>>) -> std::collections::BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}
