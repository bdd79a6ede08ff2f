//! The `bus-runner` binary: `token` and `serve`, as a user runs them.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Output};

use bus_testkit::Serve;
use common::{Podman, bins};

const BIN: &str = env!("CARGO_BIN_EXE_bus-runner");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn token_prints_a_jwt_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let out = run(&[
        "token",
        "--state-dir",
        state,
        "--account",
        "alice",
        "--resources",
        "container:read container:run",
        "--ttl",
        "15m",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.ends_with('\n') && text.trim().split('.').count() == 3,
        "{text}"
    );

    let out = run(&[
        "token",
        "--state-dir",
        state,
        "--account",
        "alice",
        "--resources",
        "container:read billing:write",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "bus-runner: error: unknown resource \"billing:write\"; valid resources: container:read, container:run, container:delete, billing:read, image:read, image:write, image:build\n"
    );
    for ttl in ["0s", "-1h", "1w"] {
        let out = run(&[
            "token",
            "--state-dir",
            state,
            "--account",
            "a",
            "--resources",
            "container:read",
            &format!("--ttl={ttl}"),
        ]);
        assert!(!out.status.success(), "--ttl={ttl} must be refused");
        assert!(
            stderr(&out).contains("like 30s, 15m, 1h or 2d"),
            "{}",
            stderr(&out)
        );
    }
    let help = run(&["token", "--help"]);
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains("--expired"),
        "--expired is hidden"
    );
}

#[test]
fn serve_prints_its_address_and_answers() {
    let podman = Podman::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut runner = Serve::new(bins(), &podman.socket, &state).unwrap().spawn();
    let addr = runner.origin().trim_start_matches("http://").to_owned();

    let token = run(&[
        "token",
        "--state-dir",
        state.to_str().unwrap(),
        "--account",
        "a",
        "--resources",
        "container:read",
    ]);
    let token = String::from_utf8(token.stdout).unwrap();
    let mut tcp = TcpStream::connect(&addr).unwrap();
    write!(
        tcp,
        "GET /api/v1/containers/status HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains(r#""state":"ready""#) && reply.contains(r#""engine":"podman "#),
        "{reply}"
    );

    // A run in flight, followed until its first output.
    let writer = run(&[
        "token",
        "--state-dir",
        state.to_str().unwrap(),
        "--account",
        "a",
        "--resources",
        "container:read container:run",
    ]);
    let writer = String::from_utf8(writer.stdout).unwrap();
    let body = r#"{"argv":["sh","-c","echo ready; sleep 60"]}"#;
    let mut tcp = TcpStream::connect(&addr).unwrap();
    write!(
        tcp,
        "POST /api/v1/containers/runs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        writer.trim(),
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    let id = reply
        .split(r#""id":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let mut follow = TcpStream::connect(&addr).unwrap();
    write!(
        follow,
        "GET /api/v1/containers/runs/{id}/logs?follow=true HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("cmVhZHkK") {
        let n = follow.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the log stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(podman.container_exists(&format!("bus-{id}")));

    let status = runner.terminate();
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly: {status}"
    );
    // The follower's stream ends (it resumes with after_seq on the next runner) without an
    // exit frame: the run goes on, and the next start re-adopts its container.
    let mut rest = String::new();
    let _ = follow.read_to_string(&mut rest);
    assert!(!rest.contains(r#""type":"exit""#), "{rest}");
    let left = podman.container_exists(&format!("bus-{id}"));
    podman.remove_container(&format!("bus-{id}"));
    assert!(
        left,
        "shutdown leaves the containers of unfinished runs running"
    );
}

#[test]
fn serve_without_an_engine_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Serve::new(
        bins(),
        &dir.path().join("absent.sock"),
        &dir.path().join("s"),
    )
    .unwrap()
    .listen("127.0.0.1:0")
    .command(&[])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("does not exist") && err.contains("podman system service --time=0"),
        "{err}"
    );
}
