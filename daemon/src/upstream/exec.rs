//! The exec WebSockets to the runner, `ws://` or `wss://` (rustls) after the origin's scheme:
//! a command (`GET /api/v1/containers/runs/{id}/exec`), a detached exec's output
//! (`GET /api/v1/containers/execs/{exec_id}/attach`) and a run's own command
//! (`GET /api/v1/containers/runs/{id}/attach`); frames are [`bus_api::exec`]'s, and an open
//! session ([`ExecSession`]) speaks only frames: the WebSocket stays in here. Also the
//! detached exec's unary calls.

use std::time::Duration;

use bus_api::Problem;
use bus_api::exec::{CreateExec, ExecAttachQuery, ExecQuery, ExecRecord, Frame};
use bus_api::paths;
use bus_api::runs::AttachQuery;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};

use super::client::CONNECT_TIMEOUT;
use super::{Upstream, UpstreamError};

/// An open exec WebSocket.
type ExecSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open exec session: [`Frame`]s both ways, over a WebSocket no caller sees.
pub struct ExecSession(ExecSocket);

/// Why an exec session cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session broke, went silent or closed without an exit status: the command's exit
    /// code is unknown.
    #[error("{0}")]
    Gone(String),
    /// The runner sent something that is not an exec frame.
    #[error(transparent)]
    Upstream(UpstreamError),
}

/// The sending half of an [`ExecSession`].
pub struct FrameSink(SplitSink<ExecSocket, Message>);

/// The receiving half of an [`ExecSession`].
pub struct FrameSource(SplitStream<ExecSocket>);

impl ExecSession {
    /// The halves, to send and receive at once.
    pub fn split(self) -> (FrameSink, FrameSource) {
        let (tx, rx) = self.0.split();
        (FrameSink(tx), FrameSource(rx))
    }
}

impl FrameSink {
    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), SessionError> {
        self.0
            .send(Message::Binary(frame.encode().into()))
            .await
            .map_err(|e| SessionError::Gone(format!("the exec session to the runner broke: {e}")))
    }

    /// Closes the session.
    pub async fn close(&mut self) {
        let _ = self.0.close().await;
    }
}

impl FrameSource {
    /// The next frame. Pings and other control messages are skipped; [`EXEC_SILENCE`] without
    /// any message, a close or a broken connection ends the session.
    pub async fn next(&mut self) -> Result<Frame, SessionError> {
        loop {
            let bytes = match tokio::time::timeout(EXEC_SILENCE, self.0.next()).await {
                Err(_) => {
                    return Err(SessionError::Gone(format!(
                        "the runner sent nothing for {} s; the exec session is taken as broken",
                        EXEC_SILENCE.as_secs()
                    )));
                }
                Ok(None) | Ok(Some(Ok(Message::Close(_)))) => {
                    return Err(SessionError::Gone(
                        "the runner closed the exec session without an exit status".to_owned(),
                    ));
                }
                Ok(Some(Err(e))) => {
                    return Err(SessionError::Gone(format!(
                        "the exec session to the runner broke: {e}"
                    )));
                }
                Ok(Some(Ok(Message::Binary(bytes)))) => bytes,
                Ok(Some(Ok(_))) => continue,
            };
            return Frame::decode(&bytes).map_err(|e| {
                SessionError::Upstream(UpstreamError::Protocol {
                    origin: String::new(),
                    reason: e.to_string(),
                })
            });
        }
    }
}

/// Seconds of silence (no frame, not even a ping) after which an exec session counts as
/// broken: three of the runner's keepalive intervals.
pub const EXEC_SILENCE: Duration = Duration::from_secs(45);

/// What to execute, and in which run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecParams {
    /// The run.
    pub run_id: String,
    /// The command, its environment and terminal: the endpoint's query.
    pub exec: ExecQuery,
}

/// Which exec WebSocket to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// Start a command.
    Command(ExecParams),
    /// Replay (and with `follow`, follow) a detached exec.
    Detached {
        /// The exec.
        exec_id: String,
        /// Follow until it ends.
        follow: bool,
    },
    /// Attach to the run's own command.
    Run {
        /// The run.
        run_id: String,
        /// The caller's terminal size, applied when the run has a terminal.
        size: Option<(u16, u16)>,
    },
}

impl Session {
    /// The endpoint's path and query.
    fn path(&self) -> String {
        match self {
            Session::Command(params) => format!(
                "{}?{}",
                paths::run_exec(&params.run_id),
                params.exec.to_query()
            ),
            Session::Detached { exec_id, follow } => paths::with_query(
                &paths::exec_attach(exec_id),
                &ExecAttachQuery { follow: *follow },
            ),
            Session::Run { run_id, size } => paths::with_query(
                &paths::run_attach(run_id),
                &AttachQuery {
                    cols: size.map(|(cols, _)| cols),
                    rows: size.map(|(_, rows)| rows),
                },
            ),
        }
    }
}

impl Upstream {
    /// `POST /api/v1/containers/runs/{id}/execs`: starts a detached exec. Not retried (no
    /// idempotency key): a retry could start the command twice.
    pub async fn create_exec(
        &self,
        run_id: &str,
        body: &CreateExec,
    ) -> Result<ExecRecord, UpstreamError> {
        self.json(
            self.request(Method::POST, &paths::run_execs(run_id))
                .json(body),
        )
        .await
    }

    /// `GET /api/v1/containers/execs/{exec_id}`.
    pub async fn get_exec(&self, exec_id: &str) -> Result<ExecRecord, UpstreamError> {
        self.json(self.request(Method::GET, &paths::exec(exec_id)))
            .await
    }

    /// Opens the exec WebSocket of a command. A refusal before the upgrade comes back as the
    /// runner's problem document.
    pub async fn exec(&self, params: &ExecParams) -> Result<ExecSession, UpstreamError> {
        self.session(&Session::Command(params.clone())).await
    }

    /// Opens an exec WebSocket. A refusal before the upgrade comes back as the runner's
    /// problem document.
    pub async fn session(&self, session: &Session) -> Result<ExecSession, UpstreamError> {
        let path = session.path();
        let http_url = self.origin.join(&path).to_string();
        let ws_url = if let Some(rest) = http_url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = http_url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(self.protocol(format!("cannot speak WebSocket to {http_url}")));
        };
        let mut request = ws_url
            .into_client_request()
            .map_err(|e| self.protocol(format!("bad exec URL: {e}")))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            .map_err(|_| self.protocol("the token is not a valid header value".to_owned()))?;
        request.headers_mut().insert("authorization", bearer);
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(bus_api::exec::SUBPROTOCOL),
        );
        let connector = self
            .websocket_tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        let connect =
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector);
        let limit = self
            .time_left()
            .unwrap_or(CONNECT_TIMEOUT * 3)
            .min(Duration::from_secs(120));
        match tokio::time::timeout(limit, connect).await {
            Err(_) => Err(self.timeout()),
            Ok(Ok((socket, _))) => Ok(ExecSession(socket)),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status();
                let body = response.body().clone().unwrap_or_default();
                match serde_json::from_slice::<Problem>(&body) {
                    Ok(problem) => Err(UpstreamError::Problem(Box::new(problem))),
                    Err(_) => Err(self.protocol(format!(
                        "HTTP {status} without a problem document on the exec endpoint"
                    ))),
                }
            }
            Ok(Err(e)) => Err(UpstreamError::Unreachable {
                origin: self.origin.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}
