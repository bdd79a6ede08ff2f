//! `bus billing`: the account's plan, usage in the current period, limits, and what to do when
//! runs cannot start (needs a token with `billing:read`).

use bus::proto::containers::v1::{BillingState, BillingStatus, GetBillingRequest};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::context::Ctx;
use crate::error::CliError;
use crate::render::{self, Format, FormatArg};

/// Shows the account's billing.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    output: FormatArg,
}

/// The JSON shape of `bus billing -o json`; an absent limit is `null` (no limit).
#[derive(Debug, serde::Serialize)]
struct BillingJson<'a> {
    account: &'a str,
    plan: &'a str,
    billing: &'static str,
    period_start: String,
    period_end: String,
    period_seconds: u64,
    usage: UsageJson,
    limits: LimitsJson,
    guidance_url: Option<&'a str>,
    guidance: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct UsageJson {
    run_seconds: u64,
    concurrent_runs: u32,
}

#[derive(Debug, serde::Serialize)]
struct LimitsJson {
    max_concurrent_runs: Option<u32>,
    run_seconds_per_period: Option<u64>,
}

fn state_name(state: i32) -> &'static str {
    match BillingState::try_from(state).unwrap_or(BillingState::Unspecified) {
        BillingState::Active => "active",
        BillingState::Required => "required",
        BillingState::Unspecified => "unknown",
    }
}

fn time_text(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// What to do next, when there is something to do: billing to set up, or a limit reached.
fn guidance(status: &BillingStatus) -> Option<String> {
    let at = if status.guidance_url.is_empty() {
        String::new()
    } else {
        format!(" at {}", status.guidance_url)
    };
    if status.billing == BillingState::Required as i32 {
        return Some(format!(
            "no run can start until billing is set up{at}; then run `bus billing` again"
        ));
    }
    let busy = status
        .max_concurrent_runs
        .is_some_and(|max| status.concurrent_runs >= max);
    let spent = status
        .run_seconds_per_period
        .is_some_and(|max| status.run_seconds >= max);
    if spent {
        return Some(format!(
            "the period's run-seconds are used up; runs start again after {}, or upgrade the plan{at}",
            time_text(status.period_end.as_ref())
        ));
    }
    if busy {
        return Some(
            "as many runs are live as the plan allows; wait for one to end or stop one with \
             `bus containers stop RUN_ID`"
                .to_owned(),
        );
    }
    None
}

fn limit<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "no limit".to_owned(), |v| v.to_string())
}

impl Args {
    /// Runs the command; returns the exit code.
    pub async fn run(self, ctx: &Ctx) -> Result<u8, CliError> {
        let status = ctx
            .containers()
            .get_billing(ctx.request(GetBillingRequest {}))
            .await?
            .into_inner();
        let guidance = guidance(&status);
        if self.output.format() == Format::Json {
            render::print_json(&BillingJson {
                account: &status.account,
                plan: &status.plan,
                billing: state_name(status.billing),
                period_start: time_text(status.period_start.as_ref()),
                period_end: time_text(status.period_end.as_ref()),
                period_seconds: status.period_seconds,
                usage: UsageJson {
                    run_seconds: status.run_seconds,
                    concurrent_runs: status.concurrent_runs,
                },
                limits: LimitsJson {
                    max_concurrent_runs: status.max_concurrent_runs,
                    run_seconds_per_period: status.run_seconds_per_period,
                },
                guidance_url: (!status.guidance_url.is_empty())
                    .then_some(status.guidance_url.as_str()),
                guidance,
            })?;
            return Ok(0);
        }
        println!("account:   {}", status.account);
        println!("plan:      {}", status.plan);
        println!("billing:   {}", state_name(status.billing));
        println!(
            "period:    {} to {}",
            time_text(status.period_start.as_ref()),
            time_text(status.period_end.as_ref())
        );
        println!(
            "usage:     {} run-seconds, {} live runs",
            status.run_seconds, status.concurrent_runs
        );
        println!(
            "limits:    run-seconds per period: {}; live runs: {}",
            limit(status.run_seconds_per_period),
            limit(status.max_concurrent_runs)
        );
        if let Some(guidance) = guidance {
            println!("next:      {guidance}");
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(billing: BillingState) -> BillingStatus {
        BillingStatus {
            account: "dev".into(),
            plan: "team".into(),
            billing: billing as i32,
            guidance_url: "https://example.test/billing".into(),
            ..Default::default()
        }
    }

    #[test]
    fn guidance_says_what_to_do_only_when_runs_cannot_start() {
        assert_eq!(guidance(&status(BillingState::Active)), None);
        let required = guidance(&status(BillingState::Required)).unwrap();
        assert!(
            required.contains("billing is set up at https://example.test/billing"),
            "{required}"
        );
        let mut spent = status(BillingState::Active);
        spent.run_seconds_per_period = Some(60);
        spent.run_seconds = 60;
        assert!(
            guidance(&spent)
                .unwrap()
                .contains("run-seconds are used up")
        );
        let mut busy = status(BillingState::Active);
        busy.max_concurrent_runs = Some(2);
        busy.concurrent_runs = 2;
        assert!(guidance(&busy).unwrap().contains("bus containers stop"));
        busy.concurrent_runs = 1;
        assert_eq!(guidance(&busy), None);
    }
}
