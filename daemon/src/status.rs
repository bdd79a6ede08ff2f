//! The one place busd's errors become gRPC statuses.
//!
//! Each status carries google.rpc details so every client, not only the CLI, can act on it:
//! `ErrorInfo{reason, domain}` with a stable UPPER_SNAKE reason, `LocalizedMessage` with the
//! guidance (what to do next) and `Help` links when the upstream gave one. Retryable errors add
//! `RetryInfo` (from `Retry-After`), quota problems `QuotaFailure`, billing problems
//! `PreconditionFailure`.

use std::collections::HashMap;

use bus_api::ProblemCode;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::ApiUrlError;
use crate::credentials::CredentialError;
use crate::upstream::UpstreamError;
use crate::upstream::exec::SessionError;

/// The `ErrorInfo.domain` of every busd error.
pub const DOMAIN: &str = "containers.bus";
/// The `ErrorInfo` reason of the refusal of a client newer than busd.
pub const PROTOCOL_MISMATCH: &str = "PROTOCOL_MISMATCH";

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
    /// What the request names does not exist (as the caller named it).
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
        /// What to do instead.
        guidance: String,
    },
    /// The request itself is malformed.
    #[error("{message}")]
    InvalidArgument {
        /// What is wrong.
        message: String,
        /// What to do instead.
        guidance: String,
    },
    /// The client speaks a newer protocol than this busd (started before an upgrade).
    #[error(
        "busd (pid {pid}) speaks protocol {busd}, older than this client's {client}: it was started before an upgrade"
    )]
    ProtocolMismatch {
        /// busd's revision.
        busd: u32,
        /// The client's.
        client: u32,
        /// Whether a CLI started this busd (and may restart it).
        started_by_cli: bool,
        /// busd's PID.
        pid: u32,
    },
    /// An exec session ended without an exit status: the command's exit code is unknown.
    #[error("{0}")]
    ExecSessionGone(String),
}

