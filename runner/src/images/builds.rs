//! Builds: a context tar spooled to disk, built by the engine on a task of its own (so a build
//! outlives the request that started it), its output stored line by line with a dense `seq`
//! (`images.db`), and its image named with the build's tags once it succeeded.
//!
//! Before anything is built, the Dockerfile's base images (`FROM`, `COPY --from`,
//! `RUN --mount=from=`) must be images the account may see; a build cannot read another
//! account's image. The engine builds without network and untagged; the runner tags the
//! result itself, under claims taken when the build was accepted, so a cancelled or failed
//! build names nothing. Cancelling drops the engine call; Podman then abandons the build
//! (a `RUN` step already running may finish in the background, but nothing is committed or
//! tagged).

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use bus_api::builds::{Build, BuildState, MAX_TAGS};
use futures::StreamExt as _;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::engine::{EngineError, engine_message};
use crate::images::refs::{self, ImageRef, Name};
use crate::images::{ClaimGuard, ImageError, Images, LiveBuild, Source, Spooled};

/// The Dockerfile's path when the request names none.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";
/// Largest Dockerfile read, in bytes.
const MAX_DOCKERFILE_BYTES: u64 = 1024 * 1024;
/// Longest line of builder output kept whole, in bytes.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How long cancel and delete wait for a build to end.
const CANCEL_WAIT: Duration = Duration::from_secs(15);

/// A validated build request.
#[derive(Debug)]
pub struct BuildRequest {
    /// The tags, canonical.
    pub tags: Vec<Name>,
    /// The Dockerfile's path in the context.
    pub dockerfile: String,
}

/// Parses the query of `POST /builds`: tags (comma-separated) and the Dockerfile's path.
pub fn parse_request(
    tags: Option<&str>,
    dockerfile: Option<&str>,
) -> Result<BuildRequest, ImageError> {
    let mut names: Vec<Name> = Vec::new();
    for text in tags
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        match refs::parse(text).map_err(ImageError::Invalid)? {
            ImageRef::Name(name) => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            ImageRef::Id(_) => {
                return Err(ImageError::Invalid(format!(
                    "the tag \"{text}\" looks like an image id; tag with repository:tag"
                )));
            }
        }
    }
    if names.len() > MAX_TAGS {
        return Err(ImageError::Invalid(format!(
            "a build may have at most {MAX_TAGS} tags"
        )));
    }
    let dockerfile = dockerfile
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(DEFAULT_DOCKERFILE);
    let bad_path = dockerfile.starts_with('/')
        || dockerfile.split('/').any(|p| p == "..")
        || dockerfile.len() > 1024
        || dockerfile.chars().any(char::is_control);
    if bad_path {
        return Err(ImageError::Invalid(format!(
            "the Dockerfile path \"{}\" must be relative to the context, without `..`",
            dockerfile.escape_debug()
        )));
    }
    Ok(BuildRequest {
        tags: names,
        dockerfile: dockerfile.trim_start_matches("./").to_owned(),
    })
}

/// Makes a new build id: `bld_` and 32 hex digits.
pub fn new_build_id() -> String {
    format!("bld_{}", crate::util::random_hex::<16>())
}

