//! `bus daemon info`: what busd is and whom it speaks for.

use bus::proto::daemon::v1::GetInfoRequest;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::context::Ctx;
use crate::error::CliError;

/// Shows busd's version, upstream and identity.
#[derive(Debug, clap::Args)]
pub struct Args {}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let info = ctx
            .daemon()
            .get_info(ctx.request(GetInfoRequest {}))
            .await?
            .into_inner();
        let expires = info
            .token_expires_at
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "-".to_owned());
        println!("version:   {} (protocol {})", info.version, info.protocol);
        println!("pid:       {}", info.pid);
        println!("uptime:    {}s", info.uptime_seconds);
        println!("upstream:  {}", info.upstream_origin);
        println!(
            "identity:  {}",
            if info.identity.is_empty() {
                "-"
            } else {
                &info.identity
            }
        );
        println!("scopes:    {}", info.scopes.join(" "));
        println!("expires:   {expires}");
        println!("token:     {}", info.token_source);
        Ok(0)
    }
}
