//! `GET /api/v1/billing/status`: the caller's plan, usage in the current period and limits.

use axum::Json;
use axum::extract::State;
use bus_api::BillingStatus;

use crate::AppState;
use crate::billing;
use crate::http::auth::{BillingRead, Caller};
use crate::http::openapi::Forbidden;
use crate::http::problem::ApiError;

/// The caller's billing status.
///
/// The account's plan, billing state, usage in the current period and limits.
#[utoipa::path(
    get,
    path = "/api/v1/billing/status",
    tag = "billing",
    operation_id = "billingStatus",
    security(("bearer" = ["billing:read"])),
    responses(
        (status = 200, description = "The billing status.", body = BillingStatus),
        (status = 403, response = Forbidden),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    caller: Caller<BillingRead>,
) -> Result<Json<BillingStatus>, ApiError> {
    Ok(Json(
        billing::status(state.config(), state.store(), caller.account()).await?,
    ))
}
