//! Security checks against the real chain (bus CLI, busd, bus-runner, Podman): secrets never
//! reach logs, files or process arguments; what the tools write is private; forged and
//! misdirected tokens are refused with their reason, over REST and through the CLI; the
//! authorization matrix of exec, logs, images and builds, and of joining a live follow or
//! wait through busd; oversized request bodies refused before they are read.
//!
//! Already covered elsewhere, not repeated here: peer-uid refusal on busd's socket
//! (busd_lifecycle.rs `another_user_cannot_use_the_socket`), token and key files refused
//! when group- or world-readable (busd_lifecycle.rs), and the runner's 72-case matrix of its
//! other endpoints (runner/tests/authz.rs `authorization_matrix`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::registry::ImageCleanup;
use common::{ALL_SCOPES, Podman, Runner, Stack, bins, hash_key, one_line_error, stdout};
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use hmac::Mac as _;
use serde_json::{Value, json};

const RUNS: &str = "/api/v1/containers/runs";
const IMAGES: &str = "/api/v1/containers/images";
const BUILDS: &str = "/api/v1/containers/builds";

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1, so nothing between the test and the runner rewrites what is sent.

/// A response: status, header block (lower-cased names), body.
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn connect(origin: &str) -> TcpStream {
    let stream = TcpStream::connect(origin.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads one response. The body is read by `Content-Length`, else to the end; not at all for
/// a 101, nor for a 2xx when `streaming` (a followed log, whose headers are all the caller
/// needs).
fn read_reply(stream: &mut TcpStream, streaming: bool) -> Reply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("the runner answers");
        assert!(
            n > 0,
            "the connection closed before the headers ended: {buf:?}"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    let open_ended = status == 101 || (streaming && (200..300).contains(&status));
    if !open_ended {
        match length {
            Some(n) => {
                body.resize(n, 0);
                stream.read_exact(&mut body).unwrap();
            }
            None => {
                let _ = stream.read_to_end(&mut body);
            }
        }
    }
    Reply { status, head, body }
}

/// One request with `Connection: close`; `extra` are more header lines.
fn http(
    origin: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    extra: &[String],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = connect(origin);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    if !extra.iter().any(|l| l.starts_with("Connection:")) {
        head.push_str("Connection: close\r\n");
    }
    if let Some(token) = bearer {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        stream.write_all(body).unwrap();
    }
    read_reply(&mut stream, path.contains("follow=true"))
}

// ---------------------------------------------------------------------------------------------
// Tokens made the way an attacker would, with the runner's own key where that helps them.

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str, scope: &str) -> Value {
    let now = now();
    json!({
        "sub": sub, "iss": "bus-runner", "aud": "bus-containers",
        "exp": now + 600, "nbf": now, "iat": now, "scope": scope, "jti": "security-test",
    })
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The runner's signing key, from its state dir.
fn runner_key(runner: &Runner) -> ed25519_dalek::SigningKey {
    let der = std::fs::read(runner.state_dir.path().join("signing-key.pk8")).unwrap();
    ed25519_dalek::SigningKey::from_pkcs8_der(&der).unwrap()
}

fn eddsa(key: &ed25519_dalek::SigningKey, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(r#"{"alg":"EdDSA","typ":"JWT"}"#),
        b64(claims.to_string())
    );
    format!("{input}.{}", b64(key.sign(input.as_bytes()).to_bytes()))
}

/// Every way a token is wrong, with what the runner must answer and what its reason says.
struct Forged {
    name: &'static str,
    token: String,
    code: &'static str,
    reason: &'static str,
}

fn forged_tokens(runner: &Runner, sub: &str, scope: &str) -> Vec<Forged> {
    let key = runner_key(runner);
    let good = claims(sub, scope);
    let with = |field: &str, value: Value| {
        let mut c = good.clone();
        c[field] = value;
        c
    };
    // Another account's genuine token, its payload swapped for one naming `sub`.
    let donor = eddsa(&key, &with("sub", json!("mallory")));
    let mut parts: Vec<String> = donor.split('.').map(str::to_owned).collect();
    parts[1] = b64(good.to_string());
    let tampered = parts.join(".");
    let hs256 = {
        let input = format!(
            "{}.{}",
            b64(r#"{"alg":"HS256","typ":"JWT"}"#),
            b64(good.to_string())
        );
        let public = key.verifying_key().to_bytes();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64(mac.finalize().into_bytes()))
    };
    let foreign = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let now = now();
    vec![
        Forged {
            name: "alg none",
            token: format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(good.to_string())
            ),
            code: "token_invalid",
            reason: "\"none\" is not accepted",
        },
        Forged {
            name: "HS256 keyed with the runner's public key",
            token: hs256,
            code: "token_invalid",
            reason: "\"HS256\" is not accepted",
        },
        Forged {
            name: "wrong audience",
            token: eddsa(&key, &with("aud", json!("another-service"))),
            code: "token_invalid",
            reason: "audience",
        },
        Forged {
            name: "wrong issuer",
            token: eddsa(&key, &with("iss", json!("mallory"))),
            code: "token_invalid",
            reason: "issuer",
        },
        Forged {
            name: "another account's token with its subject changed",
            token: tampered,
            code: "token_invalid",
            reason: "signature does not verify",
        },
        Forged {
            name: "another deployment's key",
            token: eddsa(&foreign, &good),
            code: "token_invalid",
            reason: "another deployment",
        },
        Forged {
            name: "not yet valid",
            token: eddsa(&key, &with("nbf", json!(now + 3600))),
            code: "token_invalid",
            reason: "not valid before",
        },
        Forged {
            name: "expired",
            token: eddsa(&key, &with("exp", json!(now - 3600))),
            code: "token_expired",
            reason: "expired at",
        },
        Forged {
            name: "no subject",
            token: eddsa(&key, &with("sub", json!(" "))),
            code: "token_invalid",
            reason: "names no account",
        },
    ]
}

// ---------------------------------------------------------------------------------------------

/// Every file below `root` whose bytes contain `needle`, except `allowed`.
fn files_containing(root: &Path, needle: &str, allowed: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() && !allowed.contains(&path) {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// Files, directories and sockets below `root` that another user could open: their own mode
/// lets group or others in, and no directory between `root` and them keeps them out.
fn reachable_by_others(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut open = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                // A directory others cannot enter keeps everything below it private.
                if mode & 0o011 != 0 {
                    stack.push(path);
                }
            } else if mode & 0o066 != 0 {
                open.push((path, mode));
            }
        }
    }
    open
}

