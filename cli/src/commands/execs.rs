//! `bus containers execs logs|wait|get EXEC_ID`: detached execs (`bus containers exec -d`),
//! read later — as `logs`, `wait` and `get` read runs.

use std::io::Write as _;

use bus::proto::containers::v1::{
    ExecInfo, ExecRequest, ExecStart, ExecState, GetExecRequest, exec_request::Msg as Req,
    exec_response::Msg as Resp,
};
use bus::timestamp::timestamp_rfc3339 as rfc3339;
use futures::StreamExt as _;
use serde::Serialize;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render::OutputArgs;

/// Exit code when a detached exec ended without an exit code (as `docker exec`).
const EXIT_NO_STATUS: u8 = 125;

/// Detached execs: their output, exit code and state.
#[derive(Debug, clap::Subcommand)]
pub enum Execs {
    /// Print a detached exec's output from its start; -f follows it until it ends.
    Logs(LogsArgs),
    /// Wait for a detached exec to end and exit with its exit code.
    Wait(IdArg),
    /// Show a detached exec: state, exit code, command, times.
    Get(GetArgs),
}

/// `execs logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The exec id that `bus containers exec -d` printed.
    #[arg(value_name = "EXEC_ID")]
    exec_id: String,
    /// Keep printing new output until the exec ends.
    #[arg(short, long)]
    follow: bool,
}

/// An exec id.
#[derive(Debug, clap::Args)]
pub struct IdArg {
    /// The exec id that `bus containers exec -d` printed.
    #[arg(value_name = "EXEC_ID")]
    exec_id: String,
}

/// `execs get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The exec id that `bus containers exec -d` printed.
    #[arg(value_name = "EXEC_ID")]
    exec_id: String,
    #[command(flatten)]
    output: OutputArgs,
}

impl Execs {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        match self {
            Execs::Logs(args) => {
                let end = replay(ctx, &args.exec_id, !args.follow, true).await?;
                if args.follow && end.is_none() {
                    return Err(CliError::Local(format!(
                        "following exec {} ended before it did; run the command again",
                        args.exec_id
                    )));
                }
                Ok(0)
            }
            Execs::Wait(args) => match replay(ctx, &args.exec_id, false, false).await? {
                Some(code) => Ok(exit_code(&args.exec_id, code)),
                None => Err(CliError::Local(format!(
                    "the wait for exec {} ended before the exec did; run the command again",
                    args.exec_id
                ))),
            },
            Execs::Get(args) => {
                let request = ctx.request(GetExecRequest {
                    exec_id: args.exec_id,
                });
                let exec = ctx
                    .exec()
                    .get_exec(request)
                    .await?
                    .into_inner()
                    .exec
                    .unwrap_or_default();
                args.output.print(
                    std::slice::from_ref(&exec),
                    |exec| &exec.exec_id,
                    |_| ExecJson::new(&exec),
                    |_| details(&exec),
                )?;
                Ok(0)
            }
        }
    }
}

fn exit_code(exec_id: &str, code: i32) -> u8 {
    u8::try_from(code).unwrap_or_else(|_| {
        eprintln!("bus: exec {exec_id} exited with code {code}");
        EXIT_NO_STATUS
    })
}

/// Re-attaches to a detached exec: its output from the start (printed when `print`), then
/// with `snapshot` nothing more, else what comes until it ends. Returns its exit code once it
/// ended.
async fn replay(
    ctx: &Ctx,
    exec_id: &str,
    snapshot: bool,
    print: bool,
) -> Result<Option<i32>, CliError> {
    let start = ExecStart {
        exec_id: exec_id.to_owned(),
        snapshot,
        ..Default::default()
    };
    let requests = futures::stream::iter([ExecRequest {
        msg: Some(Req::Start(start)),
    }])
    // Held open: a half-close is only stdin's EOF, but nothing more is sent.
    .chain(futures::stream::pending());
    let mut responses = ctx
        .exec()
        .exec(ctx.session_request(requests))
        .await?
        .into_inner();
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    let (mut out_offset, mut err_offset) = (0u64, 0u64);
    while let Some(response) = responses.next().await {
        match response?.msg {
            Some(Resp::Stdout(chunk)) => {
                check(&mut out_offset, chunk.offset, chunk.data.len(), "stdout")?;
                if print {
                    stdout.write_all(&chunk.data)?;
                    stdout.flush()?;
                }
            }
            Some(Resp::Stderr(chunk)) => {
                check(&mut err_offset, chunk.offset, chunk.data.len(), "stderr")?;
                if print {
                    stderr.write_all(&chunk.data)?;
                    stderr.flush()?;
                }
            }
            Some(Resp::Exit(exit)) => return Ok(Some(exit.exit_code)),
            Some(Resp::Started(_) | Resp::Keepalive(_)) | None => {}
        }
    }
    Ok(None)
}

/// Output must arrive without holes or repeats.
fn check(expected: &mut u64, offset: u64, len: usize, stream: &str) -> Result<(), CliError> {
    if offset != *expected {
        return Err(CliError::Local(format!(
            "the exec's {stream} arrived at byte {offset}, expected {expected}; output was lost"
        )));
    }
    *expected += len as u64;
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    match ExecState::try_from(state).unwrap_or(ExecState::Unspecified) {
        ExecState::Running => "running",
        ExecState::Exited => "exited",
        ExecState::Failed => "failed",
        ExecState::Unspecified => "unknown",
    }
}

/// `execs get -o json`: fields are only ever added.
#[derive(Debug, Serialize)]
struct ExecJson {
    id: String,
    run_id: String,
    state: &'static str,
    exit_code: Option<i32>,
    signal: Option<i32>,
    message: Option<String>,
    argv: Vec<String>,
    output_bytes: u64,
    created_at: Option<String>,
    finished_at: Option<String>,
}

impl ExecJson {
    fn new(exec: &ExecInfo) -> Self {
        ExecJson {
            id: exec.exec_id.clone(),
            run_id: exec.run_id.clone(),
            state: state_name(exec.state),
            exit_code: exec.exit_code,
            signal: exec.signal,
            message: (!exec.message.is_empty()).then(|| exec.message.clone()),
            argv: exec.argv.clone(),
            output_bytes: exec.output_bytes,
            created_at: rfc3339(exec.created_at.as_ref()),
            finished_at: rfc3339(exec.finished_at.as_ref()),
        }
    }
}

/// One field per line.
fn details(exec: &ExecInfo) -> String {
    let json = ExecJson::new(exec);
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10} {v}\n"));
    line("id:", json.id);
    line("run:", json.run_id);
    line("state:", json.state.to_owned());
    line("exit:", dash(json.exit_code.map(|c| c.to_string())));
    line("signal:", dash(json.signal.map(|c| c.to_string())));
    line("message:", dash(json.message));
    line("command:", json.argv.join(" "));
    line("output:", format!("{} bytes", json.output_bytes));
    line("created:", dash(json.created_at));
    line("finished:", dash(json.finished_at));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_show_every_field() {
        let exec = ExecInfo {
            exec_id: "exec_1".into(),
            run_id: "run_1".into(),
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            state: ExecState::Exited as i32,
            exit_code: Some(3),
            output_bytes: 12,
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let text = details(&exec);
        assert!(text.contains("state:     exited"), "{text}");
        assert!(text.contains("exit:      3"), "{text}");
        assert!(text.contains("command:   sh -c exit 3"), "{text}");
        assert!(text.contains("created:   1970-01-01T00:00:00Z"), "{text}");
        assert!(text.contains("finished:  -"), "{text}");
    }
}
