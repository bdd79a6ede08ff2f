//! `bus containers exec [-i] [-t] RUN -- CMD...`: a command in a running run, with stdin
//! (`-i`) and a terminal (`-t`); exits with the command's exit code.
//!
//! With `-t` and a terminal on stdin, the terminal is put in raw mode for the session and
//! restored on every way out: return, error, panic (a hook) and SIGTERM/SIGHUP (handled in the
//! session loop, so the guard's drop runs). SIGWINCH sends the new size. Without raw mode,
//! SIGINT, SIGTERM and SIGHUP are forwarded to the command, and `bus` waits for its exit (a
//! third SIGINT gives up waiting).
//!
//! With `-d` the command starts detached: its exec id is printed, and `bus containers execs`
//! reads its output and exit code later.

use std::io::{Read as _, Write as _};
use std::sync::Mutex;

use bus::proto::containers::v1::{
    CloseStdin, ExecRequest, ExecSignal, ExecStart, TerminalSize, exec_request::Msg as Req,
    exec_response::Msg as Resp,
};
use futures::StreamExt as _;
use rustix::termios::{self, OptionalActions, Termios};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::context::Ctx;
use crate::error::CliError;

/// Exit code when the session ended without the command's exit code (as `docker exec`).
const EXIT_NO_STATUS: u8 = 125;

/// SIGINTs after which `bus` stops waiting for a command that ignores them.
const SIGINT_GIVE_UP: u32 = 3;

/// Runs a command in a running run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pass this process's stdin to the command (EOF closes the command's stdin).
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal; with a terminal on stdin it is put in raw mode.
    #[arg(short, long)]
    tty: bool,
    /// Start the command detached and print its exec id (read it with `bus containers execs`).
    #[arg(short, long, conflicts_with_all = ["interactive", "tty"])]
    detach: bool,
    #[command(flatten)]
    env: crate::env::EnvArgs,
    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// The run to execute in, by id or name.
    #[arg(value_name = "RUN")]
    run_id: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// The terminal settings to put back; also read by the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

fn restore_terminal() {
    if let Some(saved) = SAVED.lock().ok().and_then(|mut s| s.take()) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &saved);
    }
}

/// Raw mode on stdin for its life.
struct RawMode;

impl RawMode {
    fn enter() -> Result<RawMode, CliError> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)
            .map_err(|e| CliError::Local(format!("cannot read the terminal's settings: {e}")))?;
        let mut raw = saved.clone();
        raw.make_raw();
        *SAVED.lock().expect("terminal lock") = Some(saved);
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            hook(info);
        }));
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)
            .map_err(|e| CliError::Local(format!("cannot put the terminal in raw mode: {e}")))?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The terminal's size (of stdout, else stdin), when there is one.
pub fn window_size() -> Option<TerminalSize> {
    let size = termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some(TerminalSize {
        cols: size.ws_col.into(),
        rows: size.ws_row.into(),
    })
}

fn request(msg: Req) -> ExecRequest {
    ExecRequest { msg: Some(msg) }
}

/// Reads stdin on its own thread (a blocking read never holds up the exit) into `tx`; EOF
/// sends `close_stdin`.
fn pump_stdin(tx: mpsc::Sender<ExecRequest>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(request(Req::CloseStdin(CloseStdin {})));
                    return;
                }
                Ok(n) => {
                    if tx
                        .blocking_send(request(Req::Stdin(buf[..n].to_vec())))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
}

impl Args {
    /// Runs the command; returns its exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let initial_size = if self.tty { window_size() } else { None };
        let start = ExecStart {
            run_id: self.run_id.clone(),
            argv: self.command,
            env: self.env.resolve()?,
            workdir: self.workdir.unwrap_or_default(),
            tty: self.tty,
            stdin: self.interactive,
            initial_size,
            detach: self.detach,
            ..Default::default()
        };
        if self.detach {
            return detached(ctx, start).await;
        }
        let what = format!("the exec session in run {}", self.run_id);
        session(ctx, start, &what).await
    }
}

