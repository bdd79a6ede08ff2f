//! `bus containers exec` end to end: CLI → busd → runner WebSocket → Podman exec.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ALL_SCOPES, Stack, bins, one_line_error, stdout};

/// A run that stays up for the test's execs.
fn sleeper(stack: &Stack) -> String {
    let out = stack.run(&["containers", "run", "-d", "--", "sleep", "600"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout(&out).trim().to_owned();
    // Wait until it is running.
    let start = Instant::now();
    loop {
        let got = stdout(&stack.run(&["containers", "get", &id, "-o", "json"]));
        if got.contains("\"running\"") || got.contains("RUNNING") || got.contains("running") {
            return id;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{got}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn exec_passes_both_streams_and_the_exit_code() {
    let stack = Stack::start(bins());
    let id = sleeper(&stack);
    let out = stack.run(&[
        "containers",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");

    let out = stack.run(&["containers", "exec", &id, "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    stack.run(&["containers", "delete", &id]);
}

#[test]
fn exit_code_is_never_lost_when_output_ends_at_exit() {
    let stack = Stack::start(bins());
    let id = sleeper(&stack);
    for i in 0..25 {
        let out = stack.run(&[
            "containers",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "printf x; exit 3",
        ]);
        assert_eq!(out.status.code(), Some(3), "try {i}: {}", stderr(&out));
        assert_eq!(stdout(&out), "x", "try {i}");
    }
    stack.run(&["containers", "delete", &id]);
}

fn exec_with_stdin(stack: &Stack, id: &str, input: &[u8], cmd: &[&str]) -> std::process::Output {
    let mut child = stack
        .bus()
        .args(["containers", "exec", "-i", id, "--"])
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).unwrap();
        // Dropping stdin is the EOF.
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn stdin_reaches_the_command_and_its_eof_too() {
    let stack = Stack::start(bins());
    let id = sleeper(&stack);
    let out = exec_with_stdin(&stack, &id, b"hello", &["cat"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello");

    let out = exec_with_stdin(&stack, &id, b"12345\n", &["wc", "-c"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "6");

    // 10 MiB of pseudo-random bytes round-trip byte-exact.
    let mut data = vec![0u8; 10 * 1024 * 1024];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let out = exec_with_stdin(&stack, &id, &data, &["cat"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stdout == data,
        "cat returned {} bytes, not the same 10 MiB",
        out.stdout.len()
    );
    let out = exec_with_stdin(&stack, &id, &data, &["wc", "-c"]);
    assert_eq!(stdout(&out).trim(), data.len().to_string());
    stack.run(&["containers", "delete", &id]);
}

#[test]
fn exec_into_another_accounts_run_or_an_ended_run_is_refused() {
    let stack = Stack::start(bins());
    let id = sleeper(&stack);
    let mallory = stack.runner.token("mallory", ALL_SCOPES);
    let file = stack.token_file("mallory-token", &mallory);
    let out = stack
        .bus()
        .arg("--token-file")
        .arg(&file)
        .args(["containers", "exec", &id, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let line = one_line_error(&out);
    assert!(line.contains(&format!("no run {id}")), "{line}");

    let reader = stack.runner.token("alice", "container:read");
    let file = stack.token_file("read-token", &reader);
    let out = stack
        .bus()
        .arg("--token-file")
        .arg(&file)
        .args(["containers", "exec", &id, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let line = one_line_error(&out);
    assert!(line.contains("container:run"), "{line}");
    assert!(line.contains("--resources"), "{line}");

    let out = stack.run(&["containers", "stop", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = stack.run(&["containers", "exec", &id, "--", "true"]);
    let line = one_line_error(&out);
    assert!(line.contains("exec needs a running run"), "{line}");
    stack.run(&["containers", "delete", &id]);
}

/// A pseudo-terminal pair: (controller, the terminal's path).
fn pty() -> (OwnedFd, std::path::PathBuf) {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&controller).unwrap();
    unlockpt(&controller).unwrap();
    let name = ptsname(&controller, Vec::new()).unwrap();
    (controller, std::path::PathBuf::from(name.to_str().unwrap()))
}

fn set_size(fd: impl AsFd, cols: u16, rows: u16) {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_col: cols,
            ws_row: rows,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
}

/// Reads from the controller until `want` shows up in what was read, or panics.
fn read_until(reader: &mut std::fs::File, seen: &mut String, want: &str) {
    read_until_any(reader, seen, |s| s.contains(want))
}

/// Reads from the controller until `done` holds for what was read, or panics.
fn read_until_any(reader: &mut std::fs::File, seen: &mut String, done: impl Fn(&str) -> bool) {
    let want = "the expected output";
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !done(seen) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never saw {want:?} in {seen:?}"
        );
        match reader.read(&mut buf) {
            Ok(0) => panic!("the terminal closed before {want:?}; saw {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the terminal: {e}; saw {seen:?}"),
        }
    }
}

#[test]
fn a_tty_exec_sees_its_size_and_resizes_and_restores_the_terminal() {
    let stack = Stack::start(bins());
    let id = sleeper(&stack);
    let (controller, path) = pty();
    set_size(&controller, 100, 30);
    let terminal = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    };
    let before = rustix::termios::tcgetattr(terminal()).unwrap();
    let mut cmd: Command = stack.bus();
    let mut child = cmd
        .args(["containers", "exec", "-i", "-t", &id, "--", "sh"])
        .stdin(terminal())
        .stdout(terminal())
        .stderr(terminal())
        .spawn()
        .unwrap();
    let mut reader = std::fs::File::from(controller.try_clone().unwrap());
    let mut writer = std::fs::File::from(controller.try_clone().unwrap());
    let mut seen = String::new();
    writer.write_all(b"stty size; echo A$((40+2))B\r").unwrap();
    read_until(&mut reader, &mut seen, "A42B");
    assert!(seen.contains("30 100"), "{seen:?}");

    // Raw mode while the session runs.
    let during = rustix::termios::tcgetattr(terminal()).unwrap();
    assert!(
        !during
            .local_modes
            .contains(rustix::termios::LocalModes::ICANON),
        "the terminal is not in raw mode"
    );

    set_size(&controller, 120, 40);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::WINCH,
    )
    .unwrap();
    // The resize travels asynchronously; ask until the shell sees it.
    let start = Instant::now();
    loop {
        let old = seen.matches("S30x100E").count();
        writer
            .write_all(b"echo S$(stty size | tr ' ' x)E\r")
            .unwrap();
        read_until_any(&mut reader, &mut seen, |s| {
            s.contains("S40x120E") || s.matches("S30x100E").count() > old
        });
        if seen.contains("S40x120E") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the resize never arrived: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    writer.write_all(b"exit 4\r").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{seen:?}");
    let after = rustix::termios::tcgetattr(terminal()).unwrap();
    assert_eq!(
        after.local_modes, before.local_modes,
        "the terminal was not restored"
    );
    assert_eq!(after.input_modes, before.input_modes);
    stack.run(&["containers", "delete", &id]);
}

mod grpc {
    //! The `Exec` call itself, as an IDE plugin would make it.

    use bus::proto::containers::v1::exec_client::ExecClient;
    use bus::proto::containers::v1::{
        ExecRequest, ExecSignal, ExecStart, TerminalSize, exec_request::Msg as Req,
        exec_response::Msg as Resp,
    };
    use tokio_stream::StreamExt as _;

    use super::*;

    fn start(run_id: &str, argv: &[&str], tty: bool, stdin: bool) -> ExecRequest {
        ExecRequest {
            msg: Some(Req::Start(ExecStart {
                run_id: run_id.to_owned(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                initial_size: tty.then_some(TerminalSize { cols: 80, rows: 24 }),
                ..Default::default()
            })),
        }
    }

    /// Everything the call answered: (started count, stdout, stderr, exit codes).
    async fn collect(
        client: &mut ExecClient<tonic::transport::Channel>,
        requests: impl tokio_stream::Stream<Item = ExecRequest> + Send + 'static,
    ) -> (usize, Vec<u8>, Vec<u8>, Vec<i32>) {
        let mut responses = client.exec(requests).await.unwrap().into_inner();
        let (mut started, mut out, mut err, mut exits) = (0, Vec::new(), Vec::new(), Vec::new());
        while let Some(r) = responses.next().await {
            match r.unwrap().msg.unwrap() {
                Resp::Started(_) => started += 1,
                Resp::Stdout(c) => {
                    assert!(exits.is_empty(), "output after exit");
                    assert_eq!(c.offset, out.len() as u64);
                    out.extend(c.data);
                }
                Resp::Stderr(c) => {
                    assert!(exits.is_empty(), "output after exit");
                    assert_eq!(c.offset, err.len() as u64);
                    err.extend(c.data);
                }
                Resp::Exit(e) => exits.push(e.exit_code),
                Resp::Keepalive(_) => {}
            }
        }
        (started, out, err, exits)
    }

    #[test]
    fn half_close_is_eof_and_a_resize_before_started_is_applied() {
        let stack = Stack::start(bins());
        let id = sleeper(&stack);
        assert!(stack.run(&["daemon", "start"]).status.success());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let channel = bus::connect(&stack.socket).await.unwrap();
            let mut client = ExecClient::new(channel);

            // The request stream ends after the stdin bytes: that half-close is the EOF.
            let requests = tokio_stream::iter(vec![
                start(
                    &id,
                    &["sh", "-c", "cat; echo done >&2; exit 9"],
                    false,
                    true,
                ),
                ExecRequest {
                    msg: Some(Req::Stdin(b"abc".to_vec())),
                },
            ]);
            let (started, out, err, exits) = collect(&mut client, requests).await;
            assert_eq!(
                (started, out.as_slice(), err.as_slice()),
                (1, &b"abc"[..], &b"done\n"[..])
            );
            assert_eq!(exits, [9]);

            // A resize sent with start, before `started`, reaches the command.
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            // busd applies it right after the exec starts, so the command may first see the
            // initial size: it polls (up to 10 s) until the new size shows, then prints it.
            let poll = "i=0; while [ $i -lt 200 ]; do s=$(stty size 2>/dev/null); \
                        [ \"$s\" = '43 132' ] && break; i=$((i+1)); sleep 0.05; done; echo $s";
            tx.send(start(&id, &["sh", "-c", poll], true, false))
                .await
                .unwrap();
            tx.send(ExecRequest {
                msg: Some(Req::Resize(TerminalSize {
                    cols: 132,
                    rows: 43,
                })),
            })
            .await
            .unwrap();
            let (started, out, err, exits) =
                collect(&mut client, tokio_stream::wrappers::ReceiverStream::new(rx)).await;
            drop(tx);
            assert_eq!(started, 1);
            assert_eq!(String::from_utf8_lossy(&out).trim(), "43 132");
            assert!(err.is_empty(), "a TTY exec uses stdout only");
            assert_eq!(exits, [0]);
        });
        stack.run(&["containers", "delete", &id]);
    }

    /// Starts `argv`, waits for `ready` on stdout, sends `signal`, and returns the exit's
    /// (exit_code, signal).
    async fn signal_after_ready(
        client: &mut ExecClient<tonic::transport::Channel>,
        id: &str,
        argv: &[&str],
        tty: bool,
        signal: i32,
    ) -> (i32, Option<i32>) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(start(id, argv, tty, tty)).await.unwrap();
        let mut responses = client
            .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        let mut sent = false;
        while let Some(r) = responses.next().await {
            match r.unwrap().msg.unwrap() {
                Resp::Stdout(c) => {
                    out.extend(c.data);
                    // Once: a terminal echoes the typed ^C as more output.
                    if !sent && String::from_utf8_lossy(&out).contains("ready") {
                        sent = true;
                        tx.send(ExecRequest {
                            msg: Some(Req::Signal(ExecSignal { signal })),
                        })
                        .await
                        .unwrap();
                    }
                }
                Resp::Exit(e) => return (e.exit_code, e.signal),
                _ => {}
            }
        }
        panic!("no exit; output {:?}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn signals_kill_by_pid_or_type_a_control_character_and_exit_names_them() {
        let stack = Stack::start(bins());
        let id = sleeper(&stack);
        assert!(stack.run(&["daemon", "start"]).status.success());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let channel = bus::connect(&stack.socket).await.unwrap();
            let mut client = ExecClient::new(channel);
            let sleeper = ["sh", "-c", "echo ready; exec sleep 600"];
            // Without a terminal: the process gets the signal.
            assert_eq!(
                signal_after_ready(&mut client, &id, &sleeper, false, 9).await,
                (137, Some(9))
            );
            // With one, SIGINT is typed as ^C and reaches the foreground process.
            assert_eq!(
                signal_after_ready(&mut client, &id, &sleeper, true, 2).await,
                (130, Some(2))
            );
            // A command that exits 130 by itself names no signal.
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(start(&id, &["sh", "-c", "exit 130"], false, false))
                .await
                .unwrap();
            let mut responses = client
                .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            let mut exit = None;
            while let Some(r) = responses.next().await {
                if let Resp::Exit(e) = r.unwrap().msg.unwrap() {
                    exit = Some((e.exit_code, e.signal));
                }
            }
            assert_eq!(exit, Some((130, None)));
            // Not a signal number.
            let requests = tokio_stream::iter(vec![
                start(&id, &sleeper, false, false),
                ExecRequest {
                    msg: Some(Req::Signal(ExecSignal { signal: 0 })),
                },
            ]);
            let mut responses = client.exec(requests).await.unwrap().into_inner();
            let mut error = None;
            while let Some(r) = responses.next().await {
                if let Err(e) = r {
                    error = Some(e);
                    break;
                }
            }
            let error = error.expect("signal 0 is refused");
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
        });
        stack.run(&["containers", "delete", &id]);
    }

    #[test]
    fn a_detached_exec_is_reattached_by_its_id_from_the_first_byte() {
        let stack = Stack::start(bins());
        let id = sleeper(&stack);
        assert!(stack.run(&["daemon", "start"]).status.success());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let channel = bus::connect(&stack.socket).await.unwrap();
            let mut client = ExecClient::new(channel);
            let mut detach = start(
                &id,
                &["sh", "-c", "echo a; echo b >&2; sleep 0.3; echo c; exit 4"],
                false,
                false,
            );
            if let Some(Req::Start(s)) = detach.msg.as_mut() {
                s.detach = true;
            }
            let mut responses = client
                .exec(tokio_stream::iter(vec![detach]))
                .await
                .unwrap()
                .into_inner();
            let mut exec_id = String::new();
            let mut count = 0;
            while let Some(r) = responses.next().await {
                count += 1;
                if let Resp::Started(s) = r.unwrap().msg.unwrap() {
                    exec_id = s.exec_id;
                }
            }
            assert_eq!(count, 1, "a detached start answers `started` alone");
            assert!(exec_id.starts_with("exec_"), "{exec_id}");

            for _ in 0..2 {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tx.send(ExecRequest {
                    msg: Some(Req::Start(ExecStart {
                        exec_id: exec_id.clone(),
                        run_id: id.clone(),
                        ..Default::default()
                    })),
                })
                .await
                .unwrap();
                let mut responses = client
                    .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .unwrap()
                    .into_inner();
                let (mut started, mut out, mut err, mut exits) =
                    (String::new(), Vec::new(), Vec::new(), Vec::new());
                while let Some(r) = responses.next().await {
                    match r.unwrap().msg.unwrap() {
                        Resp::Started(s) => started = s.exec_id,
                        Resp::Stdout(c) => {
                            assert_eq!(c.offset, out.len() as u64);
                            out.extend(c.data);
                        }
                        Resp::Stderr(c) => {
                            assert_eq!(c.offset, err.len() as u64);
                            err.extend(c.data);
                        }
                        Resp::Exit(e) => exits.push(e.exit_code),
                        Resp::Keepalive(_) => {}
                    }
                }
                drop(tx);
                assert_eq!(started, exec_id);
                assert_eq!(
                    (out.as_slice(), err.as_slice()),
                    (&b"a\nc\n"[..], &b"b\n"[..])
                );
                assert_eq!(exits, [4]);
            }

            // Named with another run: not found.
            let requests = tokio_stream::iter(vec![ExecRequest {
                msg: Some(Req::Start(ExecStart {
                    exec_id: exec_id.clone(),
                    run_id: "run_other".to_owned(),
                    ..Default::default()
                })),
            }]);
            let error = client.exec(requests).await.unwrap_err();
            assert_eq!(error.code(), tonic::Code::NotFound, "{error:?}");
            // Through busd's one mapping: with the reason and what to do.
            use tonic_types::StatusExt as _;
            let info = error.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.reason, "NOT_FOUND", "{error:?}");
            let help = error
                .get_details_localized_message()
                .expect("LocalizedMessage");
            assert!(
                help.message.contains("leave start.run_id empty"),
                "{help:?}"
            );
        });
        stack.run(&["containers", "delete", &id]);
    }
}

/// A tmux server on a private socket, killed through that socket on drop.
struct Tmux {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// A detached 100x30 session running `command` (a shell command line) in its one pane.
    fn start(command: &str) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let tmux = Tmux {
            socket: dir.path().join("tmux.sock"),
            _dir: dir,
        };
        let out = tmux
            .cmd()
            .args(["new-session", "-d", "-x", "100", "-y", "30", command])
            .output()
            .expect("tmux is installed (scripts/setup-engine installs it)");
        assert!(out.status.success(), "{}", stderr(&out));
        tmux
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&self.socket).args(["-f", "/dev/null"]);
        cmd
    }

    /// Types `keys` and presses Enter.
    fn type_line(&self, keys: &str) {
        let out = self.cmd().args(["send-keys", "-l", keys]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let out = self.cmd().args(["send-keys", "Enter"]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// The pane's visible text.
    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-J"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the pane shows `want`; returns what it shows.
    fn wait_for(&self, want: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if screen.contains(want) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the pane never showed {want:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The shell command line that runs `sh` in a pane with exactly the stack's environment.
fn pane_shell(stack: &Stack) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let mut line = String::from("env -i TERM=screen");
    for (key, value) in stack.bus().get_envs() {
        if let Some(value) = value {
            line.push_str(&format!(" {}={}", key.to_string_lossy(), quote(value)));
        }
    }
    let bin_dir = common::bins().dir();
    line.push_str(&format!(
        " BUS={} /bin/sh",
        quote(bin_dir.join("bus").as_os_str())
    ));
    line
}

#[test]
fn an_interactive_shell_in_tmux_runs_commands_and_restores_the_terminal() {
    let stack = Stack::start(bins());
    let id = sleeper(&stack);
    let tmux = Tmux::start(&pane_shell(&stack));
    // The host shell first shows that the pane starts out in canonical mode with echo.
    tmux.type_line(
        "stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo | tr '\\n' + ; echo BE\"\"FORE",
    );
    tmux.wait_for("icanon+echo+BEFORE");

    tmux.type_line(&format!("\"$BUS\" containers exec -i -t {id} -- sh"));
    // busybox sh as root prompts with `/ # `.
    tmux.wait_for("/ # ");
    // The marker comes last, so the size is on the screen once the marker is.
    tmux.type_line("stty size; echo R$((6*7))S");
    let screen = tmux.wait_for("R42S");
    assert!(screen.contains("30 100"), "{screen}");
    tmux.type_line("exit");
    // Back at the host shell's prompt (keys typed before it would go to the session).
    tmux.wait_for("/ # exit\n#");
    tmux.type_line("echo BUS-EXIT=$?");
    tmux.wait_for("BUS-EXIT=0");
    tmux.type_line(
        "stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e echo | tr '\\n' + ; echo AF\"\"TER",
    );
    let screen = tmux.wait_for("AFTER");
    assert!(
        screen.contains("icanon+echo+AFTER"),
        "the terminal was not restored:\n{screen}"
    );
    stack.run(&["containers", "delete", &id]);
}

/// `bus containers exec -d`: the exec id it printed.
fn exec_detached(stack: &Stack, id: &str, cmd: &[&str]) -> String {
    let out = stack
        .bus()
        .args(["containers", "exec", "-d", id, "--"])
        .args(cmd)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let exec = stdout(&out).trim().to_owned();
    assert!(exec.starts_with("exec_"), "{exec}");
    exec
}

/// Polls `execs logs` (a snapshot) until its stdout contains `want`.
fn wait_for_exec_output(stack: &Stack, exec: &str, want: &str) -> String {
    let start = Instant::now();
    loop {
        let out = stack.run(&["containers", "execs", "logs", exec]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = stdout(&out);
        if text.contains(want) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never saw {want:?}: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_detached_exec_is_read_waited_for_and_kept_across_a_runner_restart() {
    let mut stack = Stack::start(bins());
    let id = sleeper(&stack);
    let exec = exec_detached(
        &stack,
        &id,
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; sleep 0.5; echo late; exit 6",
        ],
    );
    let out = stack.run(&["containers", "execs", "wait", &exec]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "wait prints no output");
    for args in [&["logs"][..], &["logs", "-f"][..]] {
        let out = stack
            .bus()
            .args(["containers", "execs"])
            .args(args)
            .arg(&exec)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(stdout(&out), "out\nlate\n");
        assert_eq!(stderr(&out), "err\n");
    }
    let out = stack.run(&["containers", "execs", "get", &exec, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["state"], "exited", "{json}");
    assert_eq!(json["exit_code"], 6, "{json}");
    assert_eq!(json["run_id"], id.as_str(), "{json}");
    assert_eq!(json["output_bytes"], 13, "{json}");

    // Nobody attached: 1.3 MB of output is all captured, byte-exact.
    let big = exec_detached(&stack, &id, &["seq", "1", "200000"]);
    let out = stack.run(&["containers", "execs", "logs", "-f", &big]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected: String = (1..=200_000).map(|n| format!("{n}\n")).collect();
    assert!(
        stdout(&out) == expected,
        "got {} bytes of seq output",
        out.stdout.len()
    );

    // A snapshot of an exec that still runs ends at once.
    let running = exec_detached(&stack, &id, &["sh", "-c", "echo first; exec sleep 600"]);
    assert_eq!(wait_for_exec_output(&stack, &running, "first"), "first\n");
    let got = stdout(&stack.run(&["containers", "execs", "get", &running]));
    assert!(got.contains("running"), "{got}");

    // The runner restarts: ended execs keep output and exit code; one that ran is failed,
    // with the output captured before.
    stack.runner.kill();
    stack.runner.restart();
    let out = stack.run(&["containers", "execs", "logs", &exec]);
    assert_eq!(stdout(&out), "out\nlate\n", "{}", stderr(&out));
    let out = stack.run(&["containers", "execs", "wait", &exec]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let out = stack.run(&["containers", "execs", "get", &running, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["state"], "failed", "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("runner restarted"),
        "{json}"
    );
    assert_eq!(
        stdout(&stack.run(&["containers", "execs", "logs", &running])),
        "first\n"
    );
    let out = stack.run(&["containers", "execs", "wait", &running]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a failed exec has no exit code to report"
    );

    // Deleting the run deletes its execs.
    stack.run(&["containers", "delete", &id]);
    let out = stack.run(&["containers", "execs", "logs", &exec]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn detached_exec_errors_say_what_to_do() {
    let stack = Stack::start(bins());
    let id = sleeper(&stack);
    // -d with -i or -t is a usage error.
    for flag in ["-i", "-t"] {
        let out = stack.run(&["containers", "exec", "-d", flag, &id, "--", "true"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot be used with"),
            "{}",
            stderr(&out)
        );
    }
    // An unknown exec id.
    for verb in ["logs", "wait", "get"] {
        let out = stack.run(&["containers", "execs", verb, "exec_0123"]);
        // `execs wait` passes on the exec's exit code, so its own failures are 125.
        let want = if verb == "wait" { 125 } else { 5 };
        assert_eq!(out.status.code(), Some(want), "{verb}: {}", stderr(&out));
        let line = one_line_error(&out);
        assert!(line.contains("no exec exec_0123"), "{line}");
        assert!(line.contains("exec -d"), "{line}");
    }
    let exec = exec_detached(&stack, &id, &["echo", "private"]);
    // Another account's exec id is not found; without container:run it is refused.
    let mallory = stack.runner.token("mallory", ALL_SCOPES);
    let file = stack.token_file("mallory-token", &mallory);
    let out = stack
        .bus()
        .arg("--token-file")
        .arg(&file)
        .args(["containers", "execs", "logs", &exec])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(!stdout(&out).contains("private"));
    let out = stack
        .bus()
        .arg("--token-file")
        .arg(&file)
        .args(["containers", "exec", "-d", &id, "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let reader = stack.runner.token("alice", "container:read");
    let file = stack.token_file("read-token", &reader);
    for (args, want) in [
        (&["containers", "execs", "get", &exec][..], 4),
        (&["containers", "exec", "-d", &id, "--", "true"][..], 125),
    ] {
        let out = stack
            .bus()
            .arg("--token-file")
            .arg(&file)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(want), "{}", stderr(&out));
        assert!(one_line_error(&out).contains("container:run"));
    }
    stack.run(&["containers", "delete", &id]);
}

/// `bus containers exec RUN -- CMD`, running until its stdout printed `ready`.
struct Session {
    child: std::process::Child,
    stdout: std::thread::JoinHandle<String>,
}

impl Session {
    fn start(stack: &Stack, id: &str, cmd: &[&str]) -> Session {
        let mut child = stack
            .bus()
            .args(["containers", "exec", id, "--"])
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut buf = [0u8; 256];
            let mut told = false;
            loop {
                let n = out.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    return String::from_utf8_lossy(&seen).into_owned();
                }
                seen.extend_from_slice(&buf[..n]);
                if !told && String::from_utf8_lossy(&seen).contains("ready") {
                    told = true;
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the command printed `ready`");
        Session { child, stdout }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        send_signal(&self.child, signal);
    }

    /// The exit code and everything printed on stdout.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = self.child.wait().unwrap();
        (status.code(), self.stdout.join().unwrap(), err)
    }
}

#[test]
fn signals_reach_the_command_and_its_exit_reports_them() {
    let stack = Stack::start(bins());
    let id = sleeper(&stack);
    // SIGTERM to `bus` reaches the command, which handles it and exits its own way.
    let session = Session::start(
        &stack,
        &id,
        &[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    );
    session.signal(rustix::process::Signal::TERM);
    let (code, out, err) = session.finish();
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(out, "ready\ngot TERM\n");

    // SIGINT and SIGHUP kill a command that does not handle them: 128 + the signal.
    for (signal, code) in [
        (rustix::process::Signal::INT, 130),
        (rustix::process::Signal::HUP, 129),
    ] {
        let session = Session::start(&stack, &id, &["sh", "-c", "echo ready; exec sleep 600"]);
        session.signal(signal);
        let (got, _, err) = session.finish();
        assert_eq!(got, Some(code), "{signal:?}: {err}");
    }
    stack.run(&["containers", "delete", &id]);
}

fn send_signal(child: &std::process::Child, signal: rustix::process::Signal) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        signal,
    )
    .unwrap();
}

fn run_with_stdin(stack: &Stack, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = stack
        .bus()
        .args(["containers", "run"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn run_dash_i_passes_stdin_and_its_eof_and_exits_with_the_runs_code() {
    let stack = Stack::start(bins());
    let out = run_with_stdin(
        &stack,
        &["-i", "--", "sh", "-c", "cat; echo err >&2; exit 3"],
        b"hello",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello");
    assert_eq!(stderr(&out), "err\n");

    let mut data = vec![0u8; 1024 * 1024];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let out = run_with_stdin(&stack, &["-i", "--", "cat"], &data);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stdout == data,
        "cat returned {} bytes, not the same 1 MiB",
        out.stdout.len()
    );

    // A run that times out while attached ends as a detached one would: 124.
    let out = run_with_stdin(
        &stack,
        &["-i", "--run-timeout", "1", "--", "sleep", "30"],
        b"",
    );
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));

    // -d with -t starts the run with a terminal, for a later `attach`.
    let out = stack.run(&[
        "containers",
        "run",
        "-d",
        "-t",
        "--",
        "sh",
        "-c",
        "test -t 1 && echo TTY",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    let out = stack.run(&["containers", "attach", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "TTY\r\n");
}

#[test]
fn run_dash_t_without_a_terminal_still_gives_the_command_one() {
    let stack = Stack::start(bins());
    let out = stack.run(&[
        "containers",
        "run",
        "-t",
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo TTY; echo err >&2; exit 2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A terminal merges stderr into stdout, with its line endings.
    assert_eq!(stdout(&out), "TTY\r\nerr\r\n");
}

#[test]
fn run_dash_it_in_a_terminal_sizes_resizes_and_restores_it() {
    let stack = Stack::start(bins());
    let (controller, path) = pty();
    set_size(&controller, 100, 30);
    let terminal = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap()
    };
    let before = rustix::termios::tcgetattr(terminal()).unwrap();
    let mut child = stack
        .bus()
        .args(["containers", "run", "-i", "-t", "--", "sh"])
        .stdin(terminal())
        .stdout(terminal())
        .stderr(terminal())
        .spawn()
        .unwrap();
    let mut reader = std::fs::File::from(controller.try_clone().unwrap());
    let mut writer = std::fs::File::from(controller.try_clone().unwrap());
    let mut seen = String::new();
    // Type only at the prompt: busybox's line editor reads (and drops) what comes before.
    read_until(&mut reader, &mut seen, "/ # ");
    // The size is applied once the container runs: ask until the shell sees it.
    let start = Instant::now();
    loop {
        let old = seen.matches("Z").count();
        writer
            .write_all(b"echo Y$(stty size | tr ' ' x)Z\r")
            .unwrap();
        read_until_any(&mut reader, &mut seen, |s| {
            s.matches("Z").count() > old + 1 || s.contains("Y30x100Z")
        });
        if seen.contains("Y30x100Z") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never sized: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = rustix::termios::tcgetattr(terminal()).unwrap();
    assert!(
        !during
            .local_modes
            .contains(rustix::termios::LocalModes::ICANON),
        "the terminal is not in raw mode"
    );
    set_size(&controller, 120, 40);
    send_signal(&child, rustix::process::Signal::WINCH);
    let start = Instant::now();
    loop {
        let old = seen.matches("Z").count();
        writer
            .write_all(b"echo Y$(stty size | tr ' ' x)Z\r")
            .unwrap();
        read_until_any(&mut reader, &mut seen, |s| {
            s.matches("Z").count() > old + 1 || s.contains("Y40x120Z")
        });
        if seen.contains("Y40x120Z") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the resize never arrived: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.write_all(b"exit 4\r").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{seen:?}");
    let after = rustix::termios::tcgetattr(terminal()).unwrap();
    assert_eq!(
        after.local_modes, before.local_modes,
        "the terminal was not restored"
    );
    assert_eq!(after.input_modes, before.input_modes);
}
