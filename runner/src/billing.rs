//! Plans, billing state and quotas: what an account may start, checked before any engine call.
//!
//! An account's terms come from the config ([`crate::config`]): its plan and billing state;
//! accounts the config does not list get the plan [`LOCAL_PLAN`] with billing active. Runs
//! that have not ended are concurrent (from the live runs); the seconds runs spent running
//! inside the current period (each run's part in it rounded up to a whole second) are its
//! run-seconds, counted from the store's usage ledger ([`Store::run_seconds`]), which keeps
//! runs that were deleted or removed by retention: deleting runs does not give seconds back.
//! Periods are aligned to the Unix epoch.
//!
//! [`admit`] is the one check a create makes, in this order: the token's image grant (403
//! `image_not_allowed`), billing (402 `billing_required`), run-seconds (429
//! `quota_exhausted`, `Retry-After` = until the period ends), concurrency (429, `Retry-After`
//! [`CONCURRENCY_RETRY_SECONDS`]). It holds a per-account lock until the create has recorded
//! its run, so two creates racing for the last slot cannot both win.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_api::auth::Claims;
use bus_api::billing::{BillingState, BillingStatus, Limits, Usage};
use time::OffsetDateTime;
use tokio::sync::OwnedMutexGuard;

use crate::config::{Config, LOCAL_PLAN, Plan};
use crate::store::{Store, StoreError};
use crate::util::rfc3339;

/// Where an account sets up billing.
pub const SETUP_URL: &str = "https://bus.dev/billing/setup";
/// Where an account upgrades its plan.
pub const UPGRADE_URL: &str = "https://bus.dev/billing/upgrade";
/// `Retry-After` when the account's concurrent runs are at the plan's limit.
pub const CONCURRENCY_RETRY_SECONDS: u64 = 5;

