//! Drives one run from `queued` to its end, detached from the HTTP request that created it:
//! create and attach (so no output is lost), start, capture output into the store as it
//! arrives, wait for the exit (or kill at the timeout, or stop on request), remove the
//! container, record the end.
//!
//! Runs outlive the runner process: on shutdown (or a crash) their containers keep running,
//! and on start [`readopt`] picks them up again from the store: it re-attaches to each
//! running container (output from then on continues the run's `seq`), waits for its exit as
//! usual, ends the runs whose containers vanished, and removes containers of runs it does not
//! know.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bus_api::{RunState, Stream};
use futures::StreamExt as _;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::engine::{ContainerStatus, Engine, Output};
use crate::problem::engine_message;
use crate::spec::RunSpec;
use crate::storage;
use crate::store::{Entry, Store};

/// How long the output stream may take to close once the container has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the exit code may take to arrive after a kill.
const KILL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between attempts to re-adopt when the engine does not answer.
const READOPT_MAX_PAUSE: Duration = Duration::from_secs(30);

/// Reason recorded for runs stopped through `POST .../stop`.
pub const STOPPED_ON_REQUEST: &str = "stopped on request";
/// Reason recorded for a run whose container disappeared while the runner was down.
pub const VANISHED: &str = "the container vanished while the runner was down";
/// Reason recorded for a run the runner stopped before its container started.
pub const NOT_STARTED: &str = "the runner stopped before the run started";
/// How the reason of a run the kernel's OOM killer ended begins.
pub const OOM_KILLED: &str = "out of memory (OOM-killed)";
/// Reason recorded for a run whose container exited while the runner was down.
pub const EXITED_WHILE_DOWN: &str =
    "the container exited while the runner was down; output written meanwhile was not captured";

/// Starts executing `spec` as the run `entry` on a task of its own; a storage subpath is
/// staged below `mounts_dir` (see [`storage`]).
pub fn spawn(
    engine: Arc<Engine>,
    entry: Arc<Entry>,
    spec: RunSpec,
    mounts_dir: PathBuf,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        execute(&engine, &entry, &spec, &mounts_dir).await;
        log_end(&entry);
    })
}

fn log_end(entry: &Entry) {
    let run = entry.snapshot();
    tracing::info!(
        run = %entry.id,
        state = run.state.as_str(),
        exit_code = run.exit_code,
        reason = run.reason.as_deref().unwrap_or(""),
        "run ended"
    );
}

async fn execute(engine: &Engine, entry: &Arc<Entry>, spec: &RunSpec, mounts_dir: &Path) {
    entry.set_state(RunState::Starting);
    // Held until the container has started: it keeps a subpath's staging mount alive.
    let storage = match &spec.storage {
        Some(mount) => {
            match storage::prepare(engine, &entry.owner, &entry.id, mount, mounts_dir).await {
                Ok(prepared) => Some(prepared),
                Err(reason) => {
                    entry.finish(RunState::Failed, None, Some(reason)).await;
                    return;
                }
            }
        }
        None => None,
    };
    let mount = storage.as_ref().map(|s| s.mount.clone());
    let begun = std::time::Instant::now();
    let attached = match engine
        .create(&entry.id, &entry.owner, entry.runner_id(), spec, mount)
        .await
    {
        Ok(attached) => attached,
        Err(e) => {
            entry
                .finish(
                    RunState::Failed,
                    None,
                    Some(create_failure(&spec.image, &e)),
                )
                .await;
            return;
        }
    };
    let container = attached.id;
    let created = begun.elapsed();
    if !entry.set_container(&container) {
        remove(engine, &container).await;
        if entry.stop_requested() && !entry.is_deleted() {
            entry
                .finish(RunState::Stopped, None, Some(STOPPED_ON_REQUEST.to_owned()))
                .await;
        } else {
            entry
                .finish(
                    RunState::Failed,
                    None,
                    Some("the run was deleted or stopped before it started".to_owned()),
                )
                .await;
        }
        return;
    }
    let pump = tokio::spawn(pump(attached.output, entry.clone()));

    if entry.stop_requested() {
        pump.abort();
        remove(engine, &container).await;
        entry
            .finish(RunState::Stopped, None, Some(STOPPED_ON_REQUEST.to_owned()))
            .await;
        return;
    }
    if let Err(e) = engine.start(&container).await {
        pump.abort();
        let reason = format!(
            "the engine could not start the container: {}",
            engine_message(&e)
        );
        remove(engine, &container).await;
        entry.finish(RunState::Failed, None, Some(reason)).await;
        return;
    }
    drop(storage);
    tracing::debug!(run = %entry.id, create_attach_ms = ms(created), start_ms = ms(begun.elapsed() - created), "container started");
    if !spec.ports.is_empty() {
        entry.set_ports(engine.published_ports(&container, &spec.ports).await);
    }
    entry.set_state(RunState::Running);
    supervise(engine, entry, &container, Some(pump), spec.timeout).await;
}

