//! The `bus-revision` header ([`REVISION_HEADER`]): on every successful response to a caller
//! with a verified token, the caller's account's revision after the handler ran, so that a
//! watch reader that has applied a line with that revision has seen what the call did or saw.
//!
//! [`revision_header`] puts an empty [`AccountSlot`] into the request; the [`Caller`]
//! extractor fills it with the token's account; once the handler has answered, the header is
//! added when the slot was filled and the status is a success.
//!
//! [`Caller`]: crate::http::auth::Caller

use std::sync::{Arc, OnceLock};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
pub use bus_api::runs::REVISION_HEADER;

use crate::AppState;

/// Where the [`Caller`](crate::http::auth::Caller) extractor notes the account a request
/// speaks for (a request extension).
#[derive(Debug, Clone, Default)]
pub struct AccountSlot(Arc<OnceLock<String>>);

impl AccountSlot {
    /// Notes `account` (the first one noted stays).
    pub fn fill(&self, account: &str) {
        self.0.get_or_init(|| account.to_owned());
    }

    /// The account noted, if any.
    pub fn account(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Middleware (`from_fn_with_state(state, revision_header)`): serves the request, then adds
/// [`REVISION_HEADER`] with the caller's account's revision to a successful response.
pub async fn revision_header(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let slot = AccountSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if response.status().is_success() {
        if let Some(account) = slot.account() {
            let revision = state.store().changes().current(account);
            response
                .headers_mut()
                .insert(REVISION_HEADER, HeaderValue::from(revision));
        }
    }
    response
}
