//! The flows a newcomer runs first, end to end on the real chain: `run -d` answers once the
//! run runs (so an exec right after it works), says when the run already ended or could not
//! start; an `Exec` right after `CreateRun` works over gRPC without polling; a foreground run
//! whose output the grant forbids reading is refused before anything starts.

mod common;

use bus::proto::containers::v1::{
    CreateRunRequest, ExecRequest, ExecStart, RunSpec, containers_client::ContainersClient,
    exec_client::ExecClient, exec_request, exec_response,
};
use common::{Runner, Stack, bins, hash_key, one_line_error, stdout};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn exec_right_after_run_dash_d_works_every_time() {
    let stack = Stack::start(bins());
    for round in 0..10 {
        let out = stack.run(&["containers", "run", "-d", "--", "sleep", "3600"]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        assert_eq!(
            stderr(&out),
            "",
            "round {round}: a running run needs no note"
        );
        let id = stdout(&out).trim().to_owned();
        assert!(id.starts_with("run_"), "{id:?}");
        let out = stack.run(&["containers", "exec", &id, "--", "echo", "hi"]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        assert_eq!(stdout(&out), "hi\n", "round {round}");
        let out = stack.run(&["containers", "delete", &id]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

#[test]
fn a_grpc_exec_right_after_create_run_waits_for_the_run_to_start() {
    let stack = Stack::start(bins());
    // busd up (the CLI starts it).
    assert!(stack.run(&["containers", "status"]).status.success());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (state, output, exit_code) = rt.block_on(async {
        let channel = bus::connect(&stack.socket).await.unwrap();
        let spec = RunSpec {
            argv: ["sleep", "3600"].map(String::from).to_vec(),
            ..Default::default()
        };
        // Answered at once, before the run runs: no wait asked for.
        let run = ContainersClient::new(channel.clone())
            .create_run(CreateRunRequest {
                spec: Some(spec),
                ..CreateRunRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        let start = ExecRequest {
            msg: Some(exec_request::Msg::Start(ExecStart {
                run_id: run.id.clone(),
                argv: ["echo", "hi"].map(String::from).to_vec(),
                ..Default::default()
            })),
        };
        let mut responses = ExecClient::new(channel)
            .exec(tokio_stream::iter([start]))
            .await
            .unwrap()
            .into_inner();
        let (mut output, mut exit_code) = (Vec::new(), None);
        while let Some(response) = responses.message().await.unwrap() {
            match response.msg {
                Some(exec_response::Msg::Stdout(chunk)) => output.extend(chunk.data),
                Some(exec_response::Msg::Exit(exit)) => exit_code = Some(exit.exit_code),
                _ => {}
            }
        }
        (run.state, output, exit_code)
    });
    // The create answered before the run ran, so the exec did wait.
    assert_ne!(
        state,
        bus::proto::containers::v1::RunState::Running as i32,
        "CreateRun without wait_running answers at once"
    );
    assert_eq!(String::from_utf8_lossy(&output), "hi\n");
    assert_eq!(exit_code, Some(0));
}

#[test]
fn run_dash_d_says_when_the_run_already_ended_or_could_not_start() {
    let stack = Stack::start(bins());

    let out = stack.run(&["containers", "run", "-d", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    assert!(id.starts_with("run_"), "{id:?}");
    let note = stderr(&out);
    assert!(
        note.contains(&format!("run {id} already exited with code 3")),
        "{note}"
    );

    // A command the image does not have: the engine cannot start it, and bus exits 127 as a
    // shell (and `docker run -d`) would.
    let out = stack.run(&["containers", "run", "-d", "--", "no-such-command-here"]);
    assert_eq!(out.status.code(), Some(127), "{}", stdout(&out));
    assert_eq!(stdout(&out), "", "no id for a run that never started");
    let line = one_line_error(&out);
    assert!(
        line.contains("failed to start: command not found"),
        "{line}"
    );
    assert!(line.contains("\"no-such-command-here\""), "{line}");

    // Followed, the same, with the run's line.
    let out = stack.run(&["containers", "run", "--", "no-such-command-here"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ended failed: command not found: \"no-such-command-here\""),
        "{}",
        stderr(&out)
    );

    // An image nobody has.
    let out = stack.run(&[
        "containers",
        "run",
        "-d",
        "--image",
        "localhost/no-such-image:1",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stdout(&out));
    let line = one_line_error(&out);
    assert!(line.contains("localhost/no-such-image:1"), "{line}");
}

#[test]
fn a_foreground_run_without_the_logs_grant_is_refused_before_it_starts() {
    let key = "bus_test_key_nologs_0123456789";
    let runner = Runner::start_with_config(
        bins(),
        &format!(
            "[[accounts]]\nid = \"alice\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\nbilling = \"active\"\n\
         resources = [\"container:read\", \"container:run\", \"container:delete\"]\n\
         logs = false\n",
            hash_key(key)
        ),
    );
    let stack = Stack::on(runner);
    let out = stack
        .bus()
        .env("BUS_API_KEY", key)
        .args(["auth", "token"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let out = stack.run(&["containers", "run", "--", "sh", "-c", "echo hi"]);
    assert_eq!(stdout(&out), "");
    let line = one_line_error(&out);
    assert!(line.contains("no run was started"), "{line}");
    assert!(line.contains("bus containers run -d"), "{line}");
    let runs = stack.run(&["containers", "runs", "-q"]);
    assert!(runs.status.success(), "{}", stderr(&runs));
    assert_eq!(stdout(&runs), "", "no run was created");

    // Attaching to the run's own command replays its output: refused the same way, before.
    for flag in ["-i", "-t"] {
        let out = stack.run(&["containers", "run", flag, "--", "cat"]);
        let line = one_line_error(&out);
        assert!(line.contains("no run was started"), "{flag}: {line}");
        let runs = stack.run(&["containers", "runs", "-q"]);
        assert_eq!(stdout(&runs), "", "{flag}: no run was created");
    }

    // What the line advises works.
    let out = stack.run(&["containers", "run", "-d", "--", "sleep", "60"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    assert_eq!(stdout(&stack.run(&["containers", "runs", "-q"])).trim(), id);
}