/// Why a container that exited with `code` ended, when the OOM killer ended it: the engine
/// says so, or (Podman 4 with runc on cgroup v1 never says so) it died of SIGKILL (137) under
/// a memory limit, which the runner did not send. The OOM killer always sends SIGKILL, so other
/// exits cost no engine call.
async fn oom_reason(engine: &Engine, entry: &Entry, container: &str, code: i64) -> Option<String> {
    if code != 137 {
        return None;
    }
    let memory_mb = entry.snapshot().options.memory_mb;
    let limit = memory_mb
        .map(|mb| format!("its {mb} MiB memory limit"))
        .unwrap_or_else(|| "the memory available".to_owned());
    match engine.oom_killed(container).await {
        Some(true) => Some(format!("{OOM_KILLED}: the container exceeded {limit}")),
        _ if memory_mb.is_some() => Some(format!(
            "{OOM_KILLED}: the container was killed by SIGKILL (exit 137) under {limit}; the \
             engine does not report OOM kills, so this is inferred"
        )),
        _ => None,
    }
}

/// Waits for the container to stop (killing it at the timeout, `remaining` from now), lets the
/// output drain, removes the container and records the end.
async fn supervise(
    engine: &Engine,
    entry: &Arc<Entry>,
    container: &str,
    pump: Option<JoinHandle<()>>,
    remaining: Duration,
) {
    let begun = std::time::Instant::now();
    let waited = tokio::time::timeout(remaining, engine.wait(container)).await;
    let wait_ms = ms(begun.elapsed());
    let (state, exit_code, reason) = match waited {
        // A deleted run's container was force-removed: whatever the engine says, it did not
        // simply exit.
        Ok(_) if entry.is_deleted() => (
            RunState::Failed,
            None,
            Some("the run was deleted while it ran".to_owned()),
        ),
        Ok(result) if entry.stop_requested() => (
            RunState::Stopped,
            result.ok().map(exit_code),
            Some(STOPPED_ON_REQUEST.to_owned()),
        ),
        Ok(Ok(code)) => match oom_reason(engine, entry, container, code).await {
            Some(reason) => (RunState::Failed, Some(exit_code(code)), Some(reason)),
            None => (RunState::Exited, Some(exit_code(code)), None),
        },
        Ok(Err(e)) => (
            RunState::Failed,
            None,
            Some(format!(
                "lost track of the container: {}",
                engine_message(&e)
            )),
        ),
        Err(_elapsed) => {
            if let Err(e) = engine.kill(container).await {
                tracing::warn!(run = %entry.id, error = %engine_message(&e), "kill after timeout failed");
            }
            let code = tokio::time::timeout(KILL_WAIT_TIMEOUT, engine.wait(container)).await;
            let reason = format!(
                "the run exceeded its timeout of {} s and was killed",
                entry.timeout.as_secs()
            );
            (
                RunState::TimedOut,
                code.ok().and_then(Result::ok).map(exit_code),
                Some(reason),
            )
        }
    };

    // The attach stream closes once the container has stopped; let it deliver the last output
    // so the exit frame comes after every output frame.
    if let Some(pump) = pump {
        let abort = pump.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, pump).await.is_err() {
            tracing::warn!(run = %entry.id, "output stream did not close after the container stopped");
            abort.abort();
        }
    }
    let drained = begun.elapsed();
    // Remove first: once a client sees the exit frame, the container is gone.
    remove(engine, container).await;
    let removed = begun.elapsed();
    entry.finish(state, exit_code, reason).await;
    tracing::debug!(run = %entry.id, wait_ms, drain_ms = ms(drained) - wait_ms, remove_ms = ms(removed - drained), finish_ms = ms(begun.elapsed() - removed), "container ended");
}

