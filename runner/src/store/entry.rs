//! One run in memory: its record, the seq of its last stored frame, and the channel that
//! wakes its log followers.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bus_api::{LogFrame, Run, RunState, Stream};
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{Notify, oneshot, watch};

use super::db::Cmd;
use super::{Link, MAX_FRAME_BYTES, wall_seconds};

/// One run: record, output cursor and the channel that announces changes.
#[derive(Debug)]
pub struct Entry {
    /// The run's id.
    pub id: String,
    /// The account that owns it.
    pub owner: String,
    /// Its name, if it has one (fixed at creation).
    pub name: Option<String>,
    /// Creation order, for newest-first listing (stable across restarts).
    pub serial: u64,
    /// The run's timeout, counted from `started_at`.
    pub timeout: Duration,
    /// How many bytes of output the run may store (its `max_output_mb`), if there is a limit.
    output_limit: Option<u64>,
    pub(super) data: Mutex<Data>,
    pub(super) changed: watch::Sender<()>,
    /// Told once when the output reaches the limit: whoever waits for that (the executor)
    /// is not woken by every stored frame, as `changed` wakes followers.
    limit_reached: Notify,
    pub(super) link: Arc<Link>,
}

#[derive(Debug)]
pub(super) struct Data {
    /// Non-terminal changes apply at once; the terminal record only once it is stored.
    pub(super) record: Run,
    pub(super) container: Option<String>,
    /// The seq of the last output frame stored (and so visible to readers).
    pub(super) committed_seq: u64,
    pub(super) deleted: bool,
    pub(super) deleting: bool,
    /// `finish` was called (the terminal record is on its way to the disk).
    pub(super) ending: bool,
    pub(super) stop_requested: bool,
    /// The container's output stream ended: its command has exited.
    pub(super) output_ended: bool,
    /// Bytes of output taken for storage (stored or on their way to the disk).
    pub(super) output_bytes: u64,
    /// The output reached the run's limit: what came after it was dropped.
    pub(super) output_limited: bool,
}

impl Entry {
    pub(super) fn new(
        serial: u64,
        owner: &str,
        record: Run,
        timeout: Duration,
        container: Option<String>,
        (committed_seq, output_bytes): (u64, u64),
        link: Arc<Link>,
    ) -> Entry {
        Entry {
            id: record.id.clone(),
            name: record.name.clone(),
            owner: owner.to_owned(),
            serial,
            timeout,
            output_limit: super::output_limit_bytes(record.options.max_output_mb),
            data: Mutex::new(Data {
                record,
                container,
                committed_seq,
                deleted: false,
                deleting: false,
                ending: false,
                stop_requested: false,
                output_ended: false,
                output_bytes,
                output_limited: false,
            }),
            changed: watch::Sender::new(()),
            limit_reached: Notify::new(),
            link,
        }
    }

    pub(super) fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn notify(&self) {
        self.changed.send_replace(());
    }

    /// The current record.
    pub fn snapshot(&self) -> Run {
        self.data().record.clone()
    }

    /// Where the run is in its life now (without copying its record).
    pub fn state(&self) -> RunState {
        self.data().record.state
    }

