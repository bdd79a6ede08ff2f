//! The image and build database: `images.db` in the state dir (SQLite, WAL), apart from the
//! run store so neither waits on the other's writer.
//!
//! Schema (`PRAGMA user_version = 1`):
//! - `image_refs(owner, reference, image_id, source, updated_at)`: which account holds which
//!   canonical reference (or `sha256:<id>` for an image held without a name), how it got it
//!   (`pull`, `load`, `build`, `tag`) and when; primary key `(owner, reference)`.
//! - `builds(serial, id, owner, record)`: one row per build, `record` the `bus_api` `Build` as
//!   JSON; `serial` is the creation order.
//! - `build_lines(build, seq, time, text)`: the builder's output, a dense `seq` per build.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bus_api::builds::{Build, BuildState};
use rusqlite::{Connection, OptionalExtension as _, params};
use time::OffsetDateTime;

/// The database's file name inside the state dir.
pub const DB_FILE: &str = "images.db";
const SCHEMA_VERSION: i64 = 1;

/// The database failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("the image database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer runner.
    #[error("the image database has schema version {0}, newer than this runner knows")]
    TooNew(i64),
    /// A stored value does not parse.
    #[error("the image database holds a malformed value: {0}")]
    Corrupt(String),
}

/// One account's hold on a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The account.
    pub owner: String,
    /// The canonical reference, or `sha256:<id>`.
    pub reference: String,
    /// The image id it named when last acquired.
    pub image_id: String,
    /// `pull`, `load`, `build` or `tag`.
    pub source: String,
    /// When it was last acquired.
    pub updated_at: OffsetDateTime,
}

