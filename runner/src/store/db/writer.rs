//! The writer thread: it owns the write connection, applies queued commands in one
//! transaction each batch (group commit), assigns frames their dense `seq`, and tells the
//! entries only after the commit.

use super::*;

/// The write connection and the per-run seq counters; lives on its own thread.
pub(in crate::store) struct Writer {
    pub(super) conn: Connection,
    pub(super) runs: HashMap<u64, WRun>,
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
pub(in crate::store) struct FoundKey {
    pub request: String,
    pub replay: Replay,
}

impl Writer {
    /// Starts the writer thread; it ends when every sender is gone.
    pub(in crate::store) fn spawn(
        self,
        rx: mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<(), StoreError> {
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
                                now - crate::store::IDEMPOTENCY_WINDOW,
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
                        // A deleted run's watches were told of its deletion already.
                        if !data.deleted {
                            entry.publish();
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
                             wall_seconds, container, timeout_seconds, last_seq, options,
                             participant, role)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                             ?15, NULL, ?16, 0, ?17, ?18, ?19)",
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
                        record.participant,
                        record.role,
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
