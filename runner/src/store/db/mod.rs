//! The SQLite side of the store: schema, loading, the writer thread and the reads.
//!
//! Schema (`PRAGMA user_version = 3`):
//! - `meta(key, value)`: `runner_id`, the label value of this runner's containers.
//! - `runs`: one row per run; `serial` is the creation order (and the listing cursor), the
//!   `bus_api::Run` fields as columns (`argv` and `labels` as JSON), plus `owner`,
//!   `container`, `timeout_seconds`, `wall_seconds` and `last_seq` (the last stored frame);
//!   `options` (added in version 2) holds `bus_api::RunOptions` as JSON, NULL for none.
//! - `frames(run, seq, stream, time, data)`: every output frame, `run` = `runs.serial`,
//!   primary key `(run, seq)`; `stream` 1 = stdout, 2 = stderr; times are Unix nanoseconds.
//! - `idempotency(owner, key, request, run_id, response, created_at)`.
//! - `usage(run, owner, started_at, finished_at)` (added in version 3): the usage ledger, one
//!   row per run that started, keyed by the run's id; written in the transaction that stores
//!   the run's start (`finished_at` NULL while it runs) and its end. Deleting a run (by request
//!   or retention) does not delete its row, so billing counts it; rows are pruned only once
//!   they ended more than [`crate::config::MAX_PERIOD`] (366 days, the longest plan period)
//!   ago, when no period can contain them. Upgrading from version 2 fills it from `runs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_api::{LogFrame, Run, RunOptions, RunState, Stream};
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::{Entry, Idempotency, MAX_FRAME_BYTES, Replay, StreamFilter};

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 4096;
/// Most frames one read returns.
const MAX_READ_FRAMES: usize = 4096;
/// How long a connection waits for a lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The schema version this runner writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 3;

/// The store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("the run database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A filesystem operation failed.
    #[error("cannot use {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer runner.
    #[error(
        "the run database has schema version {0}, newer than this runner knows ({SCHEMA_VERSION})"
    )]
    TooNew(i64),
    /// A stored value does not parse.
    #[error("the run database holds a malformed value: {0}")]
    Corrupt(String),
    /// The writer thread is gone (it failed or the runner is stopping).
    #[error("the run store's writer has stopped")]
    WriterGone,
    /// The `Idempotency-Key` was used before with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
}

/// A command to the writer.
pub(super) enum Cmd {
    Insert {
        entry: Arc<Entry>,
        idempotency: Option<Idempotency>,
        ack: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    },
    Save {
        serial: u64,
        owner: String,
        record: Run,
        container: Option<String>,
    },
    Output {
        entry: Arc<Entry>,
        stream: Stream,
        bytes: Bytes,
        time: OffsetDateTime,
        permit: OwnedSemaphorePermit,
    },
    Finish {
        entry: Arc<Entry>,
        record: Run,
        ack: oneshot::Sender<()>,
    },
    Delete {
        serial: u64,
        run: String,
    },
    Maintain {
        keys_before: OffsetDateTime,
        usage_before: OffsetDateTime,
    },
    Flush {
        ack: oneshot::Sender<()>,
    },
}

/// What an insert did.
#[derive(Debug)]
pub(super) enum InsertOutcome {
    Created,
    Replayed(Replay),
}

/// A run as loaded at start.
pub(super) struct Loaded {
    pub serial: u64,
    pub owner: String,
    pub record: Run,
    pub timeout: Duration,
    pub container: Option<String>,
    pub last_seq: u64,
}

