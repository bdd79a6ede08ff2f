//! `bus containers run [--profile P] [--image I] [-d] [-i] [-t] [--rm] -- CMD...`: start a run
//! and stream its output, exiting with the command's exit code; or, with `-d`, print its id and
//! return (with `-i`/`-t`, leaving its stdin and terminal to `containers attach`). When busd
//! goes away after the run was accepted, the output is followed on from the last seq printed
//! through a busd started again (as `logs -f` does). With `-i` (stdin) or `-t`
//! (a terminal) the session is attached to the run's command as `exec -i -t` is to its command
//! (raw mode, resizes, signals), through `Exec` with `attach`; the run's final record decides
//! the exit code. With `--service` it returns once the run's published ports accept
//! connections, printing their URLs.

use bus::proto::containers::v1::{
    CreateRunRequest, DeleteRunRequest, ExecStart, GetRunRequest, PortMapping, PullPolicy,
    RegistryLogin, Run, RunExited, RunRequest, RunSpec, RunState, StorageMount, StreamLogsRequest,
    run_event::Event,
};
use futures::StreamExt;
use std::collections::HashMap;
use time::OffsetDateTime;

use crate::commands::logs::{print_logs, show_notice};
use crate::context::Ctx;
use crate::env::EnvArgs;
use crate::error::{CliError, busd_lost};
use crate::interrupts::{GaveUp, Interrupts, ended_by_closed_output};
use crate::output::Output;
use crate::render;
use crate::usage::parse_publish;

/// Exit code when the run was killed at its timeout (as `timeout(1)`).
const EXIT_TIMED_OUT: u8 = 124;
/// Exit code when the run could not be started or ended without an exit code (as `docker run`).
const EXIT_RUN_FAILED: u8 = 125;

/// Starts a run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run profile (image, limits, timeout) to start from.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// The image to run; overrides the profile's.
    #[arg(long, value_name = "REF")]
    image: Option<String>,
    /// Start the run and print its id instead of following it; with -i (and -t) its stdin
    /// (and terminal) wait for `bus containers attach`.
    #[arg(short, long)]
    detach: bool,
    /// Delete the run and its stored output once it has ended and bus has printed it; with
    /// -d, the runner deletes it when it ends.
    #[arg(long, conflicts_with = "service")]
    rm: bool,
    /// Run a long-lived service: return once its published port (-p) accepts connections and
    /// print its URL, or fail with its last output. It has no timeout of its own and is
    /// started again when it fails (at most 3 times).
    #[arg(long, requires = "publish", conflicts_with_all = ["detach", "interactive", "tty", "run_timeout", "output"])]
    service: bool,
    /// Pass this process's stdin to the command (EOF closes the command's stdin).
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal; with a terminal on stdin it is put in raw mode.
    #[arg(short, long)]
    tty: bool,
    #[command(flatten)]
    env: EnvArgs,
    /// Working directory inside the container.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// A name for the run.
    #[arg(long)]
    name: Option<String>,
    /// Seconds after which the run is killed [default: the profile's].
    #[arg(long, value_name = "SECONDS")]
    run_timeout: Option<u32>,
    /// Publish a container port on the host, as docker does (repeatable); without
    /// --profile the run gets the runner's profile for that (network bridge). The host
    /// address defaults to 127.0.0.1 and an absent host port to one the engine picks
    /// (`bus containers get` shows it).
    #[arg(short = 'p', long = "publish", value_name = "[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]",
          value_parser = parse_publish)]
    publish: Vec<PortMapping>,
    /// Mount the account's persistent storage at this absolute path in the container.
    #[arg(long, value_name = "PATH")]
    mount_path: Option<String>,
    /// With --mount-path: mount this directory of the storage (relative; created when
    /// missing) instead of its root.
    #[arg(long, value_name = "DIR", requires = "mount_path")]
    mount_subpath: Option<String>,
    /// Who the run is for (recorded, shown by get, filterable with `runs --participant`).
    #[arg(long, value_name = "NAME")]
    participant: Option<String>,
    /// The role the run acts in, e.g. agent (recorded, filterable with `runs --role`).
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// Pull the image first: missing (when the runner lacks it), always, or never.
    #[arg(long, value_enum, value_name = "WHEN", default_value = "missing")]
    pull: Pull,
    /// Registry credentials for that pull: a 0600 JSON file {"username": ..., "password": ...};
    /// used for the pull only, never stored.
    #[arg(long, value_name = "FILE")]
    credentials_file: Option<std::path::PathBuf>,
    /// json: print one result when the run ends (id, state, exit code, times, stdout and
    /// stderr) instead of streaming the output; bus still exits with the command's code.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        value_name = "FORMAT",
        conflicts_with_all = ["detach", "interactive", "tty"]
    )]
    output: Option<render::Format>,
    /// The command and its arguments.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// When a run pulls its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pull {
    /// When the runner lacks the image.
    Missing,
    /// Every time.
    Always,
    /// Never; a registry image not pulled before is refused.
    Never,
}

