//! `bus containers logs [-f] [--since-seq N] [--tail N] RUN`: a run's output, resumable.
//!
//! When busd goes away under the stream (it died, or was killed), the command starts it again
//! and resumes after the last seq it printed, so no chunk is lost or printed twice.

use bus::proto::containers::v1::{
    NoticeKind, RunExited, StdStream, StreamLogsRequest, StreamNotice, log_event::Event,
};

use crate::context::Ctx;
use crate::error::CliError;
use crate::output::Output;
use crate::resume::{BUSD_LOST_STEP, Resumes};

/// Prints a run's output.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run, by id or name.
    #[arg(value_name = "RUN")]
    run_id: String,
    /// Keep printing new output until the run ends.
    #[arg(short, long)]
    follow: bool,
    /// Only output after this seq (resume where an earlier read stopped).
    #[arg(long, value_name = "N", conflicts_with = "tail")]
    since_seq: Option<u64>,
    /// Only the last N chunks that exist now.
    #[arg(long, value_name = "N")]
    tail: Option<u32>,
    /// Only stdout.
    #[arg(long, conflicts_with = "stderr")]
    stdout: bool,
    /// Only stderr.
    #[arg(long)]
    stderr: bool,
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let streams = match (self.stdout, self.stderr) {
            (true, _) => vec![StdStream::Stdout as i32],
            (_, true) => vec![StdStream::Stderr as i32],
            _ => Vec::new(),
        };
        let request = StreamLogsRequest {
            run_id: self.run_id.clone(),
            follow: self.follow,
            after_seq: self.since_seq.unwrap_or(0),
            tail: self.tail.unwrap_or(0),
            streams,
            keepalive_seconds: 0,
            exit_only: false,
        };
        let mut output = Output::lock();
        match print_logs(ctx, request, &mut output, false).await? {
            Some(_) => Ok(0),
            None if self.follow => Err(CliError::StreamCut(self.run_id)),
            None => Ok(0),
        }
    }
}

/// Prints the chunks of `request`'s stream as they come; returns the exit event, or `None`
/// when the stream ended without one. Resumes after the last printed seq when busd is lost
/// (see the module docs), saying so on stderr once the resumed stream is open; `resumed`
/// says the caller resumes already (and the line is due at once).
pub async fn print_logs(
    ctx: &Ctx,
    mut request: StreamLogsRequest,
    output: &mut Output,
    mut resumed: bool,
) -> Result<Option<RunExited>, CliError> {
    let mut resumes = Resumes::new(BUSD_LOST_STEP);
    loop {
        let mut progressed = false;
        let outcome = stream_once(ctx, &mut request, output, &mut resumed, &mut progressed).await;
        match outcome {
            Err(lost) if lost.busd_lost() => {
                if progressed {
                    resumes.progressed();
                }
                if !resumes.reconnect(ctx).await? {
                    return Err(lost);
                }
                resumed = true;
            }
            other => return other,
        }
    }
}

/// Shows a notice of busd's on stderr: that it lost the runner and retries (one line per
/// outage); a restored runner shows itself by the output that follows.
pub fn show_notice(notice: &StreamNotice) {
    if notice.kind == NoticeKind::UpstreamUnreachable as i32 {
        eprintln!("bus: {}", notice.message);
    }
}

/// The line shown on stderr when a stream goes on through a new connection to busd.
pub fn resuming(after_seq: u64) -> String {
    format!("bus: the connection to busd broke; reconnected, resuming after seq {after_seq}")
}

/// One stream: prints its chunks, moving `request`'s `after_seq` past each (and dropping its
/// `tail`, so a resumed stream starts right after what was printed).
async fn stream_once(
    ctx: &Ctx,
    request: &mut StreamLogsRequest,
    output: &mut Output,
    resumed: &mut bool,
    progressed: &mut bool,
) -> Result<Option<RunExited>, CliError> {
    let mut events = ctx
        .containers()
        .stream_logs(ctx.long_request(request.clone()))
        .await?
        .into_inner();
    if std::mem::take(resumed) {
        eprintln!("{}", resuming(request.after_seq));
    }
    while let Some(event) = events.message().await? {
        match event.event {
            Some(Event::Output(chunk)) => {
                output.write(&chunk)?;
                request.after_seq = chunk.seq;
                request.tail = 0;
                *progressed = true;
            }
            Some(Event::Gap(gap)) => {
                eprintln!(
                    "bus: output missing before seq {}: {}",
                    gap.first_available_seq, gap.reason
                );
            }
            Some(Event::Exited(exited)) => return Ok(Some(exited)),
            Some(Event::Notice(notice)) => show_notice(&notice),
            Some(Event::Keepalive(_)) | None => {}
        }
    }
    Ok(None)
}
