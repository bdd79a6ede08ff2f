//! End to end: `bus builds` → busd → REST → bus-runner → Podman. A build from a Dockerfile
//! with a `RUN` step, its logs followed and read afterwards, a run of the result; a long
//! build cancelled mid-way; bad Dockerfiles; a context over the limit refused before its
//! upload completes; another account's builds out of sight.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bus::proto::images::v1 as pb;
use bus::proto::images::v1::builds_service_client::BuildsServiceClient;
use common::registry::ImageCleanup;
use common::{
    Podman, Runner, Stack, bins, describe, expect_success as ok, last_error_line as error_line,
    stdout,
};
use tokio_stream::StreamExt as _;

const SCOPES: &str =
    "container:read container:run container:delete image:read image:write image:build";

fn stack(config: Option<&str>) -> Stack {
    let stack = Stack::on(Runner::start_on(bins(), Podman::start(), config, false));
    stack.write_token(&stack.runner.token("alice", SCOPES));
    stack
}

/// A context directory holding `dockerfile`.
fn context(stack: &Stack, dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(stack.home.path()).unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

fn create(stack: &Stack, args: &[&str], dir: &tempfile::TempDir) -> String {
    let mut all = vec!["builds", "create", "-d"];
    all.extend(args);
    all.push(dir.path().to_str().unwrap());
    let id = ok(&stack.run(&all)).trim().to_owned();
    assert!(id.starts_with("bld_"), "{id}");
    id
}

fn build_json(stack: &Stack, id: &str) -> serde_json::Value {
    let list: serde_json::Value =
        serde_json::from_str(&ok(&stack.run(&["builds", "ls", "-o", "json"]))).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not listed: {list}"))
}

#[test]
fn a_build_runs_its_steps_logs_them_whole_and_its_image_runs() {
    let stack = stack(None);
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let dir = context(
        &stack,
        "FROM localhost/busybox\nCOPY note.txt /note.txt\n\
         RUN echo step-output-1 && echo step-output-2 && cat /note.txt > /msg\n\
         CMD [\"cat\", \"/msg\"]\n",
    );
    std::fs::write(dir.path().join("note.txt"), "written-by-the-build\n").unwrap();
    let tag = "localhost/alice/built:1";
    let id = create(&stack, &["-t", tag], &dir);

    let followed = ok(&stack.run(&["builds", "logs", "-f", &id]));
    for expected in [
        "STEP 1/4: FROM localhost/busybox",
        "step-output-1",
        "step-output-2",
        "STEP 4/4: CMD [\"cat\", \"/msg\"]",
    ] {
        assert!(
            followed.lines().any(|l| l == expected),
            "{expected} in {followed}"
        );
    }
    let afterwards = ok(&stack.run(&["builds", "logs", &id]));
    assert_eq!(afterwards, followed, "the same complete output afterwards");
    // Resumable by seq: after the second line comes the rest.
    let rest = ok(&stack.run(&["builds", "logs", "--since-seq", "2", &id]));
    let expected: Vec<&str> = followed.lines().skip(2).collect();
    assert_eq!(rest.lines().collect::<Vec<_>>(), expected);

    let build = build_json(&stack, &id);
    assert_eq!(build["state"], "succeeded", "{build}");
    assert_eq!(build["tags"][0], tag);
    let image = build["image_id"].as_str().unwrap().to_owned();
    cleanup.add(&image);
    let out = stack.run(&["containers", "run", "--image", tag]);
    assert_eq!(ok(&out), "written-by-the-build\n");

    ok(&stack.run(&["builds", "rm", &id]));
    let out = stack.run(&["builds", "logs", &id]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    ok(&stack.run(&["images", "rm", tag]));
}

/// The engine's build containers (Podman lists them with `--external`).
fn build_containers(stack: &Stack) -> Vec<String> {
    let out = std::process::Command::new("podman")
        .arg("--url")
        .arg(format!("unix://{}", stack.runner.engine.socket.display()))
        .args(["ps", "-a", "--external", "-q", "--no-trunc"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_long_build_cancelled_midway_ends_cancelled_and_names_nothing() {
    let stack = stack(None);
    let _cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let before = build_containers(&stack);
    let tag = "localhost/alice/never:1";
    // Podman 4.3 abandons a cancelled build but lets a RUN step that already runs finish;
    // the step is long for the build, short for the test, which waits for it below.
    let dir = context(
        &stack,
        "FROM localhost/busybox\nRUN echo long-step-started && sleep 8 && echo never-printed\n",
    );
    let id = create(&stack, &["-t", tag], &dir);
    // Follow it until the long step has started.
    let mut follower = stack
        .bus()
        .args(["builds", "logs", "-f", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap() == "long-step-started" {
            break;
        }
    }
    let out = stack.run(&["builds", "cancel", &id]);
    assert_eq!(ok(&out).trim(), format!("{id} cancelled"));
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(
        !rest.iter().any(|l| l.contains("never-printed")),
        "{rest:?}"
    );
    let status = follower.wait().unwrap();
    assert_eq!(status.code(), Some(1), "the follower ends with the build");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(stderr.trim(), format!("bus: error: build {id} cancelled"));

    let build = build_json(&stack, &id);
    assert_eq!(build["state"], "cancelled", "{build}");
    assert!(build["image_id"].is_null());
    let out = stack.run(&["images", "inspect", tag]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "nothing tagged: {}",
        describe(&out)
    );
    // Cancelling again answers the same.
    assert_eq!(
        ok(&stack.run(&["builds", "cancel", &id])).trim(),
        format!("{id} cancelled")
    );
    // The abandoned step ends and the engine removes its build container.
    let start = std::time::Instant::now();
    while build_containers(&stack).iter().any(|c| !before.contains(c)) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the cancelled build's container stayed"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let out = stack.run(&["images", "inspect", tag]);
    assert_eq!(out.status.code(), Some(5), "still nothing tagged");
}

#[test]
fn a_bad_dockerfile_fails_with_the_builders_message() {
    let stack = stack(None);
    let _cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    for (dockerfile, message) in [
        ("FROM localhost/busybox\nRUN exit 3\n", "exit status 3"),
        ("FROM localhost/busybox\nFROMM localhost/busybox\n", "FROMM"),
    ] {
        let dir = context(&stack, dockerfile);
        let id = create(&stack, &[], &dir);
        let out = stack.run(&["builds", "logs", "-f", &id]);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        assert!(
            stdout(&out).contains(message),
            "{message}: {}",
            describe(&out)
        );
        let build = build_json(&stack, &id);
        assert_eq!(build["state"], "failed", "{build}");
        let error = build["error"].as_str().unwrap();
        assert!(error.contains(message), "{error}");
        ok(&stack.run(&["builds", "rm", &id]));
    }
    // Refused before it starts: no Dockerfile, a base image the account may not see.
    let dir = tempfile::tempdir_in(stack.home.path()).unwrap();
    let out = stack.run(&["builds", "create", dir.path().to_str().unwrap()]);
    assert!(error_line(&out).contains("has no Dockerfile; add one or name it with -f"));
    let dir = context(&stack, "FROM localhost/somebody/else:1\n");
    let out = stack.run(&["builds", "create", dir.path().to_str().unwrap()]);
    assert!(error_line(&out).contains("no image localhost/somebody/else:1"));
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn a_context_over_the_limit_is_refused_before_its_upload_completes() {
    let stack = stack(Some("[images]\nmax_build_context_mb = 1\n"));
    let dir = context(&stack, "FROM localhost/busybox\n");
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 3 * 1024 * 1024]).unwrap();
    let out = stack.run(&["builds", "create", dir.path().to_str().unwrap()]);
    let line = error_line(&out);
    assert!(
        line.contains("the build context is larger than the 1 MiB this runner accepts")
            && line.contains("max_build_context_mb"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(1), "RESOURCE_EXHAUSTED");
    let list = ok(&stack.run(&["builds", "ls", "-q"]));
    assert_eq!(list, "", "no build was made");

    // Without a declared size the runner counts as the bytes come, and refuses once past the
    // limit: the caller's stream (200 MiB, made as it is read) is read only a little way.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 3200;
    let status = rt.block_on(async {
        let mut client = BuildsServiceClient::new(bus::connect(&stack.socket).await.unwrap());
        let counter = pulled.clone();
        let first = pb::CreateBuildRequest {
            part: Some(pb::create_build_request::Part::Options(pb::BuildOptions {
                tags: vec![],
                dockerfile: String::new(),
                context_bytes: 0,
            })),
        };
        let chunks = tokio_stream::iter(0..CHUNKS).map(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
            pb::CreateBuildRequest {
                part: Some(pb::create_build_request::Part::Context(vec![0u8; CHUNK])),
            }
        });
        let messages = tokio_stream::once(first).chain(chunks);
        client.create_build(messages).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("larger than the 1 MiB"),
        "{status:?}"
    );
    let read = pulled.load(Ordering::Relaxed);
    assert!(
        read < CHUNKS / 10,
        "the upload was cut early: {read} of {CHUNKS} chunks were read"
    );
}

#[test]
fn another_accounts_builds_are_out_of_sight() {
    let stack = stack(None);
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let dir = context(&stack, "FROM localhost/busybox\nRUN echo alice-build\n");
    let id = create(&stack, &[], &dir);
    ok(&stack.run(&["builds", "logs", "-f", &id]));
    let bob = stack.token_file("bob-token", &stack.runner.token("bob", SCOPES));
    let bob = bob.to_str().unwrap();
    let out = stack.run(&["--token-file", bob, "builds", "ls", "-q"]);
    assert_eq!(ok(&out), "");
    for args in [
        vec!["builds", "logs", &id],
        vec!["builds", "cancel", &id],
        vec!["builds", "rm", &id],
    ] {
        let mut all = vec!["--token-file", bob];
        all.extend(&args);
        let out = stack.run(&all);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {}", describe(&out));
        assert!(error_line(&out).contains(&format!("no build {id}")));
    }
    assert_eq!(build_json(&stack, &id)["state"], "succeeded");
    let image = build_json(&stack, &id)["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    cleanup.add(&image);
    ok(&stack.run(&["builds", "rm", &id]));
}

/// The ids of the account's builds.
fn build_ids(stack: &Stack) -> Vec<String> {
    ok(&stack.run(&["builds", "ls", "-q"]))
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn create_streams_the_build_and_its_image_runs_at_once() {
    let stack = stack(None);
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let dir = context(
        &stack,
        "FROM localhost/busybox\nRUN echo streamed-step && echo image-ready > /msg\n\
         CMD [\"cat\", \"/msg\"]\n",
    );
    let tag = "localhost/alice/waited:1";
    let dir_path = dir.path().to_str().unwrap();
    let built = stack.run(&["builds", "create", "-t", tag, dir_path]);
    let output = ok(&built);
    assert!(
        output.lines().any(|l| l == "streamed-step"),
        "the builder's output is streamed: {}",
        describe(&built)
    );
    assert!(
        output.lines().any(|l| l.starts_with("STEP 1/3")),
        "{output}"
    );
    // The image exists once create returned: a run of it right away works.
    let out = stack.run(&["containers", "run", "--image", tag]);
    assert_eq!(ok(&out), "image-ready\n");

    let ids = build_ids(&stack);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    let json: serde_json::Value =
        serde_json::from_str(&ok(&stack.run(&["builds", "get", id, "-o", "json"]))).unwrap();
    assert_eq!(json["id"], id.as_str(), "{json}");
    assert_eq!(json["state"], "succeeded", "{json}");
    assert_eq!(json["tags"][0], tag, "{json}");
    cleanup.add(json["image_id"].as_str().unwrap());
    let table = ok(&stack.run(&["builds", "get", id]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("state:") && l.ends_with("succeeded")),
        "{table}"
    );
    // The duration is shown to the unit it names (e.g. 512ms, 2.8s, 1m03s), not `-`.
    let duration = table
        .lines()
        .find_map(|l| l.strip_prefix("duration:"))
        .unwrap()
        .trim();
    assert!(
        duration.ends_with("ms") || duration.ends_with('s'),
        "{duration} in {table}"
    );
    let out = stack.run(&["builds", "wait", id]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "",
        "wait prints nothing of the build's output"
    );

    // -d keeps the old way: the id at once.
    let detached = create(&stack, &["-t", tag], &dir);
    assert_eq!(ok(&stack.run(&["builds", "wait", &detached])), "");
    ok(&stack.run(&["images", "rm", tag]));
}

#[test]
fn a_failing_build_exits_non_zero_with_the_builders_error_line() {
    let stack = stack(None);
    let _cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let dir = context(
        &stack,
        "FROM localhost/busybox\nRUN echo before-failing && exit 3\n",
    );
    let out = stack.run(&["builds", "create", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout(&out).contains("before-failing"),
        "{}",
        describe(&out)
    );
    let line = error_line(&out);
    let ids = build_ids(&stack);
    let id = &ids[0];
    assert!(
        line.starts_with(&format!("bus: error: build {id} failed: "))
            && line.contains("exit status 3"),
        "{line}"
    );
    let waited = stack.run(&["builds", "wait", id]);
    assert_eq!(waited.status.code(), Some(1), "{}", describe(&waited));
    assert_eq!(error_line(&waited), line, "wait says the same");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&stack.run(&["builds", "get", id, "-o", "json"]))).unwrap();
    assert_eq!(json["state"], "failed", "{json}");
    // Not a build of this account: not found.
    let out = stack.run(&["builds", "wait", "bld_00000000000000000000000000000000"]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
}
