//! busd checked by a stock gRPC client, not our code: Python grpcio with
//! grpcio-health-checking and grpcio-reflection (PyPI), from the project venv `.venv-ci/`
//! that scripts/setup-python makes. The client is cli/tests/stock_grpc.py; it speaks to busd's
//! socket with grpcio's default channel options (so grpc-core's own `:authority`, the socket
//! path) and no checked-in stubs of ours: what reflection tells it, and stubs it generates
//! from proto/ itself.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Stack, bins, stdout};

/// The repository's root (this package is cli/).
fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The venv's python, or a failure naming the script that makes it (never a silent skip).
fn venv_python() -> PathBuf {
    let python = repo_root().join(".venv-ci/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/setup-python (scripts/test does) to install grpcio, \
         grpcio-health-checking and grpcio-reflection into .venv-ci/",
        python.display()
    );
    let check = Command::new(&python)
        .args([
            "-c",
            "import grpc, grpc_health.v1.health_pb2, \
             grpc_reflection.v1alpha.proto_reflection_descriptor_database",
        ])
        .output()
        .expect("the venv's python runs");
    assert!(
        check.status.success(),
        "{} cannot import grpc, grpc_health or grpc_reflection: run scripts/setup-python\n{}",
        python.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    python
}

#[test]
fn a_stock_grpc_client_sees_health_reflection_and_calls_through_reflection() {
    let python = venv_python();
    let stack = Stack::start(bins());
    let started = stack.run(&["daemon", "start"]);
    assert!(
        started.status.success(),
        "bus daemon start failed: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert!(stack.socket.exists(), "busd's socket is missing");

    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stock_grpc.py"))
        .arg(&stack.socket)
        .arg(repo_root().join("proto"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", stack.home.path())
        .output()
        .unwrap();
    let printed = stdout(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stock_grpc.py failed\nstdout:\n{printed}\nstderr:\n{stderr}"
    );

    let lines: Vec<&str> = printed.lines().collect();
    let expect = |line: &str| {
        assert!(
            lines.contains(&line),
            "stock_grpc.py did not print {line:?}; it printed:\n{printed}"
        )
    };
    // grpc.health.v1/Check: the server, and the Containers service by name.
    expect("health (server): SERVING");
    expect("health bus.containers.v1.Containers: SERVING");
    // Reflection (v1alpha, which grpcio-reflection's client speaks) lists the services...
    expect("service: bus.containers.v1.Containers");
    expect("service: bus.daemon.v1.Daemon");
    expect("service: grpc.health.v1.Health");
    // ...and resolves Containers to its methods, with their message types.
    expect("method: bus.containers.v1.Containers/GetStatus GetStatusRequest -> RunnerStatus");
    expect("method: bus.containers.v1.Containers/Run RunRequest -> RunEvent (server streaming)");
    expect("method: bus.containers.v1.Containers/ListRuns ListRunsRequest -> ListRunsResponse");
    // Calls built from reflected descriptors alone go through busd (its token) to the runner.
    expect("daemon: identity=alice");
    expect("runner: state=ready");
    // A missing run: NOT_FOUND with ErrorInfo and a next step (LocalizedMessage).
    assert!(
        lines.iter().any(
            |l| l.starts_with("missing run: NOT_FOUND reason=NOT_FOUND next step: ")
                && l.contains("bus containers runs")
        ),
        "{printed}"
    );
    // Every call kind on default options (`unix:` and `unix://`) and with the socket path as
    // the authority, raw and percent-encoded, as grpc-core, grpc-java and grpc-swift send it.
    for label in [
        "unix:PATH",
        "unix://PATH",
        "authority=raw path",
        "authority=encoded path",
    ] {
        expect(&format!("{label}: health SERVING"));
        expect(&format!("{label}: reflection lists Containers: True"));
        expect(&format!("{label}: GetStatus state=ready"));
        expect(&format!("{label}: Run output=onetwothree exit=3"));
        expect(&format!("{label}: StreamLogs after_seq matches Run: True"));
        expect(&format!(
            "{label}: Exec stdout=ping from a stock client exit=0"
        ));
    }
    assert_eq!(lines.last(), Some(&"ok"), "{printed}");
}
