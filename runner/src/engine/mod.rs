//! The container engine, behind one trait ([`Backend`]) that the domain calls through an
//! [`Engine`] handle: containers, execs, storage volumes and images. The types here are the
//! engine's own, so the domain never sees a backend's client types.
//!
//! Podman is the backend today ([`podman`]: its Docker-compatible API through one bollard
//! client, and the few libpod calls bollard does not make through one small HTTP/1.1 client);
//! another (a Kubernetes one, say) would implement [`Backend`] beside it.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bus_api::Port;
use bus_api::exec::ExecQuery;
use bus_api::images::ImageConfig;
use bytes::Bytes;
use futures::Stream;
use time::OffsetDateTime;

pub mod podman;

/// How long a successful ping stands for the engine's liveness in [`Engine::alive`].
pub const PING_FRESH: Duration = Duration::from_secs(1);

/// The label naming a container's run.
pub const RUN_LABEL: &str = "bus.run-id";
/// The label naming the run's owner.
pub const OWNER_LABEL: &str = "bus.owner";
/// The label naming the runner (its store's `runner_id`) that owns the container.
pub const RUNNER_LABEL: &str = "bus.runner";
/// The label marking an account's storage volume (its value is `true`).
pub const STORAGE_LABEL: &str = "bus.storage";

/// An engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine answered, refusing the request (404 for a missing container or image, 409
    /// for a conflict ...).
    #[error("{} (HTTP {status})", message.trim())]
    Status {
        /// The HTTP status.
        status: u16,
        /// The engine's message.
        message: String,
    },
    /// A stream from the engine carried an error (a failed pull, build or load step).
    #[error("Docker stream error: {0}")]
    Stream(String),
    /// The engine's socket does not exist.
    #[error("the engine socket {0} does not exist")]
    SocketNotFound(String),
    /// The engine did not answer in time.
    #[error("the engine did not answer in time")]
    Timeout,
    /// The engine could not be reached or its answer not read.
    #[error("{0}")]
    Unreachable(String),
}

impl EngineError {
    /// Whether the engine answered about the request (rather than going away or not
    /// answering).
    pub fn is_answer(&self) -> bool {
        matches!(self, EngineError::Status { .. })
    }

    /// The engine's own words: a stream error's message, an answer's message, or the whole
    /// error.
    pub fn message(&self) -> String {
        match self {
            EngineError::Stream(message) | EngineError::Status { message, .. } => {
                message.trim().to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// A short, Debug-free description of an engine error, for messages and logs.
pub fn engine_message(err: &EngineError) -> String {
    err.to_string()
}

/// Why an account's storage volume cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The engine failed.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// A volume of that name exists but is not labelled as this account's.
    #[error("the volume {0} exists but is not labelled as this account's storage")]
    NotOwned(String),
}

/// The engine's name and API version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// E.g. `podman 4.3.1` or `docker 27.3.1`.
    pub engine: String,
    /// E.g. `1.41`.
    pub api_version: String,
}

/// A piece of a container's or an exec's output (a terminal's output counts as stdout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Written to stdout.
    Stdout(Bytes),
    /// Written to stderr.
    Stderr(Bytes),
}

/// Output from a container or an exec, in the order it was written.
pub type Output = Pin<Box<dyn Stream<Item = Result<Chunk, EngineError>> + Send>>;

/// A command's stdin; shutting it down closes it.
pub type Input = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// A stream of engine messages.
pub type EngineStream<T> = Pin<Box<dyn Stream<Item = Result<T, EngineError>> + Send>>;

/// Where a container gets an account's storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A named volume, at `target`.
    Volume {
        /// The volume.
        name: String,
        /// The path inside the container.
        target: String,
    },
    /// A directory of the engine's host, at `target`, without mount propagation.
    Bind {
        /// The host path.
        source: String,
        /// The path inside the container.
        target: String,
    },
}

/// A container to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Its name.
    pub name: String,
    /// The image.
    pub image: String,
    /// The command; empty for the image's default.
    pub argv: Vec<String>,
    /// The environment.
    pub env: BTreeMap<String, String>,
    /// The working directory, if not the image's.
    pub workdir: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the command gets a terminal.
    pub tty: bool,
    /// Whether its stdin stays open for a client that attaches (closed for good when that
    /// client closes it).
    pub stdin: bool,
    /// The network mode (`none`, `bridge`, ...).
    pub network: String,
    /// Ports to publish.
    pub ports: Vec<Port>,
    /// A hard memory limit (swap included) in MiB.
    pub memory_mb: Option<u32>,
    /// Storage to mount.
    pub mount: Option<Mount>,
}

/// A container this runner owns, as listed by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// The engine's container id.
    pub id: String,
    /// Its `bus.run-id` label.
    pub run_id: Option<String>,
}

