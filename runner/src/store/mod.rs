//! Run records and their output, persisted in SQLite (`runs.db` in the state dir, WAL mode).
//!
//! Each run is an [`Entry`] held in memory: its owner, its [`Run`] record, the `seq` of the last
//! output frame stored, and a watch channel that wakes log followers on every change. Output
//! frames live only in the database; followers read them from there.
//!
//! One writer thread owns the database's write connection ([`db`]). Everything that changes a
//! run is a command to it, in one FIFO queue; it applies whatever has queued up in one
//! transaction (group commit), assigns each output frame its dense `seq` (merging small chunks
//! of the same stream that arrived together), and only after the commit tells the entries, so
//! a frame a follower can see is already stored, and the exit frame (the record turning
//! terminal) comes after every output frame. Output in flight is bounded by a byte budget, so a
//! fast producer waits for the disk instead of filling memory.
//!
//! Lookups are per owner, so another account's run is indistinguishable from a missing one.
//!
//! Every change to an account's runs (creation, a record change, the terminal record,
//! deletion) is numbered in the account's revisions and broadcast ([`Changes`]), after it is
//! visible to readers, for watches of the account's runs.
//!
//! Billing's run-seconds come from the usage ledger ([`Store::run_seconds`]): a row per run
//! that started, written in the same transaction as the run's start and its end, and kept when
//! the run is deleted (by request or retention) until no plan period can contain it.

mod changes;
mod db;
mod entry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bus_api::frames::Output;
use bus_api::{LogFrame, Run};
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use changes::{CHANGES_CAPACITY, Change, Changes};
use db::Cmd;
pub use db::StoreError;
pub use entry::Entry;

/// Largest payload of one output frame.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// The database's file name inside the state dir.
pub const DB_FILE: &str = "runs.db";
/// A file in the state dir naming the runner id (the `bus.runner` label of its containers),
/// for operators and test harnesses; the database holds the id itself.
pub const RUNNER_ID_FILE: &str = "runner-id";
/// How long an `Idempotency-Key` names the run it created.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the usage ledger keeps a run after it ended: the longest plan period, so every
/// period that contains now also contains every run that ran in it.
pub const USAGE_WINDOW: Duration = crate::config::MAX_PERIOD;
/// Output bytes read from containers but not yet committed, at most (all runs together).
const OUTPUT_BUDGET: usize = 16 * 1024 * 1024;

/// A run's output limit (`max_output_mb`) in bytes; `None` for no limit.
pub fn output_limit_bytes(max_output_mb: Option<u32>) -> Option<u64> {
    max_output_mb.map(|mb| u64::from(mb) * 1024 * 1024)
}

/// What of `bytes` fits under `limit` when `taken` bytes are held already, and whether some
/// did not fit (the run's, or a detached exec's, output reached its limit).
pub fn within_output_limit(limit: Option<u64>, taken: u64, mut bytes: Bytes) -> (Bytes, bool) {
    let room = limit.map_or(u64::MAX, |limit| limit.saturating_sub(taken));
    let over = bytes.len() as u64 > room;
    if over {
        bytes.truncate(room as usize);
    }
    (bytes, over)
}

/// Makes a new run id: `run_` and 32 hex digits (128 random bits).
pub fn new_run_id() -> String {
    format!(
        "{}{}",
        bus_api::runs::RUN_ID_PREFIX,
        crate::util::random_hex::<16>()
    )
}

/// All runs: the in-memory index over the database.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.shared.path)
            .field("runner_id", &self.shared.link.runner_id)
            .finish_non_exhaustive()
    }
}

struct Shared {
    path: PathBuf,
    runs: Mutex<Runs>,
    link: Arc<Link>,
    readers: db::Readers,
    closing: watch::Sender<bool>,
    orphans: Mutex<Vec<Arc<Entry>>>,
    _temp: Option<TempDir>,
}

/// What an entry needs to persist itself and announce its changes: the writer's queue, the
/// output budget and the revision hub.
#[derive(Debug)]
struct Link {
    tx: mpsc::UnboundedSender<Cmd>,
    budget: Arc<Semaphore>,
    runner_id: String,
    changes: Changes,
}

