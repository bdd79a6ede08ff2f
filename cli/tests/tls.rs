//! HTTPS between busd and the runner, as with a remote deployment: bus-runner serves a
//! certificate that a private CA issued (`--listen https://… --tls-cert --tls-key`), and busd
//! trusts that CA through `BUS_CA_FILE` (or `--ca-file`). Runs, logs and exec (a `wss://`
//! WebSocket) all cross it; a busd without the CA refuses the certificate; bad files and
//! flags are refused with one line saying what to do.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bus_testkit::{RunnerProcess, Serve, tls, write_secret};
use common::{ALL_SCOPES, Podman, bin, bins, mint, one_line_error, stdout, stop_pid};

/// `bus-runner serve` on `engine` and `state`, its log level `warn`.
fn runner(engine: &Podman, state: &Path) -> Serve {
    Serve::new(bins(), &engine.socket, state)
        .unwrap()
        .env("RUST_LOG", "warn")
}

/// A runner serving plain HTTP and HTTPS, a token, and the CLI's environment.
struct TlsStack {
    /// Held to keep it serving; dropped before its engine.
    _runner: RunnerProcess,
    plain: String,
    https: String,
    dir: tempfile::TempDir,
    _engine: Podman,
}

impl TlsStack {
    fn start() -> TlsStack {
        let engine = Podman::start();
        let dir = tempfile::tempdir().unwrap();
        tls::certificates(dir.path()).unwrap();
        let runner = runner(&engine, &dir.path().join("state"))
            .env("RUST_LOG", "warn,bus_runner::http=debug")
            .log(dir.path().join("runner.log"))
            .listen("127.0.0.1:0")
            .listen("https://127.0.0.1:0")
            .tls(dir.path().join("server.pem"), dir.path().join("server.key"))
            .spawn();
        let (plain, https) = (runner.origins[0].clone(), runner.origins[1].clone());
        assert!(
            https.starts_with("https://127.0.0.1:"),
            "second address: {https}"
        );
        let token = mint(&dir.path().join("state"), "alice", ALL_SCOPES, &[]);
        write_secret(&dir.path().join("config/auth/api-token"), &token);
        TlsStack {
            _runner: runner,
            plain,
            https,
            dir,
            _engine: engine,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `bus ARGS` against `origin` with its own socket `name`, and `ca` as BUS_CA_FILE.
    fn bus(&self, name: &str, origin: &str, ca: Option<&Path>, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("bus"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("BUS_CONFIG_DIR", self.dir.path().join("config"))
            .env("BUS_SOCKET", self.socket(name))
            .env("BUS_AI_API_URL", origin)
            .args(args)
            .stdin(Stdio::null());
        if let Some(ca) = ca {
            cmd.env("BUS_CA_FILE", ca);
        }
        cmd.output().unwrap()
    }

    /// The HTTP versions of the requests the runner logged for paths that `path` matches.
    fn versions(&self, path: impl Fn(&str) -> bool) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("runner.log")).unwrap();
        log.lines()
            .filter(|l| l.contains(" request "))
            .filter(|l| field(l, "path").is_some_and(&path))
            .filter_map(|l| field(l, "version").map(str::to_owned))
            .collect()
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("busd.sock")
    }
}

/// The value of `name=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..]
        .split_whitespace()
        .next()
        .map(|value| value.trim_matches('"'))
}

impl Drop for TlsStack {
    fn drop(&mut self) {
        for name in ["trusting", "plain", "untrusting", "badca"] {
            let mut lock = self.socket(name).into_os_string();
            lock.push(".pid");
            if let Some(pid) = std::fs::read_to_string(&lock)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                stop_pid(pid);
            }
        }
        // Then the runner, then its engine (the fields, in order).
    }
}

