//! `bus containers status`: the runner's state, engine and profiles.

use bus::proto::containers::v1::GetStatusRequest;

use crate::context::Ctx;
use crate::error::CliError;

/// Shows the runner's status.
#[derive(Debug, clap::Args)]
pub struct Args {}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let status = ctx
            .containers()
            .get_status(ctx.request(GetStatusRequest {}))
            .await?
            .into_inner();
        println!("state:    {}", status.state);
        println!(
            "engine:   {} (API {})",
            status.engine, status.engine_api_version
        );
        println!("profiles: {}", status.profiles.join(", "));
        Ok(0)
    }
}