/// The command lines of every process on the machine, as text.
fn all_command_lines() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) {
            out.push((pid, String::from_utf8_lossy(&bytes).replace('\0', " ")));
        }
    }
    out
}

fn cmdline(pid: u32) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\0', " ")
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a child this test started, by its PID.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn secrets_never_reach_logs_files_or_command_lines() {
    const API_KEY: &str = "sk-security-3f9c2a7d51e84b06";
    let config = format!(
        "[[accounts]]\nid = \"sec\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\nresources = \"{ALL_SCOPES}\"\n",
        hash_key(API_KEY)
    );
    let stack = Stack::on(Runner::start_on(
        bins(),
        Podman::start(),
        Some(&config),
        true,
    ));
    let runner_log = stack.runner.state_dir.path().join("runner.log");
    let bus = |args: &[&str]| {
        let out = stack
            .bus()
            .env("BUS_LOG", "debug")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "bus {args:?}: {out:?}");
        stdout(&out)
    };

    // The API key is exchanged for a token (key from the environment, never an argument).
    let out = stack
        .bus()
        .env("BUS_LOG", "debug")
        .env("BUS_API_KEY", API_KEY)
        .args(["auth", "token", "--resources", ALL_SCOPES])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token_file = stack.config_dir().join("auth").join("api-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    let signature = token.rsplit('.').next().unwrap().to_owned();
    assert!(token.starts_with("eyJ") && signature.len() > 40);

    // A full session: run, detached run, followed logs, exec, info, stop, delete.
    assert_eq!(
        bus(&["containers", "run", "--", "sh", "-c", "echo visible"]),
        "visible\n"
    );
    let id = bus(&[
        "containers",
        "run",
        "-d",
        "--",
        "sh",
        "-c",
        "echo started; sleep 300",
    ])
    .trim()
    .to_owned();
    let follower = Reaped(
        stack
            .bus()
            .args(["containers", "logs", "-f", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the run to start", Duration::from_secs(60), || {
        bus(&["containers", "get", &id, "-o", "json"]).contains("\"running\"")
    });
    assert_eq!(
        bus(&["containers", "exec", &id, "--", "sh", "-c", "echo in-exec"]),
        "in-exec\n"
    );
    bus(&["daemon", "info"]);
    bus(&["auth", "status"]);

    // While every part runs: no process's arguments carry a secret.
    let busd = stack.busd_pid().expect("busd runs");
    let pids = [busd, stack.runner.pid(), follower.0.id()];
    for pid in pids {
        assert!(!cmdline(pid).is_empty(), "process {pid} is gone");
    }
    assert!(cmdline(busd).contains("busd") && cmdline(follower.0.id()).contains("logs"));
    for (pid, line) in all_command_lines() {
        for secret in [token.as_str(), signature.as_str(), API_KEY] {
            assert!(
                !line.contains(secret),
                "process {pid}'s arguments hold a secret: {line}"
            );
        }
    }

    bus(&["containers", "stop", &id]);
    drop(follower);
    bus(&["containers", "delete", &id]);
    bus(&["daemon", "stop"]);

    // The logs say what happened, and never hold a secret.
    let busd_log = stack.busd_log();
    let runner_text = std::fs::read_to_string(&runner_log).unwrap();
    assert!(
        busd_log.contains("DEBUG"),
        "busd logged at debug level: {busd_log}"
    );
    assert!(
        runner_text.contains(&id),
        "the runner logged the run: {runner_text}"
    );
    for secret in [token.as_str(), signature.as_str(), API_KEY] {
        for root in [stack.home.path(), stack.runner.state_dir.path()] {
            let found = files_containing(root, secret, std::slice::from_ref(&token_file));
            assert!(found.is_empty(), "a secret is stored in {found:?}");
        }
    }

    // What the tools wrote is theirs alone: the token file, busd's socket, lock and log, the
    // runner's key, database and id.
    // (runner.toml is the operator's file, written by the harness.)
    let operators = stack.runner.state_dir.path().join("runner.toml");
    for root in [stack.home.path(), stack.runner.state_dir.path()] {
        let open: Vec<_> = reachable_by_others(root)
            .into_iter()
            .filter(|(path, _)| *path != operators)
            .collect();
        assert!(open.is_empty(), "readable by other users: {open:?}");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(stack.socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&stack.busd_log_path()), 0o600);
    // The state dir is the harness's (0755 from tempfile); the runner's files in it are private
    // on their own, as reachable_by_others showed above.
    assert_eq!(
        mode(&stack.runner.state_dir.path().join("signing-key.pk8")),
        0o600
    );
}

#[test]
fn forged_and_misdirected_tokens_are_refused_with_their_reason() {
    let stack = Stack::without_token(bins());
    let forged = forged_tokens(&stack.runner, "alice", ALL_SCOPES);
    for f in &forged {
        // Over REST.
        let reply = http(&stack.runner.origin, "GET", RUNS, Some(&f.token), &[], None);
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, f.code),
            "{}: {}",
            f.name,
            reply.text()
        );
        assert!(
            reply.detail().contains(f.reason),
            "{}: {}",
            f.name,
            reply.detail()
        );
        assert!(
            !reply.text().contains(&f.token),
            "{}: the token is echoed",
            f.name
        );

        // Through the CLI: one line with the runner's (or, for expiry, busd's) reason.
        stack.write_token(&f.token);
        let line = one_line_error(&stack.run(&["containers", "runs"]));
        assert!(line.contains(f.reason), "{}: {line}", f.name);
        assert!(!line.contains(&f.token), "{}: the token is shown", f.name);
    }
    let valid = eddsa(&runner_key(&stack.runner), &claims("alice", ALL_SCOPES));
    let reply = http(&stack.runner.origin, "GET", RUNS, Some(&valid), &[], None);
    assert_eq!(
        reply.status,
        200,
        "the same key and claims, untouched, pass: {}",
        reply.text()
    );
}

