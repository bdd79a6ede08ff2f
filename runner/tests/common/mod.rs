//! Test fixtures: a real Podman API service on a temp socket, and HTTP helpers.

#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use bus_api::auth::Scope;
use bus_runner::AppState;
use bus_runner::auth::Keys;
use bus_runner::config::Config;
use bus_runner::engine::Engine;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

/// Every scope.
pub const ALL: [Scope; 3] = [Scope::Read, Scope::Run, Scope::Delete];

/// `podman system service` on a temp socket, with the project's containers.conf; stopped (by
/// its PID) on drop.
pub struct Podman {
    child: Child,
    /// The socket path.
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Podman {
    /// Starts the service and waits until `GET /_ping` answers (bounded).
    pub fn start() -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("podman.sock");
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/containers.conf");
        let log = std::fs::File::create(dir.path().join("podman.log")).unwrap();
        // conmon writes an `oom` file into the service's working directory when the OOM
        // killer strikes: keep it in the temp dir, out of the source tree.
        let child = Command::new("podman")
            .current_dir(dir.path())
            .env("CONTAINERS_CONF", &conf)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("podman must be installed to run these tests (see ENGINE.md)");
        let mut podman = Podman {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ping(&podman.socket) {
            if let Some(status) = podman.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(podman._dir.path().join("podman.log"))
                    .unwrap_or_default();
                panic!("podman system service exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "podman system service did not answer /_ping in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        podman
    }

    /// The engine URL for `--engine`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Whether the engine still has a container by this name or id.
    pub fn container_exists(&self, name: &str) -> bool {
        let status = Command::new("podman")
            .arg("--url")
            .arg(self.url())
            .args(["container", "exists", name])
            .status()
            .unwrap();
        status.success()
    }

    /// Force-removes a container by its name or id (cleanup after a failed test).
    pub fn remove_container(&self, name: &str) {
        let _ = Command::new("podman")
            .arg("--url")
            .arg(self.url())
            .args(["rm", "-f", "--ignore", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.") && reply.contains(" 200 ")
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

/// Parses an NDJSON body into log frames.
pub fn frames(body: &[u8]) -> Vec<bus_api::LogFrame> {
    body.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect()
}