impl Pull {
    fn policy(self) -> PullPolicy {
        match self {
            Pull::Missing => PullPolicy::Missing,
            Pull::Always => PullPolicy::Always,
            Pull::Never => PullPolicy::Never,
        }
    }
}

impl Args {
    /// Runs the command; returns the exit code (the container's, when it exited).
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let (detach, rm) = (self.detach, self.rm);
        let json = self.output == Some(render::Format::Json);
        let credentials = self
            .credentials_file
            .as_deref()
            .map(crate::commands::images::read_credentials)
            .transpose()?
            .map(|c| RegistryLogin {
                username: c.username,
                password: c.password,
            });
        let spec = RunSpec {
            profile: self.profile.unwrap_or_default(),
            image: self.image.unwrap_or_default(),
            argv: self.command,
            env: self.env.resolve()?,
            workdir: self.workdir.unwrap_or_default(),
            name: self.name.unwrap_or_default(),
            labels: HashMap::new(),
            timeout_seconds: self.run_timeout.unwrap_or(0),
            tty: self.tty,
            stdin: self.interactive,
            ports: self.publish,
            storage: self.mount_path.map(|mount_path| StorageMount {
                mount_path,
                subpath: self.mount_subpath.unwrap_or_default(),
            }),
            participant: self.participant.unwrap_or_default(),
            role: self.role.unwrap_or_default(),
            pull: self.pull.policy() as i32,
            credentials,
            service: self.service,
            // Followed, bus deletes the run itself once it has printed all of it.
            auto_remove: rm && detach,
        };
        if self.service {
            return service(ctx, spec).await;
        }
        if detach {
            return detached(ctx, spec).await;
        }
        if self.interactive || self.tty {
            return attached(ctx, spec, rm).await;
        }
        // Ctrl-C stops the run rather than leaving it running unseen (see `interrupts`).
        let mut interrupts = Interrupts::listen()?;
        let request = ctx.long_request(RunRequest { spec: Some(spec) });
        let mut client = ctx.containers();
        let mut events = match interrupts.during(ctx, "", client.run(request)).await {
            Ok(events) => events?.into_inner(),
            Err(GaveUp(code)) => return Ok(code),
        };
        let mut run_id = String::new();
        let mut last_seq = 0;
        let mut output = if json {
            Output::capture()
        } else {
            Output::lock()
        };
        let exited = loop {
            let event = match interrupts.during(ctx, &run_id, events.next()).await {
                Ok(Some(event)) => event,
                Ok(None) => return Err(CliError::StreamCut(run_id)),
                Err(GaveUp(code)) => return Ok(code),
            };
            let event = match event {
                Ok(event) => event,
                // busd went away after the run was accepted: follow the run's output from
                // where it stopped, through a busd started again.
                Err(status) if busd_lost(&status) && !run_id.is_empty() => {
                    let resumed = resume(ctx, &run_id, last_seq, &mut output);
                    match interrupts.during(ctx, &run_id, resumed).await {
                        Ok(exited) => break exited?,
                        Err(GaveUp(code)) => return Ok(code),
                    }
                }
                Err(status) => return Err(status.into()),
            };
            match event.event {
                Some(Event::Accepted(run)) => {
                    run_id = run.id;
                    if !json {
                        announce(&run_id);
                    }
                    interrupts.known(ctx, &run_id);
                }
                Some(Event::Output(chunk)) => {
                    if let Err(e) = output.write(&chunk) {
                        if crate::pipe::closed(&e) {
                            ended_by_closed_output(ctx, &run_id).await;
                        }
                        return Err(e.into());
                    }
                    last_seq = chunk.seq;
                }
                Some(Event::Notice(notice)) => show_notice(&notice),
                Some(Event::Exited(exited)) => break exited,
                None => {}
            }
        };
        let code = match interrupts.received() {
            // Stopped because this process was told to stop: as a process killed by it.
            Some(signal) if exited.state == RunState::Stopped as i32 => {
                eprintln!("bus: run {run_id} stopped");
                128 + signal as u8
            }
            _ => exit_code(&run_id, exited.state, exited.exit_code, &exited.reason),
        };
        if json {
            print_result(ctx, &run_id, &exited, &mut output).await?;
        }
        if rm {
            remove(ctx, &run_id).await;
        }
        Ok(code)
    }
}

