//! The container engine: a Docker Engine API client (bollard), here usually Podman's
//! docker-compatible socket. This module only speaks to the engine; [`crate::executor`] decides
//! what to ask.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, PortBinding, PortMap, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptionsBuilder, InspectContainerOptions,
    KillContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
};
use bus_api::Port;
use bus_api::exec::ExecQuery;
use futures::{Stream, StreamExt as _};
use tokio::sync::OnceCell;

use crate::spec::RunSpec;

/// Seconds before an engine request is abandoned.
const REQUEST_TIMEOUT_SECONDS: u64 = 120;
/// How long a liveness ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a successful ping stands for the engine's liveness in [`Engine::alive`].
pub const PING_FRESH: Duration = Duration::from_secs(1);

/// The engine's name and API version, read once (Podman's `GET /version` takes ~0.5 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// E.g. `podman 4.3.1` or `docker 27.3.1`.
    pub engine: String,
    /// E.g. `1.41`.
    pub api_version: String,
}

/// A connection to the engine.
#[derive(Debug)]
pub struct Engine {
    docker: Docker,
    info: OnceCell<EngineInfo>,
    /// When a ping last succeeded; cleared by a failed one.
    last_ping_ok: std::sync::Mutex<Option<std::time::Instant>>,
    /// The engine's socket, for the few libpod calls bollard does not make.
    socket: std::path::PathBuf,
}

/// How often Podman checks a container's state while a libpod wait is open; the
/// Docker-compatible wait answers a short run hundreds of milliseconds late.
const LIBPOD_WAIT_INTERVAL: &str = "5ms";

/// Output from a container, as the attach stream delivers it.
pub type Output = std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, EngineError>> + Send>>;

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

