//! The SQLite side of the store: schema, loading, the writer thread and the reads.
//!
//! Schema (`PRAGMA user_version = 4`):
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
//! - `runs.participant`, `runs.role` (added in version 4): who a run is for and the role it
//!   acts in, NULL when not given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_api::frames::Output;
use bus_api::{Run, RunOptions, RunState, Stream};
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::{Entry, Idempotency, MAX_FRAME_BYTES, Replay, StreamFilter};

mod reads;
mod writer;

pub(super) use reads::{Readers, find_key, read_frames, stored_bytes, tail_cursor, usage_spans};
pub(super) use writer::{FoundKey, Writer};

/// The writer's view of a run.
#[derive(Debug, Clone, Copy)]
struct WRun {
    last_seq: u64,
    finished: bool,
    /// Its start is in the usage ledger (or on its way there in this batch).
    started: bool,
}

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 4096;
/// Most frames one read returns.
const MAX_READ_FRAMES: usize = 4096;
/// How long a connection waits for a lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The schema version this runner writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 4;

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
    /// A run of the owner that has not ended already has the name.
    #[error("the run {id} already has the name {name}")]
    NameTaken {
        /// The name.
        name: String,
        /// The run that has it.
        id: String,
    },
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
    /// Bytes of output stored; counted for runs that have not ended only (0 for the rest).
    pub output_bytes: u64,
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
    if version < 4 {
        // Version 4: who a run is for and the role it acts in.
        let tx = conn.transaction()?;
        tx.execute_batch(
            "ALTER TABLE runs ADD COLUMN participant TEXT;
             ALTER TABLE runs ADD COLUMN role TEXT;
             PRAGMA user_version = 4;",
        )?;
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
                timeout_seconds, last_seq, options, participant, role
         FROM runs ORDER BY serial",
    )?;
    let mut rows = stmt.query([])?;
    let mut output_bytes =
        conn.prepare("SELECT COALESCE(SUM(length(data)), 0) FROM frames WHERE run = ?1")?;
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
            participant: row.get(19)?,
            role: row.get(20)?,
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
        let serial = row.get::<_, i64>(0)?;
        let output_bytes = if record.state.is_terminal() {
            0
        } else {
            output_bytes.query_row(params![serial], |r| r.get::<_, i64>(0))?
        };
        runs.push(Loaded {
            serial: serial as u64,
            owner: row.get(2)?,
            record,
            container: row.get(15)?,
            timeout: Duration::from_secs(row.get::<_, i64>(16)?.max(0) as u64),
            last_seq: row.get::<_, i64>(17)?.max(0) as u64,
            output_bytes: output_bytes.max(0) as u64,
        });
    }
    Ok(runs)
}
