//! `bus containers wait RUN`: block until a run ends; exit with its exit code. The wait is a
//! follow of the run without its output (`exit_only`), so busd's notices (a runner it lost
//! and retries) reach stderr. When busd goes away meanwhile, the wait is asked again of a
//! busd started again.

use bus::proto::containers::v1::{RunExited, StreamLogsRequest, log_event::Event};

use crate::commands::logs::show_notice;
use crate::commands::run::exit_code;
use crate::context::Ctx;
use crate::error::{CliError, busd_lost};
use crate::resume::{BUSD_LOST_STEP, Resumes};

/// Waits for a run to end.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run, by id or name.
    #[arg(value_name = "RUN")]
    run_id: String,
}

impl Args {
    /// Runs the command; returns the run's exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let mut resumes = Resumes::new(BUSD_LOST_STEP);
        let exited = loop {
            match wait_once(ctx, &self.run_id).await {
                Ok(Some(exited)) => break exited,
                Ok(None) => return Err(CliError::StreamCut(self.run_id)),
                // Waiting is idempotent: ask a busd started again.
                Err(status) if busd_lost(&status) => {
                    if !resumes.reconnect(ctx).await? {
                        return Err(status.into());
                    }
                }
                Err(status) => return Err(status.into()),
            }
        };
        Ok(exit_code(
            &self.run_id,
            exited.state,
            exited.exit_code,
            &exited.reason,
        ))
    }
}

/// Follows the run without its output until its exit, showing busd's notices; `None` when
/// the stream ended without the exit.
async fn wait_once(ctx: &Ctx, run_id: &str) -> Result<Option<RunExited>, tonic::Status> {
    let request = ctx.long_request(StreamLogsRequest {
        run_id: run_id.to_owned(),
        follow: true,
        exit_only: true,
        ..Default::default()
    });
    let mut events = ctx.containers().stream_logs(request).await?.into_inner();
    while let Some(event) = events.message().await? {
        match event.event {
            Some(Event::Notice(notice)) => show_notice(&notice),
            Some(Event::Exited(exited)) => return Ok(Some(exited)),
            _ => {}
        }
    }
    Ok(None)
}
