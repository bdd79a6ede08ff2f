//! `bus containers status`: the runner's state, engine and profiles.

use bus::proto::containers::v1::GetStatusRequest;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render::{self, Format, FormatArg};

/// Shows the runner's status.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    output: FormatArg,
}

/// The JSON shape of `bus containers status -o json`.
#[derive(Debug, serde::Serialize)]
struct StatusJson<'a> {
    state: &'a str,
    engine: &'a str,
    engine_api_version: &'a str,
    profiles: &'a [String],
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let status = ctx
            .containers()
            .get_status(ctx.request(GetStatusRequest {}))
            .await?
            .into_inner();
        if self.output.format() == Format::Json {
            render::print_json(&StatusJson {
                state: &status.state,
                engine: &status.engine,
                engine_api_version: &status.engine_api_version,
                profiles: &status.profiles,
            })?;
            return Ok(0);
        }
        println!("state:    {}", status.state);
        println!(
            "engine:   {} (API {})",
            status.engine, status.engine_api_version
        );
        println!("profiles: {}", status.profiles.join(", "));
        Ok(0)
    }
}
