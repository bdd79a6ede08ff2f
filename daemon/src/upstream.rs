//! The REST client: the only part of busd that speaks HTTP.
//!
//! One pooled `reqwest::Client` per origin (keep-alive, HTTP/2 when offered, rustls). Every
//! call carries the bearer token; every non-2xx answer is parsed as an RFC 9457 problem.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_api::{CreateRun, LogFrame, Problem, Run, RunPage, RunnerStatus};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::config::ApiOrigin;
use crate::credentials::Token;

/// How long a TCP/TLS connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest NDJSON line busd accepts (a 64 KiB chunk in base64 plus its envelope).
const MAX_FRAME_LINE: usize = 256 * 1024;

/// What went wrong talking to the upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with a problem document.
    #[error("{}", .0.detail)]
    Problem(Box<Problem>),
    /// No connection could be made, or it broke.
    #[error("cannot reach the container runner at {origin}: {reason}")]
    Unreachable {
        /// The origin that was called.
        origin: String,
        /// The transport's reason.
        reason: String,
    },
    /// The upstream answered something that is not this API.
    #[error("the container runner at {origin} answered unexpectedly: {reason}")]
    Protocol {
        /// The origin that was called.
        origin: String,
        /// What was wrong.
        reason: String,
    },
}

/// The options of a logs request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsQuery {
    /// Keep the stream open until the run's exit frame.
    pub follow: bool,
    /// Only frames with a greater seq.
    pub after_seq: u64,
    /// Only the last N output frames that exist now.
    pub tail: Option<u64>,
    /// Include stdout frames.
    pub stdout: bool,
    /// Include stderr frames.
    pub stderr: bool,
}

impl LogsQuery {
    /// Everything after `after_seq`, followed or not.
    pub fn after(after_seq: u64, follow: bool) -> Self {
        LogsQuery {
            follow,
            after_seq,
            tail: None,
            stdout: true,
            stderr: true,
        }
    }
}

/// A pool of REST clients, one per origin.
#[derive(Clone, Default)]
pub struct Upstreams {
    clients: Arc<Mutex<HashMap<ApiOrigin, reqwest::Client>>>,
}

impl Upstreams {
    /// The client for `origin`, made on first use and kept warm afterwards.
    pub fn client(&self, origin: &ApiOrigin, token: Token) -> Upstream {
        let mut clients = self.clients.lock().expect("upstream pool lock poisoned");
        let http = clients
            .entry(origin.clone())
            .or_insert_with(|| {
                reqwest::Client::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .user_agent(concat!("busd/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .expect("the TLS backend initialises")
            })
            .clone();
        Upstream {
            http,
            origin: origin.clone(),
            token,
        }
    }
}

/// One call context: a pooled client, an origin and a token.
#[derive(Clone)]
pub struct Upstream {
    http: reqwest::Client,
    origin: ApiOrigin,
    token: Token,
}

impl Upstream {
    /// The origin this context calls.
    pub fn origin(&self) -> &ApiOrigin {
        &self.origin
    }

    /// A key for the account this context speaks for: its token's subject, or the token
    /// itself when it has none, hashed. Never the token in clear.
    pub fn identity_key(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        match self.token.claims() {
            Some(claims) => claims.sub.hash(&mut hasher),
            None => self.token.expose().hash(&mut hasher),
        }
        hasher.finish()
    }

    /// `GET /api/v1/containers/status`.
    pub async fn status(&self) -> Result<RunnerStatus, UpstreamError> {
        self.json(self.request(Method::GET, "/api/v1/containers/status"))
            .await
    }

    /// `POST /api/v1/containers/runs`.
    pub async fn create_run(&self, spec: &CreateRun) -> Result<Run, UpstreamError> {
        self.json(
            self.request(Method::POST, "/api/v1/containers/runs")
                .json(spec),
        )
        .await
    }

    /// `GET /api/v1/containers/runs/{id}`.
    pub async fn get_run(&self, id: &str) -> Result<Run, UpstreamError> {
        self.json(self.request(Method::GET, &run_path(id, "")))
            .await
    }

    /// `GET /api/v1/containers/runs?page_size&page_token`.
    pub async fn list_runs(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<RunPage, UpstreamError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if page_size > 0 {
            query.push(("page_size", page_size.to_string()));
        }
        if !page_token.is_empty() {
            query.push(("page_token", page_token.to_owned()));
        }
        self.json(
            self.request(Method::GET, "/api/v1/containers/runs")
                .query(&query),
        )
        .await
    }

    /// `DELETE /api/v1/containers/runs/{id}`.
    pub async fn delete_run(&self, id: &str) -> Result<(), UpstreamError> {
        self.send(self.request(Method::DELETE, &run_path(id, "")))
            .await
            .map(drop)
    }

    /// `GET /api/v1/containers/runs/{id}/logs?follow&after_seq`: the run's frames after
    /// `after_seq`, ending with the exit frame once the run has ended.
    pub async fn logs(
        &self,
        id: &str,
        after_seq: u64,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<LogFrame, UpstreamError>> + use<>, UpstreamError> {
        self.logs_with(id, &LogsQuery::after(after_seq, follow))
            .await
    }

    /// `GET /api/v1/containers/runs/{id}/logs` with every option of [`LogsQuery`].
    pub async fn logs_with(
        &self,
        id: &str,
        query: &LogsQuery,
    ) -> Result<impl Stream<Item = Result<LogFrame, UpstreamError>> + use<>, UpstreamError> {
        let mut params = vec![
            ("follow", query.follow.to_string()),
            ("after_seq", query.after_seq.to_string()),
        ];
        // Both streams are the default; name one only to leave it out.
        for (name, wanted) in [("stdout", query.stdout), ("stderr", query.stderr)] {
            if !wanted {
                params.push((name, "false".to_owned()));
            }
        }
        if let Some(tail) = query.tail {
            params.push(("tail", tail.to_string()));
        }
        let request = self
            .request(Method::GET, &run_path(id, "/logs"))
            .query(&params);
        let response = self.send(request).await?;
        let origin = self.origin.to_string();
        let bytes = response.bytes_stream().map_err({
            let origin = origin.clone();
            move |e| UpstreamError::Unreachable {
                origin: origin.clone(),
                reason: e.to_string(),
            }
        });
        Ok(ndjson_frames(bytes, origin))
    }

    /// `POST /api/v1/containers/runs/{id}/stop`.
    pub async fn stop_run(
        &self,
        id: &str,
        grace_seconds: Option<u32>,
        force: bool,
    ) -> Result<Run, UpstreamError> {
        let body = serde_json::json!({ "grace_seconds": grace_seconds, "force": force });
        self.json(
            self.request(Method::POST, &run_path(id, "/stop"))
                .json(&body),
        )
        .await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.origin.join(path))
            .bearer_auth(self.token.expose())
    }

    async fn send(&self, request: RequestBuilder) -> Result<Response, UpstreamError> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        match serde_json::from_slice::<Problem>(&body) {
            Ok(problem) => Err(UpstreamError::Problem(Box::new(problem))),
            Err(_) => Err(self.protocol(format!(
                "HTTP {status} without a problem document{}",
                hint_for_status(status)
            ))),
        }
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, UpstreamError> {
        let response = self.send(request).await?;
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice(&body).map_err(|e| self.protocol(format!("invalid JSON: {e}")))
    }

    fn unreachable(&self, e: &reqwest::Error) -> UpstreamError {
        UpstreamError::Unreachable {
            origin: self.origin.to_string(),
            reason: transport_reason(e),
        }
    }

    fn protocol(&self, reason: String) -> UpstreamError {
        UpstreamError::Protocol {
            origin: self.origin.to_string(),
            reason,
        }
    }
}

fn run_path(id: &str, suffix: &str) -> String {
    // Ids are opaque; encode anything that could change the path's shape.
    let escaped: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    format!("/api/v1/containers/runs/{escaped}{suffix}")
}

fn hint_for_status(status: StatusCode) -> &'static str {
    if status == StatusCode::NOT_FOUND {
        " (is the API URL the runner's origin?)"
    } else {
        ""
    }
}

/// The innermost cause of a transport error, which is the useful part ("connection refused").
fn transport_reason(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        "timed out".to_owned()
    } else {
        source.to_string()
    }
}