#[test]
fn busd_trusting_the_ca_runs_follows_and_execs_over_https() {
    let stack = TlsStack::start();
    let ca = stack.ca();
    let bus = |args: &[&str]| stack.bus("trusting", &stack.https, Some(&ca), args);

    let out = bus(&["containers", "run", "--", "sh", "-c", "printf OK; exit 3"]);
    assert_eq!(
        stdout(&out),
        "OK",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3));

    let run = bus(&["containers", "run", "-d", "--", "sleep", "60"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let id = stdout(&run).trim().to_owned();
    let started = std::time::Instant::now();
    // Until it runs: `queued` and `starting` come first.
    while !stdout(&bus(&["containers", "get", &id, "-o", "json"])).contains("\"running\"") {
        assert!(started.elapsed().as_secs() < 30, "run {id} did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let exec = bus(&[
        "containers",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo over-wss; exit 4",
    ]);
    assert_eq!(
        stdout(&exec),
        "over-wss\n",
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert_eq!(exec.status.code(), Some(4));
    assert!(bus(&["containers", "delete", &id]).status.success());

    let info = stdout(&bus(&["daemon", "info", "-o", "json"]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["upstream"], stack.https.as_str(), "{info}");

    // The same runner still answers plain HTTP on its other address.
    let plain = stack.bus("plain", &stack.plain, None, &["containers", "runs", "-q"]);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    assert_eq!(stdout(&plain).lines().count(), 1, "{}", stdout(&plain));

    // Over TLS, busd's unary calls share HTTP/2; its log follows keep HTTP/1.1 connections
    // of their own, so they never wait for (or hold) a stream of a shared connection.
    let unary = stack.versions(|p| p == format!("/api/v1/containers/runs/{id}"));
    assert!(
        !unary.is_empty() && unary.iter().all(|v| v == "HTTP/2.0"),
        "{unary:?}"
    );
    let follows = stack.versions(|p| p.ends_with("/logs"));
    assert!(
        !follows.is_empty() && follows.iter().all(|v| v == "HTTP/1.1"),
        "{follows:?}"
    );
}

#[test]
fn busd_without_the_ca_refuses_the_runners_certificate() {
    let stack = TlsStack::start();
    let out = stack.bus("untrusting", &stack.https, None, &["containers", "runs"]);
    let line = one_line_error(&out);
    assert_eq!(out.status.code(), Some(6), "{line}");
    assert!(line.contains(&stack.https), "{line}");
    assert!(line.to_lowercase().contains("certificate"), "{line}");
}

#[test]
fn a_bad_ca_file_is_refused_with_what_to_do() {
    let stack = TlsStack::start();
    let missing = stack.dir.path().join("no-such-ca.pem");
    let out = stack.bus(
        "badca",
        &stack.https,
        Some(&missing),
        &["containers", "runs"],
    );
    let line = one_line_error(&out);
    assert!(line.contains("cannot use the CA file"), "{line}");
    assert!(line.contains("no-such-ca.pem"), "{line}");
    assert!(line.contains("BUS_CA_FILE"), "{line}");

    // A file that holds no certificate (a private key) is refused the same way.
    let key = stack.dir.path().join("server.key");
    let out = stack.bus("badca", &stack.https, Some(&key), &["containers", "runs"]);
    let line = one_line_error(&out);
    assert!(line.contains("holds no CERTIFICATE"), "{line}");
}

#[test]
fn the_runner_refuses_tls_flags_that_do_not_fit() {
    let engine = Podman::start();
    let dir = tempfile::tempdir().unwrap();
    tls::certificates(dir.path()).unwrap();
    let state = dir.path().join("state");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let refusal = |args: &[&str]| {
        let out = runner(&engine, &state).command(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let fails = |args: &[&str], expect: &str| {
        let stderr = refusal(args);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("bus-runner: error: "), "{stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    };
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    fails(
        &["--listen", "https://127.0.0.1:0"],
        "an https:// --listen address needs --tls-cert and --tls-key",
    );
    fails(
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
        "used only by an https:// --listen address",
    );
    fails(
        &[
            "--listen",
            "https://127.0.0.1:0",
            "--tls-cert",
            key,
            "--tls-key",
            key,
        ],
        "pass a PEM file with the server's certificate",
    );
    fails(
        &[
            "--listen",
            "https://127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            cert,
        ],
        "pass a PEM file with the certificate's private key",
    );
    let other = dir.path().join("ca.key");
    fails(
        &[
            "--listen",
            "https://127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            other.to_str().unwrap(),
        ],
        "the TLS key does not fit the certificate",
    );
    // A usage error, from the argument parser.
    let stderr = refusal(&["--listen", "ftp://127.0.0.1:0"]);
    assert!(
        stderr.contains("ftp:// is not served; use HOST:PORT for HTTP or https://HOST:PORT"),
        "{stderr}"
    );
}