impl Engine {
    /// Connects to `unix:///path/to/engine.sock` (or a bare path). Fails when the socket does
    /// not exist; nothing is sent yet.
    pub fn connect(url: &str) -> Result<Engine, EngineError> {
        let path = url.strip_prefix("unix://").unwrap_or(url);
        let docker =
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECONDS, bollard::API_DEFAULT_VERSION)?;
        Ok(Engine {
            docker,
            info: OnceCell::new(),
            last_ping_ok: std::sync::Mutex::new(None),
            socket: path.into(),
        })
    }

    /// The engine's name and version, asked once and then cached.
    pub async fn info(&self) -> Result<&EngineInfo, EngineError> {
        self.info
            .get_or_try_init(|| async {
                let v = self.docker.version().await?;
                let components = v.components.unwrap_or_default();
                let podman = components
                    .iter()
                    .find(|c| c.name.to_lowercase().contains("podman"));
                let engine = match (podman, v.version) {
                    (Some(p), _) => format!("podman {}", p.version),
                    (None, Some(version)) => format!("docker {version}"),
                    (None, None) => "unknown".to_owned(),
                };
                Ok(EngineInfo {
                    engine,
                    api_version: v.api_version.unwrap_or_default(),
                })
            })
            .await
    }

    /// The cached engine info, if it was read.
    pub fn cached_info(&self) -> Option<&EngineInfo> {
        self.info.get()
    }

    /// Whether the engine answers `GET /_ping` promptly.
    pub async fn ping(&self) -> bool {
        let ok = matches!(
            tokio::time::timeout(PING_TIMEOUT, self.docker.ping()).await,
            Ok(Ok(_))
        );
        *self.last_ping_ok.lock().expect("ping lock poisoned") = ok.then(std::time::Instant::now);
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

    /// Creates the run's container and attaches to its output, without starting it, so no
    /// output is lost. `storage` is the account's storage mount, when the run has one.
    pub async fn create(
        &self,
        run_id: &str,
        owner: &str,
        runner_id: &str,
        spec: &RunSpec,
        storage: Option<Mount>,
    ) -> Result<Attached, EngineError> {
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(RUN_LABEL.to_owned(), run_id.to_owned());
        labels.insert(OWNER_LABEL.to_owned(), owner.to_owned());
        labels.insert(RUNNER_LABEL.to_owned(), runner_id.to_owned());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.workdir.clone(),
            labels: Some(labels),
            tty: Some(spec.tty),
            // Closed for good when the attached client closes it (EOF for the command).
            open_stdin: Some(spec.stdin),
            stdin_once: Some(spec.stdin),
            attach_stdin: Some(false),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            exposed_ports: (!spec.ports.is_empty())
                .then(|| spec.ports.iter().map(port_key).collect()),
            host_config: Some(HostConfig {
                network_mode: Some(spec.network.mode().to_owned()),
                // Swap counts against the limit too, so the limit is hard and an allocation
                // beyond it ends in the OOM killer rather than in swapping.
                memory: spec.memory_mb.map(mib),
                memory_swap: spec.memory_mb.map(mib),
                port_bindings: (!spec.ports.is_empty()).then(|| port_bindings(&spec.ports)),
                mounts: storage.map(|m| vec![m]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&format!("bus-{run_id}"))
            .build();
        let created = self.docker.create_container(Some(options), body).await?;
        let attach = AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        match self
            .docker
            .attach_container(&created.id, Some(attach))
            .await
        {
            Ok(results) => Ok(Attached {
                id: created.id,
                output: results.output,
            }),
            Err(e) => {
                let _ = self.remove(&created.id).await;
                Err(e)
            }
        }
    }

    /// Attaches to a running container's output from now on (no replay of earlier output).
    pub async fn attach(&self, id: &str) -> Result<Output, EngineError> {
        let attach = AttachContainerOptions {
            stream: true,
            logs: false,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        Ok(self.docker.attach_container(id, Some(attach)).await?.output)
    }

    /// The container's output from its start, as the engine logged it, followed until the
    /// container stops: for following a container again after the engine went away.
    pub fn replay_output(&self, id: &str) -> Output {
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        Box::pin(self.docker.logs(id, Some(options)))
    }

    /// Every container (running or not) labelled as owned by `runner_id`.
    pub async fn list_owned(&self, runner_id: &str) -> Result<Vec<Owned>, EngineError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{RUNNER_LABEL}={runner_id}")],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self.docker.list_containers(Some(options)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                Some(Owned {
                    id: c.id?,
                    run_id: c.labels.and_then(|mut l| l.remove(RUN_LABEL)),
                })
            })
            .collect())
    }

    /// The container's status; `None` when it does not exist.
    pub async fn status(&self, id: &str) -> Result<Option<ContainerStatus>, EngineError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => {
                let state = inspect.state.unwrap_or_default();
                let status = state
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_default()
                    .to_lowercase();
                Ok(Some(
                    if state.running == Some(true)
                        || matches!(status.as_str(), "running" | "paused" | "restarting")
                    {
                        ContainerStatus::Running
                    } else if matches!(status.as_str(), "created" | "configured" | "") {
                        ContainerStatus::Created
                    } else {
                        ContainerStatus::Exited(state.exit_code)
                    },
                ))
            }
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the engine says the kernel's OOM killer ended the container; `None` when the
    /// container cannot be inspected. (Podman 4 with runc on cgroup v1 never says so.)
    pub async fn oom_killed(&self, id: &str) -> Option<bool> {
        let inspect = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        Some(inspect.state?.oom_killed == Some(true))
    }

    /// `ports` with the host ports the engine bound filled in (it picks one where the request
    /// named none); `ports` unchanged when the engine does not say.
    pub async fn published_ports(&self, id: &str, ports: &[Port]) -> Vec<Port> {
        let bound: PortMap = match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => inspect
                .network_settings
                .and_then(|n| n.ports)
                .unwrap_or_default(),
            Err(_) => return ports.to_vec(),
        };
        ports
            .iter()
            .map(|port| {
                let host_port = bound
                    .get(&port_key(port))
                    .and_then(|b| b.as_ref())
                    .and_then(|b| {
                        b.iter()
                            .find(|b| b.host_ip.as_deref().is_none_or(|ip| ip == port.host_ip))
                            .or(b.first())
                    })
                    .and_then(|b| b.host_port.as_deref()?.parse().ok())
                    .filter(|p: &u16| *p != 0);
                Port {
                    host_port: host_port.or(port.host_port),
                    ..port.clone()
                }
            })
            .collect()
    }

    /// The account's storage volume `name`, created (labelled with its owner) on first use;
    /// returns its mountpoint on the engine's host. A volume of that name that is labelled for
    /// another owner is refused.
    pub async fn ensure_volume(&self, name: &str, owner: &str) -> Result<String, VolumeError> {
        let volume = match self.docker.inspect_volume(name).await {
            Ok(volume) => volume,
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let labels = HashMap::from([
                    (OWNER_LABEL.to_owned(), owner.to_owned()),
                    (STORAGE_LABEL.to_owned(), "true".to_owned()),
                ]);
                let request = VolumeCreateRequest {
                    name: Some(name.to_owned()),
                    labels: Some(labels),
                    ..Default::default()
                };
                match self.docker.create_volume(request).await {
                    Ok(volume) => volume,
                    // Created meanwhile by a concurrent run of the same account.
                    Err(_) => self.docker.inspect_volume(name).await?,
                }
            }
            Err(e) => return Err(e.into()),
        };
        match volume.labels.get(OWNER_LABEL) {
            Some(o) if o == owner => Ok(volume.mountpoint),
            _ => Err(VolumeError::NotOwned(name.to_owned())),
        }
    }

    /// Removes a volume (and its files); one already gone is fine.
    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let options = bollard::query_parameters::RemoveVolumeOptions { force: true };
        match self.docker.remove_volume(name, Some(options)).await {
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other,
        }
    }

    /// Sends `signal` (e.g. `SIGTERM`) to the container's main process.
    pub async fn signal(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        let options = KillContainerOptions {
            signal: signal.to_owned(),
        };
        self.docker.kill_container(id, Some(options)).await
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.docker.start_container(id, None).await
    }

    /// Waits until the container has stopped and returns its exit code. On Podman this is
    /// libpod's wait, polling every [`LIBPOD_WAIT_INTERVAL`]: the Docker-compatible one
    /// answers a short run hundreds of milliseconds late.
    pub async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        if self
            .info
            .get()
            .is_some_and(|info| info.engine.starts_with("podman"))
        {
            return self.libpod_wait(id).await;
        }
        self.compat_wait(id).await
    }

    async fn compat_wait(&self, id: &str) -> Result<i64, EngineError> {
        let mut stream = self.docker.wait_container(id, None);
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports non-zero exits as an error carrying the code.
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(e),
            None => Err(EngineError::DockerStreamError {
                error: "the engine closed the wait stream without an exit code".to_owned(),
            }),
        }
    }

    /// `POST /v4.0.0/libpod/containers/{id}/wait?condition=exited&interval=5ms`, whose body is
    /// the exit code. bollard speaks only the Docker API, so this is one HTTP/1.1 exchange on
    /// a connection of its own.
    async fn libpod_wait(&self, id: &str) -> Result<i64, EngineError> {
        use http_body_util::BodyExt as _;
        let stream = tokio::net::UnixStream::connect(&self.socket).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(stream_error)?;
        let connection = tokio::spawn(connection);
        let path = format!(
            "/v4.0.0/libpod/containers/{}/wait?condition=exited&interval={LIBPOD_WAIT_INTERVAL}",
            url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
        );
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, "podman")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| stream_error(e.to_string()))?;
        let result = async {
            let response = sender.send_request(request).await.map_err(stream_error)?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(stream_error)?
                .to_bytes();
            let text = String::from_utf8_lossy(&body);
            if !status.is_success() {
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| text.trim().to_owned());
                return Err(EngineError::DockerResponseServerError {
                    status_code: status.as_u16(),
                    message,
                });
            }
            text.trim().parse::<i64>().map_err(|_| {
                stream_error(format!(
                    "the engine's wait answered {text:?}, not an exit code"
                ))
            })
        }
        .await;
        connection.abort();
        result
    }

    /// Kills the container (SIGKILL).
    pub async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let options = KillContainerOptions {
            signal: "SIGKILL".to_owned(),
        };
        self.docker.kill_container(id, Some(options)).await
    }

    /// Force-removes the container; a container already gone is fine.
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other,
        }
    }
}

