//! Podman (or Docker), through its Docker-compatible API: one bollard client for every call,
//! with a long request timeout for image work (pulls and builds take minutes), and
//! [`libpod`] for the calls only Podman's own API makes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::Docker;
use futures::StreamExt as _;
use tokio::sync::OnceCell;

use super::{EngineError, EngineInfo};

mod containers;
mod execs;
mod images;
mod libpod;

pub use images::{docker_credentials, labels};

/// Seconds before a container or exec request is abandoned.
const REQUEST_TIMEOUT_SECONDS: u64 = 120;
/// Seconds an image call may take to answer (its body may then stream for longer).
const IMAGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a liveness ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to the engine.
#[derive(Debug)]
pub struct Engine {
    docker: Docker,
    /// The same client (one connection pool), with the image calls' longer timeout.
    images: Docker,
    info: OnceCell<EngineInfo>,
    /// When a ping last succeeded; cleared by a failed one.
    last_ping_ok: Mutex<Option<Instant>>,
    /// The engine's own API on the same socket.
    libpod: libpod::Libpod,
}

impl Engine {
    /// Connects to `unix:///path/to/engine.sock` (or a bare path). Fails when the socket does
    /// not exist; nothing is sent yet.
    pub fn connect(url: &str) -> Result<Engine, EngineError> {
        let path = url.strip_prefix("unix://").unwrap_or(url);
        let docker =
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)?;
        Ok(Engine {
            images: docker.clone().with_timeout(IMAGE_REQUEST_TIMEOUT),
            docker,
            info: OnceCell::new(),
            last_ping_ok: Mutex::new(None),
            libpod: libpod::Libpod::new(path),
        })
    }

    /// The engine's name and version, asked once and then cached.
    pub async fn info(&self) -> Result<&EngineInfo, EngineError> {
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

    /// The cached engine info, if it was read.
    pub fn cached_info(&self) -> Option<&EngineInfo> {
        self.info.get()
    }

    /// Whether the engine answers `GET /_ping` promptly.
    pub async fn ping(&self) -> bool {
        let ok = matches!(
            tokio::time::timeout(PING_TIMEOUT, self.docker.ping()).await,
            Ok(Ok(_))
        );
        *self.last_ping_ok.lock().expect("ping lock poisoned") = ok.then(Instant::now);
        ok
    }

    /// Whether the engine is alive: a ping that succeeded within `fresh` stands, so repeated
    /// status requests do not each round-trip to the engine; otherwise (and after any failed
    /// ping) it pings now.
    pub async fn alive(&self, fresh: Duration) -> bool {
        let recent = self
            .last_ping_ok
            .lock()
            .expect("ping lock poisoned")
            .is_some_and(|at| at.elapsed() < fresh);
        recent || self.ping().await
    }

    /// Waits until the container has stopped and returns its exit code. On Podman this is
    /// libpod's wait, polling every [`libpod::WAIT_INTERVAL`]: the Docker-compatible one
    /// answers a short run hundreds of milliseconds late.
    pub async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        if self
            .info
            .get()
            .is_some_and(|info| info.engine.starts_with("podman"))
        {
            return self.libpod.wait(id).await;
        }
        self.compat_wait(id).await
    }

    async fn compat_wait(&self, id: &str) -> Result<i64, EngineError> {
        let mut stream = self.docker.wait_container(id, None);
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports non-zero exits as an error carrying the code.
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e),
            None => Err(EngineError::DockerStreamError {
                error: "the engine closed the wait stream without an exit code".to_owned(),
            }),
        }
    }
}

/// A bollard stream error carrying `error`'s text.
fn stream_error(error: impl std::fmt::Display) -> EngineError {
    EngineError::DockerStreamError {
        error: error.to_string(),
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
        let engine = Engine::connect(&format!("unix://{}", socket.display())).unwrap();
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