//! The CLI as people and scripts use it: `-o json` and `-q`, the settings file and its
//! precedence, exit codes per class of failure, completions and man pages, systemd units,
//! `runs --watch` (in tmux, and plain without a terminal), and `bus local up|down|status`
//! against a real Podman. Everything runs the real binaries; see `testkit`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ALL_SCOPES, Stack, alive, bin, bins, free_port, hash_key, one_line_error, stdout};
use serde_json::Value;

/// The documented keys of a run in `-o json`, and the JSON types each may take.
const RUN_FIELDS: [(&str, &[&str]); 19] = [
    ("id", &["string"]),
    ("state", &["string"]),
    ("exit_code", &["number", "null"]),
    ("reason", &["string", "null"]),
    ("image", &["string"]),
    ("profile", &["string", "null"]),
    ("argv", &["array"]),
    ("name", &["string", "null"]),
    ("participant", &["string", "null"]),
    ("role", &["string", "null"]),
    ("ports", &["array"]),
    ("storage", &["object", "null"]),
    ("service", &["bool"]),
    ("restarts", &["number"]),
    ("labels", &["object"]),
    ("created_at", &["string", "null"]),
    ("started_at", &["string", "null"]),
    ("finished_at", &["string", "null"]),
    ("duration_seconds", &["number", "null"]),
];

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Asserts `run` has exactly the documented fields with the documented types.
fn assert_run_shape(run: &Value) {
    let object = run.as_object().expect("a run is an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut documented: Vec<&str> = RUN_FIELDS.iter().map(|(k, _)| *k).collect();
    documented.sort_unstable();
    assert_eq!(keys, documented, "{run}");
    for (key, kinds) in RUN_FIELDS {
        assert!(kinds.contains(&kind(&run[key])), "{key}: {}", run[key]);
    }
}

fn json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// Starts a detached run of `sh -c script` and waits for it to end; returns its id.
fn finished_run(stack: &Stack, script: &str) -> String {
    let out = stack.run(&["containers", "run", "-d", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{out:?}");
    let id = stdout(&out).trim().to_owned();
    stack.run(&["containers", "wait", &id]);
    id
}

#[test]
fn json_output_and_quiet_have_the_documented_shape() {
    let stack = Stack::start(bins());
    let id = finished_run(&stack, "echo hi; exit 3");

    let runs = json(&stack.run(&["containers", "runs", "-o", "json"]));
    let runs = runs.as_array().expect("runs -o json is an array");
    assert_eq!(runs.len(), 1);
    assert_run_shape(&runs[0]);
    let run = &runs[0];
    assert_eq!(run["id"], id.as_str());
    assert_eq!(run["state"], "exited");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(
        run["argv"],
        serde_json::json!(["sh", "-c", "echo hi; exit 3"])
    );
    assert!(run["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(run["created_at"].as_str().unwrap().ends_with('Z'));

    let one = json(&stack.run(&["containers", "get", &id, "--output", "json"]));
    assert_run_shape(&one);
    assert_eq!(one["id"], id.as_str());

    // -q: ids only, for both; `ls` and `ps` are `runs`, as in docker, and `-a` (every run)
    // is what they list anyway.
    for list in ["runs", "ls", "ps"] {
        assert_eq!(
            stdout(&stack.run(&["containers", list, "-q"])),
            format!("{id}\n"),
            "{list}"
        );
    }
    assert_eq!(
        stdout(&stack.run(&["containers", "ps", "-a", "-q"])),
        format!("{id}\n")
    );
    assert_eq!(
        stdout(&stack.run(&["containers", "get", "-q", &id])),
        format!("{id}\n")
    );
    // `inspect` is `get`, as in docker.
    assert_eq!(
        json(&stack.run(&["containers", "inspect", &id, "-o", "json"]))["id"],
        id.as_str()
    );

    // The table: the documented columns.
    let table = stdout(&stack.run(&["containers", "runs"]));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "NAME", "STATE", "EXIT", "IMAGE", "CREATED", "DURATION"
        ]
    );
    assert!(
        !table.contains('\x1b'),
        "no colour without a terminal: {table:?}"
    );

    let status = json(&stack.run(&["containers", "status", "-o", "json"]));
    assert_eq!(status["state"], "ready");
    assert!(
        status["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "codex")
    );
    let info = json(&stack.run(&["daemon", "info", "-o", "json"]));
    assert_eq!(info["running"], true);
    assert_eq!(info["identity"], "alice");
    assert!(info["pid"].as_u64().unwrap() > 0);

    // The default format comes from BUS_OUTPUT, then config.toml; -o wins over both.
    let via_env = stack
        .bus()
        .env("BUS_OUTPUT", "json")
        .args(["containers", "runs"])
        .output()
        .unwrap();
    assert_run_shape(&json(&via_env)[0]);
    assert!(
        stack
            .run(&["config", "set", "output", "json"])
            .status
            .success()
    );
    assert_run_shape(&json(&stack.run(&["containers", "runs"]))[0]);
    let table = stdout(&stack.run(&["containers", "runs", "-o", "table"]));
    assert!(table.starts_with("ID "), "{table}");

    // `kill` is `stop --force`, as in docker: SIGKILL at once, which even a PID 1 that
    // ignores SIGTERM cannot outlast.
    let out = stack.run(&["containers", "run", "-d", "--", "sleep", "600"]);
    let sleeper = stdout(&out).trim().to_owned();
    assert!(sleeper.starts_with("run_"), "{out:?}");
    let out = stack.run(&["containers", "kill", &sleeper]);
    assert_eq!(stdout(&out), format!("{sleeper}\n"), "{out:?}");
    let killed = json(&stack.run(&["containers", "get", &sleeper, "-o", "json"]));
    assert_eq!(
        (&killed["state"], &killed["exit_code"]),
        (&serde_json::json!("stopped"), &serde_json::json!(137)),
        "{killed}"
    );
    assert!(stack.run(&["containers", "rm", &sleeper]).status.success());

    // `rm` is `delete`.
    assert!(stack.run(&["containers", "rm", &id]).status.success());
    assert_eq!(
        json(&stack.run(&["containers", "ls", "-o", "json"])),
        serde_json::json!([])
    );
}

#[test]
fn settings_precedence_is_flag_env_file_default() {
    let stack = Stack::start(bins());
    let good = stack.runner.origin.clone();
    let dead = "http://127.0.0.1:9";
    assert!(
        stack
            .run(&["config", "set", "api_url", dead])
            .status
            .success()
    );
    let text = std::fs::read_to_string(stack.config_dir().join("config.toml")).unwrap();
    assert_eq!(text.trim(), format!("api_url = \"{dead}\""));

    let without_env = || {
        let mut cmd = stack.bus();
        cmd.env_remove("BUS_AI_API_URL");
        cmd
    };
    // env (the harness sets BUS_AI_API_URL) > file
    assert!(stack.run(&["containers", "status"]).status.success());
    // file > default: the dead origin is used, and says so with exit code 6
    let out = without_env()
        .args(["containers", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    one_line_error(&out);
    // flag > file
    let out = without_env()
        .args(["--api-url", &good, "containers", "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // flag > env
    let out = stack.run(&["--api-url", dead, "containers", "status"]);
    assert_eq!(out.status.code(), Some(6));

    // `config get` and `list` show the value in force and its source.
    let got = without_env()
        .args(["config", "get", "api_url"])
        .output()
        .unwrap();
    assert_eq!(stdout(&got).trim(), dead);
    assert_eq!(
        stdout(&stack.run(&["config", "get", "api_url"])).trim(),
        good
    );
    let list = json(
        &without_env()
            .args(["config", "list", "-o", "json"])
            .output()
            .unwrap(),
    );
    let api = list
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["key"] == "api_url")
        .unwrap();
    assert_eq!(
        (api["value"].as_str(), api["source"].as_str()),
        (Some(dead), Some("file"))
    );

    // Bad keys and values are usage errors; nothing is written.
    let out = stack.run(&["config", "set", "colour", "red"]);
    assert_eq!(out.status.code(), Some(2));
    let out = stack.run(&["config", "set", "timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stack.run(&["config", "unset", "api_url"]).status.success());
    let got = without_env()
        .args(["config", "get", "api_url"])
        .output()
        .unwrap();
    assert_eq!(stdout(&got).trim(), "http://127.0.0.1:8650", "the default");
}

#[test]
fn exit_codes_name_the_class_of_failure() {
    let stack = Stack::start(bins());
    // usage: clap, and a bad API URL (busd's INVALID_ARGUMENT)
    assert_eq!(stack.run(&["containers", "nope"]).status.code(), Some(2));
    let out = stack.run(&[
        "--api-url",
        "http://h.example/api/v1",
        "containers",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // not found
    let out = stack.run(&["containers", "get", "run_00000000000000000000000000000000"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    // unavailable: nothing listens upstream
    let out = stack.run(&["--api-url", "http://127.0.0.1:9", "containers", "runs"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    // the command's own code
    let out = stack.run(&["containers", "run", "--", "sh", "-c", "exit 42"]);
    assert_eq!(out.status.code(), Some(42));
    // auth: no token at all, and an expired one
    let bare = Stack::without_token(bins());
    let out = bare.run(&["containers", "runs"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    bare.write_token(&bare.runner.expired_token("alice"));
    assert_eq!(bare.run(&["containers", "runs"]).status.code(), Some(4));
}

/// `bus` with no environment but PATH and HOME.
fn bare_bus(home: &Path) -> Command {
    let mut cmd = Command::new(bin("bus"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn completions_load_and_man_pages_are_generated() {
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = bare_bus(home.path())
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = stdout(&out);
        // Groups are built lazily when parsing; completions still hold their subcommands.
        for word in [
            "containers",
            "daemon",
            "local",
            "config",
            "completion",
            "runs",
            "execs",
            "pull",
        ] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    // bash loads it and registers the function.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <({} completion bash) && complete -p bus",
            bin("bus").display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("-F _bus bus"), "{}", stdout(&out));

    let page = stdout(&bare_bus(home.path()).arg("man").output().unwrap());
    assert!(page.contains(".TH bus 1"), "{page}");
    assert!(page.contains("containers"), "{page}");
    let dir = home.path().join("man1");
    let out = bare_bus(home.path())
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "bus.1",
        "bus-containers-runs.1",
        "bus-local-up.1",
        "bus-daemon-install.1",
    ] {
        assert!(dir.join(page).is_file(), "{page} missing");
    }
}

#[test]
fn daemon_install_writes_socket_activated_units() {
    let home = tempfile::tempdir().unwrap();
    let units = home.path().join("units");
    let out = bare_bus(home.path())
        .env("XDG_RUNTIME_DIR", "/run/user/4242")
        .args(["daemon", "install", "--busd", "/opt/bus/busd", "--dir"])
        .arg(&units)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let socket = std::fs::read_to_string(units.join("busd.socket")).unwrap();
    let service = std::fs::read_to_string(units.join("busd.service")).unwrap();
    for line in [
        "ListenStream=%t/bus/busd.sock",
        "SocketMode=0600",
        "DirectoryMode=0700",
        "WantedBy=sockets.target",
    ] {
        assert!(socket.lines().any(|l| l == line), "{line} in\n{socket}");
    }
    for line in [
        "ExecStart=/opt/bus/busd --idle-exit 30m",
        "Requires=busd.socket",
        "Also=busd.socket",
    ] {
        assert!(service.lines().any(|l| l == line), "{line} in\n{service}");
    }
    // Without --dir: ${XDG_CONFIG_HOME:-~/.config}/systemd/user.
    let out = bare_bus(home.path())
        .args(["daemon", "install"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir = home.path().join(".config/systemd/user");
    assert!(dir.join("busd.socket").is_file() && dir.join("busd.service").is_file());
}

#[test]
fn runs_watch_redraws_on_a_terminal_and_prints_plainly_otherwise() {
    let stack = Stack::start(bins());
    let id = finished_run(&stack, "true");

    // Not a terminal: the table once (no run changed), no escape codes.
    let child = stack
        .bus()
        .args(["containers", "runs", "--watch", "--interval", "500ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1800));
    common::stop_pid(child.id());
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert_eq!(text.matches("ID ").count(), 1, "{text}");
    assert!(text.contains(&id) && !text.contains('\x1b'), "{text:?}");

    // A terminal (tmux): redrawn under a heading, sized to the pane.
    let server = format!("bus-test-{}", std::process::id());
    let tmux = || {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &server]);
        cmd
    };
    let env = format!(
        "env -i PATH={path:?} HOME={home:?} BUS_CONFIG_DIR={config:?} BUS_SOCKET={socket:?} \
         BUS_AI_API_URL={origin:?}",
        path = std::env::var("PATH").unwrap_or_default(),
        home = stack.home.path(),
        config = stack.config_dir(),
        socket = stack.socket,
        origin = stack.runner.origin,
    );
    let command = format!(
        "{env} {} containers runs --watch --interval 500ms",
        bin("bus").display()
    );
    let started = tmux()
        .args(["new-session", "-d", "-x", "60", "-y", "20", &command])
        .status()
        .unwrap();
    assert!(started.success());
    let capture = || {
        let out = tmux().args(["capture-pane", "-p"]).output().unwrap();
        stdout(&out)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut screen = capture();
    while !(screen.contains("Every 500ms") && screen.contains("DURATION")) {
        assert!(Instant::now() < deadline, "no table in the pane:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
        screen = capture();
    }
    // A second run shows up without restarting the watch.
    let second = finished_run(&stack, "true");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !screen.contains(&second[..12]) {
        assert!(Instant::now() < deadline, "no redraw:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
        screen = capture();
    }
    let _ = tmux().arg("kill-server").status();
    assert_eq!(
        screen.matches("ID  ").count(),
        1,
        "redrawn in place:\n{screen}"
    );
    assert!(
        screen.lines().all(|l| l.chars().count() <= 60),
        "sized to the pane:\n{screen}"
    );
}

/// `bus local` in temporary XDG directories; `down` on drop.
struct Local {
    home: tempfile::TempDir,
    listen: String,
}

impl Local {
    fn bus(&self) -> Command {
        let home = self.home.path();
        let mut cmd = bare_bus(home);
        cmd.env("BUS_CONFIG_DIR", home.join("config"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("BUS_SOCKET", home.join("run/busd.sock"));
        cmd
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.bus().args(args).output().unwrap()
    }

    fn state(&self) -> PathBuf {
        self.home.path().join("state/bus/local")
    }

    /// (name, pid) of each running component, from `bus local status -o json`.
    fn pids(&self) -> Vec<(String, Option<u64>)> {
        let out = self.run(&["local", "status", "-o", "json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        status["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_owned(), c["pid"].as_u64()))
            .collect()
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.run(&["local", "down"]);
    }
}

#[test]
fn local_up_is_idempotent_and_down_leaves_nothing_behind() {
    let local = Local {
        home: tempfile::tempdir().unwrap(),
        listen: format!("127.0.0.1:{}", free_port()),
    };
    let out = local.run(&["local", "status"]);
    assert_eq!(out.status.code(), Some(3), "nothing runs yet");

    let out = local.run(&["local", "up", "--listen", &local.listen]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = local.pids();
    assert!(first.iter().all(|(_, pid)| pid.is_some()), "{first:?}");
    assert!(local.run(&["local", "status"]).status.success());
    // The token file is 0600 (the API key's file too: see the next test).
    use std::os::unix::fs::PermissionsExt;
    let token = local.home.path().join("config/auth/api-token");
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(local.state().join("runner.toml").is_file());

    // Again: the same processes.
    let out = local.run(&["local", "up", "--listen", &local.listen]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(local.pids(), first);

    // The stack works end to end, with api_url taken from config.toml.
    let out = local.run(&["containers", "run", "--", "sh", "-c", "printf OK"]);
    assert_eq!(
        stdout(&out),
        "OK",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = local.run(&["local", "down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, pid) in &first {
        let pid = u32::try_from(pid.unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(Instant::now() < deadline, "{name} (pid {pid}) still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(!local.state().join("podman.sock").exists());
    assert!(!local.home.path().join("run/busd.sock").exists());
    let leftovers: Vec<_> = std::fs::read_dir(local.state())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pid") || n.ends_with(".sock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(local.run(&["local", "status"]).status.code(), Some(3));
}

#[test]
fn the_first_commands_work_verbatim_after_local_up() {
    use std::os::unix::fs::PermissionsExt;
    let local = Local {
        home: tempfile::tempdir().unwrap(),
        listen: format!("127.0.0.1:{}", free_port()),
    };
    let up = |local: &Local| {
        let out = local.run(&["local", "up", "--listen", &local.listen]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    up(&local);
    let key_file = local.home.path().join("config/auth/api-key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // An older `up` kept the key in the state dir and gave `dev` no billing:read: the next
    // `up` moves the key and restarts the runner on the new config.
    let old_key = local.state().join("api-key");
    std::fs::rename(&key_file, &old_key).unwrap();
    let config = local.state().join("runner.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"billing:read\", ", "")).unwrap();
    let runner_pid = |local: &Local| {
        local
            .pids()
            .into_iter()
            .find(|(name, _)| name == "bus-runner")
            .and_then(|(_, pid)| pid)
    };
    let before = runner_pid(&local);
    up(&local);
    assert_ne!(runner_pid(&local), before, "the runner reloads its config");
    assert!(key_file.is_file() && !old_key.exists());
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("billing:read")
    );

    // The service's first command, verbatim: the key is found without flag or environment.
    let out = local.run(&[
        "auth",
        "token",
        "--resources",
        "container:read container:run container:delete billing:read",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("billing:read"), "{}", stdout(&out));

    let out = local.run(&["billing"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    for line in ["account:   dev", "plan:      local", "billing:   active"] {
        assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
    }
    let out = local.run(&["billing", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["account"], "dev", "{json}");
    assert_eq!(json["billing"], "active", "{json}");
    assert!(json["usage"]["run_seconds"].is_u64(), "{json}");
    assert!(json["limits"]["max_concurrent_runs"].is_null(), "{json}");

    // Without --resources: everything `dev` may hold, images included.
    let out = local.run(&["auth", "token"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("image:read"), "{}", stdout(&out));
    let out = local.run(&["images", "ls"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A token without billing:read is told what to do.
    let out = local.run(&["auth", "token", "--resources", "container:read"]);
    assert!(out.status.success());
    let line = one_line_error(&local.run(&["billing"]));
    assert!(line.contains("billing:read"), "{line}");
}

/// A hint names a CLI command or flag: never a REST path, a JSON body or a field name.
fn assert_cli_hint(line: &str) {
    for rest in [
        "/api/v1",
        "{\"",
        "GET ",
        "POST ",
        "`profile`",
        "bus-runner token",
    ] {
        assert!(!line.contains(rest), "{rest:?} in {line}");
    }
}

#[test]
fn a_command_without_dashes_gets_the_dashed_form() {
    let stack = Stack::start(bins());
    let cases: [(&[&str], &str); 4] = [
        (
            &["containers", "run", "sh", "-c", "echo hi"],
            "bus containers run -- sh -c 'echo hi' (or, if sh is the image: bus containers run \
             --image sh -- -c 'echo hi')",
        ),
        // As `docker run IMAGE CMD` is typed.
        (
            &[
                "containers",
                "run",
                "-e",
                "A=1",
                "localhost/busybox",
                "echo",
                "hi",
            ],
            "bus containers run -e A=1 -- localhost/busybox echo hi (or, if localhost/busybox is \
             the image: bus containers run -e A=1 --image localhost/busybox -- echo hi)",
        ),
        (
            &[
                "containers",
                "run",
                "--image",
                "localhost/busybox",
                "echo",
                "hi",
            ],
            "bus containers run --image localhost/busybox -- echo hi",
        ),
        (
            &["containers", "exec", "run_0123", "sh"],
            "bus containers exec run_0123 -- sh",
        ),
    ];
    for (args, fixed) in cases {
        let out = stack.run(args);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let line = one_line_error(&out);
        assert!(
            line.ends_with(&format!("the command goes after `--`: {fixed}")),
            "{line}"
        );
        assert!(line.contains("unexpected argument '"), "{line}");
    }
    // The dashed forms it shows work.
    let out = stack.run(&["containers", "run", "--", "sh", "-c", "echo hi"]);
    assert_eq!(stdout(&out), "hi\n", "{out:?}");
    let out = stack.run(&[
        "containers",
        "run",
        "-e",
        "A=1",
        "--image",
        "localhost/busybox",
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(stdout(&out), "hi\n", "{out:?}");
    // An unknown flag is another mistake: clap's own message.
    let out = stack.run(&["containers", "run", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("goes after"));
}

#[test]
fn docker_s_habits_get_one_line_saying_what_bus_takes() {
    let stack = Stack::start(bins());
    let cases: [(&[&str], &str); 7] = [
        (&["run", "-v", "/tmp:/data"], "--mount-path DIR"),
        (&["run", "--memory=256m"], "--profile NAME"),
        (&["run", "--cpus", "1"], "--profile NAME"),
        (&["run", "--network", "none"], "--profile NAME"),
        (&["run", "--entrypoint", "sh"], "keeps its ENTRYPOINT"),
        (&["run", "--restart", "always", "-d"], "--service"),
        (&["exec", "-u", "root", "run_0123"], "the image's user"),
    ];
    for (args, hint) in cases {
        let mut full = vec!["containers"];
        full.extend_from_slice(args);
        full.extend(["--", "pwd"]);
        let out = stack.run(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let line = one_line_error(&out);
        let flag = args[1].split('=').next().unwrap();
        assert!(
            line.starts_with(&format!(
                "bus: error: unexpected argument '{flag}', a docker flag: "
            )),
            "{line}"
        );
        assert!(line.contains(hint), "{args:?}: {line}");
        assert_cli_hint(&line);
    }
    // Where the hints point: the profiles `--profile` takes are listed, and one of them runs.
    let status = stdout(&stack.run(&["containers", "status"]));
    let profiles = status
        .lines()
        .find_map(|l| l.strip_prefix("profiles:"))
        .unwrap_or_else(|| panic!("no profiles line: {status}"));
    let first = profiles.split(',').next().unwrap().trim();
    let out = stack.run(&["containers", "run", "--profile", first, "--", "echo", "ok"]);
    assert_eq!(stdout(&out), "ok\n", "{out:?}");
    // After `--` the same words are the command's.
    let out = stack.run(&["containers", "run", "--", "echo", "-v", "--memory"]);
    assert_eq!(stdout(&out), "-v --memory\n", "{out:?}");

    // docker's top-level `ps`, `run`, `rm`: the line with `containers` in place, which works.
    let cases: [(&[&str], &str); 3] = [
        (&["ps", "-q"], "bus containers ps -q"),
        (
            &["--timeout", "30s", "run", "--", "echo", "hi there"],
            "bus --timeout 30s containers run -- echo 'hi there'",
        ),
        (&["rm", "run_0123"], "bus containers rm run_0123"),
    ];
    for (args, fixed) in cases {
        let out = stack.run(args);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let line = one_line_error(&out);
        assert!(
            line.ends_with(&format!("it is a containers command: {fixed}")),
            "{line}"
        );
    }
    let out = stack.run(&[
        "--timeout",
        "30s",
        "containers",
        "run",
        "--",
        "echo",
        "hi there",
    ]);
    assert_eq!(stdout(&out), "hi there\n", "{out:?}");
    // Within another group the word is not a containers command there: clap's message.
    let out = stack.run(&["images", "ps"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("containers command"));
}

#[test]
fn hints_name_cli_commands_not_rest_calls() {
    // No token, or a token file that does not exist: `bus local up` / `bus auth token`.
    let bare = Stack::without_token(bins());
    for args in [
        &["containers", "runs"][..],
        &["--token-file", "/nonexistent", "containers", "runs"][..],
    ] {
        let line = one_line_error(&bare.run(args));
        assert!(
            line.contains("`bus local up`") && line.contains("`bus auth token`"),
            "{line}"
        );
        assert_cli_hint(&line);
    }

    let config = format!(
        "[[accounts]]\nid = \"quiet\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\n\
         resources = [\"container:read\", \"container:run\"]\nlogs = false\n\
         [[accounts]]\nid = \"unpaid\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\nbilling = \"required\"\n\
         resources = [\"container:read\", \"container:run\"]\n",
        hash_key("quiet-key"),
        hash_key("unpaid-key")
    );
    let stack = Stack::on(common::Runner::start_with_config(bins(), &config));
    // Resources the account may not hold: the `bus auth token` that asks for a subset.
    let out = stack
        .bus()
        .env("BUS_API_KEY", "quiet-key")
        .args([
            "auth",
            "token",
            "--resources",
            "container:read container:delete",
        ])
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(
        line.contains("`bus auth token --resources \"container:read container:run\"`"),
        "{line}"
    );
    assert_cli_hint(&line);
    // A wrong API key: where `bus auth token` takes it from.
    let out = stack
        .bus()
        .env("BUS_API_KEY", "wrong-key")
        .args(["auth", "token", "--resources", "container:read"])
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(line.contains("BUS_API_KEY"), "{line}");
    assert!(!line.contains("Authorization"), "{line}");
    assert_cli_hint(&line);
    // An unknown profile: --profile, not the JSON field.
    stack.write_token(&stack.runner.token("alice", ALL_SCOPES));
    let line =
        one_line_error(&stack.run(&["containers", "run", "--profile", "nope", "--", "true"]));
    assert!(line.contains("--profile"), "{line}");
    assert_cli_hint(&line);
    // A wrong --api-url path is said in flags.
    let out = stack.run(&[
        "--api-url",
        &format!("{}/v2", stack.runner.origin),
        "containers",
        "runs",
    ]);
    let line = one_line_error(&out);
    assert_cli_hint(&line);
    // Logs switched off: `bus containers get`.
    let issue = |key: &str| {
        let out = stack
            .bus()
            .env("BUS_API_KEY", key)
            .args([
                "auth",
                "token",
                "--resources",
                "container:read container:run",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    issue("quiet-key");
    let out = stack.run(&["containers", "run", "-d", "--", "true"]);
    let id = stdout(&out).trim().to_owned();
    assert!(id.starts_with("run_"), "{out:?}");
    let line = one_line_error(&stack.run(&["containers", "logs", "-f", &id]));
    assert!(
        line.contains(&"`bus containers get RUN_ID`".to_string()),
        "{line}"
    );
    assert_cli_hint(&line);
    // Billing required: `bus billing`.
    issue("unpaid-key");
    let line = one_line_error(&stack.run(&["containers", "run", "-d", "--", "true"]));
    assert!(line.contains("`bus billing`"), "{line}");
    assert_cli_hint(&line);
}

#[test]
fn a_refused_value_is_named_by_the_option_that_set_it() {
    let stack = Stack::start(bins());
    let run = |args: &[&str]| {
        let mut all = vec!["containers", "run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        stack.run(&all)
    };
    let id = stdout(&stack.run(&["containers", "run", "-d", "--", "sleep", "30"]))
        .trim()
        .to_owned();
    let cases = [
        (
            run(&["-w", "relative"]),
            "--workdir must be an absolute path",
        ),
        (run(&["--run-timeout", "999999"]), "--run-timeout is 999999"),
        (
            run(&["--mount-path", "data"]),
            "--mount-path must be an absolute path",
        ),
        (
            run(&["--mount-path", "/data", "--mount-subpath", "../x"]),
            "--mount-subpath must not contain",
        ),
        (
            stack.run(&["containers", "stop", "--grace", "99999", &id]),
            "--grace must be at most 3600",
        ),
    ];
    for (out, expected) in cases {
        assert!(!out.status.success());
        let line = one_line_error(&out);
        assert!(line.contains(expected), "{line}");
        for field in [
            "error: workdir",
            "timeout_seconds",
            "mount_path",
            "error: subpath",
            "grace_seconds",
        ] {
            assert!(!line.contains(field), "{field} in: {line}");
        }
    }
    stack.run(&["containers", "rm", "-f", &id]);
}
