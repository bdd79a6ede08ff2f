//! `bus`: the command-line client of busd. Thin: it parses arguments, reaches busd over its
//! Unix socket (starting it when absent), makes gRPC calls and renders the answers. It
//! never speaks HTTP and never holds more of a token than it forwards from its environment.

// This crate's `print!` and `println!` shadow std's (they are defined before the modules, so
// every module sees them): a closed stdout ends `bus` quietly, as it ends coreutils, instead
// of panicking (see `pipe`).
macro_rules! print {
    ($($arg:tt)*) => { $crate::pipe::print(format_args!($($arg)*), false) };
}
macro_rules! println {
    () => { $crate::pipe::print(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::pipe::print(format_args!($($arg)*), true) };
}

mod commands;
mod context;
mod daemon;
mod deferred;
mod env;
mod error;
mod guard;
mod guides;
mod interrupts;
mod link;
mod output;
mod pipe;
mod progress;
mod render;
mod resume;
mod settings;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::context::{Ctx, Overrides};
use crate::deferred::Deferred;
use crate::error::CliError;

/// bus: run containers through the local busd daemon.
#[derive(Debug, Parser)]
#[command(
    name = "bus",
    version,
    about,
    propagate_version = true,
    after_help = guides::ALL
)]
struct Cli {
    /// The API origin busd should call, e.g. https://runner.example.com
    /// [env: BUS_AI_API_URL, BUS_API_BASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    api_url: Option<String>,
    /// Read the bearer token from this file (mode 0600). Tokens are never accepted as
    /// arguments [default: $BUS_AI_TOKEN, $BUS_API_TOKEN, ~/.config/bus/auth/api-token]
    #[arg(long, global = true, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Give up on a call after this long, e.g. 30s or 2m; not a run's own time limit, which is
    /// `run --run-timeout`, nor a followed output stream
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// busd's socket [env: BUS_SOCKET] [default: $XDG_RUNTIME_DIR/bus/busd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "one command line, parsed once per process"
)]
enum Command {
    /// Runs and the runner.
    #[command(subcommand)]
    Containers(Deferred<Containers>),
    /// The local daemon.
    #[command(subcommand)]
    Daemon(Deferred<Daemon>),
    /// Images: the account's, and the public ones.
    #[command(subcommand)]
    Images(Deferred<commands::images::Images>),
    /// Image builds.
    #[command(subcommand)]
    Builds(Deferred<commands::builds::Builds>),
    /// Credentials: whom the token speaks for; a new token from an API key.
    #[command(subcommand)]
    Auth(Deferred<commands::auth::Auth>),
    /// The account's plan, usage in the current period and limits.
    #[command(after_help = guides::CREDENTIALS)]
    Billing(Deferred<commands::billing::Args>),
    /// Settings in config.toml: api_url, timeout, output, socket.
    #[command(subcommand)]
    Config(Deferred<commands::config::Config>),
    /// Print a shell completion script: `source <(bus completion bash)`.
    #[command(after_help = guides::CLI)]
    Completion(commands::completion::CompletionArgs),
    /// Print the man page (or write every page with --dir).
    #[command(after_help = guides::CLI)]
    Man(commands::completion::ManArgs),
    /// The whole deployment on this machine: Podman's API service, bus-runner, busd.
    #[command(subcommand)]
    Local(Deferred<commands::local::Local>),
}

#[derive(Debug, Subcommand)]
enum Containers {
    /// Show the runner's state, engine and profiles.
    Status(Deferred<commands::status::Args>),
    /// Start a run and stream its output (or detach with -d).
    Run(Deferred<commands::run::Args>),
    /// List the account's runs, newest first.
    #[command(visible_alias = "ls", alias = "ps")]
    Runs(Deferred<commands::runs::Args>),
    /// Delete runs.
    #[command(visible_alias = "rm")]
    Delete(Deferred<commands::delete::Args>),
    /// Show one run.
    #[command(alias = "inspect")]
    Get(Deferred<commands::get::Args>),
    /// Print a run's output; -f follows it until the run ends.
    Logs(Deferred<commands::logs::Args>),
    /// Wait for a run to end and exit with its exit code.
    Wait(Deferred<commands::wait::Args>),
    /// Stop runs (SIGTERM, then SIGKILL after a grace period).
    Stop(Deferred<commands::stop::Args>),
    /// Kill runs at once (SIGKILL), as `stop --force`.
    Kill(Deferred<commands::stop::KillArgs>),
    /// Run a command in a running run: -i passes stdin, -t allocates a terminal.
    Exec(Deferred<commands::exec::Args>),
    /// Attach this terminal (or stdin) to a run's own command until it ends.
    Attach(Deferred<commands::attach::Args>),
    /// Detached execs (`exec -d`): their output, exit code and state.
    #[command(subcommand)]
    Execs(Deferred<commands::execs::Execs>),
}

impl Cli {
    /// Whether the command passes on a container's exit code (`run`, `exec`, `attach`,
    /// `wait`, `execs wait`): its own failures then exit [`error::exit::TOOL_FAILED`].
    fn passes_exit_code(&self) -> bool {
        matches!(
            &self.command,
            Command::Containers(Deferred(
                Containers::Run(_)
                    | Containers::Exec(_)
                    | Containers::Attach(_)
                    | Containers::Wait(_)
                    | Containers::Execs(Deferred(commands::execs::Execs::Wait(_)))
            ))
        )
    }
}

