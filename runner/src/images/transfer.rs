//! Moving images in and out: pulls and pushes (registries), loads and saves (archives), and
//! the spooled uploads loads and builds read from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bus_api::auth::Claims;
use bus_api::images::{ArchiveFormat, LoadResult, RegistryRequest};
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use tokio::io::AsyncWriteExt as _;

use super::progress::{Progress, progress};
use super::refs::{self, ImageRef, Name};
use super::stored::{self, StoragePathError};
use super::{ImageError, Images, Source, archive};
use crate::engine::{Engine, EngineError, RegistryAuth, VolumeError, engine_message};

impl Images {
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
        let auth = registry_auth(&request, &name);
        let stream = self
            .engine()?
            .pull(name.repository(), name.digest().or(name.tag()), auth);
        tracing::info!(owner, image = %name, "pull started");
        let images = self.clone();
        let finish = move || async move {
            let _claim = claim;
            let inspect = images
                .engine()?
                .inspect_image(name.as_str())
                .await?
                .ok_or_else(|| {
                    ImageError::RegistryFailed(format!(
                        "the engine reported {name} pulled but does not have it"
                    ))
                })?;
            images
                .db()?
                .hold(&owner, name.as_str(), &inspect.id, Source::Pull.as_str())?;
            tracing::info!(owner, image = %name, "pull done");
            images.summary(&owner, name.as_str()).await
        };
        progress(stream, finish).await
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
        let auth = registry_auth(&request, &name);
        let stream = self.engine()?.push(name.repository(), name.tag(), auth);
        tracing::info!(owner, image = %name, "push started");
        let images = self.clone();
        let owner = owner.to_owned();
        let finish = move || async move {
            tracing::info!(owner, image = %name, "push done");
            images.summary(&owner, name.as_str()).await
        };
        progress(stream, finish).await
    }

    /// The directory uploads are spooled in, made on first use.
    fn uploads_dir(&self) -> Result<PathBuf, ImageError> {
        let dir = self.dir.join("uploads");
        std::fs::create_dir_all(&dir).map_err(|e| {
            ImageError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        Ok(dir)
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
        let path = upload_path(&self.uploads_dir()?);
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
        self.load_spooled(owner, spooled).await
    }

    /// Loads the archive at `path` in `owner`'s storage (relative to its root; see
    /// [`stored`]), as [`Images::load`] loads an upload. The file is copied first, up to the
    /// load limit.
    pub async fn load_from_storage(
        self: &Arc<Self>,
        owner: &str,
        path: &str,
    ) -> Result<LoadResult, ImageError> {
        stored::components(path)?;
        let volume = crate::runs::storage::volume_name(owner);
        let root = self
            .engine()?
            .ensure_volume(&volume, owner)
            .await
            .map_err(|e| match e {
                VolumeError::Engine(e) => ImageError::Engine(e),
                other => StoragePathError::Unreachable(other.to_string()).into(),
            })?;
        let dir = self.uploads_dir()?;
        let limit_mb = self.config.max_load_archive_mb;
        let path = path.to_owned();
        let spooled = tokio::task::spawn_blocking(move || {
            let mut file = stored::open(Path::new(&root), &path)?;
            copy_limited(&mut file, &dir, limit_mb)
        })
        .await
        .map_err(|e| ImageError::Unavailable(format!("copying the archive failed: {e}")))??;
        self.load_spooled(owner, spooled).await
    }

    /// Loads the archive spooled for `owner`.
    async fn load_spooled(
        self: &Arc<Self>,
        owner: &str,
        spooled: Spooled,
    ) -> Result<LoadResult, ImageError> {
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
        let engine = self.engine()?;
        let loaded = match engine_load(engine, &spooled.path).await {
            // Loading the same archive again is harmless, and the race is brief.
            Err(e) if is_parent_race(&e) => {
                tracing::warn!(owner, error = %e, "an image went during the load; loading again");
                engine_load(engine, &spooled.path).await
            }
            other => other,
        }
        .map_err(|e| match e {
            EngineError::Status {
                status: 400..=500,
                message,
            } => ImageError::Invalid(format!(
                "the engine cannot load the archive: {}",
                message.lines().next().unwrap_or_default().trim()
            )),
            EngineError::Stream(error) => {
                ImageError::Invalid(format!("the engine cannot load the archive: {error}"))
            }
            other => ImageError::Engine(other),
        })?;
        let db = self.db()?;
        let mut ids = Vec::new();
        for text in loaded.iter().filter(|t| !t.is_empty()) {
            let Some(inspect) = engine.inspect_image(text).await? else {
                continue;
            };
            let id = inspect.id;
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

    /// The image `text` names as an archive of `format`: its file name and its bytes. An error
    /// the engine gives before the first byte comes back as an error.
    pub async fn save(
        &self,
        owner: &str,
        text: &str,
        format: ArchiveFormat,
    ) -> Result<
        (
            String,
            impl Stream<Item = Result<Bytes, std::io::Error>> + use<>,
        ),
        ImageError,
    > {
        let r = self.resolve(owner, text).await?;
        // The name asked for, when it is one: the archive gives its image that name (an image
        // may have others); for an id, the first name the caller may see.
        let asked = match refs::parse(text) {
            Ok(ImageRef::Name(name)) => Some(name.to_string()),
            _ => None,
        };
        let name = asked
            .filter(|n| r.visible.names.contains(n) && !n.contains('@'))
            .or_else(|| {
                r.visible
                    .names
                    .iter()
                    .find(|v| !v.starts_with("sha256:") && !v.contains('@'))
                    .cloned()
            })
            .unwrap_or_else(|| r.inspect.id.clone());
        let mut stream = self.engine()?.save(&name, format);
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

/// A new spool file's path in `dir`.
fn upload_path(dir: &Path) -> PathBuf {
    dir.join(format!("upload-{}", crate::util::random_hex::<16>()))
}

/// Copies `file` to a new spool file in `dir`, refusing it once it passes `limit_mb`.
fn copy_limited(
    file: &mut std::fs::File,
    dir: &Path,
    limit_mb: u64,
) -> Result<Spooled, ImageError> {
    let limit = limit_mb.saturating_mul(1024 * 1024);
    let too_large = || ImageError::TooLarge {
        what: "image archive",
        limit_mb,
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > limit {
        return Err(too_large());
    }
    let mut spooled = Spooled {
        path: upload_path(dir),
        bytes: 0,
    };
    let mut out = std::fs::File::create(&spooled.path)
        .map_err(|e| ImageError::Unavailable(format!("cannot spool the archive: {e}")))?;
    let mut limited = std::io::Read::take(file, limit + 1);
    spooled.bytes = std::io::copy(&mut limited, &mut out).map_err(|e| {
        ImageError::Unavailable(format!("cannot copy the archive from the storage: {e}"))
    })?;
    if spooled.bytes > limit {
        return Err(too_large());
    }
    Ok(spooled)
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

/// The request's registry login, for the registry `name` is in.
fn registry_auth(request: &RegistryRequest, name: &Name) -> Option<RegistryAuth> {
    request.credentials.as_ref().map(|c| RegistryAuth {
        username: c.username.clone(),
        password: c.password.clone(),
        server: name.domain().to_owned(),
    })
}

/// Has `engine` load the archive at `path`; the names it reports loaded.
async fn engine_load(engine: &Engine, path: &Path) -> Result<Vec<String>, EngineError> {
    let mut stream = engine.load(path);
    let mut loaded = Vec::new();
    while let Some(item) = stream.next().await {
        let info = item?;
        for text in [info.stream, info.status].into_iter().flatten() {
            for line in text.lines() {
                if let Some(rest) = line.trim().strip_prefix("Loaded image") {
                    let rest = rest.trim_start_matches(['s', ':', ' ']);
                    loaded.extend(rest.split(',').map(|s| s.trim().to_owned()));
                }
            }
        }
    }
    Ok(loaded)
}

/// Whether a load failed because an image the engine walked during it was removed meanwhile
/// by another client: Podman 4 reads every stored image's parent during a load, and answers
/// HTTP 500 "retrieving parent of image …: image not known" for one removed under it.
fn is_parent_race(error: &EngineError) -> bool {
    matches!(error, EngineError::Status { status: 500, message }
        if message.contains("retrieving parent of image") && message.contains("image not known"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, message: &str) -> EngineError {
        EngineError::Status {
            status,
            message: message.to_owned(),
        }
    }

    #[test]
    fn only_a_parent_lost_during_the_load_is_loaded_again() {
        // The shape of Podman 4.3.1's answer when another client removed an image during a
        // load (libimage's message; the id shortened).
        let race = "retrieving parent of image \"a199\": you may need to remove the image to \
                    resolve the error: image not known";
        assert!(is_parent_race(&status(500, race)));
        assert!(!is_parent_race(&status(400, race)));
        assert!(!is_parent_race(&status(
            500,
            "payload does not match any of the supported image formats"
        )));
        assert!(!is_parent_race(&status(500, "image not known")));
        assert!(!is_parent_race(&EngineError::Stream(race.to_owned())));
    }
}
