//! What exec sessions share beyond one WebSocket: signals for an exec's command, its exit
//! status, and detached execs, whose output the runner captures for later readers.
//!
//! A detached exec is started attached to the runner itself: a task copies its output to
//! `<state-dir>/execs/<exec_id>.out` (records of a stream byte, a big-endian u32 length and the
//! bytes) and, once the output ended, writes its status into `<exec_id>.json` beside it.
//! Readers replay the file and wait on a watch channel for more. A runner that restarts loads
//! the records again: an exec that had not ended is recorded `failed` (its later output was not
//! captured). A run's execs go with the run ([`Execs::remove_run`]); at start, execs of runs
//! the store no longer knows are removed.
//!
//! Signals go to the exec's process by its host PID (from the engine's exec inspect), after
//! checking that it lives in the container's PID namespace; so the runner must share the
//! engine's host. With a terminal, SIGINT, SIGQUIT and SIGTSTP are typed instead, as the
//! terminal's control characters, so they reach the foreground process as from a keyboard.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_api::exec::{ExecRecord, ExecState, ExecStatus, STDERR, STDOUT};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

use crate::engine::{Chunk, Engine, Output, engine_message};
use crate::runs::executor::OUTPUT_LIMIT;
use crate::store::{Entry, Store, output_limit_bytes, within_output_limit};

/// How long the engine may take to report an exit code after the output ended.
const EXIT_CODE_LIMIT: Duration = Duration::from_secs(30);
/// SIGKILL's number, sent to an exec whose output reached the run's limit.
const SIGKILL: i32 = 9;
/// Bytes of a record's header in an output file: stream, then length.
const RECORD_HEADER: usize = 5;
/// The reason of an exec the runner stopped following.
pub const RUNNER_RESTARTED: &str =
    "the runner restarted while the exec ran; its later output and its exit code were not captured";

/// Makes a new exec id: `exec_` and 32 hex digits.
pub fn new_exec_id() -> String {
    let bytes = crate::util::random_bytes::<16>().expect("the system has randomness");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("exec_{hex}")
}

/// The exec's exit status once the engine reports it ended, or an error status; never made
/// up. `signalled` is the signal the session sent, if any: an exit code of 128 + it is
/// reported as that signal.
pub async fn exit_status(engine: &Engine, exec_id: &str, signalled: Option<i32>) -> ExecStatus {
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match engine.exec_exit_code(exec_id).await {
            Ok(Some(code)) => {
                return match i32::try_from(code) {
                    Ok(code) => {
                        let mut status = ExecStatus::exited(code);
                        status.signal = signalled.filter(|s| code == 128 + s);
                        status
                    }
                    Err(_) => ExecStatus::error(format!("the engine reported exit code {code}")),
                };
            }
            Ok(None) => {}
            Err(e) => {
                return ExecStatus::error(format!(
                    "the engine did not report the exit code: {}",
                    engine_message(&e)
                ));
            }
        }
        if started.elapsed() > EXIT_CODE_LIMIT {
            return ExecStatus::error(format!(
                "the engine reported no exit code within {} s of the output's end",
                EXIT_CODE_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The control character a terminal turns into `signal` (with default settings).
pub fn control_character(signal: i32) -> Option<u8> {
    match signal {
        2 => Some(0x03),  // SIGINT: ^C
        3 => Some(0x1c),  // SIGQUIT: ^\
        20 => Some(0x1a), // SIGTSTP: ^Z
        _ => None,
    }
}

/// Why a signal did not reach the command.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// Not a signal number.
    #[error("{0} is not a signal number (1 to 64)")]
    Invalid(i32),
    /// The command has ended.
    #[error("the command has ended")]
    Ended,
    /// The engine failed.
    #[error("{0}")]
    Engine(String),
    /// The process is not visible from the runner.
    #[error("the runner cannot see the exec's process (it must run on the engine's host): {0}")]
    NotVisible(String),
    /// `kill` failed.
    #[error("kill failed: {0}")]
    Kill(std::io::Error),
}

/// Sends `signal` to the exec's process (see the module docs).
pub async fn signal_exec(engine: &Engine, exec_id: &str, signal: i32) -> Result<(), SignalError> {
    let sig =
        rustix::process::Signal::from_named_raw(signal).ok_or(SignalError::Invalid(signal))?;
    let (pid, container) = engine
        .exec_process(exec_id)
        .await
        .map_err(|e| SignalError::Engine(engine_message(&e)))?
        .ok_or(SignalError::Ended)?;
    let init = engine
        .container_pid(&container)
        .await
        .map_err(|e| SignalError::Engine(engine_message(&e)))?
        .ok_or(SignalError::Ended)?;
    let namespace = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid"));
    match (namespace(pid), namespace(init)) {
        (Ok(a), Ok(b)) if a == b => {}
        (Ok(_), Ok(_)) => {
            return Err(SignalError::NotVisible(format!(
                "process {pid} is not in the container's PID namespace"
            )));
        }
        (Err(e), _) | (_, Err(e)) => return Err(SignalError::NotVisible(e.to_string())),
    }
    let pid = rustix::process::Pid::from_raw(pid).ok_or(SignalError::Ended)?;
    rustix::process::kill_process(pid, sig).map_err(|e| SignalError::Kill(e.into()))
}

/// The saved record of a detached exec (`<exec_id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    id: String,
    owner: String,
    run_id: String,
    command: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(default)]
    status: Option<ExecStatus>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    finished_at: Option<OffsetDateTime>,
}

/// How far a detached exec got: what readers wait on.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Bytes of the output file written (whole records only).
    pub file_len: u64,
    /// Output bytes captured (payload only).
    pub output_bytes: u64,
    /// The final status, once the exec ended and its output is all in the file.
    pub status: Option<ExecStatus>,
    /// When it ended.
    pub finished_at: Option<OffsetDateTime>,
}

