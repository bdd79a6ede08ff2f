//! `bus daemon info`: what busd is and whom it speaks for.

use bus::proto::daemon::v1::GetInfoRequest;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render::FormatArg;

/// Shows busd's version, upstream and identity.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    output: FormatArg,
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let info = ctx
            .daemon()
            .get_info(ctx.request(GetInfoRequest {}))
            .await?
            .into_inner();
        crate::commands::daemon::show_info(&info, self.output.format())?;
        Ok(0)
    }
}