/// An opened database: its runs, this runner's id, and the writer ready to start.
pub(super) struct Opened {
    pub runs: Vec<Loaded>,
    pub runner_id: String,
    pub writer: Writer,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

/// Opens or creates the database and loads every run.
pub(super) fn open(path: &Path) -> Result<Opened, StoreError> {
    let mut conn = Connection::open(path)?;
    configure(&conn)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite refused WAL mode; writes block readers");
    }
    migrate(&mut conn)?;
    let runner_id = match conn
        .query_row("SELECT value FROM meta WHERE key = 'runner_id'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
    {
        Some(id) => id,
        None => {
            let id = crate::util::random_hex::<8>();
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('runner_id', ?1)",
                params![id],
            )?;
            id
        }
    };
    let runs = load(&conn)?;
    let states = runs
        .iter()
        .map(|r| {
            (
                r.serial,
                WRun {
                    last_seq: r.last_seq,
                    finished: r.record.state.is_terminal(),
                    started: r.record.started_at.is_some(),
                },
            )
        })
        .collect();
    Ok(Opened {
        runs,
        runner_id,
        writer: Writer { conn, runs: states },
    })
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew(version));
    }
    if version == 0 {
        // Must precede the first table to take effect.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        let tx = conn.transaction()?;
        tx.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             CREATE TABLE runs (
                 serial INTEGER PRIMARY KEY,
                 id TEXT NOT NULL UNIQUE,
                 owner TEXT NOT NULL,
                 state TEXT NOT NULL,
                 exit_code INTEGER,
                 profile TEXT,
                 image TEXT NOT NULL,
                 argv TEXT NOT NULL,
                 name TEXT,
                 labels TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 started_at INTEGER,
                 finished_at INTEGER,
                 reason TEXT,
                 wall_seconds INTEGER,
                 container TEXT,
                 timeout_seconds INTEGER NOT NULL,
                 last_seq INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX runs_by_owner ON runs (owner, serial);
             CREATE TABLE frames (
                 run INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 stream INTEGER NOT NULL,
                 time INTEGER NOT NULL,
                 data BLOB NOT NULL,
                 PRIMARY KEY (run, seq)
             );
             CREATE TABLE idempotency (
                 owner TEXT NOT NULL,
                 key TEXT NOT NULL,
                 request TEXT NOT NULL,
                 run_id TEXT NOT NULL,
                 response TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 PRIMARY KEY (owner, key)
             ) WITHOUT ROWID;
             PRAGMA user_version = 1;",
        )?;
        tx.commit()?;
    }
    if version < 2 {
        // Version 2: the run's container settings (ports, tty, storage, memory limit) as
        // JSON; NULL means none of them.
        let tx = conn.transaction()?;
        tx.execute_batch(
            "ALTER TABLE runs ADD COLUMN options TEXT;
             PRAGMA user_version = 2;",
        )?;
        tx.commit()?;
    }
    if version < 3 {
        // Version 3: the usage ledger, filled from the runs still stored (runs deleted before
        // the upgrade are gone and do not count). A run that ended without `finished_at`
        // counts nothing, as before.
        let terminal = [
            RunState::Exited,
            RunState::Failed,
            RunState::Stopped,
            RunState::TimedOut,
        ]
        .map(|s| format!("'{}'", s.as_str()))
        .join(", ");
        let tx = conn.transaction()?;
        tx.execute_batch(&format!(
            "CREATE TABLE usage (
                 run TEXT PRIMARY KEY,
                 owner TEXT NOT NULL,
                 started_at INTEGER NOT NULL,
                 finished_at INTEGER
             ) WITHOUT ROWID;
             CREATE INDEX usage_by_owner ON usage (owner, finished_at);
             INSERT INTO usage (run, owner, started_at, finished_at)
                 SELECT id, owner, started_at,
                        CASE WHEN state IN ({terminal}) THEN COALESCE(finished_at, started_at)
                             ELSE NULL END
                 FROM runs WHERE started_at IS NOT NULL;
             PRAGMA user_version = 3;"
        ))?;
        tx.commit()?;
    }
    Ok(())
}

fn options_json(options: &RunOptions) -> Option<String> {
    (*options != RunOptions::default())
        .then(|| serde_json::to_string(options).expect("run options serialize"))
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn from_nanos(n: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(n.into())
        .map_err(|_| StoreError::Corrupt(format!("time {n}")))
}

fn stream_code(stream: Stream) -> i64 {
    match stream {
        Stream::Stdout => 1,
        Stream::Stderr => 2,
    }
}

fn state_from_str(s: &str) -> Result<RunState, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("state {s:?}")))
}