/// Who presents which token in the matrix below.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Owner,
    Other,
    NoToken,
    MissingScope,
    Forged(usize),
}

/// An endpoint of the matrix.
struct Endpoint {
    name: &'static str,
    /// The path; `{run}`, `{image}`, `{image_id}` and `{build}` stand for the owner's run,
    /// image (by name and by id) and build.
    path: &'static str,
    headers: Vec<String>,
    need: &'static str,
    /// The owner's status.
    ok: u16,
}

/// What a placeholder of [`Endpoint::path`] stands for: the owner's resource and one that
/// does not exist, each as written in the path and as the runner may name it in a reply.
struct Target {
    placeholder: &'static str,
    real: String,
    ghost: String,
}

impl Target {
    fn new(placeholder: &'static str, real: &str, ghost: &str) -> Target {
        Target {
            placeholder,
            real: real.to_owned(),
            ghost: ghost.to_owned(),
        }
    }
}

/// `reference` escaped to be one path segment, as busd sends it.
fn path_segment(reference: &str) -> String {
    reference.replace('/', "%2F").replace(':', "%3A")
}

/// `text` with every form of `value` (plain and escaped) replaced by `placeholder`.
fn masked(text: &str, value: &str, placeholder: &str) -> String {
    text.replace(&path_segment(value), placeholder)
        .replace(value, placeholder)
}

