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
    /// Seconds between SIGTERM and SIGKILL (0 kills at once, as --force) [default: the
    /// runner's, 10].
    #[arg(long, short = 't', visible_alias = "time", value_name = "SECONDS")]
    grace: Option<u32>,
    /// Kill at once.
    #[arg(short, long)]
    force: bool,
}

impl Args {
    /// Runs the command; returns the exit code. Stops at the first failure.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        for run_id in &self.run_ids {
            // The call lasts as long as the grace period (the runner's default is 10 s).
            let grace = std::time::Duration::from_secs(self.grace.unwrap_or(10).into());
            let request = ctx.request_allowing(self.request(run_id), grace);
            ctx.containers().stop_run(request).await?;
            println!("{run_id}");
        }
        Ok(0)
    }

    /// The stop of `run_id` these flags ask for. On the wire a grace of 0 means the runner's
    /// default; here, as docker's `stop -t 0`, it means no grace at all.
    fn request(&self, run_id: &str) -> StopRunRequest {
        StopRunRequest {
            run_id: run_id.to_owned(),
            grace_seconds: self.grace.unwrap_or(0),
            force: self.force || self.grace == Some(0),
        }
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

#[cfg(test)]
mod tests {
    use super::Args;

    fn args(grace: Option<u32>, force: bool) -> Args {
        Args {
            run_ids: vec!["run_1".into()],
            grace,
            force,
        }
    }

    #[test]
    fn a_grace_of_zero_kills_at_once_and_no_grace_is_the_runner_s() {
        let r = args(Some(0), false).request("run_1");
        assert!(r.force, "{r:?}");
        let r = args(None, false).request("run_1");
        assert_eq!((r.grace_seconds, r.force), (0, false));
        let r = args(Some(3), false).request("run_1");
        assert_eq!((r.grace_seconds, r.force), (3, false));
        assert!(args(None, true).request("run_1").force);
    }
}