/// A started exec: its output, and its stdin (shut down to close it).
pub struct ExecStreams {
    /// Stdout and stderr in the order they were written (console output with a TTY).
    pub output: Output,
    /// The command's stdin.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

impl Engine {
    /// Creates an exec in the container (not started yet) and returns its id. The initial
    /// terminal size goes in `ConsoleSize`, so the command sees it from its first instruction.
    pub async fn create_exec(
        &self,
        container: &str,
        spec: &ExecQuery,
    ) -> Result<String, EngineError> {
        let config = bollard::models::ExecConfig {
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(spec.tty),
            env: (!spec.env.is_empty()).then(|| spec.env.clone()),
            cmd: Some(spec.argv.clone()),
            working_dir: spec.workdir.clone(),
            console_size: spec
                .size
                .filter(|_| spec.tty)
                .map(|(cols, rows)| vec![usize::from(rows), usize::from(cols)]),
            ..Default::default()
        };
        Ok(self.docker.create_exec(container, config).await?.id)
    }

    /// Starts a created exec, attached.
    pub async fn start_exec(&self, exec_id: &str, tty: bool) -> Result<ExecStreams, EngineError> {
        let options = bollard::exec::StartExecOptions {
            detach: false,
            tty,
            output_capacity: Some(64 * 1024),
        };
        match self.docker.start_exec(exec_id, Some(options)).await? {
            bollard::exec::StartExecResults::Attached { output, input } => {
                Ok(ExecStreams { output, input })
            }
            bollard::exec::StartExecResults::Detached => Err(EngineError::DockerStreamError {
                error: "the engine started the exec detached".to_owned(),
            }),
        }
    }

