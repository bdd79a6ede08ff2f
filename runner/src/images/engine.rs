//! The engine calls for images and builds: a bollard client of its own (with a long request
//! timeout, since pulls and builds take minutes, and apart from the run engine's), plus one
//! Podman-specific read (`/libpod/images/{name}/json`) for the manifest's media type and
//! digest, which the Docker-compatible inspect does not carry; on another engine those stay
//! unknown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as EngineError;
use bollard::models::{BuildInfo, CreateImageInfo, ImageInspect, ImageSummary, PushImageInfo};
use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, ImportImageOptions, ListImagesOptions, PushImageOptions,
    RemoveImageOptions, TagImageOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http_body_util::BodyExt as _;

use super::refs::Name;

/// Seconds an engine call may take to answer (its body may then stream for longer).
const REQUEST_TIMEOUT_SECONDS: u64 = 3600;
/// Bytes read from an upload file per chunk sent to the engine.
const FILE_CHUNK: usize = 256 * 1024;

/// A stream of engine messages.
pub type EngineStream<T> = Pin<Box<dyn Stream<Item = Result<T, EngineError>> + Send>>;

/// The engine, for images and builds.
#[derive(Debug, Clone)]
pub struct ImageEngine {
    docker: Docker,
    socket: PathBuf,
}

/// What Podman's own inspect adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestInfo {
    /// The media type of the manifest the image was stored from.
    pub media_type: Option<String>,
    /// Its digest.
    pub digest: Option<String>,
}

impl ImageEngine {
    /// Connects to `unix:///path` (or a bare path); nothing is sent yet.
    pub fn connect(url: &str) -> Result<ImageEngine, EngineError> {
        let path = url.strip_prefix("unix://").unwrap_or(url);
        let docker =
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)?;
        Ok(ImageEngine {
            docker,
            socket: PathBuf::from(path),
        })
    }

    /// Every tagged image in the engine's store.
    pub async fn list(&self) -> Result<Vec<ImageSummary>, EngineError> {
        self.docker
            // Not `digests=true`: Podman 4.3 answers it with an empty body (the digests come
            // anyway).
            .list_images(Some(ListImagesOptions {
                all: false,
                ..Default::default()
            }))
            .await
    }

    /// One image; `None` when the engine has none by that name or id.
    pub async fn inspect(&self, name: &str) -> Result<Option<ImageInspect>, EngineError> {
        match self.docker.inspect_image(name).await {
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
        match tokio::time::timeout(Duration::from_secs(10), libpod_get(&self.socket, &path)).await {
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
    pub async fn remove(&self, reference: &str) -> Result<(), EngineError> {
        self.docker
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
    pub async fn tag(&self, source: &str, target: &Name) -> Result<(), EngineError> {
        let options = TagImageOptions {
            repo: Some(target.repository().to_owned()),
            tag: target.tag().map(str::to_owned),
        };
        self.docker.tag_image(source, Some(options)).await
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
        self.docker
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
        self.docker
            .push_image(name.repository(), Some(options), credentials)
            .boxed()
    }

    /// Loads the archive in `file` (docker-archive or OCI).
    pub fn load(&self, file: &Path) -> EngineStream<BuildInfo> {
        self.docker
            .import_image_stream(ImportImageOptions::default(), file_chunks(file), None)
            .boxed()
    }

    /// `name` as a docker-archive tar.
    pub fn save(&self, name: &str) -> EngineStream<Bytes> {
        self.docker.export_image(name).boxed()
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
        let docker = self.docker.clone();
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

/// A GET on the engine's socket, as JSON; `None` on any failure.
async fn libpod_get(socket: &Path, path: &str) -> Option<serde_json::Value> {
    let stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, "engine")
        .body(http_body_util::Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let ok = response.status().is_success();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    driver.abort();
    ok.then(|| serde_json::from_slice(&body).ok()).flatten()
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