/// Splits an NDJSON byte stream into frames.
fn ndjson_frames<S>(bytes: S, origin: String) -> impl Stream<Item = Result<LogFrame, UpstreamError>>
where
    S: Stream<Item = Result<bytes::Bytes, UpstreamError>> + Unpin,
{
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), origin, false),
        |(mut bytes, mut buf, origin, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let line = &line[..line.len() - 1];
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let frame = serde_json::from_slice::<LogFrame>(line).map_err(|e| {
                        UpstreamError::Protocol {
                            origin: origin.clone(),
                            reason: format!("invalid log frame: {e}"),
                        }
                    });
                    let failed = frame.is_err();
                    return Some((frame, (bytes, buf, origin, failed)));
                }
                if buf.len() > MAX_FRAME_LINE {
                    let err = UpstreamError::Protocol {
                        origin: origin.clone(),
                        reason: "a log frame is larger than any the API sends".to_owned(),
                    };
                    return Some((Err(err), (bytes, buf, origin, true)));
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (bytes, buf, origin, true))),
                    None if buf.is_empty() => return None,
                    None => {
                        let err = UpstreamError::Unreachable {
                            origin: origin.clone(),
                            reason: "the log stream ended in the middle of a frame".to_owned(),
                        };
                        return Some((Err(err), (bytes, buf, origin, true)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(chunks: Vec<&'static [u8]>) -> Vec<Result<LogFrame, String>> {
        let bytes = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, UpstreamError>(bytes::Bytes::from_static(c))),
        );
        let frames = ndjson_frames(bytes, "http://o".into()).map(|r| r.map_err(|e| e.to_string()));
        futures::executor::block_on(frames.collect())
    }

    #[test]
    fn frames_split_across_chunks_are_joined() {
        let got = frames_of(vec![
            b"{\"type\":\"output\",\"seq\":1,\"stream\":\"stdout\",\"da",
            b"ta\":\"T0s=\",\"time\":\"2024-01-01T00:00:00Z\"}\n{\"type\":\"exit\",\"state\":\"exited\",",
            b"\"exit_code\":0,\"last_seq\":1}\n",
        ]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0].as_ref().unwrap().output_bytes().unwrap().unwrap(),
            b"OK"
        );
        assert!(matches!(
            got[1],
            Ok(LogFrame::Exit {
                exit_code: Some(0),
                last_seq: 1,
                ..
            })
        ));
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_an_end() {
        let got = frames_of(vec![b"{\"type\":\"exit\""]);
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().unwrap_err().contains("ended in the middle"));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let got = frames_of(vec![b"<html>\n"]);
        assert!(got[0].as_ref().unwrap_err().contains("invalid log frame"));
    }

    #[test]
    fn run_ids_cannot_change_the_path() {
        assert_eq!(
            run_path("../x", "/logs"),
            "/api/v1/containers/runs/..%2Fx/logs"
        );
    }
}