#[derive(Debug, Subcommand)]
enum Daemon {
    /// Show busd's version, upstream and identity (starting it if needed).
    Info(commands::info::Args),
    #[command(flatten)]
    Lifecycle(commands::daemon::Lifecycle),
}

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if let Some(refusal) = guard::secret_argument(&args) {
        eprintln!("bus: error: {refusal}");
        return ExitCode::from(2);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let hint = usage::hint(&e, &args, |word| {
                // Built only on this error path; finds aliases (`ps`, `rm`) too.
                let containers = <Containers as clap::Subcommand>::augment_subcommands(
                    clap::Command::new("containers"),
                );
                containers.find_subcommand(word).is_some()
            });
            if let Some(line) = hint {
                eprintln!("bus: error: {line}");
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    let passes_exit_code = cli.passes_exit_code();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bus: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_once_more_on_a_stale_busd(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(CliError::Output(e)) if pipe::closed(&e) => pipe::die(),
        Err(e) => {
            // Ids and names a user typed come back in messages: never raw to the terminal.
            eprintln!("bus: error: {}", error::escape(&e.to_string()));
            ExitCode::from(if passes_exit_code {
                e.command_exit_code().unwrap_or(error::exit::TOOL_FAILED)
            } else {
                e.exit_code()
            })
        }
    }
}

/// Runs the command; when busd refused it as older than this bus and a CLI had started that
/// busd, restarts busd and runs the command again (busd refuses before doing anything).
async fn run_once_more_on_a_stale_busd(cli: Cli) -> Result<u8, CliError> {
    let socket = cli.socket.clone();
    let stale = match run(cli).await {
        Err(e) => match e.stale_busd_started_by_cli() {
            Some(pid) => pid,
            None => return Err(e),
        },
        ok => return ok,
    };
    let file = bus::config::Settings::load_default().map_err(|e| CliError::Usage(e.0))?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (socket, _) = bus::config::resolve_socket(socket.as_deref(), env, &file);
    // Another CLI may have replaced it meanwhile: stop only the busd that refused.
    if link::lock_pid(&socket) == Some(stale)
        && let Some(pid) =
            commands::daemon::stop_quietly(&socket, &Overrides::default(), None).await?
    {
        eprintln!(
            "bus: busd (pid {pid}) spoke an older protocol than this bus ({}); stopped it and started a new one",
            bus::PROTOCOL
        );
    }
    run(Cli::parse()).await
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    // These need neither the settings in force nor busd.
    match cli.command {
        Command::Completion(args) => {
            deferred::build_everything();
            return args.run(Cli::command());
        }
        Command::Man(args) => {
            deferred::build_everything();
            return args.run(Cli::command());
        }
        Command::Config(Deferred(command)) => return command.run(),
        _ => {}
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let token_file = match cli.token_file {
        Some(path) if path.is_relative() => Some(std::env::current_dir()?.join(path)),
        other => other,
    };
    let file = bus::config::Settings::load_default().map_err(|e| CliError::Usage(e.0))?;
    let resolved = settings::resolve(
        &settings::Flags {
            api_url: cli.api_url.as_deref(),
            timeout: cli.timeout,
            socket: cli.socket.as_deref(),
        },
        env,
        &file,
    )?;
    render::set_default_format(resolved.output);
    let overrides = Overrides {
        api_url: resolved.api_url,
        token: env("BUS_AI_TOKEN").or_else(|| env("BUS_API_TOKEN")),
        token_file,
        timeout: resolved.timeout,
    };
    let socket = resolved.socket;
    if let Command::Local(Deferred(command)) = cli.command {
        return command
            .run(&socket, overrides.clone(), overrides.token_file.as_deref())
            .await;
    }
    // start/stop/status/restart decide themselves whether to start busd.
    if let Command::Daemon(Deferred(Daemon::Lifecycle(command))) = cli.command {
        return command.run(&socket, overrides).await;
    }
    let token_file = overrides.token_file.clone();
    let ctx = Ctx::new(daemon::connect_or_start(&socket).await?, overrides).reconnectable(socket);
    match cli.command {
        Command::Containers(Deferred(Containers::Status(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Run(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Runs(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Delete(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Get(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Logs(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Wait(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Stop(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Kill(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Exec(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Attach(Deferred(args)))) => args.run(&ctx).await,
        Command::Containers(Deferred(Containers::Execs(Deferred(command)))) => {
            command.run(&ctx).await
        }
        Command::Daemon(Deferred(Daemon::Info(args))) => args.run(&ctx).await,
        Command::Images(Deferred(command)) => command.run(&ctx).await,
        Command::Builds(Deferred(command)) => command.run(&ctx).await,
        Command::Daemon(Deferred(Daemon::Lifecycle(_))) => {
            unreachable!("handled before connecting")
        }
        Command::Auth(Deferred(command)) => command.run(&ctx, token_file.as_deref()).await,
        Command::Billing(Deferred(args)) => args.run(&ctx).await,
        Command::Completion(_) | Command::Man(_) | Command::Config(_) | Command::Local(_) => {
            unreachable!("handled before connecting")
        }
    }
}
