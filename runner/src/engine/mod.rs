//! The container engine, behind one type ([`Engine`]) that the domain calls: containers,
//! execs, volumes and images. Podman is the engine it drives ([`podman`]): its
//! Docker-compatible API through one bollard client, and the few libpod calls bollard does
//! not make through one small HTTP/1.1 client on the same socket.

use std::pin::Pin;

use bollard::container::LogOutput;
use futures::Stream;

pub mod podman;

pub use bollard::errors::Error as EngineError;
pub use podman::Engine;

/// How long a successful ping stands for the engine's liveness in [`Engine::alive`].
pub const PING_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The engine's name and API version, read once (Podman's `GET /version` takes ~0.5 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// E.g. `podman 4.3.1` or `docker 27.3.1`.
    pub engine: String,
    /// E.g. `1.41`.
    pub api_version: String,
}


/// Output from a container, as the attach stream delivers it.
pub type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, EngineError>> + Send>>;

/// A stream of engine messages.
pub type EngineStream<T> = Pin<Box<dyn Stream<Item = Result<T, EngineError>> + Send>>;

/// The label naming a container's run.
pub const RUN_LABEL: &str = "bus.run-id";
/// The label naming the run's owner.
pub const OWNER_LABEL: &str = "bus.owner";
/// The label naming the runner (its store's `runner_id`) that owns the container.
pub const RUNNER_LABEL: &str = "bus.runner";
/// The label marking an account's storage volume (its value is `true`).
pub const STORAGE_LABEL: &str = "bus.storage";

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
    /// Its stdout and stderr, multiplexed in the order they were written.
    pub output: Output,
}

/// A started exec: its output, and its stdin (shut down to close it).
pub struct ExecStreams {
    /// Stdout and stderr in the order they were written (console output with a TTY).
    pub output: Output,
    /// The command's stdin.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// Why an account's storage volume cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The engine failed.
    #[error("{}", engine_message(.0))]
    Engine(#[from] EngineError),
    /// A volume of that name exists but is not labelled as this account's.
    #[error("the volume {0} exists but is not labelled as this account's storage")]
    NotOwned(String),
}

/// What Podman's own image inspect adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestInfo {
    /// The media type of the manifest the image was stored from.
    pub media_type: Option<String>,
    /// Its digest.
    pub digest: Option<String>,
}

/// A short, Debug-free description of an engine error.
pub fn engine_message(err: &EngineError) -> String {
    use bollard::errors::Error as E;
    match err {
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            format!("{} (HTTP {status_code})", message.trim())
        }
        E::SocketNotFoundError(path) => format!("the engine socket {path} does not exist"),
        E::RequestTimeoutError => "the engine did not answer in time".to_owned(),
        other => other.to_string(),
    }
}
