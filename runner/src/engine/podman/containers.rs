//! Containers and the account storage volumes they mount.

use std::collections::HashMap;

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, HostConfig, MountBindOptions, MountBindOptionsPropagationEnum, MountType,
    PortBinding, PortMap, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptionsBuilder, InspectContainerOptions,
    KillContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
};
use bus_api::Port;
use futures::StreamExt as _;

use super::{Podman, engine_error};
use crate::engine::{
    ContainerSpec, ContainerStatus, Input, Mount, OWNER_LABEL, Owned, RUN_LABEL, RUNNER_LABEL,
    STORAGE_LABEL, VolumeError,
};

/// Output as bollard delivers it.
pub(super) type DockerOutput =
    Pin<Box<dyn futures::Stream<Item = Result<LogOutput, DockerError>> + Send>>;

impl Podman {
    /// Creates the container and attaches to its output, without starting it, so no output is
    /// lost.
    pub(super) async fn create_attached(
        &self,
        spec: &ContainerSpec,
    ) -> Result<(String, DockerOutput), DockerError> {
        let labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
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
                network_mode: Some(spec.network.clone()),
                // Swap counts against the limit too, so the limit is hard and an allocation
                // beyond it ends in the OOM killer rather than in swapping.
                memory: spec.memory_mb.map(mib),
                memory_swap: spec.memory_mb.map(mib),
                port_bindings: (!spec.ports.is_empty()).then(|| port_bindings(&spec.ports)),
                mounts: spec.mount.as_ref().map(|m| vec![bollard_mount(m)]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
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
            Ok(results) => Ok((created.id, results.output)),
            Err(e) => {
                let _ = self.remove_container(&created.id).await;
                Err(e)
            }
        }
    }

    /// Attaches to a running container's output from now on (no replay of earlier output).
    pub(super) async fn attach_output(&self, id: &str) -> Result<DockerOutput, DockerError> {
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
    pub(super) fn logs(&self, id: &str) -> DockerOutput {
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        Box::pin(self.docker.logs(id, Some(options)))
    }

    /// Every container (running or not) labelled as owned by `runner_id`.
    pub(super) async fn owned(&self, runner_id: &str) -> Result<Vec<Owned>, DockerError> {
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
    pub(super) async fn container_status(
        &self,
        id: &str,
    ) -> Result<Option<ContainerStatus>, DockerError> {
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
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the engine says the kernel's OOM killer ended the container; `None` when the
    /// container cannot be inspected. (Podman 4 with runc on cgroup v1 never says so.)
    pub(super) async fn was_oom_killed(&self, id: &str) -> Option<bool> {
        let inspect = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .ok()?;
        Some(inspect.state?.oom_killed == Some(true))
    }

    /// `ports` with the host ports the engine bound filled in (it picks one where the request
    /// named none); `ports` unchanged when the engine does not say.
    pub(super) async fn bound_ports(&self, id: &str, ports: &[Port]) -> Vec<Port> {
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
    pub(super) async fn volume(&self, name: &str, owner: &str) -> Result<String, VolumeError> {
        let volume = match self.docker.inspect_volume(name).await {
            Ok(volume) => volume,
            Err(DockerError::DockerResponseServerError {
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
                    Err(_) => self
                        .docker
                        .inspect_volume(name)
                        .await
                        .map_err(engine_error)?,
                }
            }
            Err(e) => return Err(engine_error(e).into()),
        };
        match volume.labels.get(OWNER_LABEL) {
            Some(o) if o == owner => Ok(volume.mountpoint),
            _ => Err(VolumeError::NotOwned(name.to_owned())),
        }
    }

    /// Sends `signal` (e.g. `SIGTERM`, `SIGKILL`) to the container's main process.
    pub(super) async fn kill_with(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptions {
            signal: signal.to_owned(),
        };
        self.docker.kill_container(id, Some(options)).await
    }

    /// Force-removes the container; a container already gone is fine.
    pub(super) async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            other => other,
        }
    }
}

impl Podman {
    /// Attaches to a running container's stdin only (its output is captured elsewhere);
    /// shutting the writer down closes the command's stdin.
    pub(super) async fn attach_input(&self, id: &str) -> Result<Input, DockerError> {
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
    pub(super) async fn resize_tty(
        &self,
        id: &str,
        cols: u16,
        rows: u16,
    ) -> Result<(), DockerError> {
        let options = bollard::query_parameters::ResizeContainerTTYOptions {
            h: i32::from(rows),
            w: i32::from(cols),
        };
        self.docker.resize_container_tty(id, options).await
    }

    /// The host PID of a running container's first process.
    pub(super) async fn pid(&self, id: &str) -> Result<Option<i32>, DockerError> {
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
/// A storage mount in bollard's terms.
fn bollard_mount(mount: &Mount) -> bollard::models::Mount {
    match mount {
        Mount::Volume { name, target } => bollard::models::Mount {
            target: Some(target.clone()),
            source: Some(name.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        },
        Mount::Bind { source, target } => bollard::models::Mount {
            target: Some(target.clone()),
            source: Some(source.clone()),
            typ: Some(MountType::BIND),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}
