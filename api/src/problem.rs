//! RFC 9457 problem documents (`application/problem+json`) with a stable `code`.

use serde::{Deserialize, Serialize};

/// The media type of an error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Stable, machine-readable error codes. Clients branch on these, never on `detail` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProblemCode {
    /// No `Authorization: Bearer` header.
    TokenMissing,
    /// The token is malformed, signed by another key, or for another audience.
    TokenInvalid,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The token lacks the scope the endpoint needs.
    ScopeMissing,
    /// No such object for this account.
    NotFound,
    /// The request is malformed or a field is out of bounds.
    InvalidRequest,
    /// The body is larger than the endpoint accepts.
    PayloadTooLarge,
    /// The named run profile does not exist.
    UnknownProfile,
    /// The container engine failed or cannot be reached.
    EngineUnavailable,
    /// Anything else; a bug.
    Internal,
    /// The API key given to `POST /api/v1/auth/token` is missing or belongs to no account.
    ApiKeyInvalid,
    /// A token request asks for a resource the account may not hold.
    ScopeNotAllowed,
    /// The token's grant does not cover the run's image.
    ImageNotAllowed,
    /// The token's grant switches off log streaming.
    LogsDisabled,
    /// The account must set up billing before it can start runs.
    BillingRequired,
    /// The account's plan limit (concurrent runs or run-seconds per period) is reached.
    QuotaExhausted,
    /// An `Idempotency-Key` was reused with a different request body.
    IdempotencyKeyReused,
    /// The run is not running (queued, starting or ended), so nothing can be executed in it.
    RunNotRunning,
    /// The image reference is held by another account, provided by the deployment, or being
    /// written by another operation.
    ImageNameTaken,
    /// The image is used by a run that has not ended.
    ImageInUse,
    /// A registry refused the credentials (or asked for some).
    RegistryDenied,
    /// A registry failed or cannot be reached.
    RegistryFailed,
    /// An upload (a build context, an image archive) is larger than the runner accepts.
    UploadTooLarge,
    /// A run of the account that has not ended already has the name.
    RunNameTaken,
    /// The name matches several ended runs, so it cannot stand for one.
    RunNameAmbiguous,
    /// A code this client version does not know.
    #[serde(other)]
    Unknown,
}

impl ProblemCode {
    /// The code's name on the wire, e.g. `token_expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenMissing => "token_missing",
            Self::TokenInvalid => "token_invalid",
            Self::TokenExpired => "token_expired",
            Self::ScopeMissing => "scope_missing",
            Self::NotFound => "not_found",
            Self::InvalidRequest => "invalid_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnknownProfile => "unknown_profile",
            Self::EngineUnavailable => "engine_unavailable",
            Self::Internal => "internal",
            Self::ApiKeyInvalid => "api_key_invalid",
            Self::ScopeNotAllowed => "scope_not_allowed",
            Self::ImageNotAllowed => "image_not_allowed",
            Self::LogsDisabled => "logs_disabled",
            Self::BillingRequired => "billing_required",
            Self::QuotaExhausted => "quota_exhausted",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RunNotRunning => "run_not_running",
            Self::ImageNameTaken => "image_name_taken",
            Self::ImageInUse => "image_in_use",
            Self::RegistryDenied => "registry_denied",
            Self::RegistryFailed => "registry_failed",
            Self::UploadTooLarge => "upload_too_large",
            Self::RunNameTaken => "run_name_taken",
            Self::RunNameAmbiguous => "run_name_ambiguous",
            Self::Unknown => "unknown",
        }
    }
}

/// An error response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type", default = "about_blank")]
    pub type_uri: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time, for a person.
    #[serde(default)]
    pub detail: String,
    /// The stable machine-readable code.
    pub code: ProblemCode,
    /// What a person can do about it, when they can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<String>,
    /// A page that explains the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_url: Option<String>,
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

impl Problem {
    /// A problem with the given code, status and detail; the type URI names the code.
    pub fn new(code: ProblemCode, status: u16, title: &str, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: format!("https://bus.dev/problems/{}", code.as_str()),
            title: title.to_owned(),
            status,
            detail: detail.into(),
            code,
            guidance: None,
            guidance_url: None,
        }
    }

    /// Adds what a person can do about it.
    pub fn with_guidance(mut self, guidance: impl Into<String>) -> Self {
        self.guidance = Some(guidance.into());
        self
    }

    /// Adds a page that explains the fix.
    pub fn with_guidance_url(mut self, url: impl Into<String>) -> Self {
        self.guidance_url = Some(url.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_codes_still_parse() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"x","title":"t","status":418,"detail":"d","code":"teapot_overflow"}"#,
        )
        .unwrap();
        assert_eq!(p.code, ProblemCode::Unknown);
    }
}