impl Link {
    fn send(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_err() {
            tracing::error!("the run store's writer has stopped; a change was not stored");
        }
    }
}

#[derive(Debug, Default)]
struct Runs {
    by_id: HashMap<String, Arc<Entry>>,
    by_serial: BTreeMap<u64, Arc<Entry>>,
    next_serial: u64,
    /// Names of runs being inserted, by owner, so that two requests cannot both take one.
    claimed_names: HashSet<(String, String)>,
}

/// Why a run named by id or name is not one run of the caller's.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// No run of the account has that id or name.
    #[error("no run {0} in this account")]
    NotFound(String),
    /// No run that has not ended has the name, and several ended ones do.
    #[error("the name {name} matches {} ended runs", ids.len())]
    Ambiguous {
        /// The name.
        name: String,
        /// The matching runs' ids, newest first.
        ids: Vec<String>,
    },
}

/// Which of an owner's runs [`Store::list`] returns.
pub use bus_api::runs::RunFilter;

impl Runs {
    /// `owner`'s run named `name` that has not ended, if there is one (there is at most one).
    fn live_named(&self, owner: &str, name: &str) -> Option<&Arc<Entry>> {
        self.by_serial.values().rev().find(|e| {
            e.owner == owner && e.name.as_deref() == Some(name) && !e.state().is_terminal()
        })
    }
}

/// A new run for [`Store::insert`].
#[derive(Debug)]
pub struct NewRun {
    /// The record, `queued`, with a fresh id (see [`new_run_id`]).
    pub record: Run,
    /// The run's timeout (kept for re-adoption after a restart).
    pub timeout: Duration,
    /// The request's `Idempotency-Key`, if it had one.
    pub idempotency: Option<Idempotency>,
}

/// An `Idempotency-Key` and the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// The key, as the client sent it.
    pub key: String,
    /// The request body in canonical form (re-serialized), to tell a retry from a reuse.
    pub request: String,
}

/// What [`Store::insert`] did.
#[derive(Debug)]
pub enum Inserted {
    /// A new run.
    Created(Arc<Entry>),
    /// The key was used before with the same request: the original response.
    Replayed(Replay),
}

/// The original response to a request with the same `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The run that request created.
    pub run_id: String,
    /// The JSON body it was answered with.
    pub response: String,
}

/// Which output streams a log reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFilter {
    /// Include stdout frames.
    pub stdout: bool,
    /// Include stderr frames.
    pub stderr: bool,
}

impl StreamFilter {
    /// Both streams.
    pub const ALL: StreamFilter = StreamFilter {
        stdout: true,
        stderr: true,
    };

    fn none(self) -> bool {
        !self.stdout && !self.stderr
    }
}

/// What a log reader gets: frames after its cursor, and the exit frame once the run has ended.
#[derive(Debug)]
pub struct LogRead {
    /// Output frames, in `seq` order (only the streams asked for).
    pub frames: Vec<Output>,
    /// The cursor to read after next: every frame up to it was returned or filtered out.
    pub last_seq: u64,
    /// The exit frame, when the run has ended and the cursor reached its last output.
    pub exit: Option<LogFrame>,
}

/// How long ended runs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Ended runs that finished longer ago than this are deleted with their output.
    pub max_age: Duration,
    /// Beyond this many runs of one account (newest first), ended runs are deleted.
    pub per_account: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
            per_account: 1000,
        }
    }
}

