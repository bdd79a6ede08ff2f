//! Podman (or Docker), through its Docker-compatible API: one bollard client for every call,
//! with a longer request timeout for image work (pulls and builds take minutes), and
//! [`libpod`] for the calls only Podman's own API makes. Bollard's errors and types stay in
//! here: [`Backend`]'s methods translate them.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bus_api::Port;
use bus_api::exec::ExecQuery;
use bus_api::images::ArchiveFormat;
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::OnceCell;

use super::{
    Attached, Backend, BuildMessage, Chunk, ContainerSpec, ContainerStatus, EngineError,
    EngineInfo, EngineStream, ExecStreams, ImageDetails, Input, ListedImage, ManifestInfo, Output,
    Owned, RegistryAuth, TransferProgress, VolumeError,
};

mod containers;
mod execs;
mod images;
mod libpod;

/// Seconds before a container or exec request is abandoned.
const REQUEST_TIMEOUT_SECONDS: u64 = 120;
/// Seconds an image call may take to answer (its body may then stream for longer).
const IMAGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a liveness ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to Podman (or Docker).
#[derive(Debug)]
pub struct Podman {
    docker: Docker,
    /// The same client (one connection pool), with the image calls' longer timeout.
    images: Docker,
    info: OnceCell<EngineInfo>,
    /// The engine's own API on the same socket.
    libpod: libpod::Libpod,
}

impl Podman {
    /// Connects to `unix:///path/to/engine.sock` (or a bare path). Fails when the socket does
    /// not exist; nothing is sent yet.
    pub fn connect(url: &str) -> Result<Podman, EngineError> {
        let path = url.strip_prefix("unix://").unwrap_or(url);
        let docker =
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)
                .map_err(engine_error)?;
        Ok(Podman {
            images: docker.clone().with_timeout(IMAGE_REQUEST_TIMEOUT),
            docker,
            info: OnceCell::new(),
            libpod: libpod::Libpod::new(path),
        })
    }

    /// The engine's name and version, asked once and then cached.
    async fn info_once(&self) -> Result<&EngineInfo, DockerError> {
        self.info
            .get_or_try_init(|| async {
                let v = self.docker.version().await?;
                let components = v.components.unwrap_or_default();
                let podman = components
                    .iter()
                    .find(|c| c.name.to_lowercase().contains("podman"));
                let engine = match (podman, v.version) {
                    (Some(p), _) => format!("podman {}", p.version),
                    (None, Some(version)) => format!("docker {version}"),
                    (None, None) => "unknown".to_owned(),
                };
                Ok(EngineInfo {
                    engine,
                    api_version: v.api_version.unwrap_or_default(),
                })
            })
            .await
    }

    /// Waits until the container has stopped and returns its exit code. On Podman this is
    /// libpod's wait, polling less often as the run goes on ([`libpod::WAIT_STEPS`]): the
    /// Docker-compatible one answers a short run hundreds of milliseconds late.
    async fn wait_exit(&self, id: &str) -> Result<i64, DockerError> {
        if self
            .info
            .get()
            .is_some_and(|info| info.engine.starts_with("podman"))
        {
            return self.libpod.wait(id).await;
        }
        self.compat_wait(id).await
    }

    async fn compat_wait(&self, id: &str) -> Result<i64, DockerError> {
        let mut stream = self.docker.wait_container(id, None);
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports non-zero exits as an error carrying the code.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e),
            None => Err(DockerError::DockerStreamError {
                error: "the engine closed the wait stream without an exit code".to_owned(),
            }),
        }
    }
}

/// A bollard error as the engine's.
fn engine_error(err: DockerError) -> EngineError {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Status {
            status: status_code,
            message,
        },
        DockerError::DockerStreamError { error } => EngineError::Stream(error),
        DockerError::SocketNotFoundError(path) => EngineError::SocketNotFound(path),
        DockerError::RequestTimeoutError => EngineError::Timeout,
        other => EngineError::Unreachable(other.to_string()),
    }
}

/// A bollard stream error carrying `error`'s text.
fn stream_error(error: impl std::fmt::Display) -> DockerError {
    DockerError::DockerStreamError {
        error: error.to_string(),
    }
}

