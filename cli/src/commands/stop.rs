//! `bus containers stop [--force] [--grace SECONDS] RUN...`: stop runs; `bus containers kill
//! RUN...`: the same with `--force`.

use bus::proto::containers::v1::StopRunRequest;

use crate::context::Ctx;
use crate::error::CliError;

/// Stops runs: SIGTERM, then SIGKILL after the grace period.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The runs to stop, by id or name.
    #[arg(required = true, value_name = "RUN")]
    run_ids: Vec<String>,
    /// Seconds between SIGTERM and SIGKILL [default: the runner's, 10].
    #[arg(long, value_name = "SECONDS")]
    grace: Option<u32>,
    /// Kill at once.
    #[arg(short, long)]
    force: bool,
}

impl Args {
    /// Runs the command; returns the exit code. Stops at the first failure.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        for run_id in self.run_ids {
            // The call lasts as long as the grace period (the runner's default is 10 s).
            let grace = std::time::Duration::from_secs(self.grace.unwrap_or(10).into());
            let request = ctx.request_allowing(
                StopRunRequest {
                    run_id: run_id.clone(),
                    grace_seconds: self.grace.unwrap_or(0),
                    force: self.force,
                },
                grace,
            );
            ctx.containers().stop_run(request).await?;
            println!("{run_id}");
        }
        Ok(0)
    }
}

/// Kills runs at once (SIGKILL): `stop --force`, under the name docker gives it.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// The runs to kill, by id or name.
    #[arg(required = true, value_name = "RUN")]
    run_ids: Vec<String>,
}

impl KillArgs {
    /// Runs the command; returns the exit code. Stops at the first failure.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        Args {
            run_ids: self.run_ids,
            grace: None,
            force: true,
        }
        .run(ctx)
        .await
    }
}