/// One detached exec.
#[derive(Debug)]
pub struct Detached {
    saved: Saved,
    out: PathBuf,
    progress: watch::Sender<Progress>,
}

impl Detached {
    /// The exec's id.
    pub fn id(&self) -> &str {
        &self.saved.id
    }

    /// Its output file.
    pub fn output_path(&self) -> &Path {
        &self.out
    }

    /// A receiver of its progress.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Its record as the API shows it.
    pub fn record(&self) -> ExecRecord {
        let progress = self.progress.borrow().clone();
        let (state, exit_code, signal, message) = match progress.status {
            None => (ExecState::Running, None, None, None),
            Some(ExecStatus {
                exit_code: Some(code),
                signal,
                message,
                ..
            }) => (ExecState::Exited, Some(code), signal, message),
            Some(status) => (ExecState::Failed, None, None, status.message),
        };
        ExecRecord {
            id: self.saved.id.clone(),
            run_id: self.saved.run_id.clone(),
            command: self.saved.command.clone(),
            state,
            exit_code,
            signal,
            message,
            output_bytes: progress.output_bytes,
            created_at: self.saved.created_at,
            finished_at: progress.finished_at,
        }
    }
}

/// Every detached exec of this runner.
#[derive(Debug, Clone)]
pub struct Execs {
    dir: PathBuf,
    by_id: Arc<Mutex<HashMap<String, Arc<Detached>>>>,
}

fn io_error(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

/// The length of the whole records at the start of `bytes`, and their payload bytes.
fn whole_records(bytes: &[u8]) -> (u64, u64) {
    let (mut at, mut payload) = (0usize, 0u64);
    while bytes.len() - at >= RECORD_HEADER {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        if bytes.len() - at - RECORD_HEADER < len {
            break;
        }
        at += RECORD_HEADER + len;
        payload += len as u64;
    }
    (at as u64, payload)
}

/// Splits whole records out of `bytes`: (stream, payload) pairs.
pub fn records(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if bytes.len() - at < RECORD_HEADER {
            return None;
        }
        let stream = bytes[at];
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        let data = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len)?;
        at += RECORD_HEADER + len;
        Some((stream, data))
    })
}

