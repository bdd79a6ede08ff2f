//! Run records and their output, in memory.
//!
//! Each run is an [`Entry`]: its owner, its [`Run`] record, its output chunks (with a dense
//! `seq` from 1) and a watch channel that wakes log followers on every change. Lookups are per
//! owner, so another account's run is indistinguishable from a missing one.
//!
//! Everything is lost when the runner stops; persistence (SQLite) comes later.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bus_api::{LogFrame, Run, RunState, Stream};
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::watch;

/// Largest payload of one output frame.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Makes a new run id: `run_` and 32 hex digits (128 random bits).
pub fn new_run_id() -> String {
    let bytes = crate::auth::random_bytes::<16>().expect("the system has randomness");
    let mut id = String::with_capacity(36);
    id.push_str("run_");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// All runs.
#[derive(Debug, Default)]
pub struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Arc<Entry>>,
    by_serial: BTreeMap<u64, Arc<Entry>>,
    next_serial: u64,
}

/// One run: record, output and the channel that announces changes.
#[derive(Debug)]
pub struct Entry {
    /// The run's id.
    pub id: String,
    /// The account that owns it.
    pub owner: String,
    /// Creation order, for newest-first listing.
    pub serial: u64,
    data: Mutex<Data>,
    changed: watch::Sender<()>,
}

#[derive(Debug)]
struct Data {
    record: Run,
    chunks: Vec<Chunk>,
    container: Option<String>,
    deleted: bool,
    deleting: bool,
}

/// A piece of output as read from the engine.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Which stream.
    pub stream: Stream,
    /// The bytes, at most [`MAX_FRAME_BYTES`].
    pub bytes: Bytes,
    /// When the runner read them.
    pub time: OffsetDateTime,
}

/// What a log reader gets: frames after its cursor, and the exit frame once the run has ended.
#[derive(Debug)]
pub struct LogRead {
    /// Output frames, in `seq` order.
    pub frames: Vec<LogFrame>,
    /// The `seq` of the last frame returned (the cursor to read after next).
    pub last_seq: u64,
    /// The exit frame, when the run has ended and `frames` reaches its last output.
    pub exit: Option<LogFrame>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a run for `owner`; `record.id` must be fresh (see [`new_run_id`]).
    pub fn insert(&self, owner: &str, record: Run) -> Arc<Entry> {
        let mut inner = self.lock();
        let serial = inner.next_serial;
        inner.next_serial += 1;
        let entry = Arc::new(Entry {
            id: record.id.clone(),
            owner: owner.to_owned(),
            serial,
            data: Mutex::new(Data {
                record,
                chunks: Vec::new(),
                container: None,
                deleted: false,
                deleting: false,
            }),
            changed: watch::Sender::new(()),
        });
        inner.by_id.insert(entry.id.clone(), entry.clone());
        inner.by_serial.insert(serial, entry.clone());
        entry
    }

    /// The run `id` if `owner` owns it.
    pub fn get(&self, owner: &str, id: &str) -> Option<Arc<Entry>> {
        self.lock()
            .by_id
            .get(id)
            .filter(|e| e.owner == owner)
            .cloned()
    }

    /// Removes the run `id` if `owner` owns it; returns it so its container can be removed.
    pub fn remove(&self, owner: &str, id: &str) -> Option<Arc<Entry>> {
        let entry = {
            let mut inner = self.lock();
            let entry = inner.by_id.get(id).filter(|e| e.owner == owner).cloned()?;
            inner.by_id.remove(id);
            inner.by_serial.remove(&entry.serial);
            entry
        };
        entry.data().deleted = true;
        entry.changed.send_replace(());
        Some(entry)
    }

    /// Every run that has not ended, of all owners.
    pub fn unfinished(&self) -> Vec<Arc<Entry>> {
        let inner = self.lock();
        inner
            .by_serial
            .values()
            .filter(|e| !e.snapshot().state.is_terminal())
            .cloned()
            .collect()
    }

    /// Up to `limit` of `owner`'s runs created before `before` (a serial), newest first, and
    /// the serial to continue from when there may be more.
    pub fn list(&self, owner: &str, before: Option<u64>, limit: usize) -> (Vec<Run>, Option<u64>) {
        let inner = self.lock();
        let mut runs = Vec::with_capacity(limit.min(64));
        let mut last = None;
        let range = inner.by_serial.range(..before.unwrap_or(u64::MAX));
        let mut iter = range.rev().filter(|(_, e)| e.owner == owner);
        for (serial, entry) in iter.by_ref().take(limit) {
            runs.push(entry.snapshot());
            last = Some(*serial);
        }
        let more = iter.next().is_some();
        (runs, if more { last } else { None })
    }
}

