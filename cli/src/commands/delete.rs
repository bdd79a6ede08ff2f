//! `bus containers delete RUN_ID...`: delete runs (and their containers).

use bus::proto::containers::v1::DeleteRunRequest;

use crate::context::Ctx;
use crate::error::CliError;

/// Deletes runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The runs to delete, by id or name.
    #[arg(required = true, value_name = "RUN")]
    run_ids: Vec<String>,
    /// Taken as docker's `rm -f` takes it: a run still running is killed and deleted, with
    /// this flag or without it.
    #[arg(short, long)]
    force: bool,
}

impl Args {
    /// Runs the command; returns the exit code. Stops at the first failure.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        for run_id in self.run_ids {
            let request = ctx.request(DeleteRunRequest {
                run_id: run_id.clone(),
            });
            ctx.containers().delete_run(request).await?;
            println!("{run_id}");
        }
        Ok(0)
    }
}
