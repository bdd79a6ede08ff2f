//! Execs: commands run in a running container beside its own.

use bus_api::exec::ExecQuery;

use bollard::errors::Error as DockerError;

use super::Podman;
use super::containers::DockerOutput;
use crate::engine::Input;

impl Podman {
    /// Creates an exec in the container (not started yet) and returns its id. The initial
    /// terminal size goes in `ConsoleSize`, so the command sees it from its first instruction.
    pub(super) async fn new_exec(
        &self,
        container: &str,
        spec: &ExecQuery,
    ) -> Result<String, DockerError> {
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
    pub(super) async fn run_exec(
        &self,
        exec_id: &str,
        tty: bool,
    ) -> Result<(DockerOutput, Input), DockerError> {
        let options = bollard::exec::StartExecOptions {
            detach: false,
            tty,
            output_capacity: Some(64 * 1024),
        };
        match self.docker.start_exec(exec_id, Some(options)).await? {
            bollard::exec::StartExecResults::Attached { output, input } => Ok((output, input)),
            bollard::exec::StartExecResults::Detached => Err(DockerError::DockerStreamError {
                error: "the engine started the exec detached".to_owned(),
            }),
        }
    }

    /// Resizes an exec's terminal.
    pub(super) async fn resize_exec_tty(
        &self,
        exec_id: &str,
        cols: u16,
        rows: u16,
    ) -> Result<(), DockerError> {
        let options = bollard::exec::ResizeExecOptions {
            height: rows,
            width: cols,
        };
        self.docker.resize_exec(exec_id, options).await
    }

    /// Whether the exec's process has been started (it may have ended since).
    pub(super) async fn exec_has_started(&self, exec_id: &str) -> Result<bool, DockerError> {
        let inspect = self.docker.inspect_exec(exec_id).await?;
        Ok(inspect.running == Some(true) || inspect.pid.is_some_and(|pid| pid > 0))
    }

    /// The exec's process as the engine's host sees it: (host PID, container id), while it
    /// runs; `None` once it ended.
    pub(super) async fn exec_host_process(
        &self,
        exec_id: &str,
    ) -> Result<Option<(i32, String)>, DockerError> {
        let inspect = self.docker.inspect_exec(exec_id).await?;
        Ok(match (inspect.running, inspect.pid, inspect.container_id) {
            (Some(true), Some(pid), Some(container)) if pid > 0 => {
                i32::try_from(pid).ok().map(|pid| (pid, container))
            }
            _ => None,
        })
    }
    /// The exec's exit code once the engine reports it not running; `None` while it runs (or
    /// when the engine reports no code).
    pub(super) async fn exec_code(&self, exec_id: &str) -> Result<Option<i64>, DockerError> {
        let inspect = self.docker.inspect_exec(exec_id).await?;
        Ok(match inspect.running {
            Some(false) => inspect.exit_code,
            _ => None,
        })
    }
}
