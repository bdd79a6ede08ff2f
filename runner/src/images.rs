//! Images, scoped to accounts.
//!
//! The engine has one image store and one namespace of names for everyone; this module puts
//! accounts on top of it. An account *holds* the names it pulled, loaded, built or tagged
//! (recorded in `images.db`, see [`db`]); it sees, inspects, saves, pushes, removes and runs
//! only images it holds a name of, and those the deployment makes public (every profile's
//! image and `[images] public` in the config). Another account's image answers 404, like a
//! missing one, and no reply names another account's references.
//!
//! Names are claimed, never taken over: a pull, load, build or tag that would point a name
//! another account holds (or a public name) at other content is refused (409
//! `image_name_taken`) before the engine is asked. Pulls are the exception that proves the
//! rule: two accounts may both pull the same registry name (each needs the registry's
//! permission, and the name means what the registry serves). While an operation writes a name,
//! it holds an in-memory claim on it, so two operations cannot race for one name. Removing a
//! name drops the caller's hold; the engine forgets the name only when nobody holds it.
//!
//! Registry credentials come in request bodies, go to the engine in its `X-Registry-Auth`
//! header for the one call, and are neither logged nor stored.

pub mod archive;
pub mod db;
pub mod engine;
pub mod refs;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::StatusCode;
use bollard::errors::Error as EngineError;
use bollard::models::ImageInspect;
use bus_api::auth::Claims;
use bus_api::images::{
    Descriptor, ImageConfig, ImageDetail, ImageList, ImageSummary, LoadResult, ManifestRef,
    ProgressFrame, RegistryRequest,
};
use bus_api::{Problem, ProblemCode};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::problem::engine_message;
use db::{Db, DbError, Held};
use engine::ImageEngine;
use refs::{ImageRef, Name};

/// A build context's size limit when the config names none, in MiB.
pub const DEFAULT_MAX_BUILD_CONTEXT_MB: u64 = 256;
/// An image archive's size limit when the config names none, in MiB.
pub const DEFAULT_MAX_LOAD_ARCHIVE_MB: u64 = 4096;
/// Progress frames queued per stream before the engine's stream waits.
const PROGRESS_BUFFER: usize = 64;

/// `[images]` in the runner's config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Image names (or repositories, or prefixes ending in `*`) every account may see and
    /// run, besides every profile's image.
    #[serde(default)]
    pub public: Vec<String>,
    /// The largest build context accepted, in MiB.
    #[serde(default = "default_context_mb")]
    pub max_build_context_mb: u64,
    /// The largest image archive accepted, in MiB.
    #[serde(default = "default_archive_mb")]
    pub max_load_archive_mb: u64,
}

fn default_context_mb() -> u64 {
    DEFAULT_MAX_BUILD_CONTEXT_MB
}

fn default_archive_mb() -> u64 {
    DEFAULT_MAX_LOAD_ARCHIVE_MB
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            public: Vec::new(),
            max_build_context_mb: DEFAULT_MAX_BUILD_CONTEXT_MB,
            max_load_archive_mb: DEFAULT_MAX_LOAD_ARCHIVE_MB,
        }
    }
}

/// How an account came to hold a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Pulled from a registry.
    Pull,
    /// Loaded from an archive.
    Load,
    /// Built.
    Build,
    /// Tagged from an image it could see.
    Tag,
}

impl Source {
    /// The name stored in `image_refs.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pull => "pull",
            Source::Load => "load",
            Source::Build => "build",
            Source::Tag => "tag",
        }
    }
}

/// Everything an image or build request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No such image for this account (or another account's).
    #[error("no image {0} in this account")]
    NotFound(String),
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

