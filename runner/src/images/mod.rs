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
pub mod builds;
pub mod db;
mod error;
mod for_run;
mod live;
mod progress;
pub mod refs;
pub mod stored;
mod transfer;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bus_api::images::{Descriptor, ImageDetail, ImageList, ImageSummary, ManifestRef};

use crate::config::ImagesConfig;
use crate::engine::{Engine, EngineError, ImageDetails};
use db::{Db, Held};
use refs::{ImageRef, Name};

use error::last_clause;
pub use error::{ImageError, registry_error};
pub use live::{Live, LiveBuild};
pub use progress::Progress;
pub use transfer::Spooled;

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
    engine: OnceLock<Arc<Engine>>,
    claims: Mutex<HashMap<String, String>>,
    public: Vec<String>,
    config: ImagesConfig,
    /// Builds in flight (see [`builds`]).
    pub builds: Live,
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
    inspect: ImageDetails,
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
            builds: Live::default(),
        }
    }

    /// The engine image work goes to (the runs' engine).
    pub fn connect_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The engine.
    pub fn engine(&self) -> Result<&Engine, ImageError> {
        self.engine.get().map(|e| e.as_ref()).ok_or_else(|| {
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
                for image in engine.list_images().await? {
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
        let inspect = engine.inspect_image(&target).await?.ok_or_else(not_found)?;
        let visible = self.visible(
            &holds,
            &inspect.id,
            &inspect.repo_tags,
            &inspect.repo_digests,
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
        for image in self.engine()?.list_images().await? {
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
                created_at: image.created_at,
                updated_at,
                size_bytes: image.size_bytes,
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
        let platform = format!("{}/{}", i.config.os, i.config.architecture);
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
        Ok(ImageDetail {
            id: summary.id,
            references: summary.references,
            labels: i.labels.clone(),
            created_at: summary.created_at,
            updated_at: summary.updated_at,
            target: Descriptor {
                media_type: manifest.media_type,
                digest: manifest.digest,
            },
            manifests,
            config: i.config.clone(),
            layers: i.layers.clone(),
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
                match self.engine()?.remove_image(&name).await {
                    Ok(()) | Err(EngineError::Status { status: 404, .. }) => {}
                    Err(EngineError::Status {
                        status: 409,
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
        let id = r.inspect.id.clone();
        let _claim = self.claim(owner, std::slice::from_ref(&target), Source::Tag)?;
        self.engine()?
            .tag_image(&id, target.repository(), target.tag())
            .await?;
        self.db()?
            .hold(owner, target.as_str(), &id, Source::Tag.as_str())?;
        tracing::info!(owner, image = %target, "image tagged");
        self.summary(owner, target.as_str()).await
    }
}

fn summary_of(r: &Resolved) -> ImageSummary {
    ImageSummary {
        id: r.inspect.id.clone(),
        references: r.visible.names.clone(),
        created_at: r.inspect.created_at,
        updated_at: r.held.iter().map(|h| h.updated_at).max(),
        size_bytes: r.inspect.size_bytes,
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
        let e = |s: &str| EngineError::Stream(s.into());
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