/// Starts a detached exec and prints its id.
async fn detached(ctx: &Ctx, start: ExecStart) -> Result<u8, CliError> {
    let run_id = start.run_id.clone();
    let requests = futures::stream::iter([request(Req::Start(start))]);
    let mut responses = ctx.exec().exec(ctx.request(requests)).await?.into_inner();
    while let Some(response) = responses.next().await {
        if let Some(Resp::Started(started)) = response?.msg {
            println!("{}", started.exec_id);
            return Ok(0);
        }
    }
    Err(CliError::Local(format!(
        "the runner did not confirm the detached exec in run {run_id}; list what runs with \
         `bus containers exec {run_id} -- ps`"
    )))
}

/// Runs one exec session (a command, a detached exec re-attached, or a run's own command)
/// until its exit; returns the exit code. `what` names it in errors.
pub async fn session(ctx: &Ctx, start: ExecStart, what: &str) -> Result<u8, CliError> {
    let stdin_tty = termios::isatty(std::io::stdin());
    let (tty, interactive) = (start.tty, start.stdin);
    let (tx, rx) = mpsc::channel(16);
    tx.send(request(Req::Start(start)))
        .await
        .expect("the receiver is held");
    // `--timeout` bounds the start only, never the session.
    let mut client = ctx.exec();
    let call = client.exec(ctx.session_request(ReceiverStream::new(rx)));
    let mut responses = match ctx.timeout() {
        Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| {
            CliError::Status(tonic::Status::deadline_exceeded(format!(
                "the exec did not start within {}",
                humantime::format_duration(limit)
            )))
        })??,
        None => call.await?,
    }
    .into_inner();
    // Raw mode only once the session is up, so errors before it print normally.
    let _raw = if tty && stdin_tty && interactive {
        Some(RawMode::enter()?)
    } else {
        None
    };
    if interactive {
        pump_stdin(tx.clone());
    }
    let raw = _raw.is_some();
    let mut winch = signal(SignalKind::window_change())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut interrupts = 0;
    let (mut out_offset, mut err_offset) = (0u64, 0u64);
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    loop {
        let response = tokio::select! {
            r = responses.next() => r,
            _ = winch.recv(), if tty => {
                if let Some(size) = window_size() {
                    let _ = tx.send(request(Req::Resize(size))).await;
                }
                continue;
            }
            // In raw mode the keyboard sends no signals: these come from elsewhere, and
            // end the session (the terminal is restored on the way out).
            _ = term.recv() => {
                if raw {
                    return Ok(128 + 15);
                }
                let _ = tx.send(request(Req::Signal(ExecSignal { signal: 15 }))).await;
                continue;
            }
            _ = hup.recv() => {
                if raw {
                    return Ok(128 + 1);
                }
                let _ = tx.send(request(Req::Signal(ExecSignal { signal: 1 }))).await;
                continue;
            }
            _ = int.recv() => {
                interrupts += 1;
                if interrupts >= SIGINT_GIVE_UP {
                    eprintln!("bus: stopped waiting for {what} after {SIGINT_GIVE_UP} interrupts; the command may still run");
                    return Ok(128 + 2);
                }
                let _ = tx.send(request(Req::Signal(ExecSignal { signal: 2 }))).await;
                continue;
            }
        };
        let Some(response) = response else {
            return Err(CliError::Local(format!(
                "{what} ended without the command's exit code"
            )));
        };
        match response?.msg {
            Some(Resp::Stdout(chunk)) => {
                check_offset(&mut out_offset, chunk.offset, chunk.data.len(), "stdout")?;
                stdout.write_all(&chunk.data)?;
                stdout.flush()?;
            }
            Some(Resp::Stderr(chunk)) => {
                check_offset(&mut err_offset, chunk.offset, chunk.data.len(), "stderr")?;
                stderr.write_all(&chunk.data)?;
                stderr.flush()?;
            }
            Some(Resp::Exit(exit)) => {
                return Ok(match u8::try_from(exit.exit_code) {
                    Ok(code) => code,
                    Err(_) => {
                        drop(_raw);
                        eprintln!("bus: the command exited with code {}", exit.exit_code);
                        EXIT_NO_STATUS
                    }
                });
            }
            Some(Resp::Started(_) | Resp::Keepalive(_)) | None => {}
        }
    }
}

/// Output must arrive without holes or repeats.
fn check_offset(expected: &mut u64, offset: u64, len: usize, stream: &str) -> Result<(), CliError> {
    if offset != *expected {
        return Err(CliError::Local(format!(
            "the exec's {stream} arrived at byte {offset}, expected {expected}; output was lost"
        )));
    }
    *expected += len as u64;
    Ok(())
}