fn load(dir: &Path, store: &Store) -> Result<HashMap<String, Arc<Detached>>, String> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))?;
    let mut by_id = HashMap::new();
    for file in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = file.map_err(|e| io_error(dir, e))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(mut saved) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Saved>(&b).ok())
        else {
            tracing::warn!(path = %path.display(), "unreadable exec record ignored");
            continue;
        };
        let out = dir.join(format!("{}.out", saved.id));
        if store.get(&saved.owner, &saved.run_id).is_none() {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&out);
            continue;
        }
        let bytes = std::fs::read(&out).unwrap_or_default();
        let (file_len, output_bytes) = whole_records(&bytes);
        if saved.status.is_none() {
            saved.status = Some(ExecStatus::error(RUNNER_RESTARTED));
            saved.finished_at = Some(OffsetDateTime::now_utc());
            let body = serde_json::to_vec(&saved).expect("a record serialises");
            std::fs::write(&path, body).map_err(|e| io_error(&path, e))?;
        }
        let progress = Progress {
            file_len,
            output_bytes,
            status: saved.status.clone(),
            finished_at: saved.finished_at,
        };
        by_id.insert(
            saved.id.clone(),
            Arc::new(Detached {
                saved,
                out,
                progress: watch::Sender::new(progress),
            }),
        );
    }
    Ok(by_id)
}

async fn save(dir: &Path, saved: &Saved) -> Result<(), String> {
    let path = dir.join(format!("{}.json", saved.id));
    let temp = dir.join(format!(".{}.json.tmp", saved.id));
    let body = serde_json::to_vec(saved).expect("a record serialises");
    tokio::fs::write(&temp, body)
        .await
        .map_err(|e| io_error(&temp, e))?;
    tokio::fs::rename(&temp, &path)
        .await
        .map_err(|e| io_error(&path, e))
}