impl ImageError {
    /// The problem document.
    pub fn problem(&self) -> Problem {
        use ProblemCode as C;
        let p = |code, status: StatusCode, title: &str| {
            Problem::new(code, status.as_u16(), title, self.to_string())
        };
        match self {
            ImageError::NotFound(_) => p(C::NotFound, StatusCode::NOT_FOUND, "Not found")
                .with_guidance(
                    "`bus images ls` lists the images this account may use; pull, load or build \
                     the image first",
                ),
            ImageError::Invalid(_) => p(
                C::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "Invalid request",
            ),
            ImageError::NotAllowed { allowed, .. } => p(
                C::ImageNotAllowed,
                StatusCode::FORBIDDEN,
                "Image not allowed",
            )
            .with_guidance(format!(
                "this account's grant allows only: {}; name one of those, or ask the runner's \
                 operator to add the image to the account's `images`",
                if allowed.is_empty() {
                    "no images".to_owned()
                } else {
                    allowed.join(", ")
                }
            )),
            ImageError::Public(_) => p(
                C::ImageNotAllowed,
                StatusCode::FORBIDDEN,
                "Image provided by the deployment",
            )
            .with_guidance(
                "every account may use it as it is; to change it, tag it under a name of your \
                 own (`bus images tag SOURCE TARGET`)",
            ),
            ImageError::NameTaken(_) => {
                p(C::ImageNameTaken, StatusCode::CONFLICT, "Image name taken")
                    .with_guidance("choose another name (another repository or tag)")
            }
            ImageError::Busy(_) => p(C::ImageNameTaken, StatusCode::CONFLICT, "Image name busy")
                .with_guidance("retry once the other operation has ended"),
            ImageError::InUse(_) => p(C::ImageInUse, StatusCode::CONFLICT, "Image in use")
                .with_guidance(
                    "stop or delete the runs that use it (`bus containers runs`), then retry",
                ),
            ImageError::RegistryDenied(_) => {
                p(C::RegistryDenied, StatusCode::FORBIDDEN, "Registry denied").with_guidance(
                    "pass the registry's user name and password with --credentials-file FILE (a \
                 0600 JSON file with `username` and `password`) and check them",
                )
            }
            ImageError::RegistryNotFound(_) => {
                p(C::NotFound, StatusCode::NOT_FOUND, "Not in the registry").with_guidance(
                    "check the registry, repository and tag; the registry has no such image",
                )
            }
            ImageError::RegistryFailed(_) => p(
                C::RegistryFailed,
                StatusCode::BAD_GATEWAY,
                "Registry failed",
            )
            .with_guidance("check that the registry is reachable from the runner, then retry"),
            ImageError::TooLarge { .. } => p(
                C::UploadTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "Upload too large",
            )
            .with_guidance(
                "send less (leave files out of the build context), or ask the runner's operator \
                 to raise [images] max_build_context_mb / max_load_archive_mb",
            ),
            ImageError::BuildNotFound(_) => p(C::NotFound, StatusCode::NOT_FOUND, "Not found")
                .with_guidance("`bus builds ls` lists this account's builds"),
            ImageError::Engine(_) => p(
                C::EngineUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "Engine unavailable",
            )
            .with_guidance("check that the engine (podman system service) is running, then retry"),
            ImageError::Db(_) => p(
                C::Internal,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Storage failed",
            )
            .with_guidance("retry; if it persists, check the runner's disk and its log"),
            ImageError::Unavailable(_) => p(
                C::EngineUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "Images unavailable",
            )
            .with_guidance("start the runner with --engine naming the engine's socket"),
        }
    }
}

/// What a registry operation's engine error means for the caller.
pub fn registry_error(err: EngineError) -> ImageError {
    let message = match &err {
        EngineError::DockerStreamError { error } => error.trim().to_owned(),
        EngineError::DockerResponseServerError { message, .. } => message.trim().to_owned(),
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
        EngineError::DockerStreamError { error } => error.trim().to_owned(),
        other => engine_message(other),
    }
}

/// The most telling part of an engine message: Podman chains causes with `: `; the first
/// two say what was tried, the last why it failed.
fn last_clause(message: &str) -> String {
    let parts: Vec<&str> = message.split(": ").collect();
    if parts.len() <= 2 {
        return message.to_owned();
    }
    format!("{}: {}", parts[0], parts[parts.len() - 1])
}

/// A stream of progress frames, ending with `result` or `error`.
pub type Progress = Pin<Box<dyn Stream<Item = ProgressFrame> + Send>>;

/// A claim on names being written; released on drop.
pub struct ClaimGuard {
    images: Arc<Images>,
    names: Vec<String>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let mut claims = self.images.claims.lock().unwrap_or_else(|e| e.into_inner());
        for name in &self.names {
            claims.remove(name);
        }
    }
}