/// The opened database.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn from_nanos(n: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(n.into()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Db {
    /// Opens (or creates) `dir/images.db`. Builds a previous runner process left unfinished
    /// are marked failed: their engine calls died with it.
    pub fn open(dir: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(dir.join(DB_FILE))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let _: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(DbError::TooNew(version));
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE image_refs (
                     owner TEXT NOT NULL,
                     reference TEXT NOT NULL,
                     image_id TEXT NOT NULL,
                     source TEXT NOT NULL,
                     updated_at INTEGER NOT NULL,
                     PRIMARY KEY (owner, reference)
                 ) WITHOUT ROWID;
                 CREATE INDEX image_refs_by_reference ON image_refs (reference);
                 CREATE TABLE builds (
                     serial INTEGER PRIMARY KEY,
                     id TEXT NOT NULL UNIQUE,
                     owner TEXT NOT NULL,
                     record TEXT NOT NULL
                 );
                 CREATE INDEX builds_by_owner ON builds (owner, serial);
                 CREATE TABLE build_lines (
                     build TEXT NOT NULL,
                     seq INTEGER NOT NULL,
                     time INTEGER NOT NULL,
                     text TEXT NOT NULL,
                     PRIMARY KEY (build, seq)
                 ) WITHOUT ROWID;
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        let db = Db {
            conn: Mutex::new(conn),
        };
        db.fail_unfinished_builds()?;
        Ok(db)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every hold of `owner`.
    pub fn held_by(&self, owner: &str) -> Result<Vec<Held>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT owner, reference, image_id, source, updated_at FROM image_refs WHERE owner = ?1",
        )?;
        let rows = stmt.query_map(params![owner], held_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every hold on `reference`, by any account.
    pub fn holders(&self, reference: &str) -> Result<Vec<Held>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT owner, reference, image_id, source, updated_at FROM image_refs WHERE reference = ?1",
        )?;
        let rows = stmt.query_map(params![reference], held_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records (or refreshes) `owner`'s hold on `reference`.
    pub fn hold(
        &self,
        owner: &str,
        reference: &str,
        image_id: &str,
        source: &str,
    ) -> Result<(), DbError> {
        self.conn().execute(
            "INSERT INTO image_refs (owner, reference, image_id, source, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (owner, reference) DO UPDATE SET
                 image_id = excluded.image_id, source = excluded.source,
                 updated_at = excluded.updated_at",
            params![
                owner,
                reference,
                image_id,
                source,
                nanos(OffsetDateTime::now_utc())
            ],
        )?;
        Ok(())
    }

    /// Drops `owner`'s hold on `reference`; whether there was one.
    pub fn release(&self, owner: &str, reference: &str) -> Result<bool, DbError> {
        let n = self.conn().execute(
            "DELETE FROM image_refs WHERE owner = ?1 AND reference = ?2",
            params![owner, reference],
        )?;
        Ok(n > 0)
    }

    /// Stores a new build.
    pub fn insert_build(&self, owner: &str, build: &Build) -> Result<(), DbError> {
        self.conn().execute(
            "INSERT INTO builds (id, owner, record) VALUES (?1, ?2, ?3)",
            params![build.id, owner, record_json(build)],
        )?;
        Ok(())
    }

    /// Replaces a build's record.
    pub fn save_build(&self, build: &Build) -> Result<(), DbError> {
        self.conn().execute(
            "UPDATE builds SET record = ?2 WHERE id = ?1",
            params![build.id, record_json(build)],
        )?;
        Ok(())
    }

    /// `owner`'s build `id`.
    pub fn build(&self, owner: &str, id: &str) -> Result<Option<Build>, DbError> {
        let conn = self.conn();
        let record: Option<String> = conn
            .query_row(
                "SELECT record FROM builds WHERE id = ?1 AND owner = ?2",
                params![id, owner],
                |r| r.get(0),
            )
            .optional()?;
        record.map(|r| parse_record(&r)).transpose()
    }

    /// `owner`'s builds, newest first, at most `limit`.
    pub fn builds(&self, owner: &str, limit: usize) -> Result<Vec<Build>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT record FROM builds WHERE owner = ?1 ORDER BY serial DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![owner, limit as i64], |r| r.get::<_, String>(0))?;
        rows.map(|r| parse_record(&r?)).collect()
    }

    /// Deletes a build and its output.
    pub fn delete_build(&self, owner: &str, id: &str) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM builds WHERE id = ?1 AND owner = ?2",
            params![id, owner],
        )?;
        if n > 0 {
            tx.execute("DELETE FROM build_lines WHERE build = ?1", params![id])?;
        }
        tx.commit()?;
        Ok(n > 0)
    }

    /// Appends output lines to a build, numbered from `first_seq`.
    pub fn append_lines(
        &self,
        build: &str,
        first_seq: u64,
        lines: &[(OffsetDateTime, String)],
    ) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO build_lines (build, seq, time, text) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (i, (time, text)) in lines.iter().enumerate() {
                stmt.execute(params![
                    build,
                    (first_seq + i as u64) as i64,
                    nanos(*time),
                    text
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Lines of `build` with `seq > after`, at most `limit`.
    pub fn lines(
        &self,
        build: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OffsetDateTime, String)>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, time, text FROM build_lines WHERE build = ?1 AND seq > ?2
             ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![build, after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                from_nanos(r.get(1)?),
                r.get::<_, String>(2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last line's seq of `build` (0 when it has none).
    pub fn last_seq(&self, build: &str) -> Result<u64, DbError> {
        let seq: Option<i64> = self.conn().query_row(
            "SELECT MAX(seq) FROM build_lines WHERE build = ?1",
            params![build],
            |r| r.get(0),
        )?;
        Ok(seq.unwrap_or(0) as u64)
    }

    fn fail_unfinished_builds(&self) -> Result<(), DbError> {
        let records: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT record FROM builds")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for record in records {
            let mut build = parse_record(&record)?;
            if !build.state.is_terminal() {
                build.state = BuildState::Failed;
                build.error = Some("the runner stopped during the build".to_owned());
                build.finished_at = Some(OffsetDateTime::now_utc());
                self.save_build(&build)?;
            }
        }
        Ok(())
    }
}

fn held_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Held> {
    Ok(Held {
        owner: r.get(0)?,
        reference: r.get(1)?,
        image_id: r.get(2)?,
        source: r.get(3)?,
        updated_at: from_nanos(r.get(4)?),
    })
}

fn record_json(build: &Build) -> String {
    serde_json::to_string(build).expect("a build record serializes")
}

fn parse_record(text: &str) -> Result<Build, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt(format!("build record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(id: &str, state: BuildState) -> Build {
        Build {
            id: id.into(),
            state,
            tags: vec!["localhost/a:1".into()],
            dockerfile: "Dockerfile".into(),
            context_bytes: 10,
            image_id: None,
            error: None,
            created_at: OffsetDateTime::now_utc(),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn holds_are_per_owner() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.hold("a", "localhost/x:1", "sha256:1", "pull").unwrap();
        db.hold("b", "localhost/x:1", "sha256:1", "pull").unwrap();
        db.hold("a", "localhost/x:1", "sha256:2", "load").unwrap();
        assert_eq!(db.held_by("a").unwrap().len(), 1);
        assert_eq!(db.held_by("a").unwrap()[0].image_id, "sha256:2");
        assert_eq!(db.holders("localhost/x:1").unwrap().len(), 2);
        assert!(db.release("a", "localhost/x:1").unwrap());
        assert!(!db.release("a", "localhost/x:1").unwrap());
        assert_eq!(db.holders("localhost/x:1").unwrap()[0].owner, "b");
    }

    #[test]
    fn builds_persist_and_unfinished_ones_fail_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open(dir.path()).unwrap();
            db.insert_build("a", &build("bld_1", BuildState::Running))
                .unwrap();
            db.insert_build("a", &build("bld_2", BuildState::Succeeded))
                .unwrap();
            let now = OffsetDateTime::now_utc();
            db.append_lines("bld_1", 1, &[(now, "one".into()), (now, "two".into())])
                .unwrap();
            assert!(db.build("b", "bld_1").unwrap().is_none(), "per owner");
        }
        let db = Db::open(dir.path()).unwrap();
        let list = db.builds("a", 10).unwrap();
        assert_eq!(list[0].id, "bld_2", "newest first");
        assert_eq!(list[1].state, BuildState::Failed);
        assert_eq!(db.last_seq("bld_1").unwrap(), 2);
        let lines = db.lines("bld_1", 1, 10).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].2, "two");
        assert!(db.delete_build("a", "bld_1").unwrap());
        assert_eq!(db.last_seq("bld_1").unwrap(), 0);
    }
}
