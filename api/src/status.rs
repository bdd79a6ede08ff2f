//! `GET /api/v1/containers/status`.

use serde::{Deserialize, Serialize};

/// The runner's state and the engine behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunnerStatus {
    /// `ready`, `starting` or `degraded`.
    pub state: String,
    /// The engine's name and version, e.g. `podman 4.3.1`.
    pub engine: String,
    /// The engine's API version.
    pub engine_api_version: String,
    /// The run profiles this deployment offers.
    pub profiles: Vec<String>,
}