fn load(conn: &Connection) -> Result<Vec<Loaded>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT serial, id, owner, state, exit_code, profile, image, argv, name, labels,
                created_at, started_at, finished_at, reason, wall_seconds, container,
                timeout_seconds, last_seq, options
         FROM runs ORDER BY serial",
    )?;
    let mut rows = stmt.query([])?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next()? {
        let argv: String = row.get(7)?;
        let labels: String = row.get(9)?;
        let time = |i: usize| -> Result<Option<OffsetDateTime>, StoreError> {
            row.get::<_, Option<i64>>(i)?.map(from_nanos).transpose()
        };
        let record = Run {
            id: row.get(1)?,
            state: state_from_str(&row.get::<_, String>(3)?)?,
            exit_code: row.get(4)?,
            profile: row.get(5)?,
            image: row.get(6)?,
            argv: serde_json::from_str(&argv).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            name: row.get(8)?,
            labels: serde_json::from_str(&labels)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            created_at: from_nanos(row.get(10)?)?,
            started_at: time(11)?,
            finished_at: time(12)?,
            reason: row.get(13)?,
            wall_seconds: row.get::<_, Option<i64>>(14)?.map(|s| s.max(0) as u64),
            options: match row.get::<_, Option<String>>(18)? {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?
                }
                None => RunOptions::default(),
            },
        };
        runs.push(Loaded {
            serial: row.get::<_, i64>(0)? as u64,
            owner: row.get(2)?,
            record,
            container: row.get(15)?,
            timeout: Duration::from_secs(row.get::<_, i64>(16)?.max(0) as u64),
            last_seq: row.get::<_, i64>(17)?.max(0) as u64,
        });
    }
    Ok(runs)
}

/// The writer's view of a run.
#[derive(Debug, Clone, Copy)]
struct WRun {
    last_seq: u64,
    finished: bool,
    /// Its start is in the usage ledger (or on its way there in this batch).
    started: bool,
}

/// The write connection and the per-run seq counters; lives on its own thread.
pub(super) struct Writer {
    conn: Connection,
    runs: HashMap<u64, WRun>,
}

/// A frame about to be stored.
struct Frame {
    run: u64,
    seq: u64,
    stream: Stream,
    time: OffsetDateTime,
    data: Vec<u8>,
}

/// A write, planned before the transaction runs.
enum Op {
    InsertRun {
        entry: Arc<Entry>,
        record: Run,
    },
    InsertKey {
        owner: String,
        key: String,
        request: String,
        run_id: String,
        response: String,
        created_at: OffsetDateTime,
    },
    SaveRun {
        serial: u64,
        record: Run,
        container: Option<String>,
    },
    /// A ledger row for a run that started (kept if there is one).
    StartUsage {
        run: String,
        owner: String,
        started_at: OffsetDateTime,
    },
    /// The run's end in its ledger row (made if missing).
    EndUsage {
        run: String,
        owner: String,
        started_at: OffsetDateTime,
        finished_at: OffsetDateTime,
    },
    /// Deletes the run and its frames; its ledger row stays, ended at `at` if it is still
    /// open (the run's own end, when it comes, replaces that).
    DeleteRun {
        serial: u64,
        run: String,
        at: OffsetDateTime,
    },
    Maintain {
        keys_before: OffsetDateTime,
        usage_before: OffsetDateTime,
    },
}

/// What to tell whom once the transaction is over.
enum Effect {
    Insert {
        ack: oneshot::Sender<Result<InsertOutcome, StoreError>>,
        outcome: Result<InsertOutcome, StoreError>,
    },
    Finish {
        entry: Arc<Entry>,
        record: Box<Run>,
        ack: oneshot::Sender<()>,
    },
    Flush(oneshot::Sender<()>),
}

/// A key found in the idempotency table.
pub(super) struct FoundKey {
    pub request: String,
    pub replay: Replay,
}

impl Writer {
    /// Starts the writer thread; it ends when every sender is gone.
    pub(super) fn spawn(self, rx: mpsc::UnboundedReceiver<Cmd>) -> Result<(), StoreError> {
        std::thread::Builder::new()
            .name("bus-runner-store".to_owned())
            .spawn(move || self.run(rx))
            .map(drop)
            .map_err(|e| StoreError::Io {
                path: PathBuf::from("(writer thread)"),
                source: e,
            })
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut batch = Vec::new();
        while let Some(cmd) = rx.blocking_recv() {
            batch.push(cmd);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.apply(std::mem::take(&mut batch));
        }
    }