/// Where a container is, as far as re-adopting it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created but never started.
    Created,
    /// Running (or paused, or restarting).
    Running,
    /// Stopped, with its exit code when the engine knows it.
    Exited(Option<i64>),
}

/// A container was created and attached to, but not started.
pub struct Attached {
    /// The engine's container id.
    pub id: String,
    /// Its stdout and stderr, in the order they were written.
    pub output: Output,
}

/// A started exec: its output, and its stdin (shut down to close it).
pub struct ExecStreams {
    /// Stdout and stderr in the order they were written (console output with a TTY).
    pub output: Output,
    /// The command's stdin.
    pub input: Input,
}

/// An image as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedImage {
    /// `sha256:...`.
    pub id: String,
    /// Its names.
    pub repo_tags: Vec<String>,
    /// Its `repository@digest` references.
    pub repo_digests: Vec<String>,
    /// When it was built.
    pub created_at: Option<OffsetDateTime>,
    /// Its size in bytes.
    pub size_bytes: u64,
}

/// An image as the engine describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDetails {
    /// `sha256:...`.
    pub id: String,
    /// Its names.
    pub repo_tags: Vec<String>,
    /// Its `repository@digest` references.
    pub repo_digests: Vec<String>,
    /// When it was built.
    pub created_at: Option<OffsetDateTime>,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What a container of it runs, and its platform.
    pub config: ImageConfig,
    /// Its layers' digests, base first.
    pub layers: Vec<String>,
}

/// What only some engines tell of an image's manifest (empty otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestInfo {
    /// The media type of the manifest the image was stored from.
    pub media_type: Option<String>,
    /// Its digest.
    pub digest: Option<String>,
}

/// A registry login, for one pull or push; its Debug leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
    /// The registry, e.g. `registry.example:5000`.
    pub server: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A pull's or push's progress message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferProgress {
    /// The layer it is about, if any.
    pub id: Option<String>,
    /// What happens, e.g. `Downloading`.
    pub status: Option<String>,
    /// Bytes done.
    pub current: Option<i64>,
    /// Bytes in all.
    pub total: Option<i64>,
}

/// A build's or load's output message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildMessage {
    /// Output of a step.
    pub stream: Option<String>,
    /// A status line.
    pub status: Option<String>,
    /// The image built, in the build's last message.
    pub image_id: Option<String>,
}

/// What the domain needs of a container engine.
#[async_trait]
pub trait Backend: std::fmt::Debug + Send + Sync {
    /// The engine's name and version (asked once, then cached).
    async fn info(&self) -> Result<&EngineInfo, EngineError>;
    /// The engine's name and version, if they were read.
    fn cached_info(&self) -> Option<&EngineInfo>;
    /// Whether the engine answers promptly.
    async fn ping(&self) -> bool;

    /// Creates a container and attaches to its output, without starting it, so no output is
    /// lost.
    async fn create(&self, spec: &ContainerSpec) -> Result<Attached, EngineError>;
    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<(), EngineError>;
    /// Attaches to a running container's output from now on (no replay).
    async fn attach(&self, id: &str) -> Result<Output, EngineError>;
    /// Attaches to a running container's stdin only.
    async fn attach_stdin(&self, id: &str) -> Result<Input, EngineError>;
    /// The container's output from its start, as the engine logged it, followed until it
    /// stops (to follow a container again after the engine went away).
    fn replay_output(&self, id: &str) -> Output;
    /// Resizes a container's terminal.
    async fn resize_container(&self, id: &str, cols: u16, rows: u16) -> Result<(), EngineError>;
    /// Waits until the container has stopped; its exit code.
    async fn wait(&self, id: &str) -> Result<i64, EngineError>;
    /// Sends `signal` (e.g. `SIGTERM`) to the container's main process.
    async fn signal(&self, id: &str, signal: &str) -> Result<(), EngineError>;
    /// Kills the container (SIGKILL).
    async fn kill(&self, id: &str) -> Result<(), EngineError>;
    /// Force-removes the container; one already gone is fine.
    async fn remove(&self, id: &str) -> Result<(), EngineError>;
    /// Every container (running or not) labelled as owned by `runner_id`.
    async fn list_owned(&self, runner_id: &str) -> Result<Vec<Owned>, EngineError>;
    /// The container's status; `None` when it does not exist.
    async fn status(&self, id: &str) -> Result<Option<ContainerStatus>, EngineError>;
    /// Whether the kernel's OOM killer ended the container; `None` when that is unknown.
    async fn oom_killed(&self, id: &str) -> Option<bool>;
    /// `ports` with the host ports the engine bound filled in.
    async fn published_ports(&self, id: &str, ports: &[Port]) -> Vec<Port>;
    /// The host PID of a running container's first process.
    async fn container_pid(&self, id: &str) -> Result<Option<i32>, EngineError>;