/// A tar archive holding one file `name` with `content`, as a build's context.
fn tar_of(name: &str, content: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), content).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(dir.path())
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// The authorization matrix of exec, logs, images and builds: every caller against every
/// endpoint, through a real runner over HTTP. The runner's other endpoints have their
/// matrix in runner/tests/authz.rs.
#[test]
fn authorization_matrix_of_exec_and_logs() {
    let runner = Runner::start(bins());
    let mut cleanup = ImageCleanup::new(&runner.engine.socket);
    let scopes = format!("{ALL_SCOPES} image:read image:write image:build");
    let forged = forged_tokens(&runner, "alice", &scopes);
    let owner = runner.token("alice", &scopes);
    let other = runner.token("bob", &scopes);
    let created = http(
        &runner.origin,
        "POST",
        RUNS,
        Some(&owner),
        &[],
        Some(br#"{"argv": ["sleep", "300"]}"#),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();

    // A finished build of the owner's, whose image only the owner holds.
    let image = "localhost/alice/authz:1";
    let context = tar_of(
        "Dockerfile",
        "FROM localhost/busybox\nLABEL bus.test=authorization\n",
    );
    let built = http(
        &runner.origin,
        "POST",
        &format!("{BUILDS}?tags={image}"),
        Some(&owner),
        &[],
        Some(&context),
    );
    assert_eq!(built.status, 201, "{}", built.text());
    let build = built.json()["id"].as_str().unwrap().to_owned();
    let mut finished = Value::Null;
    wait_for("the build to end", Duration::from_secs(120), || {
        finished = http(
            &runner.origin,
            "GET",
            &format!("{BUILDS}/{build}"),
            Some(&owner),
            &[],
            None,
        )
        .json();
        !matches!(finished["state"].as_str(), Some("queued" | "running"))
    });
    assert_eq!(finished["state"], "succeeded", "{finished}");
    let image_id = finished["image_id"].as_str().unwrap().to_owned();
    cleanup.add(&image_id);

    wait_for("the run to start", Duration::from_secs(60), || {
        http(
            &runner.origin,
            "GET",
            &format!("{RUNS}/{id}"),
            Some(&owner),
            &[],
            None,
        )
        .json()["state"]
            == "running"
    });

    let targets = [
        Target::new("{run}", &id, "run_00000000000000000000000000000000"),
        Target::new("{image}", image, "localhost/alice/ghost:1"),
        Target::new(
            "{image_id}",
            &image_id,
            &format!("sha256:{}", "0".repeat(64)),
        ),
        Target::new("{build}", &build, "bld_00000000000000000000000000000000"),
    ];
    let upgrade = vec![
        "Upgrade: websocket".to_owned(),
        "Connection: Upgrade".to_owned(),
        "Sec-WebSocket-Version: 13".to_owned(),
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
    ];
    let endpoints = [
        Endpoint {
            name: "exec",
            path: "/api/v1/containers/runs/{run}/exec?command=true",
            headers: upgrade,
            need: "container:run",
            ok: 101,
        },
        Endpoint {
            name: "logs",
            path: "/api/v1/containers/runs/{run}/logs",
            headers: vec![],
            need: "container:read",
            ok: 200,
        },
        Endpoint {
            name: "logs, followed",
            path: "/api/v1/containers/runs/{run}/logs?follow=true",
            headers: vec![],
            need: "container:read",
            ok: 200,
        },
        Endpoint {
            name: "image inspect",
            path: "/api/v1/containers/images/{image}",
            headers: vec![],
            need: "image:read",
            ok: 200,
        },
        Endpoint {
            name: "image save",
            path: "/api/v1/containers/images/{image}/archive",
            headers: vec![],
            need: "image:read",
            ok: 200,
        },
        Endpoint {
            name: "image inspect by id",
            path: "/api/v1/containers/images/{image_id}",
            headers: vec![],
            need: "image:read",
            ok: 200,
        },
        Endpoint {
            name: "image save by id",
            path: "/api/v1/containers/images/{image_id}/archive",
            headers: vec![],
            need: "image:read",
            ok: 200,
        },
        Endpoint {
            name: "build",
            path: "/api/v1/containers/builds/{build}",
            headers: vec![],
            need: "image:read",
            ok: 200,
        },
        Endpoint {
            name: "build logs",
            path: "/api/v1/containers/builds/{build}/logs",
            headers: vec![],
            need: "image:read",
            ok: 200,
        },
        Endpoint {
            name: "build logs, followed",
            path: "/api/v1/containers/builds/{build}/logs?follow=true",
            headers: vec![],
            need: "image:read",
            ok: 200,
        },
    ];
    let mut who: Vec<Who> = vec![Who::Owner, Who::Other, Who::NoToken, Who::MissingScope];
    who.extend((0..forged.len()).map(Who::Forged));

    for e in &endpoints {
        let mut path = e.path.to_owned();
        let mut ghost_path = e.path.to_owned();
        for t in &targets {
            path = path.replace(t.placeholder, &path_segment(&t.real));
            ghost_path = ghost_path.replace(t.placeholder, &path_segment(&t.ghost));
        }
        for &w in &who {
            let token = match w {
                Who::Owner => Some(owner.clone()),
                Who::Other => Some(other.clone()),
                Who::NoToken => None,
                Who::MissingScope => {
                    let rest: Vec<&str> = scopes.split(' ').filter(|s| *s != e.need).collect();
                    Some(runner.token("alice", &rest.join(" ")))
                }
                Who::Forged(i) => Some(forged[i].token.clone()),
            };
            let reply = http(
                &runner.origin,
                "GET",
                &path,
                token.as_deref(),
                &e.headers,
                None,
            );
            let context = match w {
                Who::Forged(i) => format!("{} as {}", e.name, forged[i].name),
                _ => format!("{} as {w:?}", e.name),
            };
            match w {
                Who::Owner => {
                    assert_eq!(reply.status, e.ok, "{context}: {}", reply.text());
                }
                Who::Other => {
                    // Indistinguishable from one that does not exist, modulo its name.
                    let ghost = http(
                        &runner.origin,
                        "GET",
                        &ghost_path,
                        Some(&owner),
                        &e.headers,
                        None,
                    );
                    assert_eq!(
                        (reply.status, reply.code().as_str()),
                        (404, "not_found"),
                        "{context}: {}",
                        reply.text()
                    );
                    let (mut seen, mut missing) = (reply.text(), ghost.text());
                    for t in &targets {
                        seen = masked(&seen, &t.real, t.placeholder);
                        missing = masked(&missing, &t.ghost, t.placeholder);
                    }
                    assert_eq!(seen, missing, "{context}");
                }
                Who::NoToken => {
                    assert_eq!(
                        (reply.status, reply.code().as_str()),
                        (401, "token_missing"),
                        "{context}"
                    );
                }
                Who::MissingScope => {
                    assert_eq!(
                        (reply.status, reply.code().as_str()),
                        (403, "scope_missing"),
                        "{context}"
                    );
                    assert!(
                        reply.detail().contains(e.need),
                        "{context}: {}",
                        reply.detail()
                    );
                }
                Who::Forged(i) => {
                    assert_eq!(
                        (reply.status, reply.code().as_str()),
                        (401, forged[i].code),
                        "{context}: {}",
                        reply.text()
                    );
                }
            }
            if let Some(token) = &token {
                assert!(
                    !reply.text().contains(token.as_str()),
                    "{context}: the token is echoed"
                );
            }
        }
    }
    let stopped = http(
        &runner.origin,
        "POST",
        &format!("{RUNS}/{id}/stop"),
        Some(&owner),
        &[],
        Some(br#"{"force": true}"#),
    );
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    for path in [
        format!("{IMAGES}/{}", path_segment(image)),
        format!("{BUILDS}/{build}"),
    ] {
        let removed = http(&runner.origin, "DELETE", &path, Some(&owner), &[], None);
        assert_eq!(removed.status, 204, "{path}: {}", removed.text());
    }
}

/// What one bounded `bus` invocation did.
#[derive(Debug, PartialEq)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `command` to its end, or kills it (by its PID) after `limit` and says so in `stderr`:
/// a command that should have been refused must not hang the test instead.
fn bounded(mut command: std::process::Command, limit: Duration) -> Outcome {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            hung = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = err.join().unwrap();
    if hung {
        stderr.push_str(&format!("(still running after {limit:?}; killed)"));
    }
    Outcome {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr,
    }
}

/// busd's count of upstream log streams opened so far.
fn upstream_log_streams(stack: &Stack) -> u64 {
    use bus::proto::daemon::v1::{GetInfoRequest, daemon_client::DaemonClient};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = bus::connect(&stack.socket).await.unwrap();
        DaemonClient::new(channel)
            .get_info(GetInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .upstream_log_streams
    })
}

/// A `bus` command's stdout, line by line into a counter, while it runs.
struct Watched {
    child: Reaped,
    lines: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Watched {
    fn spawn(mut command: std::process::Command) -> Watched {
        use std::io::BufRead as _;
        use std::sync::atomic::Ordering;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines: std::sync::Arc<std::sync::atomic::AtomicUsize> = std::sync::Arc::default();
        let count = std::sync::Arc::clone(&lines);
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                if line.is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Watched {
            child: Reaped(child),
            lines,
        }
    }

    fn lines(&self) -> usize {
        self.lines.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn running(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_none()
    }
}

/// The authorization matrix of joining a live follow and a live wait: while the owner follows
/// a run that prints a line every 50 ms, every token the runner refuses for that run's logs
/// (each forged kind, expired, without `container:read`, with a grant that switches logs off,
/// another account's) gets through `bus containers logs -f` and `bus containers wait`
/// exactly what it gets with nobody following: the same exit code and error line, and no
/// output. Another genuine token of the owner's joins, and shares the one upstream stream.
#[test]
fn joining_a_live_follow_or_wait_gets_what_the_token_gets_alone() {
    let stack = Stack::start(bins());
    let key = runner_key(&stack.runner);
    let mut tokens: Vec<(String, String)> = forged_tokens(&stack.runner, "alice", ALL_SCOPES)
        .into_iter()
        .map(|f| (f.name.to_owned(), f.token))
        .collect();
    tokens.push((
        "missing container:read".to_owned(),
        stack
            .runner
            .token("alice", "container:run container:delete"),
    ));
    let mut no_logs = claims("alice", ALL_SCOPES);
    no_logs["grant"] = json!({ "logs": false });
    tokens.push(("a grant without logs".to_owned(), eddsa(&key, &no_logs)));
    tokens.push((
        "another account".to_owned(),
        stack.runner.token("bob", ALL_SCOPES),
    ));
    let files: Vec<(String, PathBuf)> = tokens
        .iter()
        .enumerate()
        .map(|(i, (name, token))| (name.clone(), stack.token_file(&format!("t{i}"), token)))
        .collect();

    let out = stack.run(&[
        "containers",
        "run",
        "-d",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 12000 ]; do i=$((i+1)); echo line $i; sleep 0.05; done",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out).trim().to_owned();
    let limit = Duration::from_secs(15);
    let attempt = |file: &Path, verb: &[&str]| {
        let mut command = stack.bus();
        command
            .arg("--token-file")
            .arg(file)
            .arg("containers")
            .args(verb)
            .arg(&id);
        bounded(command, limit)
    };
    let verbs: [&[&str]; 2] = [&["logs", "-f"], &["wait"]];

    // Alone: nobody follows the run.
    let mut alone = Vec::new();
    for (name, file) in &files {
        for verb in verbs {
            let got = attempt(file, verb);
            assert_ne!(got.code, Some(0), "{name}, {verb:?} alone: {got:?}");
            assert_eq!(got.stdout, "", "{name}, {verb:?} alone");
            assert_eq!(
                got.stderr.lines().count(),
                1,
                "{name}, {verb:?} alone: {got:?}"
            );
            assert!(
                got.stderr.starts_with("bus: error: "),
                "{name}, {verb:?}: {got:?}"
            );
            alone.push(got);
        }
    }

    // The owner follows; the run goes on printing.
    let mut owner = stack.bus();
    owner.args(["containers", "logs", "-f", &id]);
    let mut owner = Watched::spawn(owner);
    wait_for("the owner's first line", Duration::from_secs(60), || {
        owner.lines() > 0
    });
    let streams = upstream_log_streams(&stack);

    let mut alone = alone.into_iter();
    let mut differences = Vec::new();
    for (name, file) in &files {
        for verb in verbs {
            let joined = attempt(file, verb);
            let expected = alone.next().unwrap();
            if joined != expected {
                differences.push(format!(
                    "{name}, {verb:?}: exit {:?} and {} lines of output, then {:?}; alone: exit {:?}, {:?}",
                    joined.code,
                    joined.stdout.lines().count(),
                    joined.stderr,
                    expected.code,
                    expected.stderr
                ));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "joining a live follow differs from alone:\n{}",
        differences.join("\n")
    );
    assert!(owner.running(), "the owner's follow was live throughout");

    // A genuine token of the owner's (another one: a different lifetime) joins the group.
    let other = stack.token_file(
        "alice-2",
        &common::mint(
            stack.runner.state_dir.path(),
            "alice",
            ALL_SCOPES,
            &["--ttl", "2h"],
        ),
    );
    let mut second = stack.bus();
    second
        .arg("--token-file")
        .arg(&other)
        .args(["containers", "logs", "-f", &id]);
    let second = Watched::spawn(second);
    wait_for(
        "the second follower's lines",
        Duration::from_secs(60),
        || second.lines() > 0,
    );
    assert_eq!(
        upstream_log_streams(&stack),
        streams,
        "every follower shares the owner's one upstream stream"
    );
    assert!(owner.running(), "the owner's follow goes on");
}

/// Sends a request head declaring `length` bytes and only part of them, then waits: the
/// answer must come while the client is still "sending".
fn declared_too_long(origin: &str, path: &str, auth: &str, length: u64) -> Reply {
    let mut stream = connect(origin);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"argv\": [\""
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[b'a'; 1024]).unwrap();
    read_reply(&mut stream, false)
}

/// Sends a chunked body of `total` bytes (more than the limit) without a length: it must be
/// refused once it passes the limit, without waiting for the rest.
fn chunked_too_long(origin: &str, path: &str, auth: &str, total: usize) -> Reply {
    let mut stream = connect(origin);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {auth}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b' '; 4096];
    let mut sent = 0;
    while sent < total {
        // The runner may answer and close before everything is sent; that is the point.
        if stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| stream.write_all(&chunk))
            .and_then(|()| stream.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
        sent += chunk.len();
    }
    // No closing chunk: the body never ends unless the runner stops reading it.
    read_reply(&mut stream, false)
}

#[test]
fn oversized_bodies_are_refused_before_they_are_read() {
    const API_KEY: &str = "sk-body-limits-5e1d";
    let scopes = format!("{ALL_SCOPES} image:read image:write");
    let config = format!(
        "[[accounts]]\nid = \"limits\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\nresources = \"{scopes}\"\n",
        hash_key(API_KEY)
    );
    let runner = Runner::start_with_config(bins(), &config);
    let token = runner.token("limits", &scopes);
    let stop = format!("{RUNS}/run_00000000000000000000000000000000/stop");
    // Every endpoint that takes a body, with its limit and the credential it needs.
    let execs = format!("{RUNS}/run_00000000000000000000000000000000/execs");
    let endpoints = [
        (RUNS, 256 * 1024, token.as_str()),
        (stop.as_str(), 4 * 1024, token.as_str()),
        ("/api/v1/auth/token", 4 * 1024, API_KEY),
        (execs.as_str(), 256 * 1024, token.as_str()),
        ("/api/v1/containers/images/pull", 64 * 1024, token.as_str()),
        ("/api/v1/containers/images/push", 64 * 1024, token.as_str()),
        ("/api/v1/containers/images/x/tag", 64 * 1024, token.as_str()),
    ];
    for (path, limit, auth) in endpoints {
        // A declared length over the limit: 413 at once, though 1 GiB is "still coming".
        let reply = declared_too_long(&runner.origin, path, auth, 1 << 30);
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (413, "payload_too_large"),
            "{path}: {}",
            reply.text()
        );
        assert!(
            reply.detail().contains(&format!("{limit} bytes")),
            "{path}: the limit is named: {}",
            reply.detail()
        );
        assert!(
            reply
                .head
                .contains("content-type: application/problem+json"),
            "{path}: {}",
            reply.head
        );

        // No declared length: refused once the body passes the limit, naming it too.
        let reply = chunked_too_long(&runner.origin, path, auth, limit + 8192);
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (413, "payload_too_large"),
            "{path}: {}",
            reply.text()
        );
        assert!(
            reply.detail().contains(&format!("{limit} bytes")),
            "{path}: {}",
            reply.detail()
        );

        // Just under the limit is read, and judged on what it says.
        let mut body = b"{\"x\": \"".to_vec();
        body.resize(limit - 2, b'a');
        body.extend_from_slice(b"\"}");
        assert_eq!(body.len(), limit);
        let reply = http(&runner.origin, "POST", path, Some(auth), &[], Some(&body));
        assert_ne!(
            reply.status, 413,
            "{path}: a body of exactly the limit is accepted for reading"
        );
        assert!(
            reply.status == 400 || reply.status == 404,
            "{path}: {} {}",
            reply.status,
            reply.text()
        );
    }
}
