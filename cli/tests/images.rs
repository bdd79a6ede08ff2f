//! End to end: `bus images` → busd → REST → bus-runner → Podman, with a real registry on
//! loopback (htpasswd auth): push, remove, pull back and run; save, remove, load and run;
//! account isolation; grants; scopes; upload limits; and credentials kept out of every log.

mod common;

use std::path::Path;

use common::registry::{ImageCleanup, Registry};
use common::{
    Podman, Runner, Stack, bins, describe, expect_success as ok, hash_key,
    last_error_line as error_line,
};

/// Every scope the image commands and runs need.
const SCOPES: &str =
    "container:read container:run container:delete image:read image:write image:build";

/// A registry, an engine that may use it, a logged runner (with `config`) and a stack whose
/// default token is alice's, with every image scope.
fn stack_with_registry(config: impl FnOnce(&Registry) -> Option<String>) -> (Registry, Stack) {
    let registry = Registry::start();
    let conf = registry.registries_conf();
    let engine = Podman::builder()
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .start();
    let config = config(&registry);
    let runner = Runner::start_on(bins(), engine, config.as_deref(), true);
    let stack = Stack::on(runner);
    stack.write_token(&stack.runner.token("alice", SCOPES));
    (registry, stack)
}

/// Builds `dockerfile` as `tag` through the CLI (waiting for the end); returns the image id.
pub fn build(stack: &Stack, args: &[&str], tag: &str, dockerfile: &str) -> String {
    let dir = tempfile::tempdir_in(stack.home.path()).unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    let context = dir.path().to_str().unwrap();
    let mut create = args.to_vec();
    create.extend(["builds", "create", "-d", "-t", tag, context]);
    let id = ok(&stack.run(&create)).trim().to_owned();
    assert!(id.starts_with("bld_"), "{id}");
    let mut logs = args.to_vec();
    logs.extend(["builds", "logs", "-f", &id]);
    ok(&stack.run(&logs));
    inspect_id(stack, args, tag)
}

