//! `GET /api/v1/billing/status`: the caller's plan, usage in the current period and limits.

use axum::Json;
use axum::extract::State;
use bus_api::BillingStatus;

use crate::AppState;
use crate::billing;
use crate::http::auth::{BillingRead, Caller};
use crate::http::problem::ApiError;

/// The caller's billing status.
pub async fn status(
    State(state): State<AppState>,
    caller: Caller<BillingRead>,
) -> Result<Json<BillingStatus>, ApiError> {
    Ok(Json(billing::status(&state, caller.account()).await?))
}