/// Why a run may not start now, or the billing status cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The token's grant does not cover the run's image.
    #[error("image {image} not allowed")]
    ImageNotAllowed {
        /// The image the run would use.
        image: String,
        /// The grant's image names and prefixes.
        allowed: Vec<String>,
    },
    /// The account must set up billing before runs start.
    #[error("billing required for {account}")]
    BillingRequired {
        /// The account.
        account: String,
    },
    /// A plan limit is reached.
    #[error("{detail}")]
    QuotaExhausted {
        /// Which limit, and the usage.
        detail: String,
        /// What to do.
        guidance: String,
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The usage ledger cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Per-account locks that serialize admission checks with the creates they admit.
#[derive(Debug, Default)]
pub struct Billing {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Billing {
    /// No locks yet.
    pub fn new() -> Billing {
        Billing::default()
    }

    async fn lock(&self, account: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(account.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Proof that a create passed [`admit`]; keep it until the run is recorded in the store.
#[derive(Debug)]
pub struct Admission {
    _guard: OwnedMutexGuard<()>,
    run_seconds_left: Option<u64>,
}

impl Admission {
    /// The run-seconds the plan has left in this period, when it limits them.
    pub fn run_seconds_left(&self) -> Option<u64> {
        self.run_seconds_left
    }
}

/// An account's plan and billing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// The plan's name.
    pub plan_name: String,
    /// The plan.
    pub plan: Plan,
    /// Whether billing is set up.
    pub billing: BillingState,
}

/// The terms of `account`: from the config when it lists the account, else the `local` plan
/// with billing active.
pub fn terms(config: &Config, account: &str) -> Terms {
    let (plan_name, billing) = match config.account(account) {
        Some(a) => (a.plan.as_str(), a.billing),
        None => (LOCAL_PLAN, BillingState::Active),
    };
    Terms {
        plan_name: plan_name.to_owned(),
        plan: config
            .plan(plan_name)
            .cloned()
            .unwrap_or_else(Plan::unlimited),
        billing,
    }
}

/// The period containing `now`: `[start, end)`, aligned to the Unix epoch.
pub fn period(plan: &Plan, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let len = i64::try_from(plan.period.as_secs())
        .unwrap_or(i64::MAX)
        .max(1);
    let t = now.unix_timestamp();
    let start = t - t.rem_euclid(len);
    let at = |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap_or(now);
    (at(start), at(start.saturating_add(len)))
}

/// The account's usage in the period `[start, end)` as of `now`: whole run-seconds from the
/// usage ledger (deleted runs included, a running run up to `now`), and its live runs.
pub async fn usage(
    store: &Store,
    account: &str,
    (start, end): (OffsetDateTime, OffsetDateTime),
    now: OffsetDateTime,
) -> Result<Usage, BillingError> {
    let run_seconds = store.run_seconds(account, start, end, now).await?;
    Ok(Usage {
        run_seconds,
        concurrent_runs: store.live_count(account),
    })
}

/// Checks that the caller may start a run of `image` now: grant, billing, then quotas. The
/// admission holds the account's lock in `locks` until the run is recorded.
pub async fn admit(
    locks: &Billing,
    config: &Config,
    store: &Store,
    claims: &Claims,
    image: &str,
) -> Result<Admission, BillingError> {
    if let Some(grant) = &claims.grant {
        if !grant.allows_image(image) {
            return Err(BillingError::ImageNotAllowed {
                image: image.to_owned(),
                allowed: grant.images.clone().unwrap_or_default(),
            });
        }
    }
    let account = claims.sub.as_str();
    let terms = terms(config, account);
    if terms.billing != BillingState::Active {
        return Err(BillingError::BillingRequired {
            account: account.to_owned(),
        });
    }
    let guard = locks.lock(account).await;
    let now = OffsetDateTime::now_utc();
    let (start, end) = period(&terms.plan, now);
    let used = usage(store, account, (start, end), now).await?;
    check_quota(&terms, &used, now, end)?;
    Ok(Admission {
        _guard: guard,
        run_seconds_left: terms
            .plan
            .run_seconds_per_period
            .map(|limit| limit.saturating_sub(used.run_seconds)),
    })
}

fn check_quota(
    terms: &Terms,
    used: &Usage,
    now: OffsetDateTime,
    period_end: OffsetDateTime,
) -> Result<(), BillingError> {
    let plan = &terms.plan_name;
    if let Some(limit) = terms.plan.run_seconds_per_period {
        if used.run_seconds >= limit {
            let wait = (period_end - now).whole_seconds().max(1) as u64;
            return Err(BillingError::QuotaExhausted {
                detail: format!(
                    "the plan \"{plan}\" allows {limit} run-seconds per {} period and {} are used; \
                     the period ends at {}",
                    describe(terms.plan.period),
                    used.run_seconds,
                    rfc3339(period_end)
                ),
                guidance: format!(
                    "upgrade the plan at {UPGRADE_URL}, or retry after the period ends \
                     (in {wait} s)"
                ),
                retry_after: wait,
            });
        }
    }
    if let Some(limit) = terms.plan.max_concurrent_runs {
        if used.concurrent_runs >= limit {
            return Err(BillingError::QuotaExhausted {
                detail: format!(
                    "the plan \"{plan}\" allows {limit} concurrent run{} and {} {} live",
                    if limit == 1 { "" } else { "s" },
                    used.concurrent_runs,
                    if used.concurrent_runs == 1 {
                        "is"
                    } else {
                        "are"
                    },
                ),
                guidance: format!(
                    "wait for a run to end (or stop or delete one), then retry; or upgrade the \
                     plan at {UPGRADE_URL}"
                ),
                retry_after: CONCURRENCY_RETRY_SECONDS,
            });
        }
    }
    Ok(())
}

/// The account's billing status now.
pub async fn status(
    config: &Config,
    store: &Store,
    account: &str,
) -> Result<BillingStatus, BillingError> {
    let terms = terms(config, account);
    let now = OffsetDateTime::now_utc();
    let (start, end) = period(&terms.plan, now);
    let used = usage(store, account, (start, end), now).await?;
    let guidance_url = if terms.billing != BillingState::Active {
        Some(SETUP_URL.to_owned())
    } else if check_quota(&terms, &used, now, end).is_err() {
        Some(UPGRADE_URL.to_owned())
    } else {
        None
    };
    Ok(BillingStatus {
        account: account.to_owned(),
        plan: terms.plan_name,
        billing: terms.billing,
        period_start: start,
        period_end: end,
        usage: used,
        limits: Limits {
            max_concurrent_runs: terms.plan.max_concurrent_runs,
            run_seconds_per_period: terms.plan.run_seconds_per_period,
            period_seconds: terms.plan.period.as_secs(),
        },
        guidance_url,
    })
}

/// A period's length as shown to people, e.g. `30d` or `90m`.
pub fn describe(period: Duration) -> String {
    let s = period.as_secs();
    match s {
        _ if s % 86400 == 0 => format!("{}d", s / 86400),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    #[test]
    fn periods_align_to_the_epoch() {
        let plan = Plan {
            period: Duration::from_secs(100),
            ..Plan::unlimited()
        };
        assert_eq!(period(&plan, at(250)), (at(200), at(300)));
        assert_eq!(period(&plan, at(200)), (at(200), at(300)));
        assert_eq!(describe(Duration::from_secs(30 * 86400)), "30d");
        assert_eq!(describe(Duration::from_secs(5400)), "90m");
    }

    #[test]
    fn run_seconds_count_the_part_inside_the_period() {
        use crate::store::seconds_inside;
        let (start, end) = (at(100), at(200));
        let inside = |started, finished: Option<i64>, now| {
            seconds_inside(at(started), finished.map(at), start, end, at(now))
        };
        assert_eq!(
            inside(90, None, 110),
            10,
            "running: up to now, from the start"
        );
        assert_eq!(
            inside(50, Some(120), 150),
            20,
            "spans the start: only its part inside"
        );
        assert_eq!(inside(10, Some(20), 150), 0, "before the period");
        assert_eq!(
            inside(150, Some(250), 300),
            50,
            "spans the end: cut at the end"
        );
        assert_eq!(inside(120, Some(130), 125), 5, "cut at now");
        let started = at(120);
        let finished = started + time::Duration::milliseconds(1500);
        assert_eq!(
            seconds_inside(started, Some(finished), start, end, at(150)),
            2,
            "a started second counts in full"
        );
    }

    #[test]
    fn quotas_say_what_to_do() {
        let terms = Terms {
            plan_name: "free".into(),
            plan: Plan {
                max_concurrent_runs: Some(1),
                run_seconds_per_period: Some(60),
                period: Duration::from_secs(3600),
            },
            billing: BillingState::Active,
        };
        let used = |run_seconds, concurrent_runs| Usage {
            run_seconds,
            concurrent_runs,
        };
        assert!(check_quota(&terms, &used(59, 0), at(0), at(3600)).is_ok());
        let err = check_quota(&terms, &used(60, 0), at(600), at(3600)).unwrap_err();
        assert!(err.to_string().contains("60 run-seconds"), "{err}");
        assert!(
            matches!(&err, BillingError::QuotaExhausted { guidance, .. } if guidance.contains(UPGRADE_URL)),
            "{err:?}"
        );
        assert!(matches!(
            err,
            BillingError::QuotaExhausted {
                retry_after: 3000,
                ..
            }
        ));
        let err = check_quota(&terms, &used(0, 1), at(0), at(3600)).unwrap_err();
        assert!(err.to_string().contains("1 concurrent run and 1 is live"));
        assert!(matches!(
            err,
            BillingError::QuotaExhausted {
                retry_after: CONCURRENCY_RETRY_SECONDS,
                ..
            }
        ));
    }

    #[test]
    fn unlisted_accounts_get_the_local_plan() {
        let t = terms(&Config::builtin(), "anyone");
        assert_eq!(t.plan_name, "local");
        assert_eq!(t.plan, Plan::unlimited());
        assert_eq!(t.billing, BillingState::Active);
    }
}
