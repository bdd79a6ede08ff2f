//! Builds: `POST /api/v1/containers/builds` (a context tar; answers at once, the build goes on
//! in the runner), `GET .../builds`, `GET/DELETE .../builds/{id}`, `POST .../builds/{id}/cancel`
//! and `GET .../builds/{id}/logs` (NDJSON, resumable by `seq`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Most tags one build may give its image.
pub const MAX_TAGS: usize = 16;

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BuildState {
    /// Accepted, not started yet.
    Queued,
    /// The engine is building.
    Running,
    /// Built and tagged.
    Succeeded,
    /// The builder failed; `error` says why.
    Failed,
    /// Cancelled on request (or by the runner stopping).
    Cancelled,
}

impl BuildState {
    /// The state's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Succeeded => "succeeded",
            BuildState::Failed => "failed",
            BuildState::Cancelled => "cancelled",
        }
    }

    /// Parses a name from [`BuildState::as_str`].
    pub fn parse(name: &str) -> Option<BuildState> {
        [
            BuildState::Queued,
            BuildState::Running,
            BuildState::Succeeded,
            BuildState::Failed,
            BuildState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Whether the build has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BuildState::Succeeded | BuildState::Failed | BuildState::Cancelled
        )
    }
}

/// A build record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Build {
    /// `bld_` and 32 hex digits.
    pub id: String,
    /// Where it is.
    pub state: BuildState,
    /// The references the image gets when it succeeds.
    pub tags: Vec<String>,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    /// Bytes of the context tar.
    pub context_bytes: u64,
    /// The built image's id, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Why it failed, in the builder's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was accepted.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the engine started it.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// When it ended.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// The reply of `GET /api/v1/containers/builds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BuildList {
    /// The caller's builds, newest first.
    pub builds: Vec<Build>,
}

/// One line of `GET /api/v1/containers/builds/{id}/logs` (NDJSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BuildLogFrame {
    /// A line of the builder's output; `seq` is dense per build, from 1.
    Line {
        /// Resume after it with `after_seq`.
        seq: u64,
        /// The text, without its line break.
        text: String,
        /// When the runner received it.
        #[serde(with = "time::serde::rfc3339")]
        time: OffsetDateTime,
    },
    /// The build has ended; the last frame.
    End {
        /// The build as it ended.
        build: Build,
        /// The seq of the last line.
        last_seq: u64,
    },
    /// Sent on an idle follow, so a broken connection shows.
    Keepalive,
}

/// The query of `POST /api/v1/containers/builds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct CreateBuildQuery {
    /// Comma-separated references the image gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    /// The Dockerfile's path in the context (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
}

/// The query of `GET /api/v1/containers/builds/{id}/logs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct BuildLogsQuery {
    /// Keep the stream open until the build ends.
    #[serde(default)]
    pub follow: bool,
    /// Only lines with a greater seq.
    #[serde(default)]
    pub after_seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_build_queries_round_trip() {
        crate::assert_round_trips([
            CreateBuildQuery::default(),
            CreateBuildQuery {
                tags: Some("a:1,b:2".to_owned()),
                dockerfile: Some("sub/Dockerfile".to_owned()),
            },
        ]);
    }

    #[test]
    fn build_logs_queries_round_trip() {
        crate::assert_round_trips([
            BuildLogsQuery::default(),
            BuildLogsQuery {
                follow: true,
                after_seq: 12,
            },
        ]);
        assert_eq!(
            crate::query_string(&BuildLogsQuery::default()),
            "follow=false&after_seq=0"
        );
    }
}
