//! Progress on stderr for long transfers (pull, push, load, save, a build's upload): bars
//! (indicatif) when stderr is a terminal, plain lines otherwise, so logs and pipes get text
//! they can read.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether stderr is a terminal (bars) or not (plain lines).
pub fn bars() -> bool {
    std::io::stderr().is_terminal()
}

/// Bytes moved for one transfer; clones report to the same bar.
#[derive(Clone)]
pub struct Transfer {
    bar: Option<ProgressBar>,
    what: Arc<str>,
    done: Arc<AtomicU64>,
}

impl Transfer {
    /// A transfer of `total` bytes (when known), e.g. `uploading app.tar`.
    pub fn new(what: &str, total: Option<u64>) -> Transfer {
        let bar = bars().then(|| {
            let bar = match total {
                Some(total) => {
                    let bar =
                        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    bar
                }
                None => {
                    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                            .expect("a valid template"),
                    );
                    bar
                }
            };
            bar.set_message(what.to_owned());
            bar
        });
        if bar.is_none() {
            match total {
                Some(total) => eprintln!("bus: {what} ({total} bytes)"),
                None => eprintln!("bus: {what}"),
            }
        }
        Transfer {
            bar,
            what: what.into(),
            done: Arc::default(),
        }
    }

    /// `n` more bytes moved.
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// The transfer ended well.
    pub fn finish(self) {
        match self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!(
                "bus: {} done ({} bytes)",
                self.what,
                self.done.load(Ordering::Relaxed)
            ),
        }
    }

    /// The transfer failed: the bar goes away and leaves the line to the error.
    pub fn abandon(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Per-layer progress of a pull or push.
pub struct Layers {
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    last_plain: HashMap<String, String>,
}

impl Layers {
    /// Progress for `what`, e.g. `pulling r.io/app:1`.
    pub fn new(what: &str) -> Layers {
        let multi = bars().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        if multi.is_none() {
            eprintln!("bus: {what}");
        }
        Layers {
            multi,
            bars: HashMap::new(),
            last_plain: HashMap::new(),
        }
    }

    /// The engine's word on `id` (a layer, or empty for the whole image).
    pub fn update(&mut self, id: &str, status: &str, current: u64, total: u64) {
        let Some(multi) = &self.multi else {
            // Plain: one line per change of a layer's status, not per byte (layers report
            // in turns, so each one's last status is kept).
            if self.last_plain.get(id).map(String::as_str) != Some(status) {
                if id.is_empty() {
                    eprintln!("bus: {status}");
                } else {
                    eprintln!("bus: {id}: {status}");
                }
                self.last_plain.insert(id.to_owned(), status.to_owned());
            }
            return;
        };
        let bar = self.bars.entry(id.to_owned()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>12} {msg} {bytes}/{total_bytes}")
                    .expect("a valid template"),
            );
            bar.set_prefix(id.to_owned());
            bar
        });
        if total > 0 {
            bar.set_length(total);
            bar.set_position(current);
        }
        bar.set_message(status.to_owned());
    }

    /// The operation ended (well or not): bars go away.
    pub fn finish(self) {
        if let Some(multi) = self.multi {
            for bar in self.bars.values() {
                bar.finish_and_clear();
            }
            let _ = multi.clear();
        }
    }
}
