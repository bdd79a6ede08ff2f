//! `bus containers get RUN`: one run's record.

use bus::proto::containers::v1::GetRunRequest;
use time::OffsetDateTime;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render::{self, Format, OutputArgs, RunJson};

/// Shows one run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run.
    #[arg(value_name = "RUN_ID")]
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
        if self.output.quiet {
            println!("{}", run.id);
        } else if self.output.format() == Format::Json {
            render::print_json(&RunJson::new(&run, now))?;
        } else {
            print!("{}", render::run_details(&run, now));
        }
        Ok(0)
    }
}
