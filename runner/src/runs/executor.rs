//! Drives one run from `queued` to its end, detached from the HTTP request that created it:
//! create and attach (so no output is lost), start, capture output into the store as it
//! arrives, wait for the exit (or kill at the timeout, or stop on request), remove the
//! container, record the end. A service whose command failed is started again, in a new
//! container whose output continues the run's (at most `MAX_SERVICE_RESTARTS` times).
//!
//! Runs outlive the runner process: on shutdown (or a crash) their containers keep running,
//! and on start [`readopt`] picks them up again from the store. The engine logged everything
//! each container wrote meanwhile, so it follows each container again from the engine's log,
//! skipping the bytes of each stream the store already holds: what was written while no runner
//! was attached is stored, nothing twice, and `seq` goes on densely. A container that is still
//! running is then followed and waited for as usual; one that exited meanwhile has its
//! remaining output stored before its exit code. Runs whose containers vanished end `failed`,
//! and containers of runs it does not know are removed.
//!
//! The engine may go away under a live run too (Podman's API service restarted): its
//! containers keep running under conmon. The wait then fails; the supervisor waits for the
//! engine to answer again and follows the container once more, reading its output from the
//! engine's log and skipping the bytes it already holds, so nothing is lost or stored twice
//! (see [`resume_output`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus_api::runs::MAX_SERVICE_RESTARTS;
use bus_api::{RunState, Stream};
use futures::StreamExt as _;
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use super::spec::RunSpec;
use super::storage;
use crate::engine::{Chunk, ContainerStatus, Engine, EngineError, Output, engine_message};
use crate::store::{Entry, Store};

/// How long the output stream may go without delivering a byte once the container has stopped
/// before it is abandoned (a replay of the engine's log keeps delivering until it is done).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the exit code may take to arrive after a kill.
const KILL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between attempts to re-adopt when the engine does not answer.
const READOPT_MAX_PAUSE: Duration = Duration::from_secs(30);
/// Longest pause between pings while waiting for a lost engine to come back.
const RECONNECT_MAX_PAUSE: Duration = Duration::from_secs(2);
/// The pause before a failed service is started again the first time; it doubles each time.
const RESTART_PAUSE: Duration = Duration::from_millis(500);
/// How many times one run follows its container again after losing the engine.
const MAX_ENGINE_RECONNECTS: u32 = 20;

/// Reason recorded for runs stopped through `POST .../stop`.
pub const STOPPED_ON_REQUEST: &str = "stopped on request";
/// Reason recorded for a run whose container disappeared while the runner was down.
pub const VANISHED: &str = "the container vanished while the runner was down";
/// Reason recorded for a run the runner stopped before its container started.
pub const NOT_STARTED: &str = "the runner stopped before the run started";
/// How the reason of a run the kernel's OOM killer ended begins.
pub const OOM_KILLED: &str = "out of memory (OOM-killed)";
/// How the reason of a run whose command is not in its image begins (exit code 127).
pub const COMMAND_NOT_FOUND: &str = "command not found";
/// How the reason of a run whose command cannot be executed begins (exit code 126).
pub const COMMAND_NOT_EXECUTABLE: &str = "command not executable";
/// How the reason of a run killed for writing more output than its limit begins.
pub const OUTPUT_LIMIT: &str = "output limit reached";

/// Starts executing `spec` as the run `entry` on a task of its own; a storage subpath is
/// staged below `mounts_dir` (see [`storage`]). A run with `auto_remove` is deleted from
/// `store` once it has ended.
pub fn spawn(
    engine: Arc<Engine>,
    entry: Arc<Entry>,
    spec: RunSpec,
    mounts_dir: PathBuf,
    store: Store,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        execute(&engine, &entry, &spec, &mounts_dir).await;
        log_end(&entry);
        remove_if_asked(&store, &entry);
    })
}