    /// Plans the batch, runs it in one transaction, then tells the entries and the waiters.
    fn apply(&mut self, batch: Vec<Cmd>) {
        let mut ops = Vec::new();
        let mut frames: Vec<Frame> = Vec::new();
        let mut open: HashMap<u64, usize> = HashMap::new();
        let mut touched: HashMap<u64, Arc<Entry>> = HashMap::new();
        let mut backup: HashMap<u64, Option<WRun>> = HashMap::new();
        let mut effects = Vec::new();
        let mut permits = Vec::new();
        let mut new_keys: HashMap<(String, String), FoundKey> = HashMap::new();
        let now = OffsetDateTime::now_utc();

        for cmd in batch {
            match cmd {
                Cmd::Insert {
                    entry,
                    idempotency,
                    ack,
                } => {
                    let record = entry.snapshot();
                    let mut outcome = Ok(InsertOutcome::Created);
                    if let Some(idem) = idempotency {
                        let slot = (entry.owner.clone(), idem.key.clone());
                        let found = match new_keys.get(&slot) {
                            Some(found) => Ok(Some(FoundKey {
                                request: found.request.clone(),
                                replay: found.replay.clone(),
                            })),
                            None => find_key(
                                &self.conn,
                                &entry.owner,
                                &idem.key,
                                now - super::IDEMPOTENCY_WINDOW,
                            ),
                        };
                        outcome = match found {
                            Err(e) => Err(e),
                            Ok(Some(found)) if found.request == idem.request => {
                                Ok(InsertOutcome::Replayed(found.replay))
                            }
                            Ok(Some(_)) => Err(StoreError::IdempotencyKeyReused),
                            Ok(None) => {
                                let response = serde_json::to_string(&record)
                                    .expect("a run record always serializes");
                                new_keys.insert(
                                    slot,
                                    FoundKey {
                                        request: idem.request.clone(),
                                        replay: Replay {
                                            run_id: entry.id.clone(),
                                            response: response.clone(),
                                        },
                                    },
                                );
                                ops.push(Op::InsertKey {
                                    owner: entry.owner.clone(),
                                    key: idem.key,
                                    request: idem.request,
                                    run_id: entry.id.clone(),
                                    response,
                                    created_at: now,
                                });
                                Ok(InsertOutcome::Created)
                            }
                        };
                    }
                    if matches!(outcome, Ok(InsertOutcome::Created)) {
                        backup
                            .entry(entry.serial)
                            .or_insert_with(|| self.runs.get(&entry.serial).copied());
                        self.runs.insert(
                            entry.serial,
                            WRun {
                                last_seq: 0,
                                finished: false,
                                started: record.started_at.is_some(),
                            },
                        );
                        let start = record.started_at.map(|started_at| Op::StartUsage {
                            run: record.id.clone(),
                            owner: entry.owner.clone(),
                            started_at,
                        });
                        ops.push(Op::InsertRun { entry, record });
                        ops.extend(start);
                    }
                    effects.push(Effect::Insert { ack, outcome });
                }
                Cmd::Save {
                    serial,
                    owner,
                    record,
                    container,
                } => {
                    let Some(run) = self.runs.get(&serial).copied().filter(|w| !w.finished) else {
                        continue;
                    };
                    // The first save with a start time opens the run's ledger row.
                    let start = match record.started_at {
                        Some(started_at) if !run.started => {
                            backup.entry(serial).or_insert(Some(run));
                            self.runs.insert(
                                serial,
                                WRun {
                                    started: true,
                                    ..run
                                },
                            );
                            Some(Op::StartUsage {
                                run: record.id.clone(),
                                owner,
                                started_at,
                            })
                        }
                        _ => None,
                    };
                    ops.push(Op::SaveRun {
                        serial,
                        record,
                        container,
                    });
                    ops.extend(start);
                }
                Cmd::Output {
                    entry,
                    stream,
                    bytes,
                    time,
                    permit,
                } => {
                    permits.push(permit);
                    let serial = entry.serial;
                    let Some(run) = self.runs.get(&serial).copied() else {
                        continue;
                    };
                    if run.finished {
                        continue;
                    }
                    if let Some(&i) = open.get(&serial) {
                        let last = &mut frames[i];
                        if last.stream == stream && last.data.len() + bytes.len() <= MAX_FRAME_BYTES
                        {
                            last.data.extend_from_slice(&bytes);
                            continue;
                        }
                    }
                    backup.entry(serial).or_insert(Some(run));
                    let seq = run.last_seq + 1;
                    self.runs.insert(
                        serial,
                        WRun {
                            last_seq: seq,
                            ..run
                        },
                    );
                    open.insert(serial, frames.len());
                    frames.push(Frame {
                        run: serial,
                        seq,
                        stream,
                        time,
                        data: bytes.to_vec(),
                    });
                    touched.insert(serial, entry);
                }
                Cmd::Finish { entry, record, ack } => {
                    let serial = entry.serial;
                    if let Some(run) = self.runs.get(&serial).copied() {
                        backup.entry(serial).or_insert(Some(run));
                        self.runs.insert(
                            serial,
                            WRun {
                                finished: true,
                                ..run
                            },
                        );
                        let container = entry.container();
                        ops.push(Op::SaveRun {
                            serial,
                            record: record.clone(),
                            container,
                        });
                    }
                    // Even for a deleted run: the time it ran is billed.
                    if let Some(started_at) = record.started_at {
                        ops.push(Op::EndUsage {
                            run: record.id.clone(),
                            owner: entry.owner.clone(),
                            started_at,
                            finished_at: record.finished_at.unwrap_or(now),
                        });
                    }
                    effects.push(Effect::Finish {
                        entry,
                        record: Box::new(record),
                        ack,
                    });
                }
                Cmd::Delete { serial, run } => {
                    if let Some(run) = self.runs.remove(&serial) {
                        backup.entry(serial).or_insert(Some(run));
                    }
                    frames.retain(|f| f.run != serial);
                    open.clear();
                    for (i, f) in frames.iter().enumerate() {
                        open.insert(f.run, i);
                    }
                    touched.remove(&serial);
                    ops.push(Op::DeleteRun {
                        serial,
                        run,
                        at: now,
                    });
                }
                Cmd::Maintain {
                    keys_before,
                    usage_before,
                } => ops.push(Op::Maintain {
                    keys_before,
                    usage_before,
                }),
                Cmd::Flush { ack } => effects.push(Effect::Flush(ack)),
            }
        }

        let result = self.write(&ops, &frames, &touched);
        drop(permits);
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, frames = frames.len(), "storing runs failed; this batch is lost");
                for (serial, run) in backup {
                    match run {
                        Some(run) => self.runs.insert(serial, run),
                        None => self.runs.remove(&serial),
                    };
                }
                false
            }
        };
        if ok {
            // Output first, so a reader that sees a run ended also sees all of its output.
            for (serial, entry) in &touched {
                if let Some(run) = self.runs.get(serial) {
                    entry.data().committed_seq = run.last_seq;
                    entry.notify();
                }
            }
        }
        for effect in effects {
            match effect {
                Effect::Insert { ack, outcome } => {
                    let outcome = match outcome {
                        Ok(InsertOutcome::Created) if !ok => Err(StoreError::WriterGone),
                        other => other,
                    };
                    let _ = ack.send(outcome);
                }
                Effect::Finish { entry, record, ack } => {
                    // Even when the write failed: the run has ended for everyone watching.
                    {
                        let mut data = entry.data();
                        data.record = *record;
                        if let Some(run) = self.runs.get(&entry.serial) {
                            data.committed_seq = run.last_seq;
                        }
                    }
                    entry.notify();
                    let _ = ack.send(());
                }
                Effect::Flush(ack) => {
                    let _ = ack.send(());
                }
            }
        }
    }

    fn write(
        &mut self,
        ops: &[Op],
        frames: &[Frame],
        touched: &HashMap<u64, Arc<Entry>>,
    ) -> rusqlite::Result<()> {
        if ops.is_empty() && frames.is_empty() {
            return Ok(());
        }
        let mut vacuum = false;
        let tx = self.conn.transaction()?;
        for op in ops {
            match op {
                Op::InsertRun { entry, record } => {
                    tx.prepare_cached(
                        "INSERT INTO runs (serial, id, owner, state, exit_code, profile, image,
                             argv, name, labels, created_at, started_at, finished_at, reason,
                             wall_seconds, container, timeout_seconds, last_seq, options)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                             ?15, NULL, ?16, 0, ?17)",
                    )?
                    .execute(params![
                        entry.serial as i64,
                        record.id,
                        entry.owner,
                        record.state.as_str(),
                        record.exit_code,
                        record.profile,
                        record.image,
                        serde_json::to_string(&record.argv).expect("argv serializes"),
                        record.name,
                        serde_json::to_string(&record.labels).expect("labels serialize"),
                        nanos(record.created_at),
                        record.started_at.map(nanos),
                        record.finished_at.map(nanos),
                        record.reason,
                        record.wall_seconds.map(|s| s as i64),
                        entry.timeout.as_secs() as i64,
                        options_json(&record.options),
                    ])?;
                }
                Op::InsertKey {
                    owner,
                    key,
                    request,
                    run_id,
                    response,
                    created_at,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO idempotency
                             (owner, key, request, run_id, response, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        owner,
                        key,
                        request,
                        run_id,
                        response,
                        nanos(*created_at)
                    ])?;
                }
                Op::SaveRun {
                    serial,
                    record,
                    container,
                } => {
                    tx.prepare_cached(
                        "UPDATE runs SET state = ?2, exit_code = ?3, started_at = ?4,
                             finished_at = ?5, reason = ?6, wall_seconds = ?7, container = ?8,
                             options = ?9
                         WHERE serial = ?1",
                    )?
                    .execute(params![
                        *serial as i64,
                        record.state.as_str(),
                        record.exit_code,
                        record.started_at.map(nanos),
                        record.finished_at.map(nanos),
                        record.reason,
                        record.wall_seconds.map(|s| s as i64),
                        container,
                        options_json(&record.options),
                    ])?;
                }
                Op::StartUsage {
                    run,
                    owner,
                    started_at,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO usage (run, owner, started_at, finished_at)
                         VALUES (?1, ?2, ?3, NULL)
                         ON CONFLICT (run) DO NOTHING",
                    )?
                    .execute(params![run, owner, nanos(*started_at)])?;
                }
                Op::EndUsage {
                    run,
                    owner,
                    started_at,
                    finished_at,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO usage (run, owner, started_at, finished_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (run) DO UPDATE SET finished_at = excluded.finished_at",
                    )?
                    .execute(params![
                        run,
                        owner,
                        nanos(*started_at),
                        nanos(*finished_at)
                    ])?;
                }
                Op::DeleteRun { serial, run, at } => {
                    tx.prepare_cached("DELETE FROM frames WHERE run = ?1")?
                        .execute(params![*serial as i64])?;
                    tx.prepare_cached("DELETE FROM runs WHERE serial = ?1")?
                        .execute(params![*serial as i64])?;
                    tx.prepare_cached(
                        "UPDATE usage SET finished_at = ?2 WHERE run = ?1 AND finished_at IS NULL",
                    )?
                    .execute(params![run, nanos(*at)])?;
                    vacuum = true;
                }
                Op::Maintain {
                    keys_before,
                    usage_before,
                } => {
                    tx.prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")?
                        .execute(params![nanos(*keys_before)])?;
                    tx.prepare_cached("DELETE FROM usage WHERE finished_at < ?1")?
                        .execute(params![nanos(*usage_before)])?;
                    vacuum = true;
                }
            }
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO frames (run, seq, stream, time, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for f in frames {
                insert.execute(params![
                    f.run as i64,
                    f.seq as i64,
                    stream_code(f.stream),
                    nanos(f.time),
                    f.data
                ])?;
            }
            let mut last = tx.prepare_cached("UPDATE runs SET last_seq = ?2 WHERE serial = ?1")?;
            for serial in touched.keys() {
                if let Some(run) = self.runs.get(serial) {
                    last.execute(params![*serial as i64, run.last_seq as i64])?;
                }
            }
        }
        tx.commit()?;
        if vacuum {
            // Give freed pages back to the file system, a bounded amount at a time.
            let _ = self.conn.execute_batch("PRAGMA incremental_vacuum(4096)");
        }
        Ok(())
    }
}

