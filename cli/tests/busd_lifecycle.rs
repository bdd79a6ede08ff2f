//! busd's lifecycle, credentials and privacy, end to end with real processes: one instance per
//! socket, `bus daemon start|stop|status|restart`, the drain, socket activation, idle exit,
//! token checks before any upstream call, `bus auth status|token`, and other users.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus::proto::containers::v1::{
    RunRequest, RunSpec, containers_client::ContainersClient, run_event::Event,
};
use bus::proto::daemon::v1::{GetInfoRequest, ShutdownRequest, daemon_client::DaemonClient};
use common::{ALL_SCOPES, Runner, Stack, bins, one_line_error, stdout};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Whether `pid` has exited (or is a zombie).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_busd_on_the_same_socket_refuses_with_one_clear_line() {
    let stack = Stack::start(bins());
    let out = stack.run(&["daemon", "start"]);
    assert!(stdout(&out).contains("busd started (pid "), "{out:?}");
    let pid = stack.busd_pid().unwrap();

    let second = stack.busd().output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "busd: error: another busd (pid {pid}) is already serving on {} (it holds {}.pid)",
            stack.socket.display(),
            stack.socket.display()
        )
    );
    // The first one is untouched.
    assert_eq!(stack.busd_pid(), Some(pid));
    let again = stdout(&stack.run(&["daemon", "start"]));
    assert!(
        again.contains(&format!("busd is already running (pid {pid})")),
        "{again}"
    );
}

#[test]
fn daemon_stop_removes_the_socket_and_status_then_says_not_running() {
    let stack = Stack::start(bins());
    // Not running: status says so with exit code 3, and does not start busd.
    let out = stack.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(stdout(&out).contains("busd is not running"), "{out:?}");
    assert!(!stack.socket.exists());

    assert!(stack.run(&["daemon", "start"]).status.success());
    let status = stack.run(&["daemon", "status"]);
    assert_eq!(status.status.code(), Some(0));
    let text = stdout(&status);
    assert!(text.contains("identity:  alice"), "{text}");
    assert!(text.contains("streams:   0"), "{text}");
    assert!(
        text.contains("features:  ") && text.contains("shutdown"),
        "{text}"
    );
    let pid = stack.busd_pid().unwrap();
    assert!(
        stack.busd_log().contains("busd listening"),
        "busd logs to {}",
        stack.busd_log_path().display()
    );

    let out = stack.run(&["daemon", "stop"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), format!("busd stopped (pid {pid})\n"));
    assert!(!stack.socket.exists(), "the socket is removed");
    assert!(gone(pid), "busd exited");

    let out = stack.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout(&out).contains("not running"));
    // Stopping what is not running is not an error.
    assert!(stack.run(&["daemon", "stop"]).status.success());

    // restart brings up a new one; `info` still works.
    assert!(stack.run(&["daemon", "restart"]).status.success());
    let new_pid = stack.busd_pid().unwrap();
    assert_ne!(new_pid, pid);
    assert!(stack.run(&["daemon", "restart"]).status.success());
    assert!(gone(new_pid));
    assert!(stdout(&stack.run(&["daemon", "info"])).contains("identity:  alice"));
}