    /// The account's storage volume `name`, created (labelled with its owner) on first use;
    /// its mountpoint on the engine's host. One labelled for another owner is refused.
    async fn ensure_volume(&self, name: &str, owner: &str) -> Result<String, VolumeError>;

    /// Creates an exec in the container (not started yet); its id.
    async fn create_exec(&self, container: &str, spec: &ExecQuery) -> Result<String, EngineError>;
    /// Starts a created exec, attached.
    async fn start_exec(&self, exec_id: &str, tty: bool) -> Result<ExecStreams, EngineError>;
    /// Resizes an exec's terminal.
    async fn resize_exec(&self, exec_id: &str, cols: u16, rows: u16) -> Result<(), EngineError>;
    /// Whether the exec's process has been started (it may have ended since).
    async fn exec_started(&self, exec_id: &str) -> Result<bool, EngineError>;
    /// The exec's process as the engine's host sees it, (host PID, container id), while it
    /// runs; `None` once it ended.
    async fn exec_process(&self, exec_id: &str) -> Result<Option<(i32, String)>, EngineError>;
    /// The exec's exit code once it ended; `None` while it runs.
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, EngineError>;

    /// Every tagged image.
    async fn list_images(&self) -> Result<Vec<ListedImage>, EngineError>;
    /// One image; `None` when there is none by that name or id.
    async fn inspect_image(&self, name: &str) -> Result<Option<ImageDetails>, EngineError>;
    /// The image's manifest media type and digest, where the engine tells them.
    async fn manifest_info(&self, id: &str) -> ManifestInfo;
    /// Removes one reference, never forced (an image a container uses stays).
    async fn remove_image(&self, reference: &str) -> Result<(), EngineError>;
    /// Gives the image `source` the name `repository[:tag]`.
    async fn tag_image(
        &self,
        source: &str,
        repository: &str,
        tag: Option<&str>,
    ) -> Result<(), EngineError>;
    /// Pulls `repository` at `reference` (a tag or a digest) from its registry.
    fn pull(
        &self,
        repository: &str,
        reference: Option<&str>,
        auth: Option<RegistryAuth>,
    ) -> EngineStream<TransferProgress>;
    /// Pushes `repository[:tag]` to its registry.
    fn push(
        &self,
        repository: &str,
        tag: Option<&str>,
        auth: Option<RegistryAuth>,
    ) -> EngineStream<TransferProgress>;
    /// Loads the image archive in `file` (docker-archive or OCI).
    fn load(&self, file: &Path) -> EngineStream<BuildMessage>;
    /// `name` as a docker-archive or an OCI archive (an OCI image layout in a tar).
    fn save(&self, name: &str, format: bus_api::images::ArchiveFormat) -> EngineStream<Bytes>;
    /// Builds the context tar in `file`, untagged and without network.
    fn build(&self, dockerfile: &str, file: &Path) -> EngineStream<BuildMessage>;
}

/// The engine the runner drives: a [`Backend`], with liveness remembered briefly.
#[derive(Debug)]
pub struct Engine {
    backend: Box<dyn Backend>,
    /// When a ping last succeeded; cleared by a failed one.
    last_ping_ok: Mutex<Option<Instant>>,
}

impl Engine {
    /// Podman (or Docker) at `unix:///path/to/engine.sock` (or a bare path). Fails when the
    /// socket does not exist; nothing is sent yet.
    pub fn connect(url: &str) -> Result<Engine, EngineError> {
        Ok(Engine::new(podman::Podman::connect(url)?))
    }

    /// The engine behind `backend`.
    pub fn new(backend: impl Backend + 'static) -> Engine {
        Engine {
            backend: Box::new(backend),
            last_ping_ok: Mutex::new(None),
        }
    }

    /// Whether the engine answers a ping promptly (remembered for [`Engine::alive`]).
    pub async fn ping(&self) -> bool {
        let ok = self.backend.ping().await;
        *self.last_ping_ok.lock().expect("ping lock poisoned") = ok.then(Instant::now);
        ok
    }

    /// Whether the engine is alive: a ping that succeeded within `fresh` stands, so repeated
    /// status requests do not each round-trip to the engine; otherwise (and after any failed
    /// ping) it pings now.
    pub async fn alive(&self, fresh: Duration) -> bool {
        let recent = self
            .last_ping_ok
            .lock()
            .expect("ping lock poisoned")
            .is_some_and(|at| at.elapsed() < fresh);
        recent || self.ping().await
    }
}

impl Deref for Engine {
    type Target = dyn Backend;

    fn deref(&self) -> &(dyn Backend + 'static) {
        self.backend.as_ref()
    }
}
