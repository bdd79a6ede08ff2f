//! Test fixtures: the runner app in process on a real Podman API service (from the testkit
//! crate), and HTTP helpers.

#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bus_api::auth::Scope;
use bus_runner::AppState;
use bus_runner::auth::Keys;
use bus_runner::config::Config;
use bus_runner::engine::Engine;
pub use bus_testkit::{Bins, Podman};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

/// Every scope.
pub const ALL: [Scope; 3] = [Scope::Read, Scope::Run, Scope::Delete];

/// The workspace's binaries, found beside this package's `bus-runner`.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| Bins::beside(env!("CARGO_BIN_EXE_bus-runner")))
}

/// A runner app on `engine_url` with a fresh state dir (kept alive by the returned dir).
pub fn runner(engine_url: &str) -> (tempfile::TempDir, Keys, Router) {
    let dir = tempfile::tempdir().unwrap();
    let (keys, app) = runner_in(dir.path(), engine_url);
    (dir, keys, app)
}

fn runner_in(dir: &Path, engine_url: &str) -> (Keys, Router) {
    runner_in_with(dir, engine_url, Config::builtin())
}

fn runner_in_with(dir: &Path, engine_url: &str, config: Config) -> (Keys, Router) {
    let keys = Keys::load_or_create(&dir.join("state")).unwrap();
    let engine = Engine::connect(engine_url).unwrap();
    let app = bus_runner::app(AppState::new(keys.clone(), config, engine));
    (keys, app)
}

/// A runner app with `config` (profiles, plans, accounts) on `engine_url`.
pub fn runner_with(engine_url: &str, config: Config) -> (tempfile::TempDir, Keys, Router) {
    let dir = tempfile::tempdir().unwrap();
    let (keys, app) = runner_in_with(dir.path(), engine_url, config);
    (dir, keys, app)
}

/// A runner whose engine is never called: its "socket" is an ordinary file.
pub fn runner_without_engine() -> (tempfile::TempDir, Keys, Router) {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("no-engine.sock");
    std::fs::write(&fake, b"").unwrap();
    let (keys, app) = runner_in(dir.path(), &format!("unix://{}", fake.display()));
    (dir, keys, app)
}

/// A response: status, headers, body.
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: bytes::Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A problem document's `code`, after checking the media type.
    pub fn problem_code(&self) -> String {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        self.json()["code"].as_str().unwrap().to_owned()
    }
}

/// Sends one request through the app and reads the whole body.
pub async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = match body {
        Some(body) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET /api/v1/containers/runs/{id}` with `token`.
pub async fn get_run(app: &Router, token: &str, id: &str) -> Reply {
    let uri = format!("/api/v1/containers/runs/{id}");
    call(app, Method::GET, &uri, Some(token), None).await
}

/// `POST /api/v1/containers/runs` with `body`; asserts 201 and returns the run's record.
pub async fn create_run(app: &Router, token: &str, body: serde_json::Value) -> serde_json::Value {
    create_run_reply(app, token, body).await.json()
}

/// `POST /api/v1/containers/runs` with `body`; asserts 201 and returns the whole reply
/// (headers included).
pub async fn create_run_reply(app: &Router, token: &str, body: serde_json::Value) -> Reply {
    let reply = call(
        app,
        Method::POST,
        "/api/v1/containers/runs",
        Some(token),
        Some(body),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply
}

/// Removes containers (by name) when dropped, in case a failure (or the in-process app going
/// away mid-run) left them behind.
pub struct Cleanup<'a>(pub &'a Podman, pub Vec<String>);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for name in &self.1 {
            self.0.remove_container(name);
        }
    }
}

/// Follows run `id`'s logs to their end (`logs?follow=true`, NDJSON); asserts 200 and
/// returns the frames.
pub async fn follow(app: &Router, token: &str, id: &str) -> Vec<bus_api::LogFrame> {
    let path = format!("/api/v1/containers/runs/{id}/logs?follow=true");
    let reply = call(app, Method::GET, &path, Some(token), None).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    frames(&reply.body)
}

/// Parses an NDJSON body into log frames.
pub fn frames(body: &[u8]) -> Vec<bus_api::LogFrame> {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}