/// The image service: ownership records, claims, the engine.
pub struct Images {
    dir: PathBuf,
    db: OnceLock<Result<Db, String>>,
    engine: OnceLock<ImageEngine>,
    claims: Mutex<HashMap<String, String>>,
    public: Vec<String>,
    config: ImagesConfig,
    /// Builds in flight (see [`crate::builds`]).
    pub builds: crate::builds::Live,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("dir", &self.dir)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// What of an image a caller may see.
struct Visible {
    /// Its names the caller may use (tags, held digests, or `sha256:<id>` when held by id).
    names: Vec<String>,
    /// Registry digests of those names' repositories.
    digests: Vec<String>,
    /// Whether one of the names is public.
    public: bool,
}

/// An image the caller may see, resolved.
struct Resolved {
    inspect: ImageInspect,
    /// What the caller may see of it.
    visible: Visible,
    /// The caller's holds on it.
    held: Vec<Held>,
}

impl Images {
    /// The service for a runner whose state dir is `dir`; the database opens on first use,
    /// the engine with [`Images::connect_engine`].
    pub fn new(dir: &Path, config: &crate::config::Config) -> Images {
        let mut public: Vec<String> = config
            .profiles
            .values()
            .map(|p| canonical_pattern(&p.image))
            .collect();
        public.extend(config.images.public.iter().map(|p| canonical_pattern(p)));
        public.sort();
        public.dedup();
        Images {
            dir: dir.to_owned(),
            db: OnceLock::new(),
            engine: OnceLock::new(),
            claims: Mutex::default(),
            public,
            config: config.images.clone(),
            builds: crate::builds::Live::default(),
        }
    }

    /// Connects the engine image work goes to.
    pub fn connect_engine(&self, url: &str) -> Result<(), EngineError> {
        let engine = ImageEngine::connect(url)?;
        let _ = self.engine.set(engine);
        Ok(())
    }

    /// The engine.
    pub fn engine(&self) -> Result<&ImageEngine, ImageError> {
        self.engine.get().ok_or_else(|| {
            ImageError::Unavailable("this runner has no engine for image work".to_owned())
        })
    }

    /// The database, opened on first use.
    pub fn db(&self) -> Result<&Db, ImageError> {
        self.db
            .get_or_init(|| Db::open(&self.dir).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| ImageError::Unavailable(format!("cannot open the image database: {e}")))
    }

    /// The state dir (uploads are spooled below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limits.
    pub fn config(&self) -> &ImagesConfig {
        &self.config
    }

    /// Whether the deployment makes `name` public.
    pub fn is_public(&self, name: &str) -> bool {
        self.public
            .iter()
            .any(|pattern| bus_api::auth::image_matches(pattern, name))
    }

    fn holds(&self, owner: &str) -> Result<HashMap<String, Held>, ImageError> {
        Ok(self
            .db()?
            .held_by(owner)?
            .into_iter()
            .map(|h| (h.reference.clone(), h))
            .collect())
    }

    /// Claims `names` for `owner` while it writes them: refused when one is public, held by
    /// another account (unless this is a pull and every other holder pulled it too), or
    /// claimed by another operation.
    pub fn claim(
        self: &Arc<Self>,
        owner: &str,
        names: &[Name],
        source: Source,
    ) -> Result<ClaimGuard, ImageError> {
        let db = self.db()?;
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        for name in names {
            let name = name.as_str();
            if claims.contains_key(name) {
                return Err(ImageError::Busy(name.to_owned()));
            }
            if self.is_public(name) {
                return Err(ImageError::Public(name.to_owned()));
            }
            let others: Vec<Held> = db
                .holders(name)?
                .into_iter()
                .filter(|h| h.owner != owner)
                .collect();
            let shared_pull =
                source == Source::Pull && others.iter().all(|h| h.source == Source::Pull.as_str());
            if !others.is_empty() && !shared_pull {
                return Err(ImageError::NameTaken(name.to_owned()));
            }
        }
        let mut taken = Vec::new();
        for name in names {
            if claims
                .insert(name.as_str().to_owned(), owner.to_owned())
                .is_none()
            {
                taken.push(name.as_str().to_owned());
            }
        }
        Ok(ClaimGuard {
            images: self.clone(),
            names: taken,
        })
    }

    /// Whether `owner` may run `image` (as a run names it): a public name, a name it holds,
    /// or the id of an image it may see. Anything else is 404, like a missing image.
    pub async fn check_run(&self, owner: &str, image: &str) -> Result<(), ImageError> {
        match refs::parse(image).map_err(ImageError::Invalid)? {
            ImageRef::Name(name) => {
                if self.is_public(name.as_str()) || self.holds(owner)?.contains_key(name.as_str()) {
                    Ok(())
                } else {
                    Err(ImageError::NotFound(image.to_owned()))
                }
            }
            ImageRef::Id(_) => self.resolve(owner, image).await.map(drop),
        }
    }

