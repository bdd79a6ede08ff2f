//! The `agent` profile end to end: a run reaches the runner with its own token
//! (`BUS_AI_API_URL`, `BUS_AI_TOKEN`), the token dies with the run, and an egress proxy adds
//! the real credential upstream without it ever entering the container or a log.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::mpsc;

use common::{ALL_SCOPES, Podman, Runner, Stack, bins, stdout};

const CREDENTIAL: &str = "sk-upstream-credential-4242";

#[test]
fn an_agent_run_reads_its_own_run_with_its_token_which_ends_with_the_run() {
    let stack = Stack::start(bins());
    let out = stack.run(&[
        "containers",
        "run",
        "--profile",
        "agent",
        "--",
        "sh",
        "-c",
        "echo \"token=$BUS_AI_TOKEN\"; \
         wget -qO- --header \"Authorization: Bearer $BUS_AI_TOKEN\" \
         \"$BUS_AI_API_URL/api/v1/containers/runs/$BUS_RUN_ID\"",
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (first, body) = text.split_once('\n').unwrap();
    let token = first.strip_prefix("token=").unwrap().trim();
    assert!(token.starts_with("eyJ"), "{first}");
    let run: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(run["profile"], "agent", "{run}");
    // Not ended while it asks (its state may still read `starting`).
    assert!(
        matches!(run["state"].as_str(), Some("starting" | "running")),
        "{run}"
    );
    let id = run["id"].as_str().unwrap();

    // The run has ended: its token is refused, saying why.
    let (status, problem) = stack
        .runner
        .get(&format!("/api/v1/containers/runs/{id}"), token);
    assert_eq!(status, 401, "{problem}");
    assert!(
        problem.contains(&format!(
            "this token was minted for run {id}, which has ended"
        )),
        "{problem}"
    );
    assert!(!problem.contains(token));
    // It mints nothing: the token route takes API keys only.
    let (status, _) = stack.runner.get("/api/v1/auth/token", token);
    assert_ne!(status, 200);
}

/// A one-request HTTP server on loopback that records the request head it received.
fn upstream() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        stream.set_nodelay(true).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let body = "upstream-ok\n";
        let mut stream = stream;
        let _ = stream.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let _ = tx.send(head);
    });
    (port, rx)
}