/// `--rm`: deletes the ended run; a failure is told on stderr and leaves the exit code alone.
async fn remove(ctx: &Ctx, run_id: &str) {
    let request = ctx.request(DeleteRunRequest {
        run_id: run_id.to_owned(),
    });
    if let Err(status) = ctx.containers().delete_run(request).await {
        eprintln!(
            "bus: could not delete run {run_id}: {}; delete it with `bus containers delete {run_id}`",
            CliError::from(status)
        );
    }
}

/// `-d`: starts the run and returns once it runs, as `docker run -d` does, so an exec into it
/// works at once: its id on stdout. A run that already ended prints its id too, with a note
/// on stderr saying how it ended; one that failed to start prints the reason and exits 125, or
/// as a shell would when its command was not found (127) or not executable (126).
async fn detached(ctx: &Ctx, spec: RunSpec) -> Result<u8, CliError> {
    let auto_remove = spec.auto_remove;
    let request = ctx.request(CreateRunRequest {
        spec: Some(spec),
        wait_running: true,
        wait_ready: false,
    });
    // A refusal (the image missing, say) is an error of bus' own: 125, through main.
    let run = ctx.containers().create_run(request).await?.into_inner();
    let id = &run.id;
    let state = RunState::try_from(run.state).unwrap_or(RunState::Unspecified);
    if state == RunState::Failed && run.started_at.is_none() {
        // Through main's error path: 125, as run's own failures.
        return Err(CliError::RunFailedToStart {
            id: id.clone(),
            reason: with_reason(&run.reason),
            code: run.exit_code,
        });
    }
    println!("{id}");
    // With --rm an ended run is gone, and its output with it.
    let read_it = if auto_remove {
        " (and was deleted: --rm)".to_owned()
    } else {
        format!("; `bus containers logs {id}` prints its output")
    };
    match state {
        RunState::Running => {}
        RunState::Exited => eprintln!(
            "bus: note: run {id} already exited with code {}{read_it}",
            run.exit_code.unwrap_or_default()
        ),
        RunState::Queued | RunState::Starting | RunState::Unspecified => eprintln!(
            "bus: note: run {id} is still {}; `bus containers get {id}` shows when it runs",
            render::state_name(run.state)
        ),
        RunState::Failed | RunState::Stopped | RunState::TimedOut => eprintln!(
            "bus: note: run {id} already ended {}{}{read_it}",
            render::state_name(run.state),
            with_reason(&run.reason)
        ),
    }
    Ok(0)
}

/// How long `--service` waits for the port, beyond the usual call deadline.
const SERVICE_READY_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// How much of a service's output a failed start shows.
const SERVICE_TAIL_CHUNKS: u32 = 20;

