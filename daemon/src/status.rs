//! The one place busd's errors become gRPC statuses.
//!
//! Each status carries google.rpc details so every client, not only the CLI, can act on it:
//! `ErrorInfo{reason, domain}` with a stable UPPER_SNAKE reason, `LocalizedMessage` with the
//! guidance (what to do next) and `Help` links when the upstream gave one.

use std::collections::HashMap;

use bus_api::ProblemCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::ApiUrlError;
use crate::credentials::CredentialError;
use crate::upstream::UpstreamError;

/// The `ErrorInfo.domain` of every busd error.
pub const DOMAIN: &str = "containers.bus";

/// Everything a busd call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable token.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// A bad API URL (from a flag, the environment or call metadata).
    #[error(transparent)]
    ApiUrl(#[from] ApiUrlError),
    /// The upstream failed or refused.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The request itself is malformed.
    #[error("{message}")]
    InvalidArgument {
        /// What is wrong.
        message: String,
        /// What to do instead.
        guidance: String,
    },
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        to_status(&error)
    }
}

/// Maps an error to a status with rich details.
pub fn to_status(error: &Error) -> Status {
    let message = error.to_string();
    let (code, reason, guidance, help_url) = match error {
        Error::Credentials(e) => {
            let reason = match e {
                CredentialError::Missing { .. } => "TOKEN_MISSING",
                CredentialError::Insecure { .. } => "TOKEN_FILE_INSECURE",
                CredentialError::Unreadable { .. } => "TOKEN_FILE_UNREADABLE",
                CredentialError::Malformed { .. } => "TOKEN_INVALID",
            };
            (
                Code::Unauthenticated,
                reason.to_owned(),
                Some(e.guidance()),
                None,
            )
        }
        Error::ApiUrl(e) => (
            Code::InvalidArgument,
            "API_URL_INVALID".into(),
            Some(e.guidance()),
            None,
        ),
        Error::InvalidArgument { guidance, .. } => (
            Code::InvalidArgument,
            "INVALID_ARGUMENT".into(),
            Some(guidance.clone()),
            None,
        ),
        Error::Upstream(UpstreamError::Problem(problem)) => (
            code_for_http(problem.status, problem.code),
            problem.code.as_str().to_ascii_uppercase(),
            problem.guidance.clone(),
            problem.guidance_url.clone(),
        ),
        Error::Upstream(UpstreamError::Unreachable { origin, .. }) => (
            Code::Unavailable,
            "UPSTREAM_UNREACHABLE".into(),
            Some(format!(
                "check that the runner is up at {origin}, or point --api-url / BUS_AI_API_URL at it"
            )),
            None,
        ),
        Error::Upstream(UpstreamError::Protocol { .. }) => (
            Code::Unavailable,
            "UPSTREAM_PROTOCOL".into(),
            Some("check that --api-url names a bus container-runner origin".into()),
            None,
        ),
    };
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, DOMAIN, HashMap::new());
    if let Some(guidance) = guidance {
        details.set_localized_message("en-US", guidance);
    }
    if let Some(url) = help_url {
        details.add_help_link("how to fix this", url);
    }
    Status::with_error_details(code, message, details)
}

/// REST status → gRPC code.
fn code_for_http(status: u16, code: ProblemCode) -> Code {
    match (status, code) {
        (_, ProblemCode::TokenMissing | ProblemCode::TokenInvalid | ProblemCode::TokenExpired) => {
            Code::Unauthenticated
        }
        (400 | 413 | 422, _) => Code::InvalidArgument,
        (401, _) => Code::Unauthenticated,
        (402, _) => Code::FailedPrecondition,
        (403, _) => Code::PermissionDenied,
        (404, _) => Code::NotFound,
        (409, _) => Code::FailedPrecondition,
        (429, _) => Code::ResourceExhausted,
        (504, _) => Code::DeadlineExceeded,
        (500..=599, _) => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus_api::Problem;

    #[test]
    fn problems_keep_their_code_reason_and_guidance() {
        let problem = Problem::new(
            ProblemCode::ScopeMissing,
            403,
            "Forbidden",
            "needs container:run",
        )
        .with_guidance("mint a token with container:run");
        let status = to_status(&Error::Upstream(UpstreamError::Problem(Box::new(problem))));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "needs container:run");
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "SCOPE_MISSING");
        assert_eq!(details.error_info().unwrap().domain, DOMAIN);
        assert_eq!(
            details.localized_message().unwrap().message,
            "mint a token with container:run"
        );
    }

    #[test]
    fn http_codes_map_as_documented() {
        let cases = [
            (401, ProblemCode::Unknown, Code::Unauthenticated),
            (402, ProblemCode::Unknown, Code::FailedPrecondition),
            (403, ProblemCode::ScopeMissing, Code::PermissionDenied),
            (404, ProblemCode::NotFound, Code::NotFound),
            (413, ProblemCode::PayloadTooLarge, Code::InvalidArgument),
            (429, ProblemCode::Unknown, Code::ResourceExhausted),
            (503, ProblemCode::EngineUnavailable, Code::Unavailable),
            (504, ProblemCode::Unknown, Code::DeadlineExceeded),
        ];
        for (http, problem, grpc) in cases {
            assert_eq!(code_for_http(http, problem), grpc, "{http}");
        }
    }
}
