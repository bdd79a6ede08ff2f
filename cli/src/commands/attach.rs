//! `bus containers attach [--no-stdin] RUN`: this terminal (or stdin) on a running run's own
//! command, as `docker attach` does, until the run ends; `bus` exits with its exit code.

use bus::proto::containers::v1::GetRunRequest;

use crate::context::Ctx;
use crate::error::CliError;

/// Attaches to a run's own command.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run, by id or name.
    #[arg(value_name = "RUN")]
    run_id: String,
    /// Do not pass this process's stdin on (a run started with -i otherwise gets it).
    #[arg(long)]
    no_stdin: bool,
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        // The run says whether its command has a terminal and an open stdin.
        let request = ctx.request(GetRunRequest {
            run_id: self.run_id.clone(),
        });
        let run = ctx.containers().get_run(request).await?.into_inner();
        super::run::attach(ctx, &run.id, run.tty, run.stdin && !self.no_stdin, false).await
    }
}