    /// What of an image `owner` may see: its names, its registry digests, and whether it is
    /// public. Nothing visible means the image is not the caller's.
    fn visible(
        &self,
        holds: &HashMap<String, Held>,
        id: &str,
        tags: &[String],
        digests: &[String],
    ) -> Visible {
        let mut names = Vec::new();
        let mut public = false;
        for tag in tags {
            let is_public = self.is_public(tag);
            if is_public || holds.contains_key(tag) {
                public |= is_public;
                names.push(tag.clone());
            }
        }
        let repositories: BTreeSet<String> = names
            .iter()
            .map(|t| t.rsplit_once(':').map_or(t.as_str(), |(r, _)| r).to_owned())
            .collect();
        let mut seen_digests = Vec::new();
        for digest in digests {
            let repository = digest.split_once('@').map_or("", |(r, _)| r);
            if holds.contains_key(digest) {
                names.push(digest.clone());
            } else if repositories.contains(repository) {
                seen_digests.push(digest.clone());
            }
        }
        let by_id = format!("sha256:{}", refs::bare_id(id));
        if names.is_empty() && holds.contains_key(&by_id) {
            names.push(by_id);
        }
        if names.is_empty() {
            seen_digests.clear();
        }
        Visible {
            names,
            digests: seen_digests,
            public,
        }
    }

    /// Finds the image `text` names among those `owner` may see.
    async fn resolve(&self, owner: &str, text: &str) -> Result<Resolved, ImageError> {
        let holds = self.holds(owner)?;
        let engine = self.engine()?;
        let not_found = || ImageError::NotFound(text.trim().to_owned());
        let target = match refs::parse(text).map_err(ImageError::Invalid)? {
            ImageRef::Name(name) => {
                if !self.is_public(name.as_str()) && !holds.contains_key(name.as_str()) {
                    return Err(not_found());
                }
                name.as_str().to_owned()
            }
            ImageRef::Id(prefix) => {
                let mut ids = BTreeSet::new();
                for image in engine.list().await? {
                    if refs::bare_id(&image.id).starts_with(&prefix) {
                        let visible =
                            self.visible(&holds, &image.id, &image.repo_tags, &image.repo_digests);
                        if !visible.names.is_empty() {
                            ids.insert(image.id.clone());
                        }
                    }
                }
                if ids.is_empty() {
                    // An image held only by id is not listed with its tags; ask for it.
                    let id = format!("sha256:{prefix}");
                    if prefix.len() == 64 && holds.contains_key(&id) {
                        ids.insert(id);
                    }
                }
                match ids.len() {
                    0 => return Err(not_found()),
                    1 => ids.pop_first().expect("one id"),
                    _ => {
                        return Err(ImageError::Invalid(format!(
                            "the id prefix {prefix} names more than one image; give more digits"
                        )));
                    }
                }
            }
        };
        let inspect = engine.inspect(&target).await?.ok_or_else(not_found)?;
        let id = inspect.id.clone().unwrap_or_default();
        let visible = self.visible(
            &holds,
            &id,
            inspect.repo_tags.as_deref().unwrap_or_default(),
            inspect.repo_digests.as_deref().unwrap_or_default(),
        );
        if visible.names.is_empty() {
            return Err(not_found());
        }
        let held = holds
            .into_values()
            .filter(|h| visible.names.contains(&h.reference))
            .collect();
        Ok(Resolved {
            inspect,
            visible,
            held,
        })
    }

    /// The images `owner` may see, newest first.
    pub async fn list(&self, owner: &str) -> Result<ImageList, ImageError> {
        let holds = self.holds(owner)?;
        let mut images = Vec::new();
        for image in self.engine()?.list().await? {
            let visible = self.visible(&holds, &image.id, &image.repo_tags, &image.repo_digests);
            if visible.names.is_empty() {
                continue;
            }
            let updated_at = visible
                .names
                .iter()
                .filter_map(|r| holds.get(r))
                .map(|h| h.updated_at)
                .max();
            images.push(ImageSummary {
                id: image.id.clone(),
                references: visible.names,
                created_at: OffsetDateTime::from_unix_timestamp(image.created).ok(),
                updated_at,
                size_bytes: u64::try_from(image.size).unwrap_or(0),
                public: visible.public,
            });
        }
        images.sort_by(|a, b| {
            (b.updated_at, b.created_at, &a.id).cmp(&(a.updated_at, a.created_at, &b.id))
        });
        Ok(ImageList { images })
    }

    /// The image `text` names, as `owner` may see it.
    pub async fn summary(&self, owner: &str, text: &str) -> Result<ImageSummary, ImageError> {
        let r = self.resolve(owner, text).await?;
        Ok(summary_of(&r))
    }

