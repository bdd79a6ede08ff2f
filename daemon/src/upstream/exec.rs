//! The exec WebSocket to the runner (`GET /api/v1/containers/runs/{id}/exec`), `ws://` or
//! `wss://` (rustls) after the origin's scheme. Frames are [`bus_api::exec`]'s.

use std::time::Duration;

use bus_api::Problem;
use bus_api::exec::ExecQuery;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};

use super::{CONNECT_TIMEOUT, Upstream, UpstreamError};

/// An open exec session.
pub type ExecSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

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

impl Upstream {
    /// Opens the exec WebSocket. A refusal before the upgrade comes back as the runner's
    /// problem document.
    pub async fn exec(&self, params: &ExecParams) -> Result<ExecSocket, UpstreamError> {
        let path = format!(
            "/api/v1/containers/runs/{}/exec?{}",
            url::form_urlencoded::byte_serialize(params.run_id.as_bytes()).collect::<String>(),
            params.exec.to_query()
        );
        let http_url = self.origin.join(&path);
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
            Ok(Ok((socket, _))) => Ok(socket),
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
