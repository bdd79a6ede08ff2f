//! What SIGINT (Ctrl-C), SIGTERM and SIGHUP do to a run that `bus containers run` follows:
//! the first stops the run (SIGTERM to its command, SIGKILL after the runner's grace period),
//! the second kills it at once, the third stops waiting and leaves it to the runner. `bus`
//! goes on printing the run's output until it ends, then exits as a process killed by the
//! signal would (128 + its number) when the run ended stopped, or with the command's own
//! code when it exited before the stop reached it.
//!
//! A run's command is its container's PID 1, which ignores a signal it has no handler for;
//! forwarding Ctrl-C to it, as `docker run` does, would leave most commands running.
//!
//! A closed output (`bus containers run -- yes | head -1`) ends the run too, at once, as a
//! local command writing into a closed pipe would end ([`ended_by_closed_output`]): else it
//! would go on, its output stored by the runner, until its timeout.

use std::future::Future;

use bus::proto::containers::v1::StopRunRequest;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::context::Ctx;
use crate::error::CliError;

/// The signal after which `bus` stops waiting.
const GIVE_UP_AT: u32 = 3;

/// The signals that stop a followed run, and what they have asked for so far.
pub struct Interrupts {
    int: Signal,
    term: Signal,
    hup: Signal,
    /// Signals received.
    count: u32,
    /// The number of the last one.
    last: i32,
    /// Stop requests sent (one per signal, once the run is known).
    sent: u32,
}

/// `bus` stopped waiting for the run; the process exit code.
#[derive(Debug)]
pub struct GaveUp(pub u8);

impl Interrupts {
    /// Takes over SIGINT, SIGTERM and SIGHUP for this process.
    pub fn listen() -> Result<Self, CliError> {
        let kind = |kind| {
            signal(kind).map_err(|e| CliError::Local(format!("cannot listen for signals: {e}")))
        };
        Ok(Interrupts {
            int: kind(SignalKind::interrupt())?,
            term: kind(SignalKind::terminate())?,
            hup: kind(SignalKind::hangup())?,
            count: 0,
            last: 0,
            sent: 0,
        })
    }

    /// The signal received last, if any.
    pub fn received(&self) -> Option<i32> {
        (self.count > 0).then_some(self.last)
    }

    /// Awaits `work` while acting on the signals that arrive meanwhile for run `run_id`
    /// (empty while the run is not created yet: the stop is sent once [`Interrupts::known`]
    /// says its id).
    pub async fn during<F: Future>(
        &mut self,
        ctx: &Ctx,
        run_id: &str,
        work: F,
    ) -> Result<F::Output, GaveUp> {
        let mut work = std::pin::pin!(work);
        loop {
            let signal = tokio::select! {
                output = &mut work => return Ok(output),
                _ = self.int.recv() => libc::SIGINT,
                _ = self.term.recv() => libc::SIGTERM,
                _ = self.hup.recv() => libc::SIGHUP,
            };
            self.count += 1;
            self.last = signal;
            if self.count >= GIVE_UP_AT {
                let run = if run_id.is_empty() { "the run" } else { run_id };
                eprintln!(
                    "bus: stopped waiting for {run}; it may still be running (`bus containers runs`)"
                );
                return Err(GaveUp(128 + signal as u8));
            }
            self.known(ctx, run_id);
        }
    }

    /// The run's id is known: sends the stops the signals so far asked for.
    pub fn known(&mut self, ctx: &Ctx, run_id: &str) {
        if run_id.is_empty() {
            return;
        }
        while self.sent < self.count {
            self.sent += 1;
            let force = self.sent > 1;
            if force {
                eprintln!("bus: killing run {run_id}");
            } else {
                eprintln!(
                    "bus: stopping run {run_id} (SIGTERM, SIGKILL after the grace period); \
                     interrupt again to kill it now"
                );
            }
            tokio::spawn(stop(ctx, run_id, force));
        }
    }
}

/// The reader of the run's output went away: kills run `run_id` at once and waits for the
/// runner to say so; a failure is told on stderr.
pub async fn ended_by_closed_output(ctx: &Ctx, run_id: &str) {
    if !run_id.is_empty() {
        stop(ctx, run_id, true).await;
    }
}

/// A stop of `run_id` (a kill if `force`), to await or spawn; a failure is told on stderr.
/// Without a deadline: a graceful stop lasts the runner's grace period.
fn stop(ctx: &Ctx, run_id: &str, force: bool) -> impl Future<Output = ()> + 'static {
    let mut client = ctx.containers();
    let request = ctx.long_request(StopRunRequest {
        run_id: run_id.to_owned(),
        grace_seconds: 0,
        force,
    });
    let run_id = run_id.to_owned();
    async move {
        if let Err(status) = client.stop_run(request).await {
            eprintln!(
                "bus: could not stop run {run_id}: {}; stop it with `bus containers stop {run_id}`",
                CliError::from(status)
            );
        }
    }
}