#[test]
fn a_proxy_forwards_with_the_real_credential_which_never_enters_the_container() {
    let (port, heads) = upstream();
    let secrets = tempfile::tempdir().unwrap();
    let key = secrets.path().join("model-key");
    std::fs::write(&key, format!("{CREDENTIAL}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = format!(
        "[proxies.model]\n\
         upstream = \"http://127.0.0.1:{port}/v1\"\n\
         credential_file = \"{}\"\n\
         [profiles.agent]\n\
         image = \"localhost/busybox:latest\"\n\
         timeout_seconds = 120\n\
         network = \"runner\"\n\
         token_scopes = [\"container:read\"]\n\
         proxies = [\"model\"]\n",
        key.display()
    );
    let runner = Runner::start_on(bins(), Podman::start(), Some(&config), true);
    let stack = Stack::on(runner);
    let account_token = stack.runner.token("alice", ALL_SCOPES);
    stack.write_token(&account_token);

    let out = stack.run(&[
        "containers",
        "run",
        "--profile",
        "agent",
        "--",
        "sh",
        "-c",
        "env; wget -qO- --header \"Authorization: Bearer $MODEL_API_KEY\" \
         \"$MODEL_BASE_URL/chat/completions?stream=false\"",
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("upstream-ok\n"), "{text}");
    assert!(text.contains("MODEL_BASE_URL=http://10.0.2.2:"), "{text}");
    assert!(text.contains("/api/v1/proxy/model\n"), "{text}");
    assert!(
        !text.contains(CREDENTIAL),
        "the container saw the credential"
    );

    let head = heads
        .recv_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    assert!(
        head.starts_with("GET /v1/chat/completions?stream=false HTTP/1.1\r\n"),
        "{head}"
    );
    let authorization: Vec<&str> = head
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .collect();
    assert_eq!(
        authorization,
        [format!("authorization: Bearer {CREDENTIAL}").as_str()],
        "{head}"
    );

    // Not a run token, an unknown proxy: refused with problems.
    let (status, problem) = stack.runner.get("/api/v1/proxy/model/chat", &account_token);
    assert_eq!(status, 403, "{problem}");
    let (status, problem) = stack.runner.get("/api/v1/proxy/nope/chat", &account_token);
    assert_eq!(status, 404, "{problem}");
    assert!(problem.contains("no proxy \\\"nope\\\""), "{problem}");

    let runner_log =
        std::fs::read_to_string(stack.runner.state_dir.path().join("runner.log")).unwrap();
    assert!(!runner_log.is_empty());
    assert!(!runner_log.contains(CREDENTIAL), "the runner logged it");
    assert!(!stack.busd_log().contains(CREDENTIAL), "busd logged it");
}

/// An `https://` upstream signed by a private CA: trusted through the proxy's `ca_file`, and
/// refused without it. The upstream is a second runner serving HTTPS; the proxy's credential
/// is that runner's token for another account, which its answer names.
#[test]
fn a_proxy_reaches_an_https_upstream_it_trusts_through_its_ca_file_only() {
    let dir = tempfile::tempdir().unwrap();
    bus_testkit::tls::certificates(dir.path()).unwrap();
    let upstream_engine = Podman::start();
    let upstream_state = dir.path().join("upstream");
    let upstream = bus_testkit::Serve::new(bins(), &upstream_engine.socket, &upstream_state)
        .unwrap()
        .env("RUST_LOG", "warn")
        .listen("https://127.0.0.1:0")
        .tls(dir.path().join("server.pem"), dir.path().join("server.key"))
        .spawn();
    let origin = upstream.origins[0].clone();
    assert!(origin.starts_with("https://"), "{origin}");
    let credential = common::mint(&upstream_state, "upstream-acct", "billing:read", &[]);
    let key = dir.path().join("upstream-key");
    std::fs::write(&key, format!("{credential}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = format!(
        "[proxies.up]\n\
         upstream = \"{origin}/api/v1\"\n\
         credential_file = \"{key}\"\n\
         ca_file = \"{ca}\"\n\
         [proxies.untrusted]\n\
         upstream = \"{origin}/api/v1\"\n\
         credential_file = \"{key}\"\n\
         [profiles.agent]\n\
         image = \"localhost/busybox:latest\"\n\
         timeout_seconds = 120\n\
         network = \"runner\"\n\
         token_scopes = [\"container:read\"]\n\
         proxies = [\"up\", \"untrusted\"]\n",
        key = key.display(),
        ca = dir.path().join("ca.pem").display(),
    );
    let stack = Stack::on(Runner::start_on(
        bins(),
        Podman::start(),
        Some(&config),
        true,
    ));
    stack.write_token(&stack.runner.token("alice", ALL_SCOPES));

    let out = stack.run(&[
        "containers",
        "run",
        "--profile",
        "agent",
        "--",
        "sh",
        "-c",
        "wget -qO- --header \"Authorization: Bearer $UP_API_KEY\" \"$UP_BASE_URL/billing/status\"; \
         echo; wget -qO- --header \"Authorization: Bearer $UNTRUSTED_API_KEY\" \
         \"$UNTRUSTED_BASE_URL/billing/status\" || echo untrusted-refused",
    ]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (first, rest) = text.split_once('\n').unwrap();
    let billing: serde_json::Value = serde_json::from_str(first).unwrap();
    assert_eq!(billing["account"], "upstream-acct", "{billing}");
    assert_eq!(rest, "untrusted-refused\n", "{text}");
    let runner_log =
        std::fs::read_to_string(stack.runner.state_dir.path().join("runner.log")).unwrap();
    assert!(!runner_log.contains(&credential), "the runner logged it");
}

#[test]
fn a_profile_naming_an_unknown_proxy_stops_the_runner_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runner.toml");
    std::fs::write(
        &config,
        "[profiles.agent]\nimage = \"localhost/busybox:latest\"\ntimeout_seconds = 60\n\
         token_scopes = [\"container:read\"]\nproxies = [\"missing\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(bins().runner())
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--state-dir"])
        .arg(dir.path().join("state"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--engine",
            "unix:///nonexistent/engine.sock",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxy \"missing\" is not defined"), "{err}");
}