    /// Everything about the image `text` names.
    pub async fn inspect(&self, owner: &str, text: &str) -> Result<ImageDetail, ImageError> {
        let r = self.resolve(owner, text).await?;
        let summary = summary_of(&r);
        let i = &r.inspect;
        let manifest = self.engine()?.manifest_info(&summary.id).await;
        let os = i.os.clone().unwrap_or_default();
        let architecture = i.architecture.clone().unwrap_or_default();
        let platform = format!("{os}/{architecture}");
        let mut manifests: Vec<ManifestRef> = Vec::new();
        for reference in r.visible.names.iter().chain(&r.visible.digests) {
            if let Some((_, digest)) = reference.split_once('@') {
                if !manifests.iter().any(|m| m.digest == digest) {
                    manifests.push(ManifestRef {
                        digest: digest.to_owned(),
                        platform: platform.clone(),
                    });
                }
            }
        }
        let config = i.config.clone().unwrap_or_default();
        Ok(ImageDetail {
            id: summary.id,
            references: summary.references,
            labels: engine::labels(config.labels.clone()),
            created_at: summary.created_at,
            updated_at: summary.updated_at,
            target: Descriptor {
                media_type: manifest.media_type,
                digest: manifest.digest,
            },
            manifests,
            config: ImageConfig {
                env: config.env.unwrap_or_default(),
                cmd: config.cmd.unwrap_or_default(),
                entrypoint: config.entrypoint.unwrap_or_default(),
                working_dir: config.working_dir.filter(|w| !w.is_empty()),
                user: config.user.filter(|u| !u.is_empty()),
                exposed_ports: config.exposed_ports.unwrap_or_default(),
                os,
                architecture,
            },
            layers: i
                .root_fs
                .as_ref()
                .and_then(|r| r.layers.clone())
                .unwrap_or_default(),
            content_size_bytes: summary.size_bytes,
            public: summary.public,
        })
    }

