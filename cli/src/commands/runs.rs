//! `bus containers runs`: the account's runs, newest first.

use bus::proto::containers::v1::ListRunsRequest;
use time::OffsetDateTime;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render;

/// Lists runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print only run ids, one per line.
    #[arg(short, long)]
    quiet: bool,
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let mut runs = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = ctx.request(ListRunsRequest {
                page_size: 0,
                page_token,
            });
            let page = ctx.containers().list_runs(request).await?.into_inner();
            runs.extend(page.runs);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if self.quiet {
            for run in &runs {
                println!("{}", run.id);
            }
        } else {
            print!("{}", render::runs_table(&runs, OffsetDateTime::now_utc()));
        }
        Ok(0)
    }
}