    /// The label value of the runner that owns this run's container.
    pub fn runner_id(&self) -> &str {
        &self.link.runner_id
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

    /// Queues the current record for storage (called with the data lock held, so the queue
    /// sees the changes in the order they were made).
    pub(super) fn save(&self, data: &Data) {
        self.link.send(Cmd::Save {
            serial: self.serial,
            owner: self.owner.clone(),
            record: data.record.clone(),
            container: data.container.clone(),
        });
    }

    /// Numbers a change to the record and announces it to watches (called with the data lock
    /// held, after the change, so a watch that reads the record sees it).
    pub(super) fn publish(&self) -> u64 {
        self.link.changes.publish(&self.owner, &self.id)
    }

    /// Moves a live run to `state`; no-op once the run is ending.
    pub fn set_state(&self, state: RunState) {
        {
            let mut data = self.data();
            if data.ending || data.record.state.is_terminal() {
                return;
            }
            data.record.state = state;
            if state == RunState::Running && data.record.started_at.is_none() {
                data.record.started_at = Some(OffsetDateTime::now_utc());
            }
            self.save(&data);
            self.publish();
        }
        self.notify();
    }

    /// Records the engine's container id; `false` if the run was deleted, stopped or ended
    /// meanwhile (then the caller removes the container itself and ends the run).
    pub fn set_container(&self, container: &str) -> bool {
        let mut data = self.data();
        if data.deleted || data.ending || data.stop_requested || data.record.state.is_terminal() {
            return false;
        }
        data.container = Some(container.to_owned());
        // Not part of the record: watches have nothing new to see.
        self.save(&data);
        true
    }

    /// A failed service is being started again (the `restarts`th time): back to `starting`,
    /// its new container's output still to come. No-op once the run is ending.
    pub fn restarting(&self, restarts: u32) {
        {
            let mut data = self.data();
            if data.ending || data.record.state.is_terminal() {
                return;
            }
            data.record.state = RunState::Starting;
            data.record.options.restarts = restarts;
            data.output_ended = false;
            self.save(&data);
            self.publish();
        }
        self.notify();
    }

    /// Records the ports as the engine published them (with the host ports it picked); no-op
    /// once the run is ending.
    pub fn set_ports(&self, ports: Vec<bus_api::Port>) {
        {
            let mut data = self.data();
            if data.ending || data.record.state.is_terminal() || data.record.options.ports == ports
            {
                return;
            }
            data.record.options.ports = ports;
            self.save(&data);
            self.publish();
        }
        self.notify();
    }

    /// The engine's container id, once created.
    pub fn container(&self) -> Option<String> {
        self.data().container.clone()
    }

    /// Asks the run to stop; `false` when it has already ended (or is ending).
    pub fn request_stop(&self) -> bool {
        let mut data = self.data();
        if data.ending || data.record.state.is_terminal() {
            return false;
        }
        data.stop_requested = true;
        true
    }

    /// Whether a stop was asked for.
    pub fn stop_requested(&self) -> bool {
        self.data().stop_requested
    }

    /// The seq of the last stored output frame.
    pub fn last_seq(&self) -> u64 {
        self.data().committed_seq
    }

    /// Waits until the run has ended (its terminal record is stored), at most `limit`.
    pub async fn wait_ended(&self, limit: Duration) -> bool {
        let mut rx = self.subscribe();
        let ended = async {
            loop {
                rx.borrow_and_update();
                if self.data().record.state.is_terminal() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(limit, ended).await.is_ok()
    }

    /// Waits until the run is running with its container recorded, or has ended, at most
    /// `limit`; `false` when the limit passed first.
    pub async fn wait_started(&self, limit: Duration) -> bool {
        self.wait_for(limit, |data| {
            let state = data.record.state;
            state.is_terminal() || (state == RunState::Running && data.container.is_some())
        })
        .await
    }

    /// Records that the container's output stream ended (its command exited).
    pub fn set_output_ended(&self) {
        self.data().output_ended = true;
        self.notify();
    }

    /// Waits until the container's output stream has ended or the run has ended, at most
    /// `limit`; `false` when the limit passed first.
    pub async fn wait_output_ended(&self, limit: Duration) -> bool {
        self.wait_for(limit, |data| {
            data.output_ended || data.ending || data.record.state.is_terminal()
        })
        .await
    }

    /// Waits until `done` holds for the run's data, at most `limit`.
    pub(super) async fn wait_for(&self, limit: Duration, done: impl Fn(&Data) -> bool) -> bool {
        tokio::time::timeout(limit, self.until(done)).await.is_ok()
    }

    /// Waits until `done` holds for the run's data.
    async fn until(&self, done: impl Fn(&Data) -> bool) {
        let mut rx = self.subscribe();
        loop {
            rx.borrow_and_update();
            if done(&self.data()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether the output reached the run's limit (`max_output_mb`), so that what came after
    /// it was dropped.
    pub fn output_limited(&self) -> bool {
        self.data().output_limited
    }

    /// Waits until the output reaches the run's limit.
    pub async fn until_output_limited(&self) {
        // `notify_one` keeps a permit when nobody waits yet, so the limit is never missed.
        if !self.output_limited() {
            self.limit_reached.notified().await;
        }
    }

    /// Appends output, split into frames of at most [`MAX_FRAME_BYTES`]; waits while too much
    /// output is on its way to the disk. What would take the run's output past its limit is
    /// dropped, and the run is marked [`Entry::output_limited`].
    pub async fn push_output(self: &Arc<Self>, stream: Stream, bytes: Bytes) {
        let time = OffsetDateTime::now_utc();
        let mut rest = self.within_limit(bytes);
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(MAX_FRAME_BYTES));
            let permit = self
                .link
                .budget
                .clone()
                .acquire_many_owned(piece.len() as u32)
                .await
                .expect("the output budget is never closed");
            self.link.send(Cmd::Output {
                entry: self.clone(),
                stream,
                bytes: piece,
                time,
                permit,
            });
        }
    }

    /// What of `bytes` fits under the run's output limit, counted as taken; marks the run
    /// limited (and wakes whoever waits for it) when some did not fit.
    fn within_limit(&self, bytes: Bytes) -> Bytes {
        let mut data = self.data();
        let (bytes, over) = super::within_output_limit(self.output_limit, data.output_bytes, bytes);
        data.output_bytes += bytes.len() as u64;
        if over && !data.output_limited {
            data.output_limited = true;
            drop(data);
            self.limit_reached.notify_one();
            self.notify();
        }
        bytes
    }

    /// Ends the run: final state, exit code and reason, `finished_at` and `wall_seconds`.
    /// Only the first call counts; returns once the record is stored, after every output
    /// frame queued before it.
    pub async fn finish(
        self: &Arc<Self>,
        state: RunState,
        exit_code: Option<i32>,
        reason: Option<String>,
    ) {
        let done = {
            let mut data = self.data();
            if data.ending || data.record.state.is_terminal() {
                return;
            }
            data.ending = true;
            let mut record = data.record.clone();
            let now = OffsetDateTime::now_utc();
            record.state = state;
            record.exit_code = exit_code;
            record.reason = reason;
            record.finished_at = Some(now);
            record.wall_seconds = record.started_at.map(|started| wall_seconds(started, now));
            let (ack, done) = oneshot::channel();
            self.link.send(Cmd::Finish {
                entry: self.clone(),
                record,
                ack,
            });
            done
        };
        let _ = done.await;
    }

    /// The stored output's last seq and, when the run has ended, its exit frame (read
    /// together, so the exit frame never precedes output).
    pub(super) fn read_state(&self) -> (u64, Option<LogFrame>) {
        let data = self.data();
        let record = &data.record;
        let exit = record.state.is_terminal().then(|| LogFrame::Exit {
            state: record.state,
            exit_code: record.exit_code,
            reason: record.reason.clone(),
            last_seq: data.committed_seq,
            finished_at: record.finished_at,
        });
        (data.committed_seq, exit)
    }
}