    /// Drops `owner`'s hold on the name (or on every name of the image an id names); the
    /// engine forgets a name nobody holds any more.
    pub async fn remove(&self, owner: &str, text: &str) -> Result<(), ImageError> {
        let names: Vec<String> = match refs::parse(text).map_err(ImageError::Invalid)? {
            ImageRef::Name(name) => {
                if !self.holds(owner)?.contains_key(name.as_str()) {
                    if self.is_public(name.as_str()) {
                        return Err(ImageError::Public(name.to_string()));
                    }
                    return Err(ImageError::NotFound(text.trim().to_owned()));
                }
                vec![name.to_string()]
            }
            ImageRef::Id(_) => {
                let r = self.resolve(owner, text).await?;
                if r.held.is_empty() {
                    return Err(ImageError::Public(text.trim().to_owned()));
                }
                r.held.into_iter().map(|h| h.reference).collect()
            }
        };
        let db = self.db()?;
        for name in names {
            let others = db.holders(&name)?.into_iter().any(|h| h.owner != owner);
            if !others && !self.is_public(&name) {
                match self.engine()?.remove(&name).await {
                    Ok(())
                    | Err(EngineError::DockerResponseServerError {
                        status_code: 404, ..
                    }) => {}
                    Err(EngineError::DockerResponseServerError {
                        status_code: 409,
                        message,
                    }) => {
                        return Err(ImageError::InUse(format!(
                            "the engine cannot remove {name}: {}",
                            last_clause(message.trim())
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            db.release(owner, &name)?;
            tracing::info!(owner, image = %name, "image name released");
        }
        Ok(())
    }

    /// Gives an image `owner` may see the new name `target`, held by `owner`.
    pub async fn tag(
        self: &Arc<Self>,
        owner: &str,
        source: &str,
        target: &str,
    ) -> Result<ImageSummary, ImageError> {
        let target = match refs::parse(target).map_err(ImageError::Invalid)? {
            ImageRef::Name(name) => name,
            ImageRef::Id(_) => {
                return Err(ImageError::Invalid(
                    "the new name must be a reference (repository:tag), not an id".to_owned(),
                ));
            }
        };
        let r = self.resolve(owner, source).await?;
        let id = r.inspect.id.clone().unwrap_or_default();
        let _claim = self.claim(owner, std::slice::from_ref(&target), Source::Tag)?;
        self.engine()?.tag(&id, &target).await?;
        self.db()?
            .hold(owner, target.as_str(), &id, Source::Tag.as_str())?;
        tracing::info!(owner, image = %target, "image tagged");
        self.summary(owner, target.as_str()).await
    }

    /// Pulls `request.reference` for the caller. Refusals the engine gives at once (a bad
    /// name, the registry's "unauthorized") come back as errors; later failures as the
    /// stream's last frame. The pull goes on if the caller leaves.
    pub async fn pull(
        self: &Arc<Self>,
        claims: &Claims,
        request: RegistryRequest,
    ) -> Result<Progress, ImageError> {
        let owner = claims.sub.clone();
        let name = registry_name(&request.reference, "pull")?;
        if let Some(grant) = &claims.grant {
            if !grant.allows_image(name.as_str()) && !grant.allows_image(request.reference.trim()) {
                return Err(ImageError::NotAllowed {
                    action: "pull",
                    image: name.to_string(),
                    allowed: grant.images.clone().unwrap_or_default(),
                });
            }
        }
        let claim = self.claim(&owner, std::slice::from_ref(&name), Source::Pull)?;
        let credentials = request
            .credentials
            .as_ref()
            .map(|c| engine::docker_credentials(c, name.domain()));
        let stream = self
            .engine()?
            .pull(&name, credentials)
            .map(|item| item.map(|i| (i.id, i.status, i.progress_detail)));
        tracing::info!(owner, image = %name, "pull started");
        let images = self.clone();
        let finish = move || async move {
            let _claim = claim;
            let inspect = images
                .engine()?
                .inspect(name.as_str())
                .await?
                .ok_or_else(|| {
                    ImageError::RegistryFailed(format!(
                        "the engine reported {name} pulled but does not have it"
                    ))
                })?;
            let id = inspect.id.unwrap_or_default();
            images
                .db()?
                .hold(&owner, name.as_str(), &id, Source::Pull.as_str())?;
            tracing::info!(owner, image = %name, "pull done");
            images.summary(&owner, name.as_str()).await
        };
        progress(stream.boxed(), finish).await
    }

    /// Pushes a name the caller holds to its registry.
    pub async fn push(
        self: &Arc<Self>,
        owner: &str,
        request: RegistryRequest,
    ) -> Result<Progress, ImageError> {
        let name = registry_name(&request.reference, "push")?;
        if !self.holds(owner)?.contains_key(name.as_str()) {
            return Err(ImageError::NotFound(name.to_string()));
        }
        let credentials = request
            .credentials
            .as_ref()
            .map(|c| engine::docker_credentials(c, name.domain()));
        let stream = self
            .engine()?
            .push(&name, credentials)
            .map(|item| item.map(|i| (None, i.status, i.progress_detail)));
        tracing::info!(owner, image = %name, "push started");
        let images = self.clone();
        let owner = owner.to_owned();
        let finish = move || async move {
            tracing::info!(owner, image = %name, "push done");
            images.summary(&owner, name.as_str()).await
        };
        progress(stream.boxed(), finish).await
    }

    /// Spools an upload to a file below the state dir, refusing it as soon as it passes
    /// `limit_mb` (or at once when `declared` says it will).
    pub async fn spool(
        &self,
        body: axum::body::Body,
        declared: Option<u64>,
        limit_mb: u64,
        what: &'static str,
    ) -> Result<Spooled, ImageError> {
        let limit = limit_mb.saturating_mul(1024 * 1024);
        let too_large = || ImageError::TooLarge { what, limit_mb };
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let dir = self.dir.join("uploads");
        std::fs::create_dir_all(&dir).map_err(|e| {
            ImageError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(format!(
            "upload-{}",
            crate::store::new_run_id().trim_start_matches("run_")
        ));
        let spooled = Spooled {
            path: path.clone(),
            bytes: 0,
        };
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ImageError::Unavailable(format!("cannot spool the upload: {e}")))?;
        let mut spooled = spooled;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ImageError::Invalid(format!("the upload broke off: {}", e.to_string().trim()))
            })?;
            spooled.bytes += chunk.len() as u64;
            if spooled.bytes > limit {
                return Err(too_large());
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| ImageError::Unavailable(format!("cannot spool the upload: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| ImageError::Unavailable(format!("cannot spool the upload: {e}")))?;
        Ok(spooled)
    }

    /// Loads an uploaded archive for `owner`: the names it gives are claimed first (refused
    /// when another account holds one), then held by `owner`.
    pub async fn load(
        self: &Arc<Self>,
        owner: &str,
        body: axum::body::Body,
        declared: Option<u64>,
    ) -> Result<LoadResult, ImageError> {
        let limit = self.config.max_load_archive_mb;
        let spooled = self.spool(body, declared, limit, "image archive").await?;
        let path = spooled.path.clone();
        let contents = tokio::task::spawn_blocking(move || archive::read(&path))
            .await
            .map_err(|e| ImageError::Unavailable(format!("reading the archive failed: {e}")))?
            .map_err(ImageError::Invalid)?;
        let mut names = Vec::new();
        for text in &contents.names {
            match refs::parse(text) {
                Ok(ImageRef::Name(name)) => names.push(name),
                _ => {
                    return Err(ImageError::Invalid(format!(
                        "the archive names an image \"{text}\", which is not a valid reference"
                    )));
                }
            }
        }
        let _claim = self.claim(owner, &names, Source::Load)?;
        let mut stream = self.engine()?.load(&spooled.path);
        let mut loaded = Vec::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| match e {
                EngineError::DockerResponseServerError {
                    status_code: 400..=500,
                    message,
                } => ImageError::Invalid(format!(
                    "the engine cannot load the archive: {}",
                    message.lines().next().unwrap_or_default().trim()
                )),
                EngineError::DockerStreamError { error } => {
                    ImageError::Invalid(format!("the engine cannot load the archive: {error}"))
                }
                other => ImageError::Engine(other),
            })?;
            for text in [info.stream, info.status].into_iter().flatten() {
                for line in text.lines() {
                    if let Some(rest) = line.trim().strip_prefix("Loaded image") {
                        let rest = rest.trim_start_matches(['s', ':', ' ']);
                        loaded.extend(rest.split(',').map(|s| s.trim().to_owned()));
                    }
                }
            }
        }
        let db = self.db()?;
        let engine = self.engine()?;
        let mut ids = Vec::new();
        for text in loaded.iter().filter(|t| !t.is_empty()) {
            let Some(inspect) = engine.inspect(text).await? else {
                continue;
            };
            let id = inspect.id.unwrap_or_default();
            let reference = match refs::parse(text) {
                Ok(ImageRef::Name(name)) => {
                    if !names.contains(&name) {
                        tracing::warn!(owner, image = %name, "the engine loaded a name the archive did not list");
                    }
                    name.to_string()
                }
                _ => format!("sha256:{}", refs::bare_id(&id)),
            };
            db.hold(owner, &reference, &id, Source::Load.as_str())?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut images = Vec::new();
        for id in ids {
            images.push(self.summary(owner, refs::bare_id(&id)).await?);
        }
        tracing::info!(
            owner,
            images = images.len(),
            bytes = spooled.bytes,
            "archive loaded"
        );
        Ok(LoadResult { images })
    }

    /// The image `text` names as a docker-archive: its file name and its bytes. An error the
    /// engine gives before the first byte comes back as an error.
    pub async fn save(
        &self,
        owner: &str,
        text: &str,
    ) -> Result<
        (
            String,
            impl Stream<Item = Result<Bytes, std::io::Error>> + use<>,
        ),
        ImageError,
    > {
        let r = self.resolve(owner, text).await?;
        let name = r
            .visible
            .names
            .iter()
            .find(|v| !v.starts_with("sha256:") && !v.contains('@'))
            .cloned()
            .unwrap_or_else(|| r.inspect.id.clone().unwrap_or_default());
        let mut stream = self.engine()?.save(&name);
        let first = match stream.next().await {
            Some(Ok(bytes)) => Some(bytes),
            Some(Err(e)) => return Err(e.into()),
            None => None,
        };
        let file = format!(
            "{}.tar",
            name.rsplit('/')
                .next()
                .unwrap_or("image")
                .replace([':', '@'], "-")
        );
        let rest = stream.map(|r| r.map_err(|e| std::io::Error::other(engine_message(&e))));
        Ok((file, futures::stream::iter(first.map(Ok)).chain(rest)))
    }
}

/// A spooled upload; the file is removed on drop.
#[derive(Debug)]
pub struct Spooled {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn summary_of(r: &Resolved) -> ImageSummary {
    ImageSummary {
        id: r.inspect.id.clone().unwrap_or_default(),
        references: r.visible.names.clone(),
        created_at: r.inspect.created.as_deref().and_then(|c| {
            OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
        }),
        updated_at: r.held.iter().map(|h| h.updated_at).max(),
        size_bytes: r
            .inspect
            .size
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        public: r.visible.public,
    }
}

/// A grant or public pattern in canonical form, so it matches canonical names: a bare
/// repository (`busybox`, `localhost/busybox`) stays bare; a prefix (`x/*`) stays a prefix.
fn canonical_pattern(pattern: &str) -> String {
    if pattern.ends_with('*') {
        return pattern.to_owned();
    }
    match refs::parse_name(pattern) {
        Ok(name) => {
            let written_tag = pattern.rsplit('/').next().unwrap_or(pattern).contains(':')
                || pattern.contains('@');
            if written_tag {
                name.to_string()
            } else {
                name.repository().to_owned()
            }
        }
        Err(_) => pattern.to_owned(),
    }
}

/// A name for pull or push: a valid reference that names a registry.
fn registry_name(text: &str, action: &str) -> Result<Name, ImageError> {
    match refs::parse(text).map_err(ImageError::Invalid)? {
        ImageRef::Name(name) if !name.is_local() => Ok(name),
        ImageRef::Name(name) => Err(ImageError::Invalid(format!(
            "{name} names no registry; {action} needs registry[:port]/repository[:tag], e.g. \
             127.0.0.1:5000/team/app:1"
        ))),
        ImageRef::Id(_) => Err(ImageError::Invalid(format!(
            "{action} needs an image reference (registry/repository:tag), not an id"
        ))),
    }
}

type RawProgress = Result<
    (
        Option<String>,
        Option<String>,
        Option<bollard::models::ProgressDetail>,
    ),
    EngineError,
>;

fn progress_frame(
    id: Option<String>,
    status: Option<String>,
    detail: Option<bollard::models::ProgressDetail>,
) -> Option<ProgressFrame> {
    let status = status.filter(|s| !s.trim().is_empty())?;
    let detail = detail.unwrap_or_default();
    Some(ProgressFrame::Progress {
        id: id.filter(|i| !i.is_empty()),
        status,
        current: detail.current.and_then(|n| u64::try_from(n).ok()),
        total: detail.total.and_then(|n| u64::try_from(n).ok()),
    })
}

/// Drives an engine progress stream on a task of its own: the first item decides between an
/// error (returned) and a stream of frames that ends with `finish()`'s result or an error.
async fn progress<F, Fut>(
    mut stream: Pin<Box<dyn Stream<Item = RawProgress> + Send>>,
    finish: F,
) -> Result<Progress, ImageError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<ImageSummary, ImageError>> + Send,
{
    let first = match stream.next().await {
        Some(Err(e)) => return Err(registry_error(e)),
        Some(Ok((id, status, detail))) => progress_frame(id, status, detail),
        None => None,
    };
    let (tx, rx) = mpsc::channel(PROGRESS_BUFFER);
    tokio::spawn(async move {
        // A caller that left does not stop the operation.
        if let Some(frame) = first {
            let _ = tx.send(frame).await;
        }
        let mut failed = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok((id, status, detail)) => {
                    if let Some(frame) = progress_frame(id, status, detail) {
                        let _ = tx.send(frame).await;
                    }
                }
                Err(e) => {
                    failed = Some(registry_error(e));
                    break;
                }
            }
        }
        let last = match failed {
            Some(err) => Err(err),
            None => finish().await,
        };
        let frame = match last {
            Ok(image) => ProgressFrame::Result { image },
            Err(err) => {
                tracing::info!(error = %err, "image operation failed");
                ProgressFrame::Error {
                    problem: err.problem(),
                }
            }
        };
        let _ = tx.send(frame).await;
    });
    Ok(ReceiverStream::new(rx).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_become_canonical() {
        assert_eq!(
            canonical_pattern("localhost/busybox:latest"),
            "localhost/busybox:latest"
        );
        assert_eq!(canonical_pattern("busybox"), "localhost/busybox");
        assert_eq!(
            canonical_pattern("localhost/allowed/*"),
            "localhost/allowed/*"
        );
        assert_eq!(canonical_pattern("127.0.0.1:5000/x"), "127.0.0.1:5000/x");
    }

    #[test]
    fn registry_errors_are_classified() {
        let e = |s: &str| EngineError::DockerStreamError { error: s.into() };
        assert!(matches!(
            registry_error(e("initializing source docker://r/x:1: reading manifest 1 in r/x: unauthorized: authentication required")),
            ImageError::RegistryDenied(m) if m.contains("authentication required") && !m.contains("reading manifest")
        ));
        assert!(matches!(
            registry_error(e(
                "reading manifest 2 in r/x: manifest unknown: manifest unknown"
            )),
            ImageError::RegistryNotFound(_)
        ));
        assert!(matches!(
            registry_error(e("pinging container registry r: connection refused")),
            ImageError::RegistryFailed(_)
        ));
    }

    #[test]
    fn public_names_come_from_profiles_and_config() {
        let mut config = crate::config::Config::builtin();
        config.images.public = vec!["r.io/base".into()];
        let dir = tempfile::tempdir().unwrap();
        let images = Images::new(dir.path(), &config);
        assert!(images.is_public("localhost/busybox:latest"));
        assert!(images.is_public("r.io/base:3"));
        assert!(!images.is_public("localhost/busybox:1"));
        assert!(!images.is_public("r.io/other:1"));
    }
}
