//! `GET /api/v1/billing/status`: the account's plan, usage in the current period and limits.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Whether an account may start runs as far as billing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BillingState {
    /// Billing is set up; runs may start (within the plan's limits).
    #[default]
    Active,
    /// Billing must be set up before any run starts.
    Required,
    /// A state this client version does not know.
    #[serde(other)]
    Unknown,
}

impl BillingState {
    /// The state's name on the wire, e.g. `required`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Required => "required",
            Self::Unknown => "unknown",
        }
    }
}

/// What the account used in the current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// Seconds runs spent running inside the period (live runs count up to now).
    pub run_seconds: u64,
    /// Runs that have not ended (queued, starting or running).
    pub concurrent_runs: u32,
}

/// The plan's limits; an absent limit means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Limits {
    /// Most runs that may be live at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_runs: Option<u32>,
    /// Most run-seconds per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_seconds_per_period: Option<u64>,
    /// The period's length in seconds.
    pub period_seconds: u64,
}

/// The reply of `GET /api/v1/billing/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BillingStatus {
    /// The account (the token's `sub`).
    pub account: String,
    /// The plan's name.
    pub plan: String,
    /// Whether billing is set up.
    pub billing: BillingState,
    /// When the current period began.
    #[serde(with = "time::serde::rfc3339")]
    pub period_start: OffsetDateTime,
    /// When it ends (and usage starts again from zero).
    #[serde(with = "time::serde::rfc3339")]
    pub period_end: OffsetDateTime,
    /// Usage in the current period.
    pub usage: Usage,
    /// The plan's limits.
    pub limits: Limits,
    /// Where to set up billing or upgrade, when runs cannot start now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_url: Option<String>,
}