/// Read connections, opened on demand and reused.
pub(super) struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_owned(),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read connection (blocking: call from `spawn_blocking`).
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure(&conn)?;
                conn
            }
        };
        let result = f(&conn);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < 16 {
            pool.push(conn);
        }
        result
    }
}

/// Frames of run `serial` in `(after, upto]` of the streams in `filter`, until `max_bytes` of
/// payload (at least one frame); `true` when the whole range was covered.
pub(super) fn read_frames(
    conn: &Connection,
    serial: u64,
    after: u64,
    upto: u64,
    filter: StreamFilter,
    max_bytes: usize,
) -> Result<(Vec<LogFrame>, bool), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, stream, time, data FROM frames
         WHERE run = ?1 AND seq > ?2 AND seq <= ?3 AND (stream = ?4 OR stream = ?5)
         ORDER BY seq",
    )?;
    let mut rows = stmt.query(params![
        serial as i64,
        after as i64,
        upto as i64,
        if filter.stdout { 1 } else { -1 },
        if filter.stderr { 2 } else { -1 },
    ])?;
    let mut frames = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.next()? {
        let data = row
            .get_ref(3)?
            .as_blob()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if !frames.is_empty() && (bytes + data.len() > max_bytes || frames.len() >= MAX_READ_FRAMES)
        {
            return Ok((frames, false));
        }
        bytes += data.len();
        let stream = match row.get::<_, i64>(1)? {
            1 => Stream::Stdout,
            _ => Stream::Stderr,
        };
        frames.push(LogFrame::output(
            row.get::<_, i64>(0)? as u64,
            stream,
            data,
            from_nanos(row.get(2)?)?,
        ));
    }
    Ok((frames, true))
}

