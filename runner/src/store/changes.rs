//! Per-account revisions of the runs, and the broadcast of each change for watches.
//!
//! Every change to an account's runs (creation, a record change, the terminal record,
//! deletion) takes the next number of that account's counter and is sent as a [`Change`],
//! both under one mutex, so changes go out in revision order. Counters live in memory only;
//! they start at a base taken when the store opens (the Unix time in microseconds), so
//! revisions after a restart are larger than any before it (unless an account made more
//! than a million changes a second on average). The hub keeps one counter per account that
//! has had a change since the store opened.
//!
//! Lock order: [`Changes::publish`] is called while an entry's data lock or the store's runs
//! lock is held, so the hub's mutex is a leaf: nothing else is locked while it is held.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

/// Changes a slow watch may fall behind by before it lags (and ends).
pub const CHANGES_CAPACITY: usize = 1024;

/// One change to a run, numbered in its owner's revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The account that owns the run.
    pub owner: String,
    /// The run's id.
    pub id: String,
    /// The owner's revision this change took.
    pub revision: u64,
}

/// The revision counters and the broadcast of changes (one per store).
#[derive(Debug)]
pub struct Changes {
    base: u64,
    revisions: Mutex<HashMap<String, u64>>,
    tx: broadcast::Sender<Change>,
}

impl Changes {
    /// A hub whose counters start at the current Unix time in microseconds.
    pub fn new() -> Changes {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Changes::with_base(micros)
    }

    /// A hub whose counters start at `base`.
    pub fn with_base(base: u64) -> Changes {
        Changes {
            base,
            revisions: Mutex::new(HashMap::new()),
            tx: broadcast::Sender::new(CHANGES_CAPACITY),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, u64>> {
        self.revisions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers a change to `owner`'s run `id` and sends it; returns its revision. The change
    /// must already be visible to readers of the run.
    pub fn publish(&self, owner: &str, id: &str) -> u64 {
        let mut revisions = self.lock();
        let revision = match revisions.get_mut(owner) {
            Some(revision) => {
                *revision += 1;
                *revision
            }
            None => {
                revisions.insert(owner.to_owned(), self.base + 1);
                self.base + 1
            }
        };
        // No receiver is not an error: nobody watches.
        let _ = self.tx.send(Change {
            owner: owner.to_owned(),
            id: id.to_owned(),
            revision,
        });
        revision
    }

    /// `owner`'s revision now: that of its last change, or the base when it has none.
    pub fn current(&self, owner: &str) -> u64 {
        self.lock().get(owner).copied().unwrap_or(self.base)
    }

    /// A receiver of every change after now (of all owners), and `owner`'s revision now,
    /// taken together: the receiver gets exactly the changes numbered after it.
    pub fn subscribe(&self, owner: &str) -> (broadcast::Receiver<Change>, u64) {
        let revisions = self.lock();
        let rx = self.tx.subscribe();
        let current = revisions.get(owner).copied().unwrap_or(self.base);
        (rx, current)
    }
}

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_count_per_owner_from_the_base_and_go_out_in_order() {
        let hub = Changes::with_base(100);
        let (mut rx, start) = hub.subscribe("alice");
        assert_eq!(start, 100);
        assert_eq!(hub.publish("alice", "run_a"), 101);
        assert_eq!(hub.publish("bob", "run_b"), 101);
        assert_eq!(hub.publish("alice", "run_a"), 102);
        assert_eq!(hub.publish("alice", "run_c"), 103);
        assert_eq!((hub.current("alice"), hub.current("bob")), (103, 101));
        assert_eq!(hub.current("carol"), 100);
        let got: Vec<(String, String, u64)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.owner, c.id, c.revision))
            .collect();
        let want = [
            ("alice", "run_a", 101),
            ("bob", "run_b", 101),
            ("alice", "run_a", 102),
            ("alice", "run_c", 103),
        ]
        .map(|(o, i, r)| (o.to_owned(), i.to_owned(), r));
        assert_eq!(got, want);
    }

    #[test]
    fn a_subscriber_gets_exactly_the_changes_after_the_revision_it_was_given() {
        let hub = std::sync::Arc::new(Changes::with_base(0));
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    hub.publish("alice", "run_a");
                }
            })
        };
        let (mut rx, start) = hub.subscribe("alice");
        publisher.join().unwrap();
        let got: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| c.revision)
            .collect();
        let want: Vec<u64> = (start + 1..=500).collect();
        assert_eq!(got, want, "subscribed at {start}");
    }

    #[test]
    fn the_default_base_is_the_time_in_microseconds() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let hub = Changes::new();
        assert!(hub.current("alice") >= before);
        assert!(Changes::new().current("alice") >= hub.current("alice"));
    }
}
