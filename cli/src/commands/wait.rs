//! `bus containers wait RUN`: block until a run ends; exit with its exit code.

use bus::proto::containers::v1::WaitRunRequest;

use crate::commands::run::exit_code;
use crate::context::Ctx;
use crate::error::CliError;

/// Waits for a run to end.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run.
    #[arg(value_name = "RUN_ID")]
    run_id: String,
}

impl Args {
    /// Runs the command; returns the run's exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let request = ctx.request(WaitRunRequest {
            run_id: self.run_id,
        });
        let run = ctx.containers().wait_run(request).await?.into_inner();
        Ok(exit_code(
            &run.id,
            run.state,
            run.exit_code.unwrap_or_default(),
            &run.reason,
        ))
    }
}