/// `--service`: starts the run and returns once every TCP port it publishes accepts
/// connections, printing their URLs; a run that ended first (or never became ready) fails
/// with its last output on stderr.
async fn service(ctx: &Ctx, spec: RunSpec) -> Result<u8, CliError> {
    let request = ctx.request_allowing(
        CreateRunRequest {
            spec: Some(spec),
            wait_running: false,
            wait_ready: true,
        },
        SERVICE_READY_WAIT,
    );
    let run = ctx.containers().create_run(request).await?.into_inner();
    let id = &run.id;
    let state = RunState::try_from(run.state).unwrap_or(RunState::Unspecified);
    let urls: Vec<String> = run
        .ports
        .iter()
        .filter(|p| p.protocol.is_empty() || p.protocol == "tcp")
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let host = match p.host_ip.as_str() {
                "" | "0.0.0.0" => "127.0.0.1".to_owned(),
                "::" => "[::1]".to_owned(),
                ip if ip.contains(':') => format!("[{ip}]"),
                ip => ip.to_owned(),
            };
            format!("http://{host}:{}", p.host_port)
        })
        .collect();
    if state == RunState::Running && !urls.is_empty() {
        for url in &urls {
            println!("{url}");
        }
        eprintln!(
            "bus: service {id} is ready; `bus containers logs -f {id}` follows it, `bus \
             containers stop {id}` stops it"
        );
        return Ok(0);
    }
    print_tail(ctx, id).await;
    let why = match state {
        RunState::Queued | RunState::Starting | RunState::Running | RunState::Unspecified => {
            format!(
                "is {} but no published port accepts connections yet; it is left running \
                 (`bus containers stop {id}` stops it)",
                render::state_name(run.state)
            )
        }
        RunState::Exited => format!(
            "exited with code {} before it was ready",
            run.exit_code.unwrap_or_default()
        ),
        RunState::Failed | RunState::Stopped | RunState::TimedOut => format!(
            "ended {}{} before it was ready",
            render::state_name(run.state),
            with_reason(&run.reason)
        ),
    };
    Err(CliError::ServiceNotReady {
        id: id.clone(),
        why,
    })
}

/// The last lines of a run's output, on stderr (best effort: a failure to read them is not
/// the error to report).
async fn print_tail(ctx: &Ctx, id: &str) {
    let request = ctx.request(StreamLogsRequest {
        run_id: id.to_owned(),
        tail: SERVICE_TAIL_CHUNKS,
        ..StreamLogsRequest::default()
    });
    let Ok(response) = ctx.containers().stream_logs(request).await else {
        return;
    };
    let mut events = response.into_inner();
    let mut err = std::io::stderr().lock();
    while let Some(Ok(event)) = events.next().await {
        if let Some(bus::proto::containers::v1::log_event::Event::Output(chunk)) = event.event {
            let _ = std::io::Write::write_all(&mut err, &chunk.data);
        }
    }
}

/// Tells a run's (or build's) id on stderr, dimmed, when stderr is a terminal (so `bus
/// containers delete`, `logs` or `get` can be given it); a pipe or a file gets only the output.
pub fn announce(run_id: &str) {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return;
    }
    if render::colour_allowed(true, std::env::var_os("NO_COLOR").as_deref()) {
        eprintln!("\x1b[2m{run_id} started\x1b[0m");
    } else {
        eprintln!("{run_id} started");
    }
}

/// Prints the ended run's record and its captured output as one JSON document.
async fn print_result(
    ctx: &Ctx,
    run_id: &str,
    exited: &RunExited,
    output: &mut Output,
) -> Result<(), CliError> {
    let request = ctx.request(GetRunRequest {
        run_id: run_id.to_owned(),
    });
    // The record has the times; should it be unreadable, the exit event still says how it
    // ended.
    let run = match ctx.containers().get_run(request).await {
        Ok(run) => run.into_inner(),
        Err(_) => Run {
            id: run_id.to_owned(),
            state: exited.state,
            exit_code: exited.exit_code,
            reason: exited.reason.clone(),
            ..Default::default()
        },
    };
    let (stdout, stderr) = output.captured();
    let result = render::RunResultJson::new(&run, OffsetDateTime::now_utc(), stdout, stderr);
    render::print_json(&result)?;
    Ok(())
}

/// Follows run `run_id`'s output after `last_seq` through a busd reached again, to its exit.
async fn resume(
    ctx: &Ctx,
    run_id: &str,
    last_seq: u64,
    output: &mut Output,
) -> Result<RunExited, CliError> {
    // A busd that is dying may still accept a connection; print_logs retries that.
    if !ctx.reconnect().await? {
        return Err(CliError::StreamCut(run_id.to_owned()));
    }
    let request = StreamLogsRequest {
        run_id: run_id.to_owned(),
        follow: true,
        after_seq: last_seq,
        ..Default::default()
    };
    print_logs(ctx, request, output, true)
        .await?
        .ok_or_else(|| CliError::StreamCut(run_id.to_owned()))
}

