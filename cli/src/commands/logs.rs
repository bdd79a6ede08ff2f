//! `bus containers logs [-f] [--since-seq N] [--tail N] RUN`: a run's output, resumable.

use bus::proto::containers::v1::{StdStream, StreamLogsRequest, log_event::Event};

use crate::context::Ctx;
use crate::error::CliError;
use crate::output::Output;

/// Prints a run's output.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run.
    #[arg(value_name = "RUN_ID")]
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
        let request = ctx.request(StreamLogsRequest {
            run_id: self.run_id.clone(),
            follow: self.follow,
            after_seq: self.since_seq.unwrap_or(0),
            tail: self.tail.unwrap_or(0),
            streams,
            keepalive_seconds: 0,
        });
        let mut events = ctx.containers().stream_logs(request).await?.into_inner();
        let mut output = Output::lock();
        while let Some(event) = events.message().await? {
            match event.event {
                Some(Event::Output(chunk)) => output.write(&chunk)?,
                Some(Event::Gap(gap)) => {
                    eprintln!(
                        "bus: output missing before seq {}: {}",
                        gap.first_available_seq, gap.reason
                    );
                }
                Some(Event::Exited(_)) => return Ok(0),
                Some(Event::Keepalive(_)) | None => {}
            }
        }
        if self.follow {
            return Err(CliError::StreamCut(self.run_id));
        }
        Ok(0)
    }
}