/// Bollard's output stream as the engine's: a terminal's output is stdout; stdin echoes are
/// dropped.
fn output(
    stream: impl futures::Stream<Item = Result<LogOutput, DockerError>> + Send + 'static,
) -> Output {
    Box::pin(stream.filter_map(|item| async move {
        match item {
            Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                Some(Ok(Chunk::Stdout(message)))
            }
            Ok(LogOutput::StdErr { message }) => Some(Ok(Chunk::Stderr(message))),
            Ok(LogOutput::StdIn { .. }) => None,
            Err(e) => Some(Err(engine_error(e))),
        }
    }))
}

/// A bollard message stream as the engine's.
fn messages<T: 'static, U: 'static>(
    stream: impl futures::Stream<Item = Result<T, DockerError>> + Send + 'static,
    convert: fn(T) -> U,
) -> EngineStream<U> {
    Box::pin(stream.map(move |item| item.map(convert).map_err(engine_error)))
}

#[async_trait]
impl Backend for Podman {
    async fn info(&self) -> Result<&EngineInfo, EngineError> {
        self.info_once().await.map_err(engine_error)
    }

    fn cached_info(&self) -> Option<&EngineInfo> {
        self.info.get()
    }

    async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(PING_TIMEOUT, self.docker.ping()).await,
            Ok(Ok(_))
        )
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Attached, EngineError> {
        let (id, stream) = self.create_attached(spec).await.map_err(engine_error)?;
        Ok(Attached {
            id,
            output: output(stream),
        })
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(engine_error)
    }

    async fn attach(&self, id: &str) -> Result<Output, EngineError> {
        Ok(output(self.attach_output(id).await.map_err(engine_error)?))
    }

    async fn attach_stdin(&self, id: &str) -> Result<Input, EngineError> {
        self.attach_input(id).await.map_err(engine_error)
    }

    fn replay_output(&self, id: &str) -> Output {
        output(self.logs(id))
    }

    async fn resize_container(&self, id: &str, cols: u16, rows: u16) -> Result<(), EngineError> {
        self.resize_tty(id, cols, rows).await.map_err(engine_error)
    }

    async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        self.wait_exit(id).await.map_err(engine_error)
    }

    async fn signal(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        self.kill_with(id, signal).await.map_err(engine_error)
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        self.kill_with(id, "SIGKILL").await.map_err(engine_error)
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        self.remove_container(id).await.map_err(engine_error)
    }

    async fn list_owned(&self, runner_id: &str) -> Result<Vec<Owned>, EngineError> {
        self.owned(runner_id).await.map_err(engine_error)
    }

    async fn status(&self, id: &str) -> Result<Option<ContainerStatus>, EngineError> {
        self.container_status(id).await.map_err(engine_error)
    }

    async fn oom_killed(&self, id: &str) -> Option<bool> {
        self.was_oom_killed(id).await
    }

    async fn published_ports(&self, id: &str, ports: &[Port]) -> Vec<Port> {
        self.bound_ports(id, ports).await
    }

    async fn container_pid(&self, id: &str) -> Result<Option<i32>, EngineError> {
        self.pid(id).await.map_err(engine_error)
    }

    async fn ensure_volume(&self, name: &str, owner: &str) -> Result<String, VolumeError> {
        self.volume(name, owner).await
    }

    async fn create_exec(&self, container: &str, spec: &ExecQuery) -> Result<String, EngineError> {
        self.new_exec(container, spec).await.map_err(engine_error)
    }

    async fn start_exec(&self, exec_id: &str, tty: bool) -> Result<ExecStreams, EngineError> {
        let (stream, input) = self.run_exec(exec_id, tty).await.map_err(engine_error)?;
        Ok(ExecStreams {
            output: output(stream),
            input,
        })
    }

    async fn resize_exec(&self, exec_id: &str, cols: u16, rows: u16) -> Result<(), EngineError> {
        self.resize_exec_tty(exec_id, cols, rows)
            .await
            .map_err(engine_error)
    }

    async fn exec_started(&self, exec_id: &str) -> Result<bool, EngineError> {
        self.exec_has_started(exec_id).await.map_err(engine_error)
    }

    async fn exec_process(&self, exec_id: &str) -> Result<Option<(i32, String)>, EngineError> {
        self.exec_host_process(exec_id).await.map_err(engine_error)
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, EngineError> {
        self.exec_code(exec_id).await.map_err(engine_error)
    }

    async fn list_images(&self) -> Result<Vec<ListedImage>, EngineError> {
        self.images_listed().await.map_err(engine_error)
    }

    async fn inspect_image(&self, name: &str) -> Result<Option<ImageDetails>, EngineError> {
        self.image_details(name).await.map_err(engine_error)
    }

    async fn manifest_info(&self, id: &str) -> ManifestInfo {
        self.manifest(id).await
    }

    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        self.untag(reference).await.map_err(engine_error)
    }

    async fn tag_image(
        &self,
        source: &str,
        repository: &str,
        tag: Option<&str>,
    ) -> Result<(), EngineError> {
        self.name_image(source, repository, tag)
            .await
            .map_err(engine_error)
    }

    fn pull(
        &self,
        repository: &str,
        reference: Option<&str>,
        auth: Option<RegistryAuth>,
    ) -> EngineStream<TransferProgress> {
        messages(
            self.pull_stream(repository, reference, auth),
            images::pull_progress,
        )
    }

    fn push(
        &self,
        repository: &str,
        tag: Option<&str>,
        auth: Option<RegistryAuth>,
    ) -> EngineStream<TransferProgress> {
        messages(
            self.push_stream(repository, tag, auth),
            images::push_progress,
        )
    }

    fn load(&self, file: &Path) -> EngineStream<BuildMessage> {
        messages(self.load_stream(file), images::build_message)
    }

    fn save(&self, name: &str, format: ArchiveFormat) -> EngineStream<Bytes> {
        match format {
            ArchiveFormat::Docker => {
                messages(self.images.export_image(name), std::convert::identity)
            }
            ArchiveFormat::Oci => {
                // The Docker API saves docker-archives only; libpod's `get` takes a format.
                let path = format!(
                    "/v4.0.0/libpod/images/{}/get?format=oci-archive",
                    url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
                );
                let libpod = self.libpod.clone();
                let bytes = futures::stream::once(async move { libpod.get_stream(&path).await })
                    .map(|opened| match opened {
                        Ok(stream) => stream.boxed(),
                        Err(e) => futures::stream::once(futures::future::ready(Err(e))).boxed(),
                    })
                    .flatten();
                messages(bytes, std::convert::identity)
            }
        }
    }

    fn build(&self, dockerfile: &str, file: &Path) -> EngineStream<BuildMessage> {
        messages(self.build_stream(dockerfile, file), images::build_message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An engine socket that answers each `GET /_ping` with 200 (or 500 while `failing`),
    /// counting them.
    async fn fake_engine(
        path: &std::path::Path,
        pings: Arc<AtomicUsize>,
        failing: Arc<AtomicBool>,
    ) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (pings, failing) = (pings.clone(), failing.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            pings.fetch_add(1, Ordering::SeqCst);
                            let status = if failing.load(Ordering::SeqCst) {
                                "500 Internal Server Error"
                            } else {
                                "200 OK"
                            };
                            let reply = format!(
                                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"
                            );
                            if conn.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn a_successful_ping_stands_briefly_and_a_failed_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let pings = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        fake_engine(&socket, pings.clone(), failing.clone()).await;
        let engine =
            crate::engine::Engine::connect(&format!("unix://{}", socket.display())).unwrap();
        let count = || pings.load(Ordering::SeqCst);

        for _ in 0..3 {
            assert!(engine.alive(Duration::from_secs(60)).await);
        }
        assert_eq!(count(), 1, "one ping answers repeated status requests");
        assert!(engine.alive(Duration::ZERO).await);
        assert_eq!(count(), 2, "a stale ping is not reused");

        failing.store(true, Ordering::SeqCst);
        assert!(!engine.ping().await);
        for expected in [4, 5] {
            assert!(!engine.alive(Duration::from_secs(60)).await);
            assert_eq!(count(), expected, "after a failure every request pings");
        }

        failing.store(false, Ordering::SeqCst);
        assert!(engine.alive(Duration::from_secs(60)).await);
        assert!(engine.alive(Duration::from_secs(60)).await);
        assert_eq!(count(), 6);
    }
}