/// How many bytes of each stream (stdout, stderr) the frames of run `serial` up to `upto` hold.
pub(super) fn stored_bytes(
    conn: &Connection,
    serial: u64,
    upto: u64,
) -> Result<[u64; 2], StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT stream, SUM(length(data)) FROM frames
         WHERE run = ?1 AND seq <= ?2 GROUP BY stream",
    )?;
    let mut rows = stmt.query(params![serial as i64, upto as i64])?;
    let mut counts = [0; 2];
    while let Some(row) = rows.next()? {
        let bytes = u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
        match row.get::<_, i64>(0)? {
            1 => counts[0] = bytes,
            _ => counts[1] = bytes,
        }
    }
    Ok(counts)
}

/// The cursor before the last `n` frames of run `serial` up to `upto` in `filter`.
pub(super) fn tail_cursor(
    conn: &Connection,
    serial: u64,
    upto: u64,
    n: u64,
    filter: StreamFilter,
) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached(
            "SELECT seq FROM frames
             WHERE run = ?1 AND seq <= ?2 AND (stream = ?3 OR stream = ?4)
             ORDER BY seq DESC LIMIT 1 OFFSET ?5",
        )?
        .query_row(
            params![
                serial as i64,
                upto as i64,
                if filter.stdout { 1 } else { -1 },
                if filter.stderr { 2 } else { -1 },
                i64::try_from(n - 1).unwrap_or(i64::MAX),
            ],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seq.map_or(0, |s| s as u64 - 1))
}

