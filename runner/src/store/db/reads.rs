//! Reads on connections of their own: frames, stored byte counts, tail cursors,
//! idempotency keys and usage spans.

use super::*;

/// Read connections, opened on demand and reused.
pub(in crate::store) struct Readers {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(in crate::store) fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_owned(),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a read connection (blocking: call from `spawn_blocking`).
    pub(in crate::store) fn with<T>(
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
pub(in crate::store) fn read_frames(
    conn: &Connection,
    serial: u64,
    after: u64,
    upto: u64,
    filter: StreamFilter,
    max_bytes: usize,
) -> Result<(Vec<Output>, bool), StoreError> {
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
        frames.push(Output {
            seq: row.get::<_, i64>(0)? as u64,
            stream,
            data: Bytes::copy_from_slice(data),
            time: from_nanos(row.get(2)?)?,
        });
    }
    Ok((frames, true))
}

/// How many bytes of each stream (stdout, stderr) the frames of run `serial` up to `upto` hold.
pub(in crate::store) fn stored_bytes(
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
pub(in crate::store) fn tail_cursor(
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
pub(in crate::store) fn find_key(
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
pub(in crate::store) fn usage_spans(
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
