//! `bus containers wait RUN`: block until a run ends; exit with its exit code. When busd goes
//! away meanwhile, the wait is asked again of a busd started again.

use bus::proto::containers::v1::WaitRunRequest;

use crate::commands::logs::MAX_RESUMES;
use crate::commands::run::exit_code;
use crate::context::Ctx;
use crate::error::{CliError, busd_lost};

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
        let mut resumes = 0;
        let run = loop {
            let request = ctx.long_request(WaitRunRequest {
                run_id: self.run_id.clone(),
            });
            match ctx.containers().wait_run(request).await {
                Ok(run) => break run.into_inner(),
                // Waiting is idempotent: ask a busd started again.
                Err(status) if busd_lost(&status) && resumes < MAX_RESUMES => {
                    resumes += 1;
                    // A busd that is dying may still accept a connection: pause a little.
                    tokio::time::sleep(std::time::Duration::from_millis(50) * resumes).await;
                    if !ctx.reconnect().await? {
                        return Err(status.into());
                    }
                }
                Err(status) => return Err(status.into()),
            }
        };
        Ok(exit_code(
            &run.id,
            run.state,
            run.exit_code.unwrap_or_default(),
            &run.reason,
        ))
    }
}