/// Creates `path` (and, for the database, its WAL files if present) readable and writable by
/// this user only, or makes an existing one so: they hold run output, whatever the state
/// dir's own mode lets through. SQLite gives the WAL files it creates the database's mode.
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&file)(e)),
            _ => {}
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) `runs.db` in `state_dir` (created 0700), loads every run and
    /// starts the writer thread. Runs that had not ended are kept for [`Store::take_orphans`].
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        if !state_dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|e| StoreError::Io {
                    path: state_dir.to_owned(),
                    source: e,
                })?;
        }
        let db_file = state_dir.join(DB_FILE);
        make_private(&db_file)?;
        let store = Store::open_file(&db_file, None)?;
        let id_file = state_dir.join(RUNNER_ID_FILE);
        if std::fs::read_to_string(&id_file)
            .ok()
            .as_deref()
            .map(str::trim)
            != Some(store.runner_id())
        {
            make_private(&id_file)?;
            std::fs::write(&id_file, format!("{}\n", store.runner_id())).map_err(|e| {
                StoreError::Io {
                    path: id_file,
                    source: e,
                }
            })?;
        }
        Ok(store)
    }

    /// A store in a fresh temporary directory, removed when the store is dropped (for tests
    /// and for an [`crate::AppState`] built without a state dir).
    pub fn temporary() -> Result<Store, StoreError> {
        let temp = TempDir::new()?;
        let path = temp.0.join(DB_FILE);
        Store::open_file(&path, Some(temp))
    }

    fn open_file(path: &Path, temp: Option<TempDir>) -> Result<Store, StoreError> {
        let opened = db::open(path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            tx,
            budget: Arc::new(Semaphore::new(OUTPUT_BUDGET)),
            runner_id: opened.runner_id.clone(),
            changes: Changes::new(),
        });
        let mut runs = Runs::default();
        let mut orphans = Vec::new();
        for loaded in opened.runs {
            let terminal = loaded.record.state.is_terminal();
            let entry = Arc::new(Entry::new(
                loaded.serial,
                &loaded.owner,
                loaded.record,
                loaded.timeout,
                loaded.container,
                (loaded.last_seq, loaded.output_bytes),
                link.clone(),
            ));
            runs.next_serial = runs.next_serial.max(entry.serial + 1);
            runs.by_id.insert(entry.id.clone(), entry.clone());
            runs.by_serial.insert(entry.serial, entry.clone());
            if !terminal {
                orphans.push(entry);
            }
        }
        runs.next_serial = runs.next_serial.max(1);
        opened.writer.spawn(rx)?;
        Ok(Store {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                runs: Mutex::new(runs),
                link,
                readers: db::Readers::new(path),
                closing: watch::Sender::new(false),
                orphans: Mutex::new(orphans),
                _temp: temp,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Runs> {
        self.shared.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This runner's id: its containers carry it as the label `bus.runner`, so that runners
    /// sharing an engine never touch each other's containers.
    pub fn runner_id(&self) -> &str {
        &self.shared.link.runner_id
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Adds a run for `owner`, stored before this returns. With an idempotency key that
    /// `owner` used within [`IDEMPOTENCY_WINDOW`]: the original response when the request is
    /// the same, [`StoreError::IdempotencyKeyReused`] when it is not; no new run either way.
    pub async fn insert(&self, owner: &str, new: NewRun) -> Result<Inserted, StoreError> {
        let name = new.record.name.clone().map(|n| (owner.to_owned(), n));
        let (entry, done) = {
            let mut runs = self.lock();
            if let Some(key) = &name {
                if let Some(live) = runs.live_named(owner, &key.1) {
                    return Err(StoreError::NameTaken {
                        name: key.1.clone(),
                        id: live.id.clone(),
                    });
                }
                if !runs.claimed_names.insert(key.clone()) {
                    return Err(StoreError::NameTaken {
                        name: key.1.clone(),
                        id: "(being created)".to_owned(),
                    });
                }
            }
            let serial = runs.next_serial;
            runs.next_serial += 1;
            let entry = Arc::new(Entry::new(
                serial,
                owner,
                new.record,
                new.timeout,
                None,
                (0, 0),
                self.shared.link.clone(),
            ));
            let (ack, done) = oneshot::channel();
            self.shared.link.send(Cmd::Insert {
                entry: entry.clone(),
                idempotency: new.idempotency,
                ack,
            });
            (entry, done)
        };
        let outcome = done.await;
        let mut runs = self.lock();
        if let Some(key) = &name {
            runs.claimed_names.remove(key);
        }
        match outcome.map_err(|_| StoreError::WriterGone)?? {
            db::InsertOutcome::Created => {
                runs.by_id.insert(entry.id.clone(), entry.clone());
                runs.by_serial.insert(entry.serial, entry.clone());
                self.shared.link.changes.publish(owner, &entry.id);
                Ok(Inserted::Created(entry))
            }
            db::InsertOutcome::Replayed(replay) => Ok(Inserted::Replayed(replay)),
        }
    }

    /// The original response for `owner`'s `idempotency` key, if the key is in use: a quick
    /// check before any other work ([`Store::insert`] decides for good).
    pub async fn find_replay(
        &self,
        owner: &str,
        idempotency: &Idempotency,
    ) -> Result<Option<Replay>, StoreError> {
        let shared = self.shared.clone();
        let (owner, key) = (owner.to_owned(), idempotency.key.clone());
        let found = tokio::task::spawn_blocking(move || {
            shared.readers.with(|conn| {
                db::find_key(
                    conn,
                    &owner,
                    &key,
                    OffsetDateTime::now_utc() - IDEMPOTENCY_WINDOW,
                )
            })
        })
        .await
        .map_err(|_| StoreError::WriterGone)??;
        match found {
            None => Ok(None),
            Some(found) if found.request == idempotency.request => Ok(Some(found.replay)),
            Some(_) => Err(StoreError::IdempotencyKeyReused),
        }
    }

    /// The run `id` if `owner` owns it.
    pub fn get(&self, owner: &str, id: &str) -> Option<Arc<Entry>> {
        self.lock()
            .by_id
            .get(id)
            .filter(|e| e.owner == owner)
            .cloned()
    }

    /// `owner`'s run with the id or name `id_or_name`: an id first; else the run with that
    /// name that has not ended; else the one ended run with it. Several ended runs with the
    /// name and none live is [`FindError::Ambiguous`].
    pub fn find(&self, owner: &str, id_or_name: &str) -> Result<Arc<Entry>, FindError> {
        let runs = self.lock();
        if let Some(entry) = runs.by_id.get(id_or_name).filter(|e| e.owner == owner) {
            return Ok(entry.clone());
        }
        if let Some(live) = runs.live_named(owner, id_or_name) {
            return Ok(live.clone());
        }
        let mut named = runs
            .by_serial
            .values()
            .rev()
            .filter(|e| e.owner == owner && e.name.as_deref() == Some(id_or_name));
        match (named.next(), named.next()) {
            (None, _) => Err(FindError::NotFound(id_or_name.to_owned())),
            (Some(one), None) => Ok(one.clone()),
            (Some(first), Some(second)) => Err(FindError::Ambiguous {
                name: id_or_name.to_owned(),
                ids: [first, second]
                    .into_iter()
                    .chain(named)
                    .map(|e| e.id.clone())
                    .collect(),
            }),
        }
    }

    /// The run `id` of any owner.
    pub fn get_any(&self, id: &str) -> Option<Arc<Entry>> {
        self.lock().by_id.get(id).cloned()
    }

    /// Removes the run `id` if `owner` owns it, with its output; returns it so its container
    /// can be removed.
    pub fn remove(&self, owner: &str, id: &str) -> Option<Arc<Entry>> {
        let entry = {
            let mut runs = self.lock();
            let entry = runs.by_id.get(id).filter(|e| e.owner == owner).cloned()?;
            runs.by_id.remove(id);
            runs.by_serial.remove(&entry.serial);
            self.shared.link.changes.publish(owner, id);
            // Queued under the index lock, so nothing about this run can follow it.
            self.shared.link.send(Cmd::Delete {
                serial: entry.serial,
                run: entry.id.clone(),
            });
            entry
        };
        entry.data().deleted = true;
        entry.notify();
        Some(entry)
    }

    /// Every run that has not ended, of all owners.
    pub fn unfinished(&self) -> Vec<Arc<Entry>> {
        let runs = self.lock();
        runs.by_serial
            .values()
            .filter(|e| !e.state().is_terminal())
            .cloned()
            .collect()
    }

    /// The runs that had not ended when the store was opened (their containers may still
    /// run): handed out once, to re-adopt them.
    pub fn take_orphans(&self) -> Vec<Arc<Entry>> {
        std::mem::take(
            &mut *self
                .shared
                .orphans
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Up to `limit` of `owner`'s runs that `filter` matches, created before `before` (a
    /// serial), newest first, and the serial to continue from when there may be more.
    pub fn list(
        &self,
        owner: &str,
        filter: &RunFilter,
        before: Option<u64>,
        limit: usize,
    ) -> (Vec<Run>, Option<u64>) {
        let runs = self.lock();
        let mut page = Vec::with_capacity(limit.min(64));
        let mut last = None;
        let range = runs.by_serial.range(..before.unwrap_or(u64::MAX));
        let mut iter = range
            .rev()
            .filter(|(_, e)| e.owner == owner)
            .map(|(serial, e)| (serial, e.snapshot()))
            .filter(|(_, run)| filter.matches(run));
        for (serial, run) in iter.by_ref().take(limit) {
            page.push(run);
            last = Some(*serial);
        }
        let more = iter.next().is_some();
        (page, if more { last } else { None })
    }

    /// Every run of `owner`'s with its serial, newest first.
    pub fn all_of(&self, owner: &str) -> Vec<(u64, Run)> {
        let runs = self.lock();
        runs.by_serial
            .iter()
            .rev()
            .filter(|(_, e)| e.owner == owner)
            .map(|(serial, e)| (*serial, e.snapshot()))
            .collect()
    }

    /// The revisions of each account's runs, and the broadcast of their changes.
    pub fn changes(&self) -> &Changes {
        &self.shared.link.changes
    }

    /// Output frames of `entry` with `seq > after_seq` of the streams in `filter`, about
    /// `max_bytes` of payload at most (at least one frame when there is one), then the exit
    /// frame if the run has ended and nothing is left. Only stored frames are returned.
    pub async fn read(
        &self,
        entry: &Arc<Entry>,
        after_seq: u64,
        filter: StreamFilter,
        max_bytes: usize,
    ) -> Result<LogRead, StoreError> {
        let (committed, exit) = entry.read_state();
        let mut read = LogRead {
            frames: Vec::new(),
            last_seq: after_seq.max(committed),
            exit: None,
        };
        if after_seq < committed && !filter.none() {
            let shared = self.shared.clone();
            let serial = entry.serial;
            let (frames, complete) = tokio::task::spawn_blocking(move || {
                shared.readers.with(|conn| {
                    db::read_frames(conn, serial, after_seq, committed, filter, max_bytes)
                })
            })
            .await
            .map_err(|_| StoreError::WriterGone)??;
            if !complete {
                read.last_seq = frames.last().map_or(committed, |f| f.seq);
            }
            read.frames = frames;
        }
        if read.last_seq >= committed {
            read.exit = exit;
        }
        Ok(read)
    }

    /// The cursor that makes [`Store::read`] start at the last `n` output frames (of the
    /// streams in `filter`) stored so far.
    pub async fn tail_cursor(
        &self,
        entry: &Arc<Entry>,
        n: u64,
        filter: StreamFilter,
    ) -> Result<u64, StoreError> {
        let (committed, _) = entry.read_state();
        if n == 0 || committed == 0 || filter.none() {
            return Ok(committed);
        }
        let shared = self.shared.clone();
        let serial = entry.serial;
        tokio::task::spawn_blocking(move || {
            shared
                .readers
                .with(|conn| db::tail_cursor(conn, serial, committed, n, filter))
        })
        .await
        .map_err(|_| StoreError::WriterGone)?
    }

    /// How many bytes of each stream (stdout, stderr) of `entry`'s output are stored: where
    /// its output goes on in the container's own log.
    pub async fn stored_bytes(&self, entry: &Arc<Entry>) -> Result<[u64; 2], StoreError> {
        let (committed, _) = entry.read_state();
        if committed == 0 {
            return Ok([0, 0]);
        }
        let shared = self.shared.clone();
        let serial = entry.serial;
        tokio::task::spawn_blocking(move || {
            shared
                .readers
                .with(|conn| db::stored_bytes(conn, serial, committed))
        })
        .await
        .map_err(|_| StoreError::WriterGone)?
    }

    /// Deletes ended runs (with their output) past `policy` as of `now`, idempotency keys
    /// older than [`IDEMPOTENCY_WINDOW`] and usage ledger rows of runs that ended before
    /// [`USAGE_WINDOW`]; returns how many runs it deleted. Deleted runs keep their ledger rows.
    pub fn apply_retention(&self, now: OffsetDateTime, policy: &Retention) -> usize {
        let cutoff = now - policy.max_age;
        let victims: Vec<(String, String)> = {
            let runs = self.lock();
            let mut per_owner: HashMap<&str, usize> = HashMap::new();
            let mut victims = Vec::new();
            for entry in runs.by_serial.values().rev() {
                let rank = per_owner.entry(entry.owner.as_str()).or_default();
                *rank += 1;
                let run = entry.snapshot();
                if !run.state.is_terminal() {
                    continue;
                }
                let old = run.finished_at.unwrap_or(run.created_at) < cutoff;
                if old || *rank > policy.per_account {
                    victims.push((entry.owner.clone(), entry.id.clone()));
                }
            }
            victims
        };
        for (owner, id) in &victims {
            self.remove(owner, id);
        }
        self.shared.link.send(Cmd::Maintain {
            keys_before: now - IDEMPOTENCY_WINDOW,
            usage_before: now - USAGE_WINDOW,
        });
        if !victims.is_empty() {
            tracing::info!(runs = victims.len(), "retention deleted ended runs");
        }
        victims.len()
    }

    /// Applies `policy` now and then every `every`, on a task of its own.
    pub fn spawn_retention(&self, policy: Retention, every: Duration) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                store.apply_retention(OffsetDateTime::now_utc(), &policy);
            }
        })
    }

    /// Whole seconds `owner`'s runs spent running inside `[start, end)`, from the usage ledger:
    /// deleted runs count, a running run counts up to `now`, and each run's part inside the
    /// period is rounded up to a whole second. A run's start is in the ledger once its
    /// `running` record is stored, a few milliseconds after it started.
    pub async fn run_seconds(
        &self,
        owner: &str,
        start: OffsetDateTime,
        end: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let shared = self.shared.clone();
        let owner = owner.to_owned();
        let spans = tokio::task::spawn_blocking(move || {
            shared
                .readers
                .with(|conn| db::usage_spans(conn, &owner, start, end))
        })
        .await
        .map_err(|_| StoreError::WriterGone)??;
        Ok(spans.iter().fold(0u64, |sum, &(started, finished)| {
            sum.saturating_add(seconds_inside(started, finished, start, end, now))
        }))
    }

    /// How many of `owner`'s runs have not ended (queued, starting or running).
    pub fn live_count(&self, owner: &str) -> u32 {
        let runs = self.lock();
        let live = runs
            .by_serial
            .values()
            .filter(|e| e.owner == owner && !e.data().record.state.is_terminal())
            .count();
        u32::try_from(live).unwrap_or(u32::MAX)
    }

    /// Waits until every change queued so far is stored.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        self.shared.link.send(Cmd::Flush { ack });
        let _ = done.await;
    }

    /// Ends every log follower's stream (without an exit frame: the runs go on), for shutdown;
    /// clients resume with `after_seq` from the next runner.
    pub fn close_followers(&self) {
        self.shared.closing.send_replace(true);
    }

    /// A receiver that turns `true` when followers must end.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.shared.closing.subscribe()
    }
}

