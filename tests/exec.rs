//! `bus containers exec` end to end: CLI → busd → runner WebSocket → Podman exec.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ALL_SCOPES, Stack, one_line_error, stdout};

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
    let stack = Stack::start();
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
    let stack = Stack::start();
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
    let stack = Stack::start();
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
    let stack = Stack::start();
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
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
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
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
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
    let stack = Stack::start();
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
        ExecRequest, ExecStart, TerminalSize, exec_request::Msg as Req, exec_response::Msg as Resp,
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
        let stack = Stack::start();
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
    let bin_dir = common::bin_dir();
    line.push_str(&format!(
        " BUS={} /bin/sh",
        quote(bin_dir.join("bus").as_os_str())
    ));
    line
}

#[test]
fn an_interactive_shell_in_tmux_runs_commands_and_restores_the_terminal() {
    let stack = Stack::start();
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
    tmux.type_line("echo R$((6*7))S; stty size");
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