/// The id of the image `reference` names, through `bus images inspect -o json`.
fn inspect_id(stack: &Stack, args: &[&str], reference: &str) -> String {
    let mut inspect = args.to_vec();
    inspect.extend(["images", "inspect", reference, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&ok(&stack.run(&inspect))).unwrap();
    json["id"].as_str().unwrap().to_owned()
}

fn listed(stack: &Stack, args: &[&str]) -> String {
    let mut ls = args.to_vec();
    ls.extend(["images", "ls", "-o", "json"]);
    ok(&stack.run(&ls))
}

#[test]
fn push_remove_pull_back_and_run_with_registry_credentials() {
    let (registry, stack) = stack_with_registry(|_| None);
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let reference = format!("{}/alice/hello:1", registry.host);
    let id = build(
        &stack,
        &[],
        &reference,
        "FROM localhost/busybox\nRUN echo pushed-and-pulled > /msg\nCMD [\"cat\", \"/msg\"]\n",
    );
    cleanup.add(&id);
    let credentials = registry.credentials_file(stack.home.path());
    let credentials = credentials.to_str().unwrap();
    let mut outputs = Vec::new();

    // Without credentials the registry refuses, and the error says how to pass them.
    let out = stack.run(&["images", "push", &reference]);
    let line = error_line(&out);
    assert!(
        line.contains("the registry refused") && line.contains("--credentials-file"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(4), "PERMISSION_DENIED");
    outputs.push(out);

    let out = stack.run(&[
        "images",
        "push",
        &reference,
        "--credentials-file",
        credentials,
    ]);
    assert_eq!(ok(&out).trim(), id);
    outputs.push(out);

    // Gone locally: not listed, not inspectable, not runnable.
    let out = stack.run(&["images", "rm", &reference]);
    assert_eq!(ok(&out).trim(), reference);
    assert!(!listed(&stack, &[]).contains(&reference));
    let out = stack.run(&["images", "inspect", &reference]);
    assert!(error_line(&out).contains("no image"), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(5));
    // `run` passes on its command's exit code, so its own failure is 125, as docker's is.
    let out = stack.run(&[
        "containers",
        "run",
        "--pull",
        "never",
        "--image",
        &reference,
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(
        error_line(&out).contains("is not on the runner"),
        "{}",
        describe(&out)
    );

    // A pull without credentials is refused before any progress.
    let out = stack.run(&["images", "pull", &reference]);
    assert!(
        error_line(&out).contains("authentication required"),
        "{}",
        describe(&out)
    );
    outputs.push(out);

    let out = stack.run(&[
        "images",
        "pull",
        &reference,
        "--credentials-file",
        credentials,
    ]);
    assert_eq!(ok(&out).trim(), id, "the same image comes back");
    outputs.push(out);
    assert!(listed(&stack, &[]).contains(&reference));
    let out = stack.run(&["containers", "run", "--image", &reference]);
    assert_eq!(ok(&out), "pushed-and-pulled\n");

    // Another account may pull the same registry name (with the registry's permission);
    // removing alice's name leaves bob's.
    let bob = stack.token_file("bob-token", &stack.runner.token("bob", SCOPES));
    let bob = bob.to_str().unwrap();
    let out = stack.run(&[
        "--token-file",
        bob,
        "images",
        "pull",
        &reference,
        "--credentials-file",
        credentials,
    ]);
    assert_eq!(ok(&out).trim(), id);
    outputs.push(out);
    ok(&stack.run(&["images", "rm", &reference]));
    assert!(!listed(&stack, &[]).contains(&reference));
    assert!(listed(&stack, &["--token-file", bob]).contains(&reference));
    let out = stack.run(&[
        "--token-file",
        bob,
        "containers",
        "run",
        "--image",
        &reference,
    ]);
    assert_eq!(ok(&out), "pushed-and-pulled\n");
    ok(&stack.run(&["--token-file", bob, "images", "rm", &reference]));

    // The password is in no log and no output.
    let runner_log =
        std::fs::read_to_string(stack.runner.state_dir.path().join("runner.log")).unwrap();
    assert!(
        runner_log.contains("pull done"),
        "the runner log is kept: {runner_log}"
    );
    assert!(!runner_log.contains(&registry.password), "runner log");
    assert!(!stack.busd_log().contains(&registry.password), "busd log");
    for out in &outputs {
        assert!(
            !describe(out).contains(&registry.password),
            "command output"
        );
    }
}

#[test]
fn another_account_cannot_see_inspect_run_tag_save_push_or_remove_an_image() {
    let (registry, stack) = stack_with_registry(|_| None);
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let private = "localhost/alice/private:1";
    let id = build(
        &stack,
        &[],
        private,
        "FROM localhost/busybox\nRUN echo alice-only > /msg\nCMD [\"cat\", \"/msg\"]\n",
    );
    cleanup.add(&id);
    let pushable = format!("{}/alice/private:1", registry.host);
    ok(&stack.run(&["images", "tag", private, &pushable]));

    let bob = stack.token_file("bob-token", &stack.runner.token("bob", SCOPES));
    let bob = ["--token-file", bob.to_str().unwrap()];
    let as_bob = |args: &[&str]| {
        let mut all = bob.to_vec();
        all.extend(args);
        stack.run(&all)
    };
    let bobs_list = listed(&stack, &bob);
    assert!(!bobs_list.contains("alice"), "{bobs_list}");
    assert!(!bobs_list.contains(&id), "{bobs_list}");
    assert!(
        bobs_list.contains("localhost/busybox:latest"),
        "public: {bobs_list}"
    );
    let short = &id.trim_start_matches("sha256:")[..12];
    let save_to = stack.home.path().join("stolen.tar");
    for (what, args) in [
        ("inspect", vec!["images", "inspect", private]),
        ("inspect by id", vec!["images", "inspect", short]),
        ("run", vec!["containers", "run", "--image", private]),
        ("run by id", vec!["containers", "run", "--image", &id]),
        ("remove", vec!["images", "rm", private]),
        ("remove by id", vec!["images", "rm", short]),
        (
            "tag",
            vec!["images", "tag", private, "localhost/bob/copy:1"],
        ),
        (
            "save",
            vec!["images", "save", private, "-o", save_to.to_str().unwrap()],
        ),
        ("push", vec!["images", "push", &pushable]),
    ] {
        let out = as_bob(&args);
        // `run` passes on its command's exit code, so its own failure is 125.
        let not_found = if what.starts_with("run") { 125 } else { 5 };
        assert_eq!(
            out.status.code(),
            Some(not_found),
            "{what}: {}",
            describe(&out)
        );
        assert!(error_line(&out).contains("no image"), "{what}");
    }
    assert!(!save_to.exists(), "nothing written");
    // Nor may bob build on it, or take its name.
    let dir = tempfile::tempdir_in(stack.home.path()).unwrap();
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {private}\n")).unwrap();
    let out = as_bob(&["builds", "create", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(error_line(&out).contains("the Dockerfile builds on it"));
    std::fs::write(dir.path().join("Dockerfile"), "FROM localhost/busybox\n").unwrap();
    let out = as_bob(&[
        "builds",
        "create",
        "-t",
        private,
        dir.path().to_str().unwrap(),
    ]);
    let line = error_line(&out);
    assert!(
        line.contains("used by another account") && line.contains("choose another name"),
        "{line}"
    );

    // Alice still has all of it.
    let out = stack.run(&["containers", "run", "--image", private]);
    assert_eq!(ok(&out), "alice-only\n");
    ok(&stack.run(&["images", "rm", private, &pushable]));
    assert!(!listed(&stack, &[]).contains(private));
}

#[test]
fn a_grant_narrowed_to_a_prefix_refuses_other_pulls() {
    let key = "key-narrow-images";
    let (registry, stack) = stack_with_registry(|registry| {
        Some(format!(
            "[[accounts]]\nid = \"narrow\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\n\
             resources = \"container:read container:run image:read image:write\"\n\
             images = [\"localhost/allowed/*\", \"{}/allowed/*\"]\n",
            hash_key(key),
            registry.host
        ))
    });
    let token = stack
        .bus()
        .env("BUS_API_KEY", key)
        .args([
            "auth",
            "token",
            "--resources",
            "image:read image:write container:run",
        ])
        .output()
        .unwrap();
    ok(&token);

    let other = format!("{}/other/app:1", registry.host);
    let out = stack.run(&["images", "pull", &other]);
    let line = error_line(&out);
    assert!(
        line.contains(&format!("this account may not pull the image \"{other}\""))
            && line.contains("localhost/allowed/*"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(4));
    // Inside the grant the pull goes to the registry (which has no such image).
    let allowed = format!("{}/allowed/app:1", registry.host);
    let credentials = registry.credentials_file(stack.home.path());
    let out = stack.run(&[
        "images",
        "pull",
        &allowed,
        "--credentials-file",
        credentials.to_str().unwrap(),
    ]);
    let line = error_line(&out);
    assert!(
        line.contains("the registry refused") && !line.contains("may not pull"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(5), "not found in the registry");
}

#[test]
fn image_commands_need_image_scopes_and_say_how_to_get_them() {
    let stack = Stack::on(Runner::start(bins()));
    stack.write_token(&stack.runner.token("alice", "container:read container:run"));
    let out = stack.run(&["images", "ls"]);
    let line = error_line(&out);
    assert!(
        line.contains("`image:read`") && line.contains("bus auth token --resources"),
        "{line}"
    );
    assert_eq!(out.status.code(), Some(4));
    stack.write_token(&stack.runner.token("alice", "image:read"));
    let out = stack.run(&["images", "rm", "localhost/x:1"]);
    assert!(error_line(&out).contains("`image:write`"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM localhost/busybox\n").unwrap();
    let out = stack.run(&["builds", "create", dir.path().to_str().unwrap()]);
    assert!(error_line(&out).contains("`image:build`"));
    // The public image cannot be removed by anyone.
    stack.write_token(&stack.runner.token("alice", SCOPES));
    let out = stack.run(&["images", "rm", "localhost/busybox:latest"]);
    assert!(error_line(&out).contains("provided by the deployment"));
}

#[test]
fn save_remove_load_round_trips_to_the_same_image() {
    let stack = Stack::on(Runner::start_on(
        bins(),
        Podman::start(),
        Some("[images]\nmax_load_archive_mb = 3\n"),
        false,
    ));
    stack.write_token(&stack.runner.token("alice", SCOPES));
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let reference = "localhost/alice/round-trip:1";
    let id = build(
        &stack,
        &[],
        reference,
        "FROM localhost/busybox\nRUN echo saved-and-loaded > /msg\nCMD [\"cat\", \"/msg\"]\n",
    );
    cleanup.add(&id);
    let archive = stack.home.path().join("round-trip.tar");
    let out = stack.run(&["images", "save", reference, "-o", archive.to_str().unwrap()]);
    ok(&out);
    assert!(std::fs::metadata(&archive).unwrap().len() > 1_000_000);
    assert!(!Path::new(&format!("{}.partial", archive.display())).exists());
    ok(&stack.run(&["images", "rm", reference]));
    let out = stack.run(&["images", "inspect", reference]);
    assert_eq!(out.status.code(), Some(5));

    // `--timeout` bounds reaching busd, not the upload and the engine's load (far longer).
    let out = stack.run(&[
        "--timeout",
        "100ms",
        "images",
        "load",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(ok(&out), format!("{reference}\n"), "the names loaded");
    assert_eq!(inspect_id(&stack, &[], reference), id, "the same image id");
    let out = stack.run(&["containers", "run", "--image", reference]);
    assert_eq!(ok(&out), "saved-and-loaded\n");

    // Another account cannot load over alice's name.
    let bob = stack.token_file("bob-token", &stack.runner.token("bob", SCOPES));
    let out = stack.run(&[
        "--token-file",
        bob.to_str().unwrap(),
        "images",
        "load",
        archive.to_str().unwrap(),
    ]);
    assert!(error_line(&out).contains("used by another account"));

    // Too large an archive is refused, in one line that says what to do.
    let big = stack.home.path().join("big.tar");
    std::fs::write(&big, vec![0u8; 4 * 1024 * 1024]).unwrap();
    let out = stack.run(&["images", "load", big.to_str().unwrap()]);
    let line = error_line(&out);
    assert!(
        line.contains("the image archive is larger than the 3 MiB this runner accepts")
            && line.contains("max_load_archive_mb"),
        "{line}"
    );
    // Not an archive at all.
    let junk = stack.home.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar").unwrap();
    let out = stack.run(&["images", "load", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    ok(&stack.run(&["images", "rm", reference]));
}

/// The names of the entries in the tar at `path`, and the text of its `index.json`, if any.
fn tar_entries(path: &Path) -> (Vec<String>, Option<String>) {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut names = Vec::new();
    let mut index = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name == "index.json" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            index = Some(text);
        }
        names.push(name);
    }
    (names, index)
}

#[test]
fn save_as_oci_writes_an_oci_layout_that_loads_back_and_runs() {
    let stack = Stack::on(Runner::start_on(bins(), Podman::start(), None, false));
    stack.write_token(&stack.runner.token("alice", SCOPES));
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let reference = "localhost/alice/oci-round-trip:1";
    let id = build(
        &stack,
        &[],
        reference,
        "FROM localhost/busybox\nRUN echo oci-loaded > /msg\nCMD [\"cat\", \"/msg\"]\n",
    );
    cleanup.add(&id);

    let oci = stack.home.path().join("oci.tar");
    let out = stack.run(&[
        "images",
        "save",
        reference,
        "-o",
        oci.to_str().unwrap(),
        "--format",
        "oci",
    ]);
    ok(&out);
    let (names, index) = tar_entries(&oci);
    assert!(names.iter().any(|n| n == "oci-layout"), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("blobs/sha256/")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n == "manifest.json"), "{names:?}");
    let index: serde_json::Value = serde_json::from_str(&index.expect("an index.json")).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], reference,
        "{index}"
    );
    // The default is still a docker-archive.
    let docker = stack.home.path().join("docker.tar");
    ok(&stack.run(&["images", "save", reference, "-o", docker.to_str().unwrap()]));
    let (names, index) = tar_entries(&docker);
    assert!(
        names.iter().any(|n| n == "manifest.json") && index.is_none(),
        "{names:?}"
    );

    ok(&stack.run(&["images", "rm", reference]));
    let out = stack.run(&["images", "load", oci.to_str().unwrap()]);
    assert_eq!(ok(&out), format!("{reference}\n"), "the names loaded");
    // The engine converts the config to OCI's when it writes the layout, so the id may
    // differ; the name and what runs are the same.
    cleanup.add(&inspect_id(&stack, &[], reference));
    let out = stack.run(&["containers", "run", "--image", reference]);
    assert_eq!(ok(&out), "oci-loaded\n");

    let out = stack.run(&[
        "images", "save", reference, "-o", "x.tar", "--format", "zip",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    ok(&stack.run(&["images", "rm", reference]));
}

/// Removes an account's storage volume at the end.
struct VolumeCleanup<'a> {
    socket: &'a Path,
    volume: String,
}

impl Drop for VolumeCleanup<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .arg("--url")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["volume", "rm", "--force", &self.volume])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn load_from_storage_reads_an_archive_a_run_wrote_and_nothing_outside_the_storage() {
    let stack = Stack::on(Runner::start_on(bins(), Podman::start(), None, false));
    // An account of its own: storage volumes are the engine's, shared by every test.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let account = format!("oci-store-{}-{nanos}", std::process::id());
    stack.write_token(&stack.runner.token(&account, SCOPES));
    let _volume = VolumeCleanup {
        socket: &stack.runner.engine.socket,
        volume: format!("bus-storage-{account}"),
    };
    let mut cleanup = ImageCleanup::new(&stack.runner.engine.socket);
    let reference = "localhost/store/from-storage:1";
    let id = build(
        &stack,
        &[],
        reference,
        "FROM localhost/busybox\nRUN echo from-storage > /msg\nCMD [\"cat\", \"/msg\"]\n",
    );
    cleanup.add(&id);
    let archive = stack.home.path().join("app.tar");
    ok(&stack.run(&[
        "images",
        "save",
        reference,
        "-o",
        archive.to_str().unwrap(),
        "--format",
        "oci",
    ]));

    // A run of the agent profile (storage at /data) copies the archive in from its stdin and
    // leaves symlinks pointing out of the storage.
    let out = stack
        .bus()
        .args([
            "containers",
            "run",
            "--profile",
            "agent",
            "-i",
            "--",
            "sh",
            "-c",
            "mkdir -p /data/images && cat > /data/images/app.tar && \
             ln -s /etc/passwd /data/link.tar && ln -s .. /data/up && wc -c < /data/images/app.tar",
        ])
        .stdin(std::fs::File::open(&archive).unwrap())
        .output()
        .unwrap();
    let size = std::fs::metadata(&archive).unwrap().len();
    assert_eq!(
        ok(&out).trim(),
        size.to_string(),
        "the archive arrived whole"
    );

    ok(&stack.run(&["images", "rm", reference]));
    let out = stack.run(&["images", "load", "--from-storage", "images/app.tar"]);
    assert_eq!(ok(&out), format!("{reference}\n"), "the names loaded");
    cleanup.add(&inspect_id(&stack, &[], reference));
    let out = stack.run(&["containers", "run", "--image", reference]);
    assert_eq!(ok(&out), "from-storage\n");
    // `./` and doubled slashes are fine.
    let out = stack.run(&["images", "load", "--from-storage", "./images//app.tar"]);
    assert_eq!(ok(&out), format!("{reference}\n"));

    // Paths out of the storage, symlinks, directories and missing files: one line each that
    // says what to do.
    for (path, code, said, hint) in [
        (
            "/data/images/app.tar",
            2,
            "the storage path \"/data/images/app.tar\" is absolute",
            "relative to the storage root",
        ),
        (
            "images/../../etc/passwd",
            2,
            "goes up with \"..\"",
            "relative to the storage root",
        ),
        (
            "link.tar",
            2,
            "\"link.tar\" in the storage path \"link.tar\" is a symlink",
            "follow no symlinks",
        ),
        (
            "up/etc/passwd",
            2,
            "\"up\" in the storage path",
            "follow no symlinks",
        ),
        (
            "images",
            2,
            "\"images\" in this account's storage is not a regular file",
            "not a directory",
        ),
        (
            "images/none.tar",
            5,
            "there is no file \"images/none.tar\" in this account's storage",
            "--profile agent",
        ),
    ] {
        let out = stack.run(&["images", "load", "--from-storage", path]);
        let line = error_line(&out);
        assert!(line.contains(said) && line.contains(hint), "{path}: {line}");
        assert_eq!(out.status.code(), Some(code), "{path}: {}", describe(&out));
    }
    // Another account's storage is its own: the same path is missing there.
    let bob = stack.token_file(
        "bob-token",
        &stack.runner.token(&format!("{account}-b"), SCOPES),
    );
    let _bob_volume = VolumeCleanup {
        socket: &stack.runner.engine.socket,
        volume: format!("bus-storage-{account}-b"),
    };
    let out = stack.run(&[
        "--token-file",
        bob.to_str().unwrap(),
        "images",
        "load",
        "--from-storage",
        "images/app.tar",
    ]);
    assert!(
        error_line(&out).contains("there is no file"),
        "{}",
        describe(&out)
    );
    // A file or --from-storage, not both.
    let out = stack.run(&["images", "load", "x.tar", "--from-storage", "x.tar"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    ok(&stack.run(&["images", "rm", reference]));
}