/// Creates the run and attaches this terminal (or stdin) to its command until it ends.
async fn attached(ctx: &Ctx, spec: RunSpec, rm: bool) -> Result<u8, CliError> {
    let (tty, stdin) = (spec.tty, spec.stdin);
    let request = ctx.request(CreateRunRequest {
        spec: Some(spec),
        wait_running: false,
        wait_ready: false,
    });
    let run = ctx.containers().create_run(request).await?.into_inner();
    attach(ctx, &run.id, tty, stdin, rm).await
}

/// Attaches this terminal (or stdin, with `stdin`) to the run's own command until it ends;
/// its output from the first byte. The run's final record decides the exit code (124 when
/// it timed out, as for a run that is not attached); `rm` then deletes it.
pub async fn attach(
    ctx: &Ctx,
    run_id: &str,
    tty: bool,
    stdin: bool,
    rm: bool,
) -> Result<u8, CliError> {
    let start = ExecStart {
        run_id: run_id.to_owned(),
        attach: true,
        tty,
        stdin,
        initial_size: if tty {
            super::exec::window_size()
        } else {
            None
        },
        ..Default::default()
    };
    let what = format!("the session attached to run {run_id}");
    let session = super::exec::session(ctx, start, &what).await;
    // A reader that went away ends bus as it would any command writing into its pipe, and
    // the output was not all printed, so `rm` keeps the run.
    if matches!(&session, Err(CliError::Output(e)) if crate::pipe::closed(e)) {
        return session;
    }
    let request = ctx.request(GetRunRequest {
        run_id: run_id.to_owned(),
    });
    match ctx.containers().get_run(request).await {
        Ok(run) => {
            let run = run.into_inner();
            let ended = !matches!(
                RunState::try_from(run.state).unwrap_or(RunState::Unspecified),
                RunState::Queued | RunState::Starting | RunState::Running | RunState::Unspecified
            );
            if ended {
                let code = exit_code(&run.id, run.state, run.exit_code, &run.reason);
                if rm {
                    remove(ctx, &run.id).await;
                }
                return Ok(code);
            }
            session
        }
        Err(_) => session,
    }
}

/// The process exit code for a finished run, as `docker run`'s: the command's own exit code
/// whenever it has one (137 for a run killed at a limit, 127 for a command not found), 124 when
/// the run hit its timeout, 125 when it ended without one. Explains on stderr when the run did
/// not just exit.
pub fn exit_code(run_id: &str, state: i32, code: Option<i32>, reason: &str) -> u8 {
    let state = RunState::try_from(state).unwrap_or(RunState::Unspecified);
    match (state, code) {
        (RunState::Exited, code) => code.unwrap_or_default().clamp(0, 255) as u8,
        (RunState::TimedOut, _) => {
            eprintln!("bus: run {run_id} timed out{}", with_reason(reason));
            EXIT_TIMED_OUT
        }
        (other, code) => {
            eprintln!(
                "bus: run {run_id} ended {}{}",
                render::state_name(other as i32),
                with_reason(reason)
            );
            code.map_or(EXIT_RUN_FAILED, |code| code.clamp(0, 255) as u8)
        }
    }
}

fn with_reason(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_has_an_exit_code_passes_it_on_whatever_its_state() {
        let code = |state: RunState, code| exit_code("run_x", state as i32, code, "why");
        assert_eq!(code(RunState::Exited, Some(3)), 3);
        assert_eq!(code(RunState::Exited, Some(300)), 255);
        assert_eq!(
            code(RunState::Failed, Some(137)),
            137,
            "OOM or output limit"
        );
        assert_eq!(code(RunState::Failed, Some(127)), 127, "command not found");
        assert_eq!(
            code(RunState::Stopped, Some(143)),
            143,
            "stopped by SIGTERM"
        );
        assert_eq!(code(RunState::Failed, None), EXIT_RUN_FAILED);
        assert_eq!(code(RunState::TimedOut, Some(137)), EXIT_TIMED_OUT);
    }
}