/// Deletes an ended run that asked for it (`auto_remove`, docker's `--rm`), as `DELETE` would;
/// its detached execs' files go at the runner's next start, as those of runs retention
/// deleted do.
fn remove_if_asked(store: &Store, entry: &Entry) {
    if entry.snapshot().options.auto_remove && store.remove(&entry.owner, &entry.id).is_some() {
        tracing::info!(run = %entry.id, "run deleted once ended, as it asked");
    }
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

/// Runs the spec's container, and for a service, runs it again after it failed (at most
/// [`MAX_SERVICE_RESTARTS`] times, pausing a little longer each time); records the end.
async fn execute(engine: &Engine, entry: &Arc<Entry>, spec: &RunSpec, mounts_dir: &Path) {
    let deadline = Instant::now() + entry.timeout;
    let mut restarts = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Some(ended) = run_container(engine, entry, spec, mounts_dir, remaining).await else {
            return;
        };
        let again = spec.service
            && ended.failed()
            && restarts < MAX_SERVICE_RESTARTS
            && !entry.stop_requested()
            && !entry.output_limited()
            && !entry.is_deleted();
        if !again {
            entry
                .finish(ended.state, ended.exit_code, ended.reason)
                .await;
            return;
        }
        restarts += 1;
        tracing::info!(run = %entry.id, restarts, exit_code = ended.exit_code, reason = ended.reason.as_deref().unwrap_or(""), "the service failed; starting it again");
        entry.restarting(restarts);
        tokio::time::sleep(RESTART_PAUSE * 2u32.pow(restarts - 1)).await;
    }
}

