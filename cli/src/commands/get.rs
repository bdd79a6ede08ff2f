//! `bus containers get RUN`: one run's record.

use bus::proto::containers::v1::GetRunRequest;
use time::OffsetDateTime;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render::{self, OutputArgs, RunJson};

/// Shows one run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run, by id or name.
    #[arg(value_name = "RUN")]
    run_id: String,
    #[command(flatten)]
    output: OutputArgs,
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let request = ctx.request(GetRunRequest {
            run_id: self.run_id,
        });
        let run = ctx.containers().get_run(request).await?.into_inner();
        let now = OffsetDateTime::now_utc();
        self.output.print(
            std::slice::from_ref(&run),
            |run| &run.id,
            |_| RunJson::new(&run, now),
            |_| render::run_details(&run, now),
        )?;
        Ok(0)
    }
}