impl From<SessionError> for Error {
    fn from(error: SessionError) -> Error {
        match error {
            SessionError::Gone(message) => Error::ExecSessionGone(message),
            SessionError::Upstream(e) => Error::Upstream(e),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        to_status(&error)
    }
}

/// Maps an error to a status with rich details.
pub fn to_status(error: &Error) -> Status {
    let message = error.to_string();
    let mut metadata = HashMap::new();
    let (code, reason, guidance, help_url) = match error {
        Error::Credentials(e) => {
            let reason = match e {
                CredentialError::Missing { .. } => "TOKEN_MISSING",
                CredentialError::Insecure { .. } => "TOKEN_FILE_INSECURE",
                CredentialError::Unreadable { .. } => "TOKEN_FILE_UNREADABLE",
                CredentialError::Malformed { .. } => "TOKEN_INVALID",
                CredentialError::Expired {
                    source_name,
                    expired_at,
                    ..
                } => {
                    metadata.insert("token_source".to_owned(), source_name.clone());
                    metadata.insert("expired_at".to_owned(), expired_at.clone());
                    "TOKEN_EXPIRED"
                }
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
        Error::NotFound { guidance, .. } => (
            Code::NotFound,
            "NOT_FOUND".into(),
            Some(guidance.clone()),
            None,
        ),
        Error::InvalidArgument { guidance, .. } => (
            Code::InvalidArgument,
            "INVALID_ARGUMENT".into(),
            Some(guidance.clone()),
            None,
        ),
        Error::ProtocolMismatch {
            busd,
            client,
            started_by_cli,
            pid,
        } => {
            metadata.insert("busd_protocol".to_owned(), busd.to_string());
            metadata.insert("client_protocol".to_owned(), client.to_string());
            metadata.insert("started_by_cli".to_owned(), started_by_cli.to_string());
            metadata.insert("pid".to_owned(), pid.to_string());
            (
                Code::FailedPrecondition,
                PROTOCOL_MISMATCH.into(),
                Some("run `bus daemon restart` to start the busd that came with this bus".into()),
                None,
            )
        }
        Error::ExecSessionGone(_) => (
            Code::Unavailable,
            "EXEC_SESSION_GONE".into(),
            Some(
                "the command's exit code is unknown; check the runner and run the command again"
                    .into(),
            ),
            None,
        ),
        Error::Upstream(
            UpstreamError::Problem(problem) | UpstreamError::RetryLater { problem, .. },
        ) => (
            code_for_http(problem.status, problem.code),
            problem.code.as_str().to_ascii_uppercase(),
            Some(
                problem
                    .guidance
                    .clone()
                    .unwrap_or_else(|| fallback_guidance(problem.code).to_owned()),
            ),
            problem.guidance_url.clone(),
        ),
        Error::Upstream(UpstreamError::Timeout { origin }) => (
            Code::DeadlineExceeded,
            "UPSTREAM_TIMEOUT".into(),
            Some(format!(
                "raise --timeout, or check that the runner at {origin} is not overloaded"
            )),
            None,
        ),
        Error::Upstream(UpstreamError::Unreachable { origin, .. }) => (
            Code::Unavailable,
            "UPSTREAM_UNREACHABLE".into(),
            Some(format!(
                "check that the runner is up at {origin}, or point --api-url / BUS_AI_API_URL at it"
            )),
            None,
        ),
        Error::Upstream(UpstreamError::NotTls { origin }) => (
            Code::Unavailable,
            "UPSTREAM_NOT_TLS".into(),
            Some(format!(
                "if the runner serves plain HTTP, use {} for --api-url / BUS_AI_API_URL",
                origin.replacen("https://", "http://", 1)
            )),
            None,
        ),
        Error::Upstream(UpstreamError::Unavailable { origin, .. }) => (
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE".into(),
            Some(format!(
                "try again shortly; if it persists, check the runner at {origin} and any proxy in front of it"
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
    details.set_error_info(reason, DOMAIN, metadata);
    if let Some(guidance) = guidance {
        details.set_localized_message("en-US", guidance);
    }
    if let Some(url) = help_url {
        details.add_help_link("how to fix this", url);
    }
    if let Error::Upstream(upstream) = error {
        add_upstream_details(&mut details, upstream);
    }
    Status::with_error_details(code, message, details)
}

/// The next step for a runner problem that names none itself.
fn fallback_guidance(code: ProblemCode) -> &'static str {
    match code {
        ProblemCode::TokenMissing | ProblemCode::TokenInvalid | ProblemCode::TokenExpired => {
            "get a fresh token with `bus auth token`, then `bus auth reload`"
        }
        ProblemCode::ScopeMissing | ProblemCode::ScopeNotAllowed => {
            "check the token's scopes with `bus auth status` and get one that has the scope"
        }
        ProblemCode::NotFound => {
            "check the name or id: `bus containers runs`, `bus containers execs`, \
             `bus images ls` and `bus builds ls` list what exists"
        }
        ProblemCode::InvalidRequest | ProblemCode::PayloadTooLarge => {
            "fix the request as the message says; `bus help` shows each command's options"
        }
        ProblemCode::UnknownProfile => "name a profile the runner offers, or leave it out",
        ProblemCode::EngineUnavailable => {
            "try again shortly; if it persists, check the runner's container engine \
             (`bus local status` for a local stack)"
        }
        ProblemCode::Internal | ProblemCode::Unknown => {
            "try again; if it persists, check the runner's log and report the message"
        }
        ProblemCode::ApiKeyInvalid => {
            "check the API key and run `bus auth token` again with the right one"
        }
        ProblemCode::ImageNotAllowed => {
            "run an image the token's grant allows, or get a token that allows this one"
        }
        ProblemCode::LogsDisabled => "get a token whose grant allows log streaming",
        ProblemCode::BillingRequired => "set up billing for the account, then try again",
        ProblemCode::QuotaExhausted => {
            "wait for a run to end (`bus containers runs`) or for the quota period to pass"
        }
        ProblemCode::IdempotencyKeyReused => "send a new request id for a different request",
        ProblemCode::RunNotRunning => {
            "check the run's state with `bus containers get RUN`; exec needs a running run"
        }
        ProblemCode::ImageNameTaken => "choose another image name (`bus images ls` shows yours)",
        ProblemCode::ImageInUse => {
            "wait for the runs that use the image to end (`bus containers runs`), then retry"
        }
        ProblemCode::RegistryDenied => "check the registry credentials and the image's name",
        ProblemCode::RegistryFailed => "try again shortly; check that the registry is reachable",
        ProblemCode::UploadTooLarge => "send a smaller build context or image archive",
        ProblemCode::RunNameTaken => {
            "choose another name, or stop and delete the run that has it (`bus containers runs`)"
        }
        ProblemCode::RunNameAmbiguous => "use one of the run ids the message lists",
    }
}

/// The typed details of an upstream refusal: when to retry, which quota, which precondition.
fn add_upstream_details(details: &mut ErrorDetails, error: &UpstreamError) {
    if let Some(retry_after) = error.retry_after() {
        details.set_retry_info(Some(retry_after));
    }
    let Some(problem) = error.problem() else {
        return;
    };
    match problem.code {
        ProblemCode::QuotaExhausted => {
            details.add_quota_failure_violation("account", problem.detail.clone());
        }
        ProblemCode::BillingRequired => {
            details.add_precondition_failure_violation(
                "BILLING",
                "account",
                problem.detail.clone(),
            );
        }
        _ => {}
    }
}

/// REST status → gRPC code.
fn code_for_http(status: u16, code: ProblemCode) -> Code {
    match (status, code) {
        (_, ProblemCode::TokenMissing | ProblemCode::TokenInvalid | ProblemCode::TokenExpired) => {
            Code::Unauthenticated
        }
        (_, ProblemCode::UploadTooLarge) => Code::ResourceExhausted,
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
    fn quota_problems_carry_retry_info_and_quota_failure() {
        let problem = Problem::new(
            ProblemCode::QuotaExhausted,
            429,
            "Too Many Requests",
            "the plan allows 2 concurrent runs",
        );
        let status = to_status(&Error::Upstream(UpstreamError::RetryLater {
            problem: Box::new(problem),
            retry_after: std::time::Duration::from_secs(30),
        }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "QUOTA_EXHAUSTED");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(std::time::Duration::from_secs(30))
        );
        let quota = details.quota_failure().unwrap();
        assert_eq!(quota.violations[0].subject, "account");
        assert_eq!(
            quota.violations[0].description,
            "the plan allows 2 concurrent runs"
        );
        assert!(details.precondition_failure().is_none());
    }

    #[test]
    fn billing_problems_carry_a_precondition_and_the_help_link() {
        let problem = Problem::new(
            ProblemCode::BillingRequired,
            402,
            "Payment Required",
            "set up billing to start runs",
        )
        .with_guidance_url("https://bus.example/billing");
        let status = to_status(&Error::Upstream(UpstreamError::Problem(Box::new(problem))));
        assert_eq!(status.code(), Code::FailedPrecondition);
        let details = status.get_error_details();
        let precondition = details.precondition_failure().unwrap();
        assert_eq!(precondition.violations[0].r#type, "BILLING");
        assert_eq!(precondition.violations[0].subject, "account");
        assert_eq!(
            details.help().unwrap().links[0].url,
            "https://bus.example/billing"
        );
        assert!(details.retry_info().is_none() && details.quota_failure().is_none());
    }

    #[test]
    fn an_expired_token_is_unauthenticated_with_its_source() {
        let err = CredentialError::Expired {
            source_name: "/t".into(),
            token_file: Some("/t".into()),
            expired_at: "2023-11-14T22:13:20Z".into(),
            subject: "alice".into(),
            scopes: "container:read".into(),
        };
        let status = to_status(&Error::Credentials(err));
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "the token from /t expired at 2023-11-14T22:13:20Z"
        );
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "TOKEN_EXPIRED");
        assert_eq!(info.metadata["expired_at"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn an_upstream_timeout_is_deadline_exceeded() {
        let status = to_status(&Error::Upstream(UpstreamError::Timeout {
            origin: "http://o".into(),
        }));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "UPSTREAM_TIMEOUT"
        );
    }

    #[test]
    fn a_gone_exec_session_is_unavailable_with_its_own_reason() {
        let status = to_status(&Error::ExecSessionGone("it broke".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "it broke");
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "EXEC_SESSION_GONE");
        assert_eq!(
            details.localized_message().unwrap().message,
            "the command's exit code is unknown; check the runner and run the command again"
        );
    }

    /// Every kind of error busd returns: each carries ErrorInfo and a LocalizedMessage.
    fn every_error() -> Vec<Error> {
        let mut errors = vec![
            Error::Credentials(CredentialError::Missing { looked: "x".into() }),
            Error::Credentials(CredentialError::Insecure {
                path: "/t".into(),
                mode: 0o644,
            }),
            Error::Credentials(CredentialError::Unreadable {
                path: "/t".into(),
                source: std::io::Error::other("gone"),
            }),
            Error::Credentials(CredentialError::Malformed {
                source_name: "/t".into(),
                why: "not a JWT",
            }),
            Error::Credentials(CredentialError::Expired {
                source_name: "/t".into(),
                token_file: None,
                expired_at: "2023-11-14T22:13:20Z".into(),
                subject: "alice".into(),
                scopes: "container:read".into(),
            }),
            Error::ApiUrl(ApiUrlError::Unparsable("x".into(), "bad".into())),
            Error::ApiUrl(ApiUrlError::Scheme("ftp://x".into())),
            Error::ApiUrl(ApiUrlError::HasApiPath {
                given: "http://o/api/v1".into(),
                origin: "http://o".into(),
            }),
            Error::ApiUrl(ApiUrlError::NotAnOrigin("http://o/x".into())),
            Error::NotFound {
                message: "no exec e-1 in run r-1".into(),
                guidance: "list them".into(),
            },
            Error::InvalidArgument {
                message: "bad".into(),
                guidance: "fix it".into(),
            },
            Error::ExecSessionGone("the runner closed the exec session".into()),
            Error::ProtocolMismatch {
                busd: 3,
                client: 4,
                started_by_cli: true,
                pid: 42,
            },
            Error::Upstream(UpstreamError::Timeout {
                origin: "http://o".into(),
            }),
            Error::Upstream(UpstreamError::Unreachable {
                origin: "http://o".into(),
                reason: "refused".into(),
            }),
            Error::Upstream(UpstreamError::Unavailable {
                origin: "http://o".into(),
                status: "503".into(),
                tries: 3,
                retry_after: None,
            }),
            Error::Upstream(UpstreamError::Protocol {
                origin: "http://o".into(),
                reason: "not JSON".into(),
            }),
        ];
        use ProblemCode::*;
        let codes = [
            TokenMissing,
            TokenInvalid,
            TokenExpired,
            ScopeMissing,
            NotFound,
            InvalidRequest,
            PayloadTooLarge,
            UnknownProfile,
            EngineUnavailable,
            Internal,
            ApiKeyInvalid,
            ScopeNotAllowed,
            ImageNotAllowed,
            LogsDisabled,
            BillingRequired,
            QuotaExhausted,
            IdempotencyKeyReused,
            RunNotRunning,
            ImageNameTaken,
            ImageInUse,
            RegistryDenied,
            RegistryFailed,
            UploadTooLarge,
            RunNameTaken,
            RunNameAmbiguous,
            Unknown,
        ];
        for code in codes {
            // As the runner sends them for a missing run, exec, image or build: no guidance.
            let problem = || Box::new(Problem::new(code, 404, "Not Found", "no such thing"));
            errors.push(Error::Upstream(UpstreamError::Problem(problem())));
            errors.push(Error::Upstream(UpstreamError::RetryLater {
                problem: problem(),
                retry_after: std::time::Duration::from_secs(1),
            }));
        }
        errors
    }

    #[test]
    fn every_error_carries_error_info_and_a_next_step() {
        for error in every_error() {
            let status = to_status(&error);
            let details = status.get_error_details();
            let info = details
                .error_info()
                .unwrap_or_else(|| panic!("{error:?}: no ErrorInfo"));
            assert_eq!(info.domain, DOMAIN, "{error:?}");
            assert!(!info.reason.is_empty(), "{error:?}");
            let next = details
                .localized_message()
                .unwrap_or_else(|| panic!("{error:?}: no LocalizedMessage"));
            assert!(!next.message.trim().is_empty(), "{error:?}");
            assert!(
                !next.message.contains("/api/"),
                "{error:?}: {}",
                next.message
            );
        }
    }

    #[test]
    fn a_runner_not_found_without_guidance_names_the_listing_commands() {
        let problem = Problem::new(ProblemCode::NotFound, 404, "Not Found", "no run r-1");
        let status = to_status(&Error::Upstream(UpstreamError::Problem(Box::new(problem))));
        assert_eq!(status.code(), Code::NotFound);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "NOT_FOUND");
        assert!(
            details
                .localized_message()
                .unwrap()
                .message
                .contains("bus containers runs")
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
            (413, ProblemCode::UploadTooLarge, Code::ResourceExhausted),
            (409, ProblemCode::ImageNameTaken, Code::FailedPrecondition),
            (403, ProblemCode::RegistryDenied, Code::PermissionDenied),
            (502, ProblemCode::RegistryFailed, Code::Unavailable),
            (429, ProblemCode::Unknown, Code::ResourceExhausted),
            (503, ProblemCode::EngineUnavailable, Code::Unavailable),
            (504, ProblemCode::Unknown, Code::DeadlineExceeded),
        ];
        for (http, problem, grpc) in cases {
            assert_eq!(code_for_http(http, problem), grpc, "{http}");
        }
    }
}