impl Entry {
    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }

    /// The current record.
    pub fn snapshot(&self) -> Run {
        self.data().record.clone()
    }

    /// Whether the run was deleted or is being deleted.
    pub fn is_deleted(&self) -> bool {
        let data = self.data();
        data.deleted || data.deleting
    }

    /// Marks the run as being deleted (its container is about to be removed), or, with
    /// `false`, no longer (the removal failed).
    pub fn set_deleting(&self, deleting: bool) {
        self.data().deleting = deleting;
    }

    /// A receiver that wakes on every change to the run.
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Moves a live run to `state`; no-op once the run has ended.
    pub fn set_state(&self, state: RunState) {
        {
            let mut data = self.data();
            if data.record.state.is_terminal() {
                return;
            }
            data.record.state = state;
            if state == RunState::Running && data.record.started_at.is_none() {
                data.record.started_at = Some(OffsetDateTime::now_utc());
            }
        }
        self.notify();
    }

    /// Records the engine's container id; `false` if the run was deleted or ended meanwhile
    /// (then the caller removes the container itself).
    pub fn set_container(&self, container: &str) -> bool {
        let mut data = self.data();
        if data.deleted || data.record.state.is_terminal() {
            return false;
        }
        data.container = Some(container.to_owned());
        true
    }

    /// The engine's container id, once created.
    pub fn container(&self) -> Option<String> {
        self.data().container.clone()
    }

    /// Appends output, split into frames of at most [`MAX_FRAME_BYTES`].
    pub fn push_output(&self, stream: Stream, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let time = OffsetDateTime::now_utc();
        {
            let mut data = self.data();
            let mut rest = bytes;
            while !rest.is_empty() {
                let piece = rest.split_to(rest.len().min(MAX_FRAME_BYTES));
                data.chunks.push(Chunk {
                    stream,
                    bytes: piece,
                    time,
                });
            }
        }
        self.notify();
    }

    /// Ends the run: final state, exit code and reason. Only the first call counts.
    pub fn finish(&self, state: RunState, exit_code: Option<i32>, reason: Option<String>) {
        {
            let mut data = self.data();
            if data.record.state.is_terminal() {
                return;
            }
            data.record.state = state;
            data.record.exit_code = exit_code;
            data.record.reason = reason;
            data.record.finished_at = Some(OffsetDateTime::now_utc());
        }
        self.notify();
    }

    /// Frames with `seq > after_seq`, at most about `max_bytes` of payload (always at least one
    /// frame when there is one), then the exit frame if the run has ended and nothing is left.
    pub fn read(&self, after_seq: u64, max_bytes: usize) -> LogRead {
        let data = self.data();
        let total = data.chunks.len() as u64;
        let start = after_seq.min(total) as usize;
        let mut frames = Vec::new();
        let mut bytes = 0;
        let mut seq = start as u64;
        for chunk in &data.chunks[start..] {
            if !frames.is_empty() && bytes + chunk.bytes.len() > max_bytes {
                break;
            }
            seq += 1;
            bytes += chunk.bytes.len();
            frames.push(LogFrame::output(
                seq,
                chunk.stream,
                &chunk.bytes,
                chunk.time,
            ));
        }
        let record = &data.record;
        let exit = (record.state.is_terminal() && seq == total).then(|| LogFrame::Exit {
            state: record.state,
            exit_code: record.exit_code,
            reason: record.reason.clone(),
            last_seq: total,
            finished_at: record.finished_at,
        });
        LogRead {
            frames,
            last_seq: seq,
            exit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(id: &str) -> Run {
        Run {
            id: id.to_owned(),
            state: RunState::Queued,
            exit_code: None,
            profile: None,
            image: "img".to_owned(),
            argv: vec![],
            name: None,
            labels: BTreeMap::new(),
            created_at: OffsetDateTime::now_utc(),
            started_at: None,
            finished_at: None,
            reason: None,
        }
    }

    #[test]
    fn ids_are_unguessable_shape() {
        let a = new_run_id();
        assert!(a.starts_with("run_") && a.len() == 36, "{a}");
        assert_ne!(a, new_run_id());
    }

    #[test]
    fn owners_see_only_their_runs() {
        let s = Store::new();
        s.insert("a", record("run_1"));
        assert!(s.get("a", "run_1").is_some());
        assert!(s.get("b", "run_1").is_none());
        assert!(s.remove("b", "run_1").is_none());
        assert!(s.remove("a", "run_1").unwrap().is_deleted());
        assert!(s.get("a", "run_1").is_none());
    }

    #[test]
    fn list_pages_newest_first() {
        let s = Store::new();
        for i in 0..5 {
            s.insert(if i == 2 { "b" } else { "a" }, record(&format!("run_{i}")));
        }
        let (page, next) = s.list("a", None, 2);
        let ids: Vec<_> = page.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["run_4", "run_3"]);
        let (page, next) = s.list("a", next, 2);
        let ids: Vec<_> = page.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["run_1", "run_0"]);
        assert_eq!(next, None);
    }

    #[test]
    fn frames_split_and_resume() {
        let s = Store::new();
        let e = s.insert("a", record("run_1"));
        e.push_output(
            Stream::Stdout,
            Bytes::from(vec![b'x'; MAX_FRAME_BYTES + 10]),
        );
        e.push_output(Stream::Stderr, Bytes::from_static(b"err\n"));
        let r = e.read(0, usize::MAX);
        assert_eq!(r.frames.len(), 3);
        assert_eq!(r.last_seq, 3);
        assert!(r.exit.is_none(), "not ended yet");
        let r = e.read(2, usize::MAX);
        assert_eq!(r.frames.len(), 1);
        assert_eq!(r.frames[0].output_bytes().unwrap().unwrap(), b"err\n");
        e.finish(RunState::Exited, Some(3), None);
        let r = e.read(1, 1);
        assert_eq!(r.frames.len(), 1, "the byte budget stops after one frame");
        assert!(r.exit.is_none(), "exit only after the last output frame");
        let r = e.read(3, usize::MAX);
        assert!(matches!(
            r.exit,
            Some(LogFrame::Exit {
                exit_code: Some(3),
                last_seq: 3,
                ..
            })
        ));
    }
}