/// Milliseconds, for timing logs.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Copies attach output into the store until the stream ends.
async fn pump(mut output: Output, entry: Arc<Entry>) {
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                entry.push_output(Stream::Stdout, message).await
            }
            Ok(LogOutput::StdErr { message }) => entry.push_output(Stream::Stderr, message).await,
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::warn!(run = %entry.id, error = %engine_message(&e), "output stream failed");
                break;
            }
        }
    }
}

/// What [`readopt`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Readopted {
    /// Runs whose containers still ran: attached again and supervised.
    pub adopted: usize,
    /// Runs ended because their containers had exited, vanished or never started.
    pub ended: usize,
    /// Containers removed because their runs are unknown or over.
    pub removed: usize,
}

/// Picks up the runs that had not ended when the store was opened (see the module docs).
/// Fails only when the engine cannot list containers; then nothing was changed.
pub async fn readopt(engine: &Arc<Engine>, store: &Store) -> Result<Readopted, EngineError> {
    let owned = engine.list_owned(store.runner_id()).await?;
    let mut by_run: HashMap<String, String> = HashMap::new();
    let mut strays = Vec::new();
    for container in owned {
        match container.run_id {
            Some(run) if !by_run.contains_key(&run) => {
                by_run.insert(run, container.id);
            }
            _ => strays.push(container.id),
        }
    }
    let mut done = Readopted::default();
    for entry in store.take_orphans() {
        let container = by_run.remove(&entry.id).or_else(|| entry.container());
        let status = match &container {
            Some(c) => match engine.status(c).await {
                Ok(status) => status,
                Err(e) => {
                    // The engine answered the listing; treat a failed inspect as a lost run
                    // rather than leaving it unfinished for ever.
                    tracing::warn!(run = %entry.id, error = %engine_message(&e), "cannot inspect the container of an unfinished run");
                    None
                }
            },
            None => None,
        };
        let had_container = container.is_some() || entry.snapshot().state == RunState::Running;
        match (container, status) {
            (Some(container), Some(ContainerStatus::Running)) => {
                adopt(engine.clone(), entry, container);
                done.adopted += 1;
            }
            (Some(container), Some(ContainerStatus::Exited(code))) => {
                remove(engine, &container).await;
                match code {
                    Some(code) => {
                        entry
                            .finish(
                                RunState::Exited,
                                Some(exit_code(code)),
                                Some(EXITED_WHILE_DOWN.to_owned()),
                            )
                            .await
                    }
                    None => {
                        entry
                            .finish(RunState::Failed, None, Some(VANISHED.to_owned()))
                            .await
                    }
                }
                done.ended += 1;
            }
            (Some(container), Some(ContainerStatus::Created)) => {
                remove(engine, &container).await;
                entry
                    .finish(RunState::Failed, None, Some(NOT_STARTED.to_owned()))
                    .await;
                done.ended += 1;
            }
            _ => {
                let reason = if had_container { VANISHED } else { NOT_STARTED };
                entry
                    .finish(RunState::Failed, None, Some(reason.to_owned()))
                    .await;
                done.ended += 1;
            }
        }
    }
    // Containers of runs this runner does not know (deleted meanwhile, or retained away) or
    // that are over. Runs created since this runner started are known and not over.
    for (run, container) in by_run {
        let known = store
            .get_any(&run)
            .is_some_and(|e| !e.snapshot().state.is_terminal());
        if !known {
            strays.push(container);
        }
    }
    for container in strays {
        remove(engine, &container).await;
        done.removed += 1;
    }
    Ok(done)
}