/// The images a Dockerfile reads (`FROM`, `COPY/ADD --from`, `RUN --mount=from=`), other than
/// its own stages and `scratch`, as written. A base named through a variable is refused: it
/// could not be checked.
pub fn base_images(dockerfile: &str) -> Result<Vec<String>, String> {
    let mut stages: Vec<String> = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    let mut add = |image: &str, stages: &[String], what: &str| -> Result<(), String> {
        let lower = image.to_ascii_lowercase();
        if lower == "scratch"
            || stages.contains(&lower)
            || image.chars().all(|c| c.is_ascii_digit())
        {
            return Ok(());
        }
        if image.contains('$') {
            return Err(format!(
                "{what} {image}: a base image named through a variable cannot be checked; write \
                 the image's name"
            ));
        }
        if !bases.iter().any(|b| b == image) {
            bases.push(image.to_owned());
        }
        Ok(())
    };
    for instruction in instructions(dockerfile) {
        let mut words = instruction.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let words: Vec<&str> = words.collect();
        let (flags, args): (Vec<&str>, Vec<&str>) = {
            let split = words
                .iter()
                .position(|w| !w.starts_with("--"))
                .unwrap_or(words.len());
            (words[..split].to_vec(), words[split..].to_vec())
        };
        match keyword.to_ascii_uppercase().as_str() {
            "FROM" => {
                let image = args
                    .first()
                    .ok_or_else(|| "FROM names no image".to_owned())?;
                add(image, &stages, "FROM")?;
                if args.len() >= 3 && args[1].eq_ignore_ascii_case("as") {
                    stages.push(args[2].to_ascii_lowercase());
                }
            }
            "COPY" | "ADD" => {
                for flag in flags {
                    if let Some(from) = flag.strip_prefix("--from=") {
                        add(from, &stages, "COPY --from")?;
                    }
                }
            }
            "RUN" => {
                for flag in flags {
                    if let Some(mount) = flag.strip_prefix("--mount=") {
                        for option in mount.split(',') {
                            if let Some(from) = option.strip_prefix("from=") {
                                add(from, &stages, "RUN --mount from")?;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(bases)
}

/// Instructions with continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if !current.is_empty() && trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Reads the Dockerfile at `path` inside the context tar.
fn read_dockerfile(context: &std::path::Path, path: &str) -> Result<String, String> {
    let file = std::fs::File::open(context).map_err(|e| format!("cannot read the context: {e}"))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries()
        .map_err(|e| format!("the build context is not a tar archive: {e}"))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("the build context is not a valid tar archive: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("the context holds a bad path: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        if name == path {
            let mut text = String::new();
            entry
                .take(MAX_DOCKERFILE_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read {path} in the context: {e}"))?;
            return Ok(text);
        }
    }
    Err(format!(
        "the build context has no {path}; put a Dockerfile at the context's root or name it with -f"
    ))
}

/// Checks the Dockerfile's base images against what `owner` may see.
async fn check_bases(images: &Images, owner: &str, dockerfile: &str) -> Result<(), ImageError> {
    let bases = base_images(dockerfile).map_err(ImageError::Invalid)?;
    for base in bases {
        images.check_run(owner, &base).await.map_err(|e| match e {
            ImageError::NotFound(_) => {
                ImageError::NotFound(format!("{base} (the Dockerfile builds on it)"))
            }
            other => other,
        })?;
    }
    Ok(())
}

/// Accepts a build: claims its tags, spools the context (refused past the limit), checks the
/// Dockerfile's bases, records the build `queued` and starts it in the background.
pub async fn create(
    images: &Arc<Images>,
    owner: &str,
    request: BuildRequest,
    body: axum::body::Body,
    declared: Option<u64>,
) -> Result<Build, ImageError> {
    images.engine()?;
    let claim = images.claim(owner, &request.tags, Source::Build)?;
    let limit = images.config().max_build_context_mb;
    let spooled = images.spool(body, declared, limit, "build context").await?;
    let path = spooled.path.clone();
    let dockerfile_path = request.dockerfile.clone();
    let dockerfile = tokio::task::spawn_blocking(move || read_dockerfile(&path, &dockerfile_path))
        .await
        .map_err(|e| ImageError::Unavailable(format!("reading the context failed: {e}")))?
        .map_err(ImageError::Invalid)?;
    check_bases(images, owner, &dockerfile).await?;
    let build = Build {
        id: new_build_id(),
        state: BuildState::Queued,
        tags: request.tags.iter().map(ToString::to_string).collect(),
        dockerfile: request.dockerfile.clone(),
        context_bytes: spooled.bytes,
        image_id: None,
        error: None,
        created_at: OffsetDateTime::now_utc(),
        started_at: None,
        finished_at: None,
    };
    images.db()?.insert_build(owner, &build)?;
    let (cancel, _) = watch::channel(false);
    let (progress, _) = watch::channel((0, false));
    let live = Arc::new(LiveBuild { cancel, progress });
    images.builds.lock().insert(build.id.clone(), live.clone());
    tracing::info!(build = %build.id, owner, tags = ?build.tags, bytes = spooled.bytes, "build accepted");
    tokio::spawn(run(
        images.clone(),
        owner.to_owned(),
        build.clone(),
        request,
        spooled,
        claim,
        live,
    ));
    Ok(build)
}

/// Output lines not yet stored, and the next seq.
struct Lines {
    next_seq: u64,
    partial: String,
}

impl Lines {
    fn push(&mut self, text: &str) -> Vec<(OffsetDateTime, String)> {
        let now = OffsetDateTime::now_utc();
        self.partial.push_str(text);
        let mut out = Vec::new();
        while let Some(pos) = self.partial.find('\n') {
            let mut line: String = self.partial.drain(..=pos).collect();
            line.pop();
            out.push((now, clip(line)));
        }
        if self.partial.len() > MAX_LINE_BYTES {
            out.push((now, clip(std::mem::take(&mut self.partial))));
        }
        out
    }

    fn flush(&mut self) -> Vec<(OffsetDateTime, String)> {
        if self.partial.is_empty() {
            return Vec::new();
        }
        vec![(
            OffsetDateTime::now_utc(),
            clip(std::mem::take(&mut self.partial)),
        )]
    }
}

fn clip(mut line: String) -> String {
    if line.ends_with('\r') {
        line.pop();
    }
    if line.len() > MAX_LINE_BYTES {
        let mut end = MAX_LINE_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

enum Outcome {
    Built(String),
    Failed(String),
    Cancelled,
}

async fn run(
    images: Arc<Images>,
    owner: String,
    mut build: Build,
    request: BuildRequest,
    spooled: Spooled,
    claim: ClaimGuard,
    live: Arc<LiveBuild>,
) {
    let id = build.id.clone();
    let store = |lines: &mut Lines, batch: Vec<(OffsetDateTime, String)>| {
        if batch.is_empty() {
            return;
        }
        if let Ok(db) = images.db() {
            if let Err(e) = db.append_lines(&id, lines.next_seq, &batch) {
                tracing::warn!(error = %e, "storing build output failed");
            }
        }
        lines.next_seq += batch.len() as u64;
        live.progress.send_replace((lines.next_seq - 1, false));
    };
    build.state = BuildState::Running;
    build.started_at = Some(OffsetDateTime::now_utc());
    save(&images, &build);
    let mut lines = Lines {
        next_seq: 1,
        partial: String::new(),
    };
    let mut cancel = live.cancel.subscribe();
    let outcome = match images.engine() {
        Err(e) => Outcome::Failed(e.to_string()),
        Ok(engine) => {
            let mut stream = engine.build(&request.dockerfile, &spooled.path);
            let mut image = None;
            let mut failure = None;
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    _ = cancel.wait_for(|c| *c) => break,
                };
                match item {
                    None => break,
                    Some(Ok(info)) => {
                        if let Some(text) = info.stream.as_deref().or(info.status.as_deref()) {
                            let batch = lines.push(text);
                            store(&mut lines, batch);
                        }
                        if let Some(id) = info.image_id {
                            image = Some(id);
                        }
                    }
                    Some(Err(e)) => {
                        let message = match e {
                            EngineError::Stream(error) => error,
                            other => engine_message(&other),
                        };
                        failure = Some(message.trim().to_owned());
                        break;
                    }
                }
            }
            let batch = lines.flush();
            store(&mut lines, batch);
            if *cancel.borrow() {
                Outcome::Cancelled
            } else if let Some(message) = failure {
                let batch = lines.push(&format!("error: {message}\n"));
                store(&mut lines, batch);
                Outcome::Failed(message)
            } else {
                match image {
                    Some(id) => Outcome::Built(id),
                    None => Outcome::Failed(
                        "the engine ended the build without naming an image".to_owned(),
                    ),
                }
            }
        }
    };
    let outcome = match outcome {
        Outcome::Built(id) => match name_image(&images, &owner, &id, &request.tags).await {
            Ok(()) => Outcome::Built(id),
            Err(e) => Outcome::Failed(format!("the build succeeded but tagging failed: {e}")),
        },
        other => other,
    };
    drop(claim);
    build.finished_at = Some(OffsetDateTime::now_utc());
    match outcome {
        Outcome::Built(id) => {
            build.state = BuildState::Succeeded;
            build.image_id = Some(id);
        }
        Outcome::Failed(message) => {
            build.state = BuildState::Failed;
            build.error = Some(message);
        }
        Outcome::Cancelled => {
            build.state = BuildState::Cancelled;
            build.error = Some("cancelled on request".to_owned());
        }
    }
    save(&images, &build);
    images.builds.lock().remove(&build.id);
    live.progress.send_replace((lines.next_seq - 1, true));
    tracing::info!(build = %build.id, state = build.state.as_str(), "build ended");
    drop(spooled);
}

fn save(images: &Images, build: &Build) {
    match images.db() {
        Ok(db) => {
            if let Err(e) = db.save_build(build) {
                tracing::warn!(build = %build.id, error = %e, "storing the build failed");
            }
        }
        Err(e) => tracing::warn!(build = %build.id, error = %e, "storing the build failed"),
    }
}

/// Tags the built image and records the holds; with no tags, `owner` holds it by id.
async fn name_image(
    images: &Images,
    owner: &str,
    id: &str,
    tags: &[Name],
) -> Result<(), ImageError> {
    let engine = images.engine()?;
    let db = images.db()?;
    if tags.is_empty() {
        db.hold(
            owner,
            &format!("sha256:{}", refs::bare_id(id)),
            id,
            Source::Build.as_str(),
        )?;
    }
    for tag in tags {
        engine.tag_image(id, tag.repository(), tag.tag()).await?;
        db.hold(owner, tag.as_str(), id, Source::Build.as_str())?;
    }
    Ok(())
}

/// Asks the build to stop and waits (bounded) until it has; returns the record.
pub async fn cancel(images: &Images, owner: &str, id: &str) -> Result<Build, ImageError> {
    let db = images.db()?;
    let build = db
        .build(owner, id)?
        .ok_or_else(|| ImageError::BuildNotFound(id.to_owned()))?;
    if build.state.is_terminal() {
        return Ok(build);
    }
    if let Some(live) = images.builds.get(id) {
        live.cancel.send_replace(true);
        let mut progress = live.progress.subscribe();
        let _ = tokio::time::timeout(CANCEL_WAIT, progress.wait_for(|(_, ended)| *ended)).await;
    }
    db.build(owner, id)?
        .ok_or_else(|| ImageError::BuildNotFound(id.to_owned()))
}

/// Deletes a build and its output, cancelling it first if it runs.
pub async fn delete(images: &Images, owner: &str, id: &str) -> Result<(), ImageError> {
    let build = cancel(images, owner, id).await?;
    if !build.state.is_terminal() {
        return Err(ImageError::Unavailable(format!(
            "build {id} did not stop in time; retry the delete"
        )));
    }
    if !images.db()?.delete_build(owner, id)? {
        return Err(ImageError::BuildNotFound(id.to_owned()));
    }
    tracing::info!(build = %id, owner, "build deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_found_and_stages_skipped() {
        let file = "# syntax comment\n\
            FROM localhost/busybox AS base\n\
            FROM --platform=linux/amd64 r.io/tools:1 as tools\n\
            RUN echo hi \\\n  && echo there\n\
            COPY --from=base /bin/sh /x\n\
            COPY --from=r.io/other:2 /a /b\n\
            COPY --from=0 /a /b\n\
            RUN --mount=type=bind,from=r.io/cache:3,target=/c true\n\
            FROM scratch\n\
            FROM tools\n";
        assert_eq!(
            base_images(file).unwrap(),
            [
                "localhost/busybox",
                "r.io/tools:1",
                "r.io/other:2",
                "r.io/cache:3"
            ]
        );
    }

    #[test]
    fn variables_in_bases_are_refused() {
        let err = base_images("ARG B=x\nFROM $B\n").unwrap_err();
        assert!(err.contains("variable"), "{err}");
        assert!(base_images("FROM\n").is_err());
    }

    #[test]
    fn requests_are_checked() {
        let r = parse_request(Some("app:1, localhost/app:1,r.io/x"), None).unwrap();
        let tags: Vec<String> = r.tags.iter().map(ToString::to_string).collect();
        assert_eq!(tags, ["localhost/app:1", "r.io/x:latest"]);
        assert_eq!(r.dockerfile, "Dockerfile");
        assert_eq!(
            parse_request(None, Some("./sub/Dockerfile.dev"))
                .unwrap()
                .dockerfile,
            "sub/Dockerfile.dev"
        );
        for bad in ["/etc/Dockerfile", "../Dockerfile", "a/../../b"] {
            assert!(parse_request(None, Some(bad)).is_err(), "{bad}");
        }
        assert!(parse_request(Some("App"), None).is_err());
    }

    #[test]
    fn output_splits_into_lines() {
        let mut lines = Lines {
            next_seq: 1,
            partial: String::new(),
        };
        assert!(lines.push("STEP 1/2: FR").is_empty());
        let got: Vec<String> = lines
            .push("OM x\nout\r\nrest")
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(got, ["STEP 1/2: FROM x", "out"]);
        assert_eq!(lines.flush()[0].1, "rest");
        assert!(lines.flush().is_empty());
    }
}