    /// Resizes an exec's terminal.
    pub async fn resize_exec(
        &self,
        exec_id: &str,
        cols: u16,
        rows: u16,
    ) -> Result<(), EngineError> {
        let options = bollard::exec::ResizeExecOptions {
            height: rows,
            width: cols,
        };
        self.docker.resize_exec(exec_id, options).await
    }

    /// Attaches to a running container's stdin only (its output is captured elsewhere);
    /// shutting the writer down closes the command's stdin.
    pub async fn attach_stdin(
        &self,
        id: &str,
    ) -> Result<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>, EngineError> {
        // Podman passes no input to a terminal through an attach that takes no output, so
        // this one takes it too, and drops it (the run's capture already has it).
        let attach = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = self.docker.attach_container(id, Some(attach)).await?;
        let mut output = attached.output;
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = output.next().await {} });
        Ok(Box::pin(DrainedAttach {
            input: attached.input,
            drain: drain.abort_handle(),
        }))
    }

    /// Resizes a container's terminal.
    pub async fn resize_container(
        &self,
        id: &str,
        cols: u16,
        rows: u16,
    ) -> Result<(), EngineError> {
        let options = bollard::query_parameters::ResizeContainerTTYOptions {
            h: i32::from(rows),
            w: i32::from(cols),
        };
        self.docker.resize_container_tty(id, options).await
    }

    /// Whether the exec's process has been started (it may have ended since).
    pub async fn exec_started(&self, exec_id: &str) -> Result<bool, EngineError> {
        let inspect = self.docker.inspect_exec(exec_id).await?;
        Ok(inspect.running == Some(true) || inspect.pid.is_some_and(|pid| pid > 0))
    }

    /// The exec's process as the engine's host sees it: (host PID, container id), while it
    /// runs; `None` once it ended.
    pub async fn exec_process(&self, exec_id: &str) -> Result<Option<(i32, String)>, EngineError> {
        let inspect = self.docker.inspect_exec(exec_id).await?;
        Ok(match (inspect.running, inspect.pid, inspect.container_id) {
            (Some(true), Some(pid), Some(container)) if pid > 0 => {
                i32::try_from(pid).ok().map(|pid| (pid, container))
            }
            _ => None,
        })
    }

    /// The host PID of a running container's first process.
    pub async fn container_pid(&self, id: &str) -> Result<Option<i32>, EngineError> {
        let inspect = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await?;
        Ok(inspect
            .state
            .and_then(|s| s.pid)
            .filter(|pid| *pid > 0)
            .and_then(|pid| i32::try_from(pid).ok()))
    }

    /// The exec's exit code once the engine reports it not running; `None` while it runs (or
    /// when the engine reports no code).
    pub async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, EngineError> {
        let inspect = self.docker.inspect_exec(exec_id).await?;
        Ok(match inspect.running {
            Some(false) => inspect.exit_code,
            _ => None,
        })
    }
}

