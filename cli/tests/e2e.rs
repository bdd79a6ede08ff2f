//! End to end: `bus` → busd → REST → bus-runner → Podman → a real container, for status,
//! run, runs and delete, and the errors a user can cause on that path.

mod common;

use std::os::unix::fs::MetadataExt;

use bus::proto::containers::v1::{
    GetRunRequest, RunRequest, RunSpec, StdStream, containers_client::ContainersClient,
    run_event::Event,
};
use common::{ALL_SCOPES, Stack, bins, one_line_error, stdout};

#[test]
fn run_prints_exactly_what_the_container_printed() {
    let stack = Stack::start(bins());
    let out = stack.run(&[
        "containers",
        "run",
        "--profile",
        "codex",
        "--",
        "sh",
        "-c",
        "printf OK",
    ]);
    assert_eq!(
        stdout(&out),
        "OK",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stderr, b"");
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn run_passes_both_streams_and_the_exit_code() {
    let stack = Stack::start(bins());
    let script = "echo out; echo err >&2; exit 3";
    let out = stack.run(&["containers", "run", "--", "sh", "-c", script]);
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn run_stream_orders_output_by_seq_and_ends_with_one_exit() {
    let stack = Stack::start(bins());
    // Start busd through the CLI, then talk to it as an SDK user would.
    assert!(stack.run(&["containers", "status"]).status.success());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = rt.block_on(async {
        let mut client = ContainersClient::new(bus::connect(&stack.socket).await.unwrap());
        let spec = RunSpec {
            argv: ["sh", "-c", "echo out; echo err >&2; exit 3"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let mut stream = client
            .run(RunRequest { spec: Some(spec) })
            .await
            .unwrap()
            .into_inner();
        let mut events = Vec::new();
        while let Some(event) = stream.message().await.unwrap() {
            events.push(event.event.unwrap());
        }
        events
    });
    assert!(matches!(events.first(), Some(Event::Accepted(run)) if run.id.starts_with("run_")));
    let chunks: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Output(c) => Some((c.seq, c.stream, c.data.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        chunks,
        vec![
            (1, StdStream::Stdout as i32, b"out\n".to_vec()),
            (2, StdStream::Stderr as i32, b"err\n".to_vec())
        ]
    );
    let exits: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Exited(_)))
        .collect();
    assert_eq!(exits.len(), 1);
    let Some(Event::Exited(exited)) = events.last() else {
        panic!("exit is not last: {events:?}")
    };
    assert_eq!((exited.exit_code, exited.last_seq), (Some(3), 2));
}

#[test]
fn detached_runs_are_listed_and_deleted() {
    let stack = Stack::start(bins());
    let out = stack.run(&["containers", "run", "-d", "--", "sh", "-c", "echo hi"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out).trim().to_owned();
    assert!(id.starts_with("run_") && id.len() >= 24, "{id:?}");

    let listed = stdout(&stack.run(&["containers", "runs"]));
    assert!(listed.lines().next().unwrap().starts_with("ID"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with(&id)), "{listed}");
    assert_eq!(stdout(&stack.run(&["containers", "runs", "-q"])).trim(), id);

    let out = stack.run(&["containers", "delete", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out).trim(), id);
    assert_eq!(stdout(&stack.run(&["containers", "runs", "-q"])), "");

    let again = one_line_error(&stack.run(&["containers", "delete", &id]));
    assert!(again.contains(&format!("no run {id}")), "{again}");
}

#[test]
fn another_account_cannot_see_read_or_delete_a_run() {
    let stack = Stack::start(bins());
    let id = stdout(&stack.run(&["containers", "run", "-d", "--", "echo", "secret"]))
        .trim()
        .to_owned();
    let bob = stack.runner.token("bob", ALL_SCOPES);
    let bob_file = stack.token_file("bob-token", &bob);
    let as_bob = |args: &[&str]| {
        stack
            .bus()
            .arg("--token-file")
            .arg(&bob_file)
            .args(args)
            .output()
            .unwrap()
    };

    assert_eq!(stdout(&as_bob(&["containers", "runs", "-q"])), "");
    let foreign = one_line_error(&as_bob(&["containers", "delete", &id]));
    let unknown_id = "run_00000000000000000000000000";
    let unknown = one_line_error(&as_bob(&["containers", "delete", unknown_id]));
    // The same answer as for an id that never existed: no leak of existence.
    assert_eq!(
        foreign.replace(&id, "ID"),
        unknown.replace(unknown_id, "ID")
    );

    let (status, body) = stack
        .runner
        .get(&format!("/api/v1/containers/runs/{id}/logs"), &bob);
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("secret"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = rt.block_on(async {
        let mut client = ContainersClient::new(bus::connect(&stack.socket).await.unwrap());
        let mut request = tonic::Request::new(GetRunRequest { run_id: id.clone() });
        request.metadata_mut().insert(
            "bus-token-file",
            bob_file.to_str().unwrap().parse().unwrap(),
        );
        client.get_run(request).await.unwrap_err().code()
    });
    assert_eq!(code, tonic::Code::NotFound);

    // Alice still has it.
    assert!(stdout(&stack.run(&["containers", "runs", "-q"])).contains(&id));
}

#[test]
fn no_token_says_where_to_put_one() {
    let stack = Stack::without_token(bins());
    let line = one_line_error(&stack.run(&["containers", "status"]));
    assert!(line.contains("no API token found"), "{line}");
    assert!(
        line.contains("--token-file") && line.contains("BUS_AI_TOKEN"),
        "{line}"
    );
}

#[test]
fn an_expired_token_says_how_to_renew_it() {
    let stack = Stack::without_token(bins());
    stack.write_token(&stack.runner.expired_token("alice"));
    let line = one_line_error(&stack.run(&["containers", "runs"]));
    assert!(line.contains("expired"), "{line}");
    assert!(line.contains("`bus local up`"), "{line}");
    // Where `bus auth token` finds the API key, the default file included.
    assert!(line.contains("~/.config/bus/auth/api-key"), "{line}");
    assert!(!line.contains("bus-runner"), "{line}");
}

#[test]
fn a_token_from_another_deployment_is_refused() {
    let stack = Stack::without_token(bins());
    let elsewhere = tempfile::tempdir().unwrap();
    stack.write_token(&common::mint(elsewhere.path(), "alice", ALL_SCOPES, &[]));
    let line = one_line_error(&stack.run(&["containers", "runs"]));
    assert!(line.contains("signature"), "{line}");
    assert!(
        line.contains("`bus local up`") && line.contains("`bus auth token`"),
        "{line}"
    );
    assert!(!line.contains("bus-runner"), "{line}");
}

#[test]
fn a_token_on_the_command_line_is_refused_before_busd() {
    let stack = Stack::start(bins());
    let token = stack.runner.token("alice", ALL_SCOPES);
    for args in [
        vec!["--token", token.as_str(), "containers", "status"],
        vec![&format!("--token={token}"), "containers", "status"],
        vec!["containers", "delete", token.as_str()],
    ] {
        let out = stack.run(&args);
        assert_eq!(out.status.code(), Some(2));
        let line = one_line_error(&out);
        assert!(
            line.contains("--token-file") && line.contains("BUS_AI_TOKEN"),
            "{line}"
        );
        assert!(!line.contains(&token));
    }
    for args in [
        vec!["auth", "token", "--api-key", "k3y-s3cret-value"],
        vec!["auth", "token", "--api-key=k3y-s3cret-value"],
    ] {
        let out = stack.run(&args);
        assert_eq!(out.status.code(), Some(2));
        let line = one_line_error(&out);
        assert!(
            line.contains("--api-key-file") && line.contains("BUS_API_KEY"),
            "{line}"
        );
        assert!(!line.contains("k3y-s3cret-value"));
    }
    assert!(!stack.socket.exists(), "busd must not have been started");
    assert_eq!(stack.busd_log(), "");
}

#[test]
fn the_token_never_reaches_logs_or_arguments() {
    let stack = Stack::start(bins());
    let token = std::fs::read_to_string(stack.config_dir().join("auth/api-token")).unwrap();
    let out = stack.run(&["containers", "run", "--", "sh", "-c", "echo done"]);
    assert_eq!(stdout(&out), "done\n");
    let pid = stack.busd_pid().expect("busd runs");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(token.trim()));
    let log = stack.busd_log();
    assert!(log.contains("busd listening"), "busd logged: {log}");
    assert!(!log.contains(token.trim()));
    let info = stdout(&stack.run(&["daemon", "info"]));
    assert!(info.contains("identity:  alice"), "{info}");
    assert!(!info.contains(token.trim()));
}

#[test]
fn busd_socket_is_private() {
    let stack = Stack::start(bins());
    assert!(stack.run(&["containers", "status"]).status.success());
    assert_eq!(
        std::fs::metadata(&stack.socket).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(stack.socket.parent().unwrap())
            .unwrap()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn status_names_the_engine_and_profiles() {
    let stack = Stack::start(bins());
    let out = stack.run(&["containers", "status"]);
    let text = stdout(&out);
    assert!(text.contains("state:    ready"), "{text}");
    assert!(text.contains("podman"), "{text}");
    assert!(text.contains("codex"), "{text}");
}

#[test]
fn an_api_url_with_the_api_path_is_refused_with_the_fix() {
    let stack = Stack::start(bins());
    let bad = format!("{}/api/v1/containers", stack.runner.origin);
    let line = one_line_error(&stack.run(&["--api-url", &bad, "containers", "status"]));
    assert!(
        line.contains(&format!("use --api-url {}", stack.runner.origin)),
        "{line}"
    );
}

#[test]
fn an_unreachable_runner_says_which_origin() {
    let stack = Stack::start(bins());
    let line =
        one_line_error(&stack.run(&["--api-url", "http://127.0.0.1:9", "containers", "runs"]));
    assert!(
        line.contains("cannot reach the container runner at http://127.0.0.1:9"),
        "{line}"
    );
}

#[test]
fn busd_speaks_standard_health_and_reflection() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let stack = Stack::start(bins());
    assert!(stack.run(&["daemon", "info"]).status.success());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, services) = rt.block_on(async {
        let channel = bus::connect(&stack.socket).await.unwrap();
        let check = HealthCheckRequest {
            service: "bus.containers.v1.Containers".into(),
        };
        let status = HealthClient::new(channel.clone())
            .check(check)
            .await
            .unwrap()
            .into_inner()
            .status;
        let list = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter([list]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected reflection answer: {answer:?}");
        };
        (
            status,
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
        )
    });
    assert_eq!(status, ServingStatus::Serving as i32);
    for name in [
        "bus.containers.v1.Containers",
        "bus.daemon.v1.Daemon",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|s| s == name),
            "{name} missing from {services:?}"
        );
    }
}