impl Execs {
    /// Loads the detached execs kept in `dir` (created 0700 when missing), dropping those of
    /// runs `store` no longer has and marking unfinished ones failed. A directory that cannot
    /// be read is logged; detached execs then fail when they start.
    pub fn open(dir: PathBuf, store: &Store) -> Execs {
        let by_id = match load(&dir, store) {
            Ok(by_id) => by_id,
            Err(e) => {
                tracing::error!(error = %e, "cannot load the detached execs");
                HashMap::new()
            }
        };
        Execs {
            dir,
            by_id: Arc::new(Mutex::new(by_id)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Detached>>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `owner`'s detached exec `id`, while its run exists.
    pub fn get(&self, store: &Store, owner: &str, id: &str) -> Option<Arc<Detached>> {
        let exec = self
            .lock()
            .get(id)
            .filter(|e| e.saved.owner == owner)
            .cloned()?;
        store.get(owner, &exec.saved.run_id).map(|_| exec)
    }

    /// Records an exec started in `run` and copies its output to its file on a task of its
    /// own, until the output ends and the status is stored. Output past the run's
    /// `max_output_mb` is dropped and the command killed.
    pub async fn start(
        &self,
        engine: Arc<Engine>,
        run: &Entry,
        command: Vec<String>,
        engine_exec: String,
        output: Output,
    ) -> Result<Arc<Detached>, String> {
        let saved = Saved {
            id: new_exec_id(),
            owner: run.owner.clone(),
            run_id: run.id.clone(),
            command,
            created_at: OffsetDateTime::now_utc(),
            status: None,
            finished_at: None,
        };
        let out = self.dir.join(format!("{}.out", saved.id));
        let file = tokio::fs::File::create(&out)
            .await
            .map_err(|e| io_error(&out, e))?;
        save(&self.dir, &saved).await?;
        let exec = Arc::new(Detached {
            saved,
            out,
            progress: watch::Sender::new(Progress::default()),
        });
        self.lock().insert(exec.id().to_owned(), exec.clone());
        tokio::spawn(capture(
            engine,
            self.dir.clone(),
            exec.clone(),
            engine_exec,
            output,
            file,
            run.snapshot().options.max_output_mb,
        ));
        Ok(exec)
    }

    /// Forgets the execs of run `run_id` and removes their files.
    pub fn remove_run(&self, run_id: &str) {
        let gone: Vec<Arc<Detached>> = {
            let mut by_id = self.lock();
            let ids: Vec<String> = by_id
                .values()
                .filter(|e| e.saved.run_id == run_id)
                .map(|e| e.id().to_owned())
                .collect();
            ids.iter().filter_map(|id| by_id.remove(id)).collect()
        };
        for exec in gone {
            let _ = std::fs::remove_file(&exec.out);
            let _ = std::fs::remove_file(self.dir.join(format!("{}.json", exec.id())));
        }
    }
}

/// Copies a detached exec's output into its file, then stores its status. Output past
/// `max_output_mb` is dropped and the command killed (SIGKILL), as a run's is.
async fn capture(
    engine: Arc<Engine>,
    dir: PathBuf,
    exec: Arc<Detached>,
    engine_exec: String,
    mut output: Output,
    mut file: tokio::fs::File,
    max_output_mb: Option<u32>,
) {
    let limit = output_limit_bytes(max_output_mb);
    let mut limited = false;
    let mut failure = None;
    while let Some(item) = output.next().await {
        let (stream, data) = match item {
            Ok(Chunk::Stdout(message)) => (STDOUT, message),
            Ok(Chunk::Stderr(message)) => (STDERR, message),
            Err(e) => {
                failure = Some(format!(
                    "the engine's output stream broke: {}",
                    engine_message(&e)
                ));
                break;
            }
        };
        if data.is_empty() || limited {
            continue;
        }
        let taken = exec.progress.borrow().output_bytes;
        let (data, over) = within_output_limit(limit, taken, data);
        if over {
            limited = true;
            tracing::info!(
                exec = exec.id(),
                "the exec's output reached the run's limit; killing it"
            );
            if let Err(e) = signal_exec(&engine, &engine_exec, SIGKILL).await {
                tracing::warn!(exec = exec.id(), error = %e, "kill at the output limit failed; its further output is dropped");
            }
        }
        if data.is_empty() {
            continue;
        }
        let mut record = Vec::with_capacity(RECORD_HEADER + data.len());
        record.push(stream);
        record.extend_from_slice(&(data.len() as u32).to_be_bytes());
        record.extend_from_slice(&data);
        // tokio's `write_all` returns once the bytes are handed to a blocking thread; the
        // flush waits for them to reach the file, so readers never see a length ahead of it.
        let written = match file.write_all(&record).await {
            Ok(()) => file.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            failure = Some(format!(
                "the runner could not store the exec's output: {}",
                io_error(&exec.out, e)
            ));
            break;
        }
        exec.progress.send_modify(|p| {
            p.file_len += record.len() as u64;
            p.output_bytes += data.len() as u64;
        });
    }
    let _ = file.flush().await;
    let status = match failure {
        Some(message) => ExecStatus::error(message),
        None if limited => {
            let mut status = exit_status(&engine, &engine_exec, Some(SIGKILL)).await;
            let mb = max_output_mb.unwrap_or_default();
            status.message.get_or_insert(format!(
                "{OUTPUT_LIMIT}: the exec wrote more than {mb} MiB of output and was killed; its \
                 first {mb} MiB are kept"
            ));
            status
        }
        None => exit_status(&engine, &engine_exec, None).await,
    };
    let finished_at = OffsetDateTime::now_utc();
    let mut saved = exec.saved.clone();
    saved.status = Some(status.clone());
    saved.finished_at = Some(finished_at);
    if let Err(e) = save(&dir, &saved).await {
        tracing::warn!(exec = exec.id(), error = %e, "the exec's status was not stored");
    }
    tracing::info!(exec = exec.id(), ?status, "detached exec ended");
    exec.progress.send_modify(|p| {
        p.status = Some(status);
        p.finished_at = Some(finished_at);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_and_a_torn_tail_is_left_out() {
        let mut bytes = vec![STDOUT, 0, 0, 0, 2, b'h', b'i', STDERR, 0, 0, 0, 1, b'!'];
        assert_eq!(whole_records(&bytes), (13, 3));
        let all: Vec<_> = records(&bytes).collect();
        assert_eq!(all, [(STDOUT, &b"hi"[..]), (STDERR, &b"!"[..])]);
        bytes.extend_from_slice(&[STDOUT, 0, 0, 0, 9, b'x']);
        assert_eq!(whole_records(&bytes), (13, 3));
        assert_eq!(records(&bytes).count(), 2);
    }

    #[test]
    fn exec_ids_are_unguessable_and_distinct() {
        let (a, b) = (new_exec_id(), new_exec_id());
        assert!(a.starts_with("exec_") && a.len() == 37, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn only_keyboard_signals_become_control_characters() {
        assert_eq!(control_character(2), Some(3));
        assert_eq!(control_character(15), None);
    }
}
