//! What an image or build request can fail with, and what a registry's refusal means.

use crate::engine::{EngineError, engine_message};
use crate::images::db::DbError;
use crate::images::stored::StoragePathError;

/// Everything an image or build request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No such image for this account (or another account's).
    #[error("no image {0} in this account")]
    NotFound(String),
    /// A run with pull policy `never` names a registry image the account has not pulled.
    #[error("the image {0} is not on the runner and the run's pull policy is never")]
    NotPulled(String),
    /// A malformed reference or request.
    #[error("{0}")]
    Invalid(String),
    /// The token's grant does not cover the image.
    #[error("this account may not {action} the image \"{image}\"")]
    NotAllowed {
        /// `pull`, `run` ...
        action: &'static str,
        /// The image.
        image: String,
        /// The grant's names and prefixes.
        allowed: Vec<String>,
    },
    /// The deployment provides this name; accounts cannot change it.
    #[error("{0} is provided by the deployment")]
    Public(String),
    /// Another account holds the name.
    #[error("the image name {0} is used by another account")]
    NameTaken(String),
    /// Another operation is writing the name now.
    #[error("another operation is writing {0}")]
    Busy(String),
    /// A run uses the image.
    #[error("{0}")]
    InUse(String),
    /// The registry refused.
    #[error("{0}")]
    RegistryDenied(String),
    /// The registry has no such image.
    #[error("{0}")]
    RegistryNotFound(String),
    /// The registry failed.
    #[error("{0}")]
    RegistryFailed(String),
    /// An upload is over its limit.
    #[error("the {what} is larger than the {limit_mb} MiB this runner accepts")]
    TooLarge {
        /// `build context` or `image archive`.
        what: &'static str,
        /// The limit.
        limit_mb: u64,
    },
    /// An archive in the account's storage cannot be loaded.
    #[error(transparent)]
    Storage(#[from] StoragePathError),
    /// No such build for this account.
    #[error("no build {0} in this account")]
    BuildNotFound(String),
    /// The engine failed.
    #[error("{}", engine_message(.0))]
    Engine(#[from] EngineError),
    /// The image database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The runner cannot do image work (no engine, no state dir).
    #[error("{0}")]
    Unavailable(String),
}

/// What a registry operation's engine error means for the caller.
pub fn registry_error(err: EngineError) -> ImageError {
    let message = match &err {
        EngineError::Stream(message) | EngineError::Status { message, .. } => {
            message.trim().to_owned()
        }
        _ => return ImageError::Engine(err),
    };
    let lower = message.to_ascii_lowercase();
    let message = format!("the registry refused: {}", last_clause(&message));
    if lower.contains("unauthorized")
        || lower.contains("authentication required")
        || lower.contains("denied")
    {
        ImageError::RegistryDenied(message)
    } else if lower.contains("manifest unknown")
        || lower.contains("name unknown")
        || lower.contains("not found")
    {
        ImageError::RegistryNotFound(message)
    } else {
        ImageError::RegistryFailed(format!(
            "the registry operation failed: {}",
            last_clause(&err_text(&err))
        ))
    }
}

fn err_text(err: &EngineError) -> String {
    match err {
        EngineError::Stream(message) => message.trim().to_owned(),
        other => engine_message(other),
    }
}

/// The most telling part of an engine message: Podman chains causes with `: `; the first
/// two say what was tried, the last why it failed.
pub(super) fn last_clause(message: &str) -> String {
    let parts: Vec<&str> = message.split(": ").collect();
    if parts.len() <= 2 {
        return message.to_owned();
    }
    format!("{}: {}", parts[0], parts[parts.len() - 1])
}