/// Creates, starts and supervises the spec's container once; `None` when it never ran (the
/// run is then recorded as ended already).
async fn run_container(
    engine: &Engine,
    entry: &Arc<Entry>,
    spec: &RunSpec,
    mounts_dir: &Path,
    remaining: Duration,
) -> Option<Ended> {
    entry.set_state(RunState::Starting);
    // Held until the container has started: it keeps a subpath's staging mount alive.
    let storage = match &spec.storage {
        Some(mount) => {
            match storage::prepare(engine, &entry.owner, &entry.id, mount, mounts_dir).await {
                Ok(prepared) => Some(prepared),
                Err(reason) => {
                    entry.finish(RunState::Failed, None, Some(reason)).await;
                    return None;
                }
            }
        }
        None => None,
    };
    let mount = storage.as_ref().map(|s| s.mount.clone());
    let begun = Instant::now();
    let container = spec.container(&entry.id, &entry.owner, entry.runner_id(), mount);
    let attached = match engine.create(&container).await {
        Ok(attached) => attached,
        Err(e) => {
            let (code, reason) = match unlaunchable(&e) {
                Some(failure) => failure,
                None => (None, create_failure(&spec.image, &e)),
            };
            entry.finish(RunState::Failed, code, Some(reason)).await;
            return None;
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
        return None;
    }
    // The attach began before the start: the counts are offsets into the container's log.
    let captured = Arc::new(Captured::default());
    let pump = tokio::spawn(pump(
        attached.output,
        entry.clone(),
        captured.clone(),
        [0, 0],
    ));

    if entry.stop_requested() {
        pump.abort();
        remove(engine, &container).await;
        entry
            .finish(RunState::Stopped, None, Some(STOPPED_ON_REQUEST.to_owned()))
            .await;
        return None;
    }
    if let Err(e) = engine.start(&container).await {
        pump.abort();
        let (code, reason) = unlaunchable(&e).unwrap_or_else(|| {
            let reason = format!(
                "the engine could not start the container: {}",
                engine_message(&e)
            );
            (None, reason)
        });
        remove(engine, &container).await;
        entry.finish(RunState::Failed, code, Some(reason)).await;
        return None;
    }
    drop(storage);
    tracing::debug!(run = %entry.id, create_attach_ms = ms(created), start_ms = ms(begun.elapsed() - created), "container started");
    if !spec.ports.is_empty() {
        entry.set_ports(engine.published_ports(&container, &spec.ports).await);
    }
    entry.set_state(RunState::Running);
    let output = Following {
        pump: Some(pump),
        captured: Some(captured),
    };
    Some(supervise(engine, entry, &container, output, remaining).await)
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

/// Why a run whose output reached its limit ended, and what to do about it.
fn output_limit_reason(entry: &Entry) -> String {
    let mb = entry.snapshot().options.max_output_mb.unwrap_or_default();
    format!(
        "{OUTPUT_LIMIT}: the run wrote more than {mb} MiB of output and was killed; its first \
         {mb} MiB are kept. Write bulk output to a file instead, or use a profile with a larger \
         max_output_mb"
    )
}

/// How a container's run ended, before it is recorded.
struct Ended {
    state: RunState,
    exit_code: Option<i32>,
    reason: Option<String>,
}

impl Ended {
    /// Whether the command failed: a non-zero exit, the OOM killer, a lost container (not a
    /// stop or a timeout; a deleted run is never started again).
    fn failed(&self) -> bool {
        match self.state {
            RunState::Exited => self.exit_code != Some(0),
            RunState::Failed => true,
            _ => false,
        }
    }
}

/// Waits for the container to stop (killing it at the timeout, `remaining` from now), lets the
/// output drain and removes the container; says how the run ended.
async fn supervise(
    engine: &Engine,
    entry: &Arc<Entry>,
    container: &str,
    mut output: Following,
    remaining: Duration,
) -> Ended {
    let begun = Instant::now();
    let deadline = begun + remaining;
    let mut reconnects = 0;
    let mut killed_for_output = false;
    let waited = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let waited = tokio::select! {
            waited = tokio::time::timeout(left, engine.wait(container)) => waited,
            () = entry.until_output_limited(), if !killed_for_output => {
                killed_for_output = true;
                tracing::info!(run = %entry.id, "the output reached the run's limit; killing it");
                if let Err(e) = engine.kill(container).await {
                    tracing::warn!(run = %entry.id, error = %engine_message(&e), "kill at the output limit failed");
                }
                continue;
            }
        };
        match &waited {
            Ok(Err(e)) if engine_lost(e) && reconnects < MAX_ENGINE_RECONNECTS => {
                reconnects += 1;
                tracing::warn!(run = %entry.id, error = %engine_message(e), "lost the engine while the run ran; waiting for it to come back");
                if !engine_back(engine, deadline).await {
                    break waited;
                }
                tracing::info!(run = %entry.id, "the engine answers again; following the container again");
                output = resume_output(engine, entry, container, output).await;
            }
            _ => break waited,
        }
    };
    let wait_ms = ms(begun.elapsed());
    let pump = output.pump.take();
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
        Ok(result) if entry.output_limited() => (
            RunState::Failed,
            result.ok().map(exit_code),
            Some(output_limit_reason(entry)),
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

    // The output stream closes once the container has stopped; let it deliver the last output
    // so the exit frame comes after every output frame.
    if let Some(pump) = pump
        && !drain(pump, output.captured.as_deref()).await
    {
        tracing::warn!(run = %entry.id, "output stream did not close after the container stopped");
    }
    let drained = begun.elapsed();
    // Remove first: once a client sees the exit frame, the container is gone.
    remove(engine, container).await;
    let removed = begun.elapsed();
    tracing::debug!(run = %entry.id, wait_ms, drain_ms = ms(drained) - wait_ms, remove_ms = ms(removed - drained), "container ended");
    Ended {
        state,
        exit_code,
        reason,
    }
}

/// Milliseconds, for timing logs.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The task copying a container's output into the store, and how much it has copied.
struct Following {
    /// The task; `None` when the output could not be attached to.
    pump: Option<JoinHandle<()>>,
    /// Bytes of each stream the container wrote that the store holds, counted from the
    /// container's start; `None` when the output was attached to later without knowing what
    /// the store held, so the counts are not offsets into the engine's log.
    captured: Option<Arc<Captured>>,
}

/// Bytes of output taken from a container, per stream: stdout (and console), stderr.
#[derive(Debug, Default)]
struct Captured([AtomicU64; 2]);

impl Captured {
    fn counts(&self) -> [u64; 2] {
        [
            self.0[0].load(Ordering::SeqCst),
            self.0[1].load(Ordering::SeqCst),
        ]
    }
}

/// Copies output into the store until the stream ends, first dropping `skip` bytes of each
/// stream (stdout, stderr): what the store already holds when `output` replays the container's
/// log from its start. Counts every byte it sees, skipped or stored, in `captured`.
async fn pump(mut output: Output, entry: Arc<Entry>, captured: Arc<Captured>, mut skip: [u64; 2]) {
    while let Some(item) = output.next().await {
        let (index, stream, mut message) = match item {
            Ok(Chunk::Stdout(message)) => (0, Stream::Stdout, message),
            Ok(Chunk::Stderr(message)) => (1, Stream::Stderr, message),
            Err(e) => {
                tracing::warn!(run = %entry.id, error = %engine_message(&e), "output stream failed");
                break;
            }
        };
        let seen = message.len() as u64;
        let skipped = skip[index].min(seen);
        skip[index] -= skipped;
        let _ = message.split_to(skipped as usize);
        if !message.is_empty() {
            entry.push_output(stream, message).await;
        }
        captured.0[index].fetch_add(seen, Ordering::SeqCst);
    }
    // The engine closes the stream when the command exits: sooner than its wait answers.
    entry.set_output_ended();
}

/// Waits for `pump` to end, for as long as it keeps making progress (`captured` grows) with no
/// pause longer than [`DRAIN_TIMEOUT`]; without `captured`, for `DRAIN_TIMEOUT` at most. Aborts
/// it and returns `false` when it stalls.
async fn drain(mut pump: JoinHandle<()>, captured: Option<&Captured>) -> bool {
    let mut seen = captured.map(Captured::counts);
    loop {
        if tokio::time::timeout(DRAIN_TIMEOUT, &mut pump).await.is_ok() {
            return true;
        }
        let now = captured.map(Captured::counts);
        if now.is_none() || now == seen {
            pump.abort();
            return false;
        }
        seen = now;
    }
}

/// Whether a failed engine call means the engine itself went away (its connection broke or
/// it did not answer) rather than an answer about the container.
fn engine_lost(error: &EngineError) -> bool {
    !error.is_answer()
}

/// Waits until the engine answers a ping again; `false` when `deadline` passed first.
async fn engine_back(engine: &Engine, deadline: Instant) -> bool {
    let mut pause = Duration::from_millis(100);
    loop {
        if engine.ping().await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(RECONNECT_MAX_PAUSE);
    }
}

/// Follows a container's output again after the engine came back: lets the old pump finish
/// (its connection died with the engine), then reads the container's log from its start,
/// skipping the bytes already stored, and follows it to the container's end. A run whose
/// counts are not log offsets (re-adopted) is attached to from now on instead.
async fn resume_output(
    engine: &Engine,
    entry: &Arc<Entry>,
    container: &str,
    output: Following,
) -> Following {
    if let Some(pump) = output.pump
        && !drain(pump, None).await
    {
        tracing::warn!(run = %entry.id, "the output stream did not end when the engine went away");
    }
    let Some(captured) = output.captured else {
        return follow_live(
            engine,
            entry,
            container,
            "cannot attach to the container again; its further output is lost",
        )
        .await;
    };
    let skip = captured.counts();
    follow_replay(engine, entry, container, captured, skip)
}

/// Follows the container's output again from its engine log, dropping the bytes of each stream
/// that `skip` says are stored already; `captured` goes on counting.
fn follow_replay(
    engine: &Engine,
    entry: &Arc<Entry>,
    container: &str,
    captured: Arc<Captured>,
    skip: [u64; 2],
) -> Following {
    let replay = engine.replay_output(container);
    Following {
        pump: Some(tokio::spawn(pump(
            replay,
            entry.clone(),
            captured.clone(),
            skip,
        ))),
        captured: Some(captured),
    }
}

/// Follows the container's output from now on (nothing replayed); `lost` is logged when the
/// engine refuses the attach.
async fn follow_live(
    engine: &Engine,
    entry: &Arc<Entry>,
    container: &str,
    lost: &'static str,
) -> Following {
    let pump = match engine.attach(container).await {
        Ok(stream) => Some(tokio::spawn(pump(
            stream,
            entry.clone(),
            Arc::new(Captured::default()),
            [0, 0],
        ))),
        Err(e) => {
            tracing::warn!(run = %entry.id, error = %engine_message(&e), "{lost}");
            None
        }
    };
    Following {
        pump,
        captured: None,
    }
}

/// What [`readopt`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Readopted {
    /// Runs whose containers still ran: followed again and supervised.
    pub adopted: usize,
    /// Runs whose containers had exited (they end once the rest of their output is stored),
    /// vanished or never started.
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
        let had_container = container.is_some() || entry.state() == RunState::Running;
        match (container, status) {
            (Some(container), Some(status @ ContainerStatus::Running))
            | (Some(container), Some(status @ ContainerStatus::Exited(Some(_)))) => {
                let stored = match store.stored_bytes(&entry).await {
                    Ok(counts) => Some(counts),
                    Err(e) => {
                        tracing::warn!(run = %entry.id, error = %e, "cannot count the run's stored output; following it from now on");
                        None
                    }
                };
                let exited = status != ContainerStatus::Running;
                adopt(
                    engine.clone(),
                    store.clone(),
                    entry,
                    container,
                    stored,
                    exited,
                );
                if exited {
                    done.ended += 1;
                } else {
                    done.adopted += 1;
                }
            }
            (Some(container), Some(ContainerStatus::Exited(None))) => {
                remove(engine, &container).await;
                entry
                    .finish(RunState::Failed, None, Some(VANISHED.to_owned()))
                    .await;
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
            .is_some_and(|e| !e.state().is_terminal());
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

/// Follows a container of an earlier runner process again and supervises it; its timeout still
/// counts from `started_at`. With `stored` (the bytes of each stream the store holds), its
/// output is read from the engine's log, skipping those bytes; without, it is attached to from
/// now on. An `exited` container is not timed out: its log is read to the end and its exit
/// code recorded. A run with `auto_remove` is then deleted from `store`, as [`spawn`]'s is.
fn adopt(
    engine: Arc<Engine>,
    store: Store,
    entry: Arc<Entry>,
    container: String,
    stored: Option<[u64; 2]>,
    exited: bool,
) {
    if entry.container().is_none() && !entry.set_container(&container) {
        tracing::warn!(run = %entry.id, "the run ended before it could be re-adopted");
    }
    entry.set_state(RunState::Running);
    let elapsed = entry
        .snapshot()
        .started_at
        .map(|t| (OffsetDateTime::now_utc() - t).unsigned_abs())
        .unwrap_or_default();
    // An exited container's wait answers at once; the timeout only bounds that answer.
    let remaining = if exited {
        KILL_WAIT_TIMEOUT
    } else {
        entry.timeout.saturating_sub(elapsed)
    };
    tracing::info!(run = %entry.id, container, exited, ?stored, "re-adopting a container");
    tokio::spawn(async move {
        let output = match stored {
            Some(skip) => follow_replay(&engine, &entry, &container, Arc::default(), skip),
            None => {
                follow_live(
                    &engine,
                    &entry,
                    &container,
                    "cannot attach to a re-adopted container; its further output is lost",
                )
                .await
            }
        };
        let ended = supervise(&engine, &entry, &container, output, remaining).await;
        entry
            .finish(ended.state, ended.exit_code, ended.reason)
            .await;
        log_end(&entry);
        remove_if_asked(&store, &entry);
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

/// The exit code and reason of a run whose command the runtime could not execute, as a shell
/// (and `docker run`) gives them: 127 when it is not in the image, 126 when it cannot be
/// executed. `None` for any other failure. The OCI runtime words it
/// `exec: "NAME": executable file not found in $PATH`, `exec: "/PATH": stat /PATH: no such
/// file or directory` or `exec: "/PATH": permission denied`.
fn unlaunchable(err: &EngineError) -> Option<(Option<i32>, String)> {
    let message = engine_message(err);
    let (_, after) = message.split_once("exec: \"")?;
    let (command, why) = after.split_once("\": ")?;
    if why.starts_with("executable file not found") || why.contains("no such file or directory") {
        Some((
            Some(127),
            format!(
                "{COMMAND_NOT_FOUND}: \"{command}\" is not in the image (not on its $PATH, or no \
                 such file); check the name, or give its full path"
            ),
        ))
    } else if why.contains("permission denied") {
        Some((
            Some(126),
            format!(
                "{COMMAND_NOT_EXECUTABLE}: \"{command}\" is in the image but cannot be executed \
                 (permission denied)"
            ),
        ))
    } else {
        None
    }
}

fn create_failure(image: &str, err: &EngineError) -> String {
    match err {
        EngineError::Status { status: 404, .. } => {
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
