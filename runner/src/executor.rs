//! Drives one run from `queued` to its end, detached from the HTTP request that created it:
//! create and attach (so no output is lost), start, capture output into the store as it
//! arrives, wait for the exit (or kill at the timeout), remove the container, record the end.

use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bus_api::{RunState, Stream};
use futures::StreamExt as _;
use tokio::task::JoinHandle;

use crate::engine::{Engine, Output};
use crate::problem::engine_message;
use crate::spec::RunSpec;
use crate::store::{Entry, Store};

/// How long the output stream may take to close once the container has stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the exit code may take to arrive after a kill.
const KILL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reason recorded for runs the runner stopped before they ended.
pub const STOPPED_BY_SHUTDOWN: &str = "the runner shut down before the run ended";

/// Ends every unfinished run as `failed` and force-removes its container: the store lives in
/// memory, so nothing could re-adopt them after a restart. Bounded by `limit`.
pub async fn abandon_all(engine: &Engine, store: &Store, limit: Duration) {
    let runs = store.unfinished();
    if runs.is_empty() {
        return;
    }
    tracing::info!(
        runs = runs.len(),
        "removing the containers of unfinished runs"
    );
    let removals = runs.iter().map(|entry| async move {
        entry.finish(RunState::Failed, None, Some(STOPPED_BY_SHUTDOWN.to_owned()));
        if let Some(container) = entry.container() {
            remove(engine, &container).await;
        }
    });
    if tokio::time::timeout(limit, futures::future::join_all(removals))
        .await
        .is_err()
    {
        tracing::warn!("some containers of unfinished runs may be left behind");
    }
}

/// Starts executing `spec` as the run `entry` on a task of its own.
pub fn spawn(engine: Arc<Engine>, entry: Arc<Entry>, spec: RunSpec) -> JoinHandle<()> {
    tokio::spawn(async move {
        execute(&engine, &entry, &spec).await;
        let run = entry.snapshot();
        tracing::info!(
            run = %entry.id,
            state = run.state.as_str(),
            exit_code = run.exit_code,
            reason = run.reason.as_deref().unwrap_or(""),
            "run ended"
        );
    })
}

async fn execute(engine: &Engine, entry: &Arc<Entry>, spec: &RunSpec) {
    entry.set_state(RunState::Starting);
    let attached = match engine.create(&entry.id, &entry.owner, spec).await {
        Ok(attached) => attached,
        Err(e) => {
            entry.finish(
                RunState::Failed,
                None,
                Some(create_failure(&spec.image, &e)),
            );
            return;
        }
    };
    let container = attached.id;
    if !entry.set_container(&container) {
        remove(engine, &container).await;
        entry.finish(
            RunState::Failed,
            None,
            Some("the run was deleted or stopped before it started".to_owned()),
        );
        return;
    }
    let pump = tokio::spawn(pump(attached.output, entry.clone()));
    let abort = pump.abort_handle();

    if let Err(e) = engine.start(&container).await {
        abort.abort();
        let reason = format!(
            "the engine could not start the container: {}",
            engine_message(&e)
        );
        entry.finish(RunState::Failed, None, Some(reason));
        remove(engine, &container).await;
        return;
    }
    entry.set_state(RunState::Running);

    let waited = tokio::time::timeout(spec.timeout, engine.wait(&container)).await;
    let (state, exit_code, reason) = match waited {
        // A deleted run's container was force-removed: whatever the engine says, it did not
        // simply exit.
        Ok(_) if entry.is_deleted() => (
            RunState::Failed,
            None,
            Some("the run was deleted while it ran".to_owned()),
        ),
        Ok(Ok(code)) => (RunState::Exited, Some(exit_code(code)), None),
        Ok(Err(e)) => (
            RunState::Failed,
            None,
            Some(format!(
                "lost track of the container: {}",
                engine_message(&e)
            )),
        ),
        Err(_elapsed) => {
            if let Err(e) = engine.kill(&container).await {
                tracing::warn!(run = %entry.id, error = %engine_message(&e), "kill after timeout failed");
            }
            let code = tokio::time::timeout(KILL_WAIT_TIMEOUT, engine.wait(&container)).await;
            let reason = format!(
                "the run exceeded its timeout of {} s and was killed",
                spec.timeout.as_secs()
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
    if tokio::time::timeout(DRAIN_TIMEOUT, pump).await.is_err() {
        tracing::warn!(run = %entry.id, "output stream did not close after the container stopped");
        abort.abort();
    }
    // Remove first: once a client sees the exit frame, the container is gone.
    remove(engine, &container).await;
    entry.finish(state, exit_code, reason);
}

/// Copies attach output into the store until the stream ends.
async fn pump(mut output: Output, entry: Arc<Entry>) {
    while let Some(item) = output.next().await {
        match item {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                entry.push_output(Stream::Stdout, message)
            }
            Ok(LogOutput::StdErr { message }) => entry.push_output(Stream::Stderr, message),
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                tracing::warn!(run = %entry.id, error = %engine_message(&e), "output stream failed");
                break;
            }
        }
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