/// Parses a retention age like `90m`, `12h` or `7d` (units s, m, h, d).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let usage =
        || format!("invalid age \"{text}\": write a positive number with a unit, like 12h or 7d");
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| usage())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(usage()),
    };
    match n.checked_mul(unit) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(usage()),
    }
}

/// Whole seconds (rounded up) of a run from `started` to `finished` (`now` while it runs)
/// that fall inside `[start, end)` and before `now`.
pub fn seconds_inside(
    started: OffsetDateTime,
    finished: Option<OffsetDateTime>,
    start: OffsetDateTime,
    end: OffsetDateTime,
    now: OffsetDateTime,
) -> u64 {
    let upper = finished.unwrap_or(now).min(end).min(now);
    let lower = started.max(start);
    if upper > lower {
        wall_seconds(lower, upper)
    } else {
        0
    }
}

/// Whole seconds from `started` to `finished`, rounded up.
pub fn wall_seconds(started: OffsetDateTime, finished: OffsetDateTime) -> u64 {
    let ms = (finished - started).whole_milliseconds().max(0) as u64;
    ms.div_ceil(1000)
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, StoreError> {
        let path =
            std::env::temp_dir().join(format!("bus-runner-{}", crate::util::random_hex::<8>()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| StoreError::Io {
                path: path.clone(),
                source: e,
            })?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests;
