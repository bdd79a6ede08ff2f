//! The libpod calls bollard does not make (it speaks only the Docker API): one HTTP/1.1
//! exchange each, on a connection of its own to the engine's socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;

use super::stream_error;
use bollard::errors::Error as DockerError;

/// How often Podman checks a container's state while a libpod wait is open, and for how long
/// each interval is used (`None`: from then on). Podman polls, and every check costs it CPU:
/// at 5 ms one waiting run kept 5% of a core busy. So a short run's end is seen within 5 ms
/// (the Docker-compatible wait answers it hundreds of milliseconds late), a longer one's within
/// 50 ms, and a run past a minute is checked four times a second.
pub(super) const WAIT_STEPS: [(&str, Option<Duration>); 3] = [
    ("5ms", Some(Duration::from_secs(2))),
    ("50ms", Some(Duration::from_secs(58))),
    ("250ms", None),
];

/// The client: the socket's path (a connection is made per call).
#[derive(Debug, Clone)]
pub(super) struct Libpod {
    socket: PathBuf,
}

impl Libpod {
    /// A client of the engine on `socket`; nothing is sent yet.
    pub(super) fn new(socket: &str) -> Libpod {
        Libpod {
            socket: PathBuf::from(socket),
        }
    }

    /// Waits for the container to exit and returns its exit code: one libpod wait per step of
    /// [`WAIT_STEPS`], each given up (its connection closed, which ends Podman's polling) when
    /// its time is over.
    pub(super) async fn wait(&self, id: &str) -> Result<i64, DockerError> {
        for (interval, lasting) in WAIT_STEPS {
            let waited = self.wait_every(id, interval);
            match lasting {
                Some(lasting) => {
                    if let Ok(result) = tokio::time::timeout(lasting, waited).await {
                        return result;
                    }
                }
                None => return waited.await,
            }
        }
        unreachable!("the last step has no end")
    }

    /// `POST /v4.0.0/libpod/containers/{id}/wait?condition=exited&interval=INTERVAL`, whose
    /// body is the exit code.
    async fn wait_every(&self, id: &str, interval: &str) -> Result<i64, DockerError> {
        let path = format!(
            "/v4.0.0/libpod/containers/{}/wait?condition=exited&interval={interval}",
            url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        );
        let (status, body) = self.request(hyper::Method::POST, &path).await?;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(DockerError::DockerResponseServerError {
                status_code: status.as_u16(),
                message: error_message(&body),
            });
        }
        text.trim().parse::<i64>().map_err(|_| {
            stream_error(format!(
                "the engine's wait answered {text:?}, not an exit code"
            ))
        })
    }

    /// A GET answered with JSON (`/v4.0.0/libpod/images/{id}/json`); `None` on any failure.
    pub(super) async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        match self.request(hyper::Method::GET, path).await {
            Ok((status, body)) if status.is_success() => serde_json::from_slice(&body).ok(),
            _ => None,
        }
    }

    /// A GET whose body streams back as it comes (`/v4.0.0/libpod/images/{name}/get?...`).
    /// A failure status is an error carrying the engine's message.
    pub(super) async fn get_stream(
        &self,
        path: &str,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, DockerError>> + Send + use<>, DockerError>
    {
        let stream = tokio::net::UnixStream::connect(Path::new(&self.socket)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(stream_error)?;
        // The connection lives as long as the body is read; it ends with the body.
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(hyper::Method::GET)
            .uri(path)
            .header(hyper::header::HOST, "podman")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| stream_error(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(stream_error)?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(stream_error)?
                .to_bytes();
            return Err(DockerError::DockerResponseServerError {
                status_code: status.as_u16(),
                message: error_message(&body),
            });
        }
        Ok(futures::StreamExt::map(
            response.into_body().into_data_stream(),
            |item| item.map_err(stream_error),
        ))
    }

    /// One request without a body; the status and the whole response body.
    async fn request(
        &self,
        method: hyper::Method,
        path: &str,
    ) -> Result<(hyper::StatusCode, Bytes), DockerError> {
        let stream = tokio::net::UnixStream::connect(Path::new(&self.socket)).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(stream_error)?;
        let connection = tokio::spawn(connection);
        let result = async {
            let request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "podman")
                .body(http_body_util::Empty::<Bytes>::new())
                .map_err(|e| stream_error(e.to_string()))?;
            let response = sender.send_request(request).await.map_err(stream_error)?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(stream_error)?
                .to_bytes();
            Ok((status, body))
        }
        .await;
        connection.abort();
        result
    }
}

/// The `message` of a libpod error body, or the body's text.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}