/// `owner`'s idempotency key `key`, if it was stored after `since`.
pub(super) fn find_key(
    conn: &Connection,
    owner: &str,
    key: &str,
    since: OffsetDateTime,
) -> Result<Option<FoundKey>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT request, run_id, response FROM idempotency
             WHERE owner = ?1 AND key = ?2 AND created_at >= ?3",
        )?
        .query_row(params![owner, key, nanos(since)], |r| {
            Ok(FoundKey {
                request: r.get(0)?,
                replay: Replay {
                    run_id: r.get(1)?,
                    response: r.get(2)?,
                },
            })
        })
        .optional()?)
}

/// The ledger's spans (start, end; no end while running) of `owner`'s runs that may overlap
/// `[start, end)`.
pub(super) fn usage_spans(
    conn: &Connection,
    owner: &str,
    start: OffsetDateTime,
    end: OffsetDateTime,
) -> Result<Vec<(OffsetDateTime, Option<OffsetDateTime>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT started_at, finished_at FROM usage
         WHERE owner = ?1 AND finished_at IS NULL AND started_at < ?3
         UNION ALL
         SELECT started_at, finished_at FROM usage
         WHERE owner = ?1 AND finished_at > ?2 AND started_at < ?3",
    )?;
    let mut rows = stmt.query(params![owner, nanos(start), nanos(end)])?;
    let mut spans = Vec::new();
    while let Some(row) = rows.next()? {
        let finished = match row.get::<_, Option<i64>>(1)? {
            Some(n) => Some(from_nanos(n)?),
            None => None,
        };
        spans.push((from_nanos(row.get(0)?)?, finished));
    }
    Ok(spans)
}