fn stream_error(error: impl std::fmt::Display) -> EngineError {
    EngineError::DockerStreamError {
        error: error.to_string(),
    }
}

/// Why an account's storage volume cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The engine failed.
    #[error("{}", crate::problem::engine_message(.0))]
    Engine(#[from] EngineError),
    /// A volume of that name exists but is not labelled as this account's.
    #[error("the volume {0} exists but is not labelled as this account's storage")]
    NotOwned(String),
}

/// `8080/tcp`: how the engine keys a container port.
fn port_key(port: &Port) -> String {
    format!("{}/{}", port.container_port, port.protocol.as_str())
}

fn port_bindings(ports: &[Port]) -> PortMap {
    let mut map: PortMap = HashMap::new();
    for port in ports {
        map.entry(port_key(port))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: Some(port.host_ip.clone()),
                // Empty: the engine picks a free port.
                host_port: Some(port.host_port.map(|p| p.to_string()).unwrap_or_default()),
            });
    }
    map
}

fn mib(mb: u32) -> i64 {
    i64::from(mb) * 1024 * 1024
}

/// The stdin of an attach whose output is read and dropped on a task of its own. Dropping it
/// ends that task too, and with it the attach: without this, every attach session left the
/// engine copying the run's output to a reader nobody stopped until the container exited.
struct DrainedAttach {
    input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    drain: tokio::task::AbortHandle,
}

impl Drop for DrainedAttach {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

impl tokio::io::AsyncWrite for DrainedAttach {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.input.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.input.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.input.as_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An engine socket that answers each `GET /_ping` with 200 (or 500 while `failing`),
    /// counting them.
    async fn fake_engine(
        path: &std::path::Path,
        pings: Arc<AtomicUsize>,
        failing: Arc<AtomicBool>,
    ) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (pings, failing) = (pings.clone(), failing.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            pings.fetch_add(1, Ordering::SeqCst);
                            let status = if failing.load(Ordering::SeqCst) {
                                "500 Internal Server Error"
                            } else {
                                "200 OK"
                            };
                            let reply = format!(
                                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK"
                            );
                            if conn.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn a_successful_ping_stands_briefly_and_a_failed_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("engine.sock");
        let pings = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        fake_engine(&socket, pings.clone(), failing.clone()).await;
        let engine = Engine::connect(&format!("unix://{}", socket.display())).unwrap();
        let count = || pings.load(Ordering::SeqCst);

        for _ in 0..3 {
            assert!(engine.alive(Duration::from_secs(60)).await);
        }
        assert_eq!(count(), 1, "one ping answers repeated status requests");
        assert!(engine.alive(Duration::ZERO).await);
        assert_eq!(count(), 2, "a stale ping is not reused");

        failing.store(true, Ordering::SeqCst);
        assert!(!engine.ping().await);
        for expected in [4, 5] {
            assert!(!engine.alive(Duration::from_secs(60)).await);
            assert_eq!(count(), expected, "after a failure every request pings");
        }

        failing.store(false, Ordering::SeqCst);
        assert!(engine.alive(Duration::from_secs(60)).await);
        assert!(engine.alive(Duration::from_secs(60)).await);
        assert_eq!(count(), 6);
    }
}