/// [`readopt`], retried with a growing pause until the engine answers.
pub fn spawn_readopt(engine: Arc<Engine>, store: Store) -> JoinHandle<Readopted> {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(500);
        loop {
            match readopt(&engine, &store).await {
                Ok(done) => {
                    if done != Readopted::default() {
                        tracing::info!(
                            adopted = done.adopted,
                            ended = done.ended,
                            removed = done.removed,
                            "re-adopted the runs of the previous runner process"
                        );
                    }
                    return done;
                }
                Err(e) => {
                    tracing::warn!(error = %engine_message(&e), "cannot list containers to re-adopt runs; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(READOPT_MAX_PAUSE);
                }
            }
        }
    })
}

/// Attaches to a running container of an earlier runner process and supervises it; its timeout
/// still counts from `started_at`.
fn adopt(engine: Arc<Engine>, entry: Arc<Entry>, container: String) {
    if entry.container().is_none() && !entry.set_container(&container) {
        tracing::warn!(run = %entry.id, "the run ended before it could be re-adopted");
    }
    entry.set_state(RunState::Running);
    let elapsed = entry
        .snapshot()
        .started_at
        .map(|t| (OffsetDateTime::now_utc() - t).unsigned_abs())
        .unwrap_or_default();
    let remaining = entry.timeout.saturating_sub(elapsed);
    tracing::info!(run = %entry.id, container, "re-adopting a running container");
    tokio::spawn(async move {
        let pump = match engine.attach(&container).await {
            Ok(output) => Some(tokio::spawn(pump(output, entry.clone()))),
            Err(e) => {
                tracing::warn!(run = %entry.id, error = %engine_message(&e), "cannot attach to a re-adopted container; its further output is lost");
                None
            }
        };
        supervise(&engine, &entry, &container, pump, remaining).await;
        log_end(&entry);
    });
}

/// Stops a live run: SIGTERM, then SIGKILL after `grace` (at once with `force`); returns once
/// the run has ended or `limit` has passed. A run without a container yet is stopped by its
/// executor as soon as the container exists.
pub async fn stop(
    engine: &Engine,
    entry: &Arc<Entry>,
    grace: Duration,
    force: bool,
    limit: Duration,
) {
    if !entry.request_stop() {
        return;
    }
    let signal = |signal: &'static str| async move {
        if let Some(container) = entry.container() {
            if let Err(e) = engine.signal(&container, signal).await {
                tracing::debug!(run = %entry.id, signal, error = %engine_message(&e), "signal failed");
            }
        }
    };
    if !force {
        signal("SIGTERM").await;
        if entry.wait_ended(grace).await {
            return;
        }
    }
    signal("SIGKILL").await;
    if !entry.wait_ended(limit).await {
        tracing::warn!(run = %entry.id, "the run has not ended after SIGKILL");
    }
}

fn exit_code(code: i64) -> i32 {
    i32::try_from(code).unwrap_or(i32::MIN)
}

fn create_failure(image: &str, err: &EngineError) -> String {
    match err {
        EngineError::DockerResponseServerError {
            status_code: 404, ..
        } => {
            format!("image {image} not found on the engine")
        }
        other => format!(
            "the engine could not create the container: {}",
            engine_message(other)
        ),
    }
}

async fn remove(engine: &Engine, container: &str) {
    if let Err(e) = engine.remove(container).await {
        tracing::warn!(container, error = %engine_message(&e), "removing the container failed");
    }
}
