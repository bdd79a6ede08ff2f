//! Images: `GET /api/v1/containers/images`, `GET/DELETE /api/v1/containers/images/{ref}`,
//! `POST .../images/{ref}/tag`, `POST .../images/pull` and `.../images/push` (NDJSON progress),
//! `POST .../images/load` (an archive upload), `POST .../images/load-from-storage` (an archive
//! in the account's storage) and `GET .../images/{ref}/archive?format` (a download).
//!
//! Images are account-scoped: an account sees the references it pulled, loaded, built or
//! tagged, and the ones the deployment marks public.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Problem;

/// The media type of an image archive (`docker save` / OCI layout in a tar).
pub const ARCHIVE: &str = "application/x-tar";

/// One image as an account sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageSummary {
    /// The engine's image id (`sha256:...`).
    pub id: String,
    /// The references (`registry/repository:tag` or `...@sha256:...`) the caller may use;
    /// never another account's.
    pub references: Vec<String>,
    /// When the image was built, as its config says.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    /// When the caller last pulled, loaded, built or tagged it; absent for public images.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
    /// Bytes of content (all layers).
    pub size_bytes: u64,
    /// Whether the deployment provides it to every account.
    #[serde(default)]
    pub public: bool,
}

/// The reply of `GET /api/v1/containers/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageList {
    /// The caller's images and the public ones, newest first.
    pub images: Vec<ImageSummary>,
}

/// What an image reference resolves to in the engine's store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Descriptor {
    /// The manifest's media type, e.g. `application/vnd.oci.image.manifest.v1+json`, when
    /// the engine says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifest's digest, when the engine says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A manifest the image is known by (one per registry digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ManifestRef {
    /// `sha256:...`.
    pub digest: String,
    /// `os/architecture`, e.g. `linux/amd64`.
    pub platform: String,
}

/// The parts of an image's config that decide how it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageConfig {
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// The default command.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The entrypoint.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// The user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Exposed ports, e.g. `8080/tcp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// E.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// E.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
}

/// The reply of `GET /api/v1/containers/images/{ref}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageDetail {
    /// The engine's image id (`sha256:...`).
    pub id: String,
    /// The references the caller may use.
    pub references: Vec<String>,
    /// The image's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the image was built.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    /// When the caller last pulled, loaded, built or tagged it; absent for public images.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
    /// The manifest the image was stored from.
    pub target: Descriptor,
    /// The registry manifests it is known by.
    #[serde(default)]
    pub manifests: Vec<ManifestRef>,
    /// How it runs.
    pub config: ImageConfig,
    /// The layers' diff ids, base first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Bytes of content (all layers).
    pub content_size_bytes: u64,
    /// Whether the deployment provides it to every account.
    #[serde(default)]
    pub public: bool,
}

/// Credentials for a registry. Sent in a request body only; the runner hands them to the
/// engine for one call and neither logs nor stores them. `Debug` shows no secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryCredentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryCredentials(<redacted>)")
    }
}

/// The body of `POST /api/v1/containers/images/pull` and `.../push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryRequest {
    /// A fully qualified reference: `registry[:port]/repository[:tag|@digest]`.
    pub reference: String,
    /// For a registry that needs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
}

/// The body of `POST /api/v1/containers/images/{ref}/tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TagImage {
    /// The new reference, e.g. `127.0.0.1:5000/team/app:1`.
    pub target: String,
}

/// One line of a pull or push stream (NDJSON).
///
/// `progress` frames, then exactly one of `result` (success) or `error` (the problem that
/// ended the operation), last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProgressFrame {
    /// The engine reported progress.
    Progress {
        /// The layer (or other unit) it concerns, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// What is happening, e.g. `Pulling fs layer`.
        status: String,
        /// Bytes done, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current: Option<u64>,
        /// Bytes in all, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    /// The operation succeeded: the image as the caller now sees it.
    Result {
        /// The image.
        image: ImageSummary,
    },
    /// The operation failed.
    Error {
        /// Why, as a problem document.
        problem: Problem,
    },
}

/// The kind of archive `GET /api/v1/containers/images/{ref}/archive` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ArchiveFormat {
    /// A docker-archive (`docker save`): `manifest.json` and one tar per layer.
    #[default]
    Docker,
    /// An OCI image layout in a tar: `oci-layout`, `index.json` and `blobs/sha256/...`.
    Oci,
}

impl ArchiveFormat {
    /// The name on the wire and on the command line: `docker` or `oci`.
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Docker => "docker",
            ArchiveFormat::Oci => "oci",
        }
    }
}

/// The query of `GET /api/v1/containers/images/{ref}/archive`.
///
/// Serialized, it names the format only when it is not the default (docker), so an older
/// runner still answers the default request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct SaveImageQuery {
    /// `docker` (the default) or `oci`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(inline))]
    pub format: Option<ArchiveFormat>,
}

/// The body of `POST /api/v1/containers/images/load-from-storage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoadFromStorage {
    /// The archive's path relative to the root of the account's storage, e.g.
    /// `images/app.tar` for what a run of the `agent` profile wrote to `/data/images/app.tar`.
    /// Absolute paths, `..` and symlinks are refused.
    pub path: String,
}

/// The reply of `POST /api/v1/containers/images/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoadResult {
    /// The images the archive held, with the references it gave them.
    pub images: Vec<ImageSummary>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_debug() {
        let c = RegistryCredentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let request = RegistryRequest {
            reference: "r/x:1".into(),
            credentials: Some(c),
        };
        assert!(!format!("{request:?}").contains("hunter2"));
    }

    #[test]
    fn save_queries_round_trip() {
        crate::assert_round_trips([
            SaveImageQuery::default(),
            SaveImageQuery {
                format: Some(ArchiveFormat::Docker),
            },
            SaveImageQuery {
                format: Some(ArchiveFormat::Oci),
            },
        ]);
        assert_eq!(crate::query_string(&SaveImageQuery::default()), "");
        assert_eq!(
            crate::query_string(&SaveImageQuery {
                format: Some(ArchiveFormat::Oci)
            }),
            "format=oci"
        );
    }

    #[test]
    fn load_from_storage_bodies_refuse_unknown_fields() {
        let body: LoadFromStorage = serde_json::from_str(r#"{"path":"a/b.tar"}"#).unwrap();
        assert_eq!(body.path, "a/b.tar");
        assert!(serde_json::from_str::<LoadFromStorage>(r#"{"path":"a","x":1}"#).is_err());
    }

    #[test]
    fn progress_frames_are_tagged() {
        let frame: ProgressFrame =
            serde_json::from_str(r#"{"type":"progress","status":"Pulling","id":"ab"}"#).unwrap();
        assert_eq!(
            frame,
            ProgressFrame::Progress {
                id: Some("ab".into()),
                status: "Pulling".into(),
                current: None,
                total: None
            }
        );
    }
}