#[test]
fn shutdown_lets_an_open_stream_finish_then_removes_the_socket() {
    let stack = Stack::start(bins());
    assert!(stack.run(&["daemon", "start"]).status.success());
    let pid = stack.busd_pid().unwrap();
    let (output, exited, shutdown) = runtime().block_on(async {
        let channel = bus::connect(&stack.socket).await.unwrap();
        let spec = RunSpec {
            argv: ["sh", "-c", "echo first; sleep 2; echo second"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let mut stream = ContainersClient::new(channel.clone())
            .run(RunRequest { spec: Some(spec) })
            .await
            .unwrap()
            .into_inner();
        let mut output = Vec::new();
        // Wait for the first output, so the run is surely streaming.
        while !String::from_utf8_lossy(&output).contains("first") {
            match stream.message().await.unwrap().unwrap().event.unwrap() {
                Event::Output(chunk) => output.extend(chunk.data),
                Event::Accepted(_) | Event::Notice(_) => {}
                Event::Exited(_) => panic!("exited too early"),
            }
        }
        let mut daemon = DaemonClient::new(channel);
        let info = daemon
            .get_info(GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.open_streams, 1, "{info:?}");
        let shutdown = daemon
            .shutdown(ShutdownRequest { drain_seconds: 20 })
            .await
            .unwrap()
            .into_inner();
        // New connections are refused while the open stream drains (checked until they are,
        // for at most 5 s: the listener closes right after the Shutdown answer).
        let refused = async {
            while bus::connect(&stack.socket).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .expect("new connections are refused while draining");
        let mut exited = None;
        while let Some(event) = stream.message().await.unwrap() {
            match event.event.unwrap() {
                Event::Output(chunk) => output.extend(chunk.data),
                Event::Exited(e) => exited = Some(e),
                Event::Accepted(_) | Event::Notice(_) => {}
            }
        }
        (output, exited, shutdown)
    });
    assert_eq!(String::from_utf8_lossy(&output), "first\nsecond\n");
    assert_eq!(
        exited.expect("the stream ended with its exit").exit_code,
        Some(0)
    );
    assert_eq!(shutdown.pid, pid);
    assert_eq!(shutdown.open_streams, 1);
    assert_eq!(shutdown.socket, stack.socket.display().to_string());
    wait_for("busd to exit", Duration::from_secs(10), || gone(pid));
    assert!(!stack.socket.exists());
    let log = stack.busd_log();
    assert!(log.contains("draining open calls"), "{log}");
}

#[test]
fn the_drain_is_bounded() {
    let stack = Stack::start(bins());
    assert!(stack.run(&["daemon", "start"]).status.success());
    let pid = stack.busd_pid().unwrap();
    let started = runtime().block_on(async {
        let channel = bus::connect(&stack.socket).await.unwrap();
        let spec = RunSpec {
            argv: ["sh", "-c", "echo up; sleep 60"].map(String::from).to_vec(),
            ..Default::default()
        };
        let mut stream = ContainersClient::new(channel.clone())
            .run(RunRequest { spec: Some(spec) })
            .await
            .unwrap()
            .into_inner();
        let mut run_id = String::new();
        loop {
            match stream.message().await.unwrap().unwrap().event.unwrap() {
                Event::Accepted(run) => run_id = run.id,
                Event::Output(_) => break,
                Event::Notice(_) => {}
                Event::Exited(_) => panic!("exited too early"),
            }
        }
        let started = Instant::now();
        DaemonClient::new(channel)
            .shutdown(ShutdownRequest { drain_seconds: 1 })
            .await
            .unwrap();
        // The stream is cut after the bound instead of holding busd up for a minute.
        let end = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        };
        assert!(!matches!(end, Ok(Some(_))));
        (started, run_id)
    });
    let (started, run_id) = started;
    wait_for("busd to exit", Duration::from_secs(10), || gone(pid));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(!stack.socket.exists());
    // Clean up the run, through a new busd.
    let _ = stack.run(&["containers", "delete", &run_id]);
}

#[test]
fn busd_serves_a_socket_handed_over_by_systemd() {
    let stack = Stack::start(bins());
    let dir = stack.home.path().join("activated");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = dir.join("busd.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // As systemd does: the listener on fd 3, LISTEN_FDS=1 and LISTEN_PID = busd's own PID
    // (sh sets it to its PID, then execs busd in place; fd 0 carries the listener to fd 3).
    let mut busd = Command::new("sh")
        .arg("-c")
        .arg(r#"export LISTEN_FDS=1 LISTEN_PID=$$; exec "$0" "$@" 3<&0 0</dev/null"#)
        .arg(common::bin("busd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", stack.home.path())
        .env("BUS_CONFIG_DIR", stack.config_dir())
        .env("BUS_AI_API_URL", &stack.runner.origin)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let on_activated = |args: &[&str]| {
        stack
            .bus()
            .env("BUS_SOCKET", &socket)
            .args(args)
            .output()
            .unwrap()
    };
    // The socket was listening before busd ran, so the first call simply waits for it.
    let info = stdout(&on_activated(&["daemon", "status"]));
    assert!(
        info.contains(&format!("pid:       {}", busd.id())),
        "{info}"
    );
    assert!(info.contains("socket:    activated by systemd"), "{info}");
    assert!(stdout(&on_activated(&["containers", "status"])).contains("state:    ready"));

    let out = on_activated(&["daemon", "stop"]);
    assert!(out.status.success(), "{out:?}");
    assert!(busd.wait().unwrap().success());
    // systemd's socket is systemd's: busd leaves it in place.
    assert!(socket.exists());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut busd.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("socket_activated=true"), "{log}");
}

#[test]
fn busd_exits_by_itself_when_idle_if_asked() {
    let stack = Stack::start(bins());
    let mut busd = stack.start_busd(|busd| {
        busd.args(["--idle-exit", "1s"]).stderr(Stdio::null());
    });
    let started = Instant::now();
    // A call resets the idle clock.
    assert!(stack.run(&["containers", "status"]).status.success());
    let status = busd.wait();
    assert!(status.success());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(!stack.socket.exists(), "the socket is removed on idle exit");
}

#[test]
fn a_world_readable_token_file_is_refused_until_chmod() {
    let stack = Stack::start(bins());
    let path = stack.config_dir().join("auth/api-token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = one_line_error(&stack.run(&["containers", "status"]));
    assert!(
        line.contains("is readable by other users (mode 644)"),
        "{line}"
    );
    assert!(
        line.contains(&format!("run `chmod 600 {}`", path.display())),
        "{line}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(stack.run(&["containers", "status"]).status.success());
}

#[test]
fn an_expired_token_fails_before_any_upstream_call() {
    let stack = Stack::without_token(bins());
    stack.write_token(&stack.runner.expired_token("alice"));
    // Nothing listens on this port: reaching for the runner would say "cannot reach".
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = stack.config_dir().join("auth/api-token");
    for args in [
        vec!["containers", "runs"],
        vec!["containers", "status"],
        vec!["containers", "run", "--", "true"],
    ] {
        let mut full = vec!["--api-url".to_owned(), format!("http://{closed}")];
        full.extend(args.iter().map(|s| s.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        let line = one_line_error(&stack.run(&full));
        assert!(
            line.contains(&format!("the token from {} expired at 20", path.display())),
            "{line}"
        );
        assert!(!line.contains("cannot reach"), "{line}");
        assert!(
            line.contains(&format!(
                "bus auth token --resources \"{ALL_SCOPES}\" --token-file {}",
                path.display()
            )) || line.contains(&format!("bus auth token --resources \"{ALL_SCOPES}\"")),
            "{line}"
        );
        assert!(line.contains("`bus local up`"), "{line}");
    }
    // `auth status` shows the expiry and says what is wrong, without the token.
    let out = stack.run(&["auth", "status"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("identity:  alice") && text.contains("(expired)"),
        "{text}"
    );
}

#[test]
fn auth_status_shows_the_identity_and_never_the_token() {
    let stack = Stack::start(bins());
    let token = std::fs::read_to_string(stack.config_dir().join("auth/api-token")).unwrap();
    let out = stack.run(&["auth", "status"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("identity:  alice"), "{text}");
    assert!(text.contains(&format!("scopes:    {ALL_SCOPES}")), "{text}");
    assert!(
        text.contains(&format!(
            "source:    {}",
            stack.config_dir().join("auth/api-token").display()
        )),
        "{text}"
    );
    assert!(text.contains("expires:   20"), "{text}");
    assert!(!text.contains(token.trim()));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(token.trim()));

    // A token file named by the caller is reported as the source.
    let bob = stack.token_file("bob-token", &stack.runner.token("bob", "container:read"));
    let text = stdout(&stack.run(&["--token-file", bob.to_str().unwrap(), "auth", "status"]));
    assert!(text.contains("identity:  bob"), "{text}");
    assert!(
        text.contains(&format!("source:    {}", bob.display())),
        "{text}"
    );
    assert!(!stack.busd_log().contains(token.trim()));
}

const API_KEY: &str = "sk-carol-0123456789abcdef";

fn runner_with_carol() -> Runner {
    Runner::start_with_config(
        bins(),
        &format!(
            "[[accounts]]\nid = \"carol\"\napi_key_sha256 = \"{}\"\nplan = \"local\"\n\
         resources = [\"container:read\", \"container:run\", \"container:delete\"]\n",
            common::hash_key(API_KEY)
        ),
    )
}

#[test]
fn auth_token_exchanges_an_api_key_for_a_private_token_file() {
    let stack = Stack::on(runner_with_carol());
    let out = stack
        .bus()
        .env("BUS_API_KEY", API_KEY)
        .args([
            "auth",
            "token",
            "--resources",
            "container:read container:run",
            "--ttl",
            "2h",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = stack.config_dir().join("auth/api-token");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap();
    assert!(token.starts_with("eyJ"));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("saved a token for carol to {}", path.display())),
        "{text}"
    );
    assert!(
        text.contains("scopes: container:read container:run"),
        "{text}"
    );
    for shown in [
        text.as_str(),
        &String::from_utf8_lossy(&out.stderr),
        &stack.busd_log(),
    ] {
        assert!(
            !shown.contains(token.trim()),
            "the token was shown: {shown}"
        );
        assert!(!shown.contains(API_KEY), "the API key was shown: {shown}");
    }

    // The new token works at once, for carol, with the scopes asked for.
    let status = stdout(&stack.run(&["auth", "status"]));
    assert!(status.contains("identity:  carol"), "{status}");
    assert!(
        status.contains("scopes:    container:read container:run\n"),
        "{status}"
    );
    assert!(stack.run(&["containers", "status"]).status.success());

    // --token-file chooses the destination; the key may come from a private file.
    let key_file = stack.home.path().join("api-key");
    std::fs::write(&key_file, API_KEY).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let other = stack.home.path().join("other-token");
    let args = [
        "--token-file",
        other.to_str().unwrap(),
        "auth",
        "token",
        "--api-key-file",
        key_file.to_str().unwrap(),
    ];
    let line = one_line_error(&stack.run(&args));
    assert!(
        line.contains(&format!("chmod 600 {}", key_file.display())),
        "{line}"
    );
    assert!(!other.exists());
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(stack.run(&args).status.success());
    assert_eq!(std::fs::metadata(&other).unwrap().mode() & 0o777, 0o600);

    // A wrong key is the runner's refusal, shown without the key.
    let out = stack
        .bus()
        .env("BUS_API_KEY", "sk-wrong-key")
        .args(["auth", "token"])
        .output()
        .unwrap();
    let line = one_line_error(&out);
    assert!(line.contains("matches no account"), "{line}");
    assert!(!line.contains("sk-wrong-key"));
}

#[test]
fn another_user_cannot_use_the_socket() {
    let stack = Stack::start(bins());
    assert!(stack.run(&["daemon", "start"]).status.success());
    // The bus binary, where the other user can run it.
    let shared = Path::new("/tmp").join(format!("bus-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bus = shared.join("bus");
    std::fs::copy(common::bin("bus"), &bus).unwrap();
    std::fs::set_permissions(&bus, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(&bus)
            .args(["daemon", "info"])
            .env_clear()
            .env("HOME", "/nonexistent")
            .env("BUS_SOCKET", &stack.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    // The 0700 directory and 0600 socket stop it at connect.
    let out = as_nobody();
    let line = one_line_error(&out);
    assert!(
        line.contains(&format!("cannot reach busd at {}", stack.socket.display()))
            && line.contains("ermission denied")
            && line.contains("bus daemon status"),
        "{line}"
    );

    // With the modes opened up, busd's peer-uid check still refuses it.
    let dir = stack.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&stack.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert_eq!(
        one_line_error(&out),
        format!(
            "bus: error: cannot reach busd at {}: the socket belongs to another user (uid {}); \
             busd serves only its own user — check that --socket or BUS_SOCKET names your busd \
             (`bus daemon status`)",
            stack.socket.display(),
            rustix::process::getuid().as_raw()
        )
    );
    assert_eq!(out.status.code(), Some(6), "unavailable");
    // A client that connects anyway is closed by busd's peer-uid check, unanswered.
    let probe = "import socket, sys\n\
                 s = socket.socket(socket.AF_UNIX)\n\
                 s.connect(sys.argv[1])\n\
                 try:\n    \
                     s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n')\n    \
                     print(len(s.recv(100)))\n\
                 except (BrokenPipeError, ConnectionResetError):\n    \
                     print(0)\n";
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["python3", "-c", probe])
        .arg(&stack.socket)
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), "0", "closed unanswered: {out:?}");
    assert!(
        stack
            .busd_log()
            .contains("refused a connection from another user")
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let _ = std::fs::remove_dir_all(&shared);
}

/// `bus containers runs` against a busd that closes the connection (after sending its
/// settings if `answer`): its one error line, checked to exit 6 (unavailable).
fn cut_call(stack: &Stack, answer: bool) -> String {
    let dying = common::dying_busd(&stack.socket, answer);
    let out = stack.run(&["containers", "runs"]);
    dying.join().unwrap();
    assert_eq!(out.status.code(), Some(6), "unavailable: {out:?}");
    one_line_error(&out)
}

#[test]
fn a_busd_that_closes_the_connection_unanswered_is_reported_then_replaced() {
    let stack = Stack::start(bins());
    let line = cut_call(&stack, false);
    assert!(
        line.starts_with(&format!(
            "bus: error: busd at {} closed the connection before answering (",
            stack.socket.display()
        )) && line.contains("so the call was not made; run it again"),
        "{line}"
    );

    // Run again, as the line says: the socket refuses now, so a new busd starts.
    let out = stack.run(&["containers", "runs"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert!(stack.busd_pid().is_some(), "a new busd serves the socket");
}

#[test]
fn a_busd_that_breaks_the_connection_after_answering_may_have_made_the_call() {
    let stack = Stack::start(bins());
    let line = cut_call(&stack, true);
    assert!(
        line.starts_with(&format!(
            "bus: error: the connection to busd at {} broke during the call (",
            stack.socket.display()
        )) && line.contains("check what the call did"),
        "{line}"
    );
}
