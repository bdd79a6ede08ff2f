//! `bus containers get RUN`: one run's record.

use bus::proto::containers::v1::GetRunRequest;
use time::OffsetDateTime;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render;

/// Shows one run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run.
    #[arg(value_name = "RUN_ID")]
    run_id: String,
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let request = ctx.request(GetRunRequest {
            run_id: self.run_id,
        });
        let run = ctx.containers().get_run(request).await?.into_inner();
        print!("{}", render::run_details(&run, OffsetDateTime::now_utc()));
        Ok(0)
    }
}
