//! The caller's runs, kept current by a watch of the runner, so that `ListRuns` is answered
//! without a round trip.
//!
//! The first `ListRuns` for an origin and a token starts a watch with that token
//! (`GET runs?watch=true`) and is answered by the runner, as is every call until the watch
//! has listed the account's runs; later calls with the same token are answered here, paged
//! and filtered as the runner does (page tokens are the ones the runner gave each run).
//!
//! The list never answers a caller the runner would refuse:
//! - it is kept per token, exactly: only the token whose watch the runner accepted (its
//!   signature, audience and `container:read` scope) reads it;
//! - busd refuses an expired token before any call, and the runner ends the watch at `exp`;
//! - run tokens, which the runner refuses once their run has ended, are always sent on.
//!
//! Nor does it answer with less than the runner has already told busd: every answer about
//! runs reports the account's revision after the call (`bus-revision`, noted by the
//! upstream client), and a list that has not yet seen that revision waits [`CATCH_UP`] for
//! the watch, then lets the runner answer. A change made by another client reaches the list
//! when the runner's line about it arrives, as soon as an answer made at that moment would.
//!
//! A watch whose stream breaks or goes silent ([`WATCH_SILENCE`](crate::upstream::WATCH_SILENCE)) drops its list at once;
//! one nobody has asked for in [`IDLE`] is closed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bus_api::runs::{ListRunsQuery, RunFilter};
use bus_api::{RunEvent, RunPage, WatchedRun};
use tokio::sync::watch;

use crate::config::ApiOrigin;
use crate::upstream::{Upstream, UpstreamError};

/// How long a list that is behind what busd has seen waits for its watch before the runner
/// answers instead.
pub const CATCH_UP: Duration = Duration::from_millis(100);
/// A watch nobody has asked for in this long is closed.
pub const IDLE: Duration = Duration::from_secs(10 * 60);
/// After a watch was refused or broke, the runner answers for this long before busd watches
/// again.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// At most this many watches at once (origins × tokens); past it, the runner answers.
pub const MAX_WATCHES: usize = 32;

/// Every watched list, by origin and token.
#[derive(Default)]
pub struct Listings {
    watches: Mutex<HashMap<Key, Slot>>,
    answered: AtomicU64,
}

/// An origin and a token, exactly (never logged).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    origin: ApiOrigin,
    token: String,
}

enum Slot {
    Watching(Arc<Watched>),
    /// The last watch was refused or broke: not again before this.
    Paused(Instant),
}

impl Listings {
    /// The page `query` asks for from the watched list of `upstream`'s origin and token, or
    /// `None` when the runner must answer (no list yet, a list behind, a query it cannot
    /// answer exactly). Starts a watch when there is none.
    pub async fn answer(
        self: &Arc<Self>,
        upstream: &Upstream,
        query: &ListRunsQuery,
    ) -> Option<RunPage> {
        let claims = upstream.token().claims()?;
        if claims.run.is_some() || claims.sub.is_empty() {
            return None;
        }
        let watched = self.watched(upstream)?;
        let required = upstream.account_revision();
        let wait = upstream.time_left().unwrap_or(CATCH_UP).min(CATCH_UP);
        if !watched.caught_up(required, wait).await {
            return None;
        }
        let page = watched.page(query)?;
        self.answered.fetch_add(1, Ordering::Relaxed);
        Some(page)
    }

    /// How many lists are current now (listed, their watch open).
    pub fn current(&self) -> usize {
        self.lock()
            .values()
            .filter(|slot| matches!(slot, Slot::Watching(w) if w.list().listed))
            .count()
    }

    /// How many `ListRuns` calls were answered here since busd started.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listed watch of `upstream`'s origin and token; starts one when there is none (and
    /// none was paused), answering `None` until it has listed.
    fn watched(self: &Arc<Self>, upstream: &Upstream) -> Option<Arc<Watched>> {
        let key = Key {
            origin: upstream.origin().clone(),
            token: upstream.token().expose().to_owned(),
        };
        let now = Instant::now();
        let mut watches = self.lock();
        match watches.get(&key) {
            Some(Slot::Watching(watched)) => {
                watched.touch(now);
                return watched.list().listed.then(|| watched.clone());
            }
            Some(Slot::Paused(until)) if *until > now => return None,
            _ => {}
        }
        watches.retain(|_, slot| !matches!(slot, Slot::Paused(until) if *until <= now));
        if watches.len() >= MAX_WATCHES {
            return None;
        }
        let watched = Arc::new(Watched::new(now));
        watches.insert(key.clone(), Slot::Watching(watched.clone()));
        let listings = self.clone();
        let upstream = upstream.clone().with_timeout(None);
        tokio::spawn(async move {
            let outcome = watched.follow(&upstream).await;
            watched.list().clear();
            let mut watches = listings.lock();
            let ours =
                matches!(watches.get(&key), Some(Slot::Watching(w)) if Arc::ptr_eq(w, &watched));
            if !ours {
                return;
            }
            match outcome {
                Ok(()) => {
                    watches.remove(&key);
                }
                Err(e) => {
                    tracing::debug!(origin = %key.origin, error = %e, "the watch of runs ended");
                    watches.insert(key, Slot::Paused(Instant::now() + PAUSE_AFTER_FAILURE));
                }
            }
        });
        None
    }
}

/// One token's watched list.
struct Watched {
    list: Mutex<List>,
    /// The revision the list is current to (0 until it has listed).
    covered: watch::Sender<u64>,
    /// When a caller last asked for the list.
    asked: Mutex<Instant>,
}

impl Watched {
    fn new(now: Instant) -> Watched {
        Watched {
            list: Mutex::default(),
            covered: watch::Sender::new(0),
            asked: Mutex::new(now),
        }
    }

    fn list(&self) -> MutexGuard<'_, List> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn touch(&self, now: Instant) {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// When the watch is to close unless a caller asks before.
    fn idle_at(&self) -> Instant {
        *self.asked.lock().unwrap_or_else(|e| e.into_inner()) + IDLE
    }

    /// Reads the watch until the runner ends it (`Ok`), it fails, or it is idle (`Ok`).
    async fn follow(&self, upstream: &Upstream) -> Result<(), UpstreamError> {
        let mut stream = upstream.watch_runs().await?;
        loop {
            let idle_at = self.idle_at();
            let line = tokio::select! {
                line = stream.next() => line,
                () = tokio::time::sleep_until(idle_at.into()) => {
                    if self.idle_at() <= Instant::now() {
                        return Ok(());
                    }
                    continue;
                }
            };
            match line {
                None => return Ok(()),
                Some(Err(e)) => return Err(e),
                Some(Ok(line)) => self.apply(line),
            }
        }
    }

    fn apply(&self, line: RunEvent) {
        let revision = line.revision();
        let listed = {
            let mut list = self.list();
            match line {
                RunEvent::Changed { run, .. } => list.upsert(run),
                RunEvent::Deleted { id, .. } => list.remove(&id),
                RunEvent::Listed { .. } => list.listed = true,
                RunEvent::Alive { .. } => {}
            }
            list.listed
        };
        if listed {
            self.covered.send_if_modified(|covered| {
                let newer = revision > *covered;
                *covered = (*covered).max(revision);
                newer
            });
        }
    }

    /// Whether the list is current to `required`, waiting up to `wait` for the watch.
    async fn caught_up(&self, required: u64, wait: Duration) -> bool {
        let mut covered = self.covered.subscribe();
        if *covered.borrow() >= required {
            return true;
        }
        tokio::time::timeout(wait, covered.wait_for(|c| *c >= required))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The page `query` asks for, as the runner would answer it; `None` for what only the
    /// runner can answer (a page token of a run no longer listed, an unknown state).
    fn page(&self, query: &ListRunsQuery) -> Option<RunPage> {
        if query.watch {
            return None;
        }
        let filter = RunFilter::of(query).ok()?;
        let size = query.page_size_or_default() as usize;
        let list = self.list();
        if !list.listed {
            return None;
        }
        let before = match query.page_token.as_deref().filter(|t| !t.is_empty()) {
            None => u64::MAX,
            Some(token) => *list.by_page_token.get(token)?,
        };
        let mut matching = list
            .by_serial
            .range(..before)
            .rev()
            .map(|(_, watched)| watched)
            .filter(|watched| filter.matches(&watched.run));
        let mut runs = Vec::new();
        let mut last = None;
        for watched in matching.by_ref().take(size) {
            runs.push(watched.run.clone());
            last = Some(watched);
        }
        let more = matching.next().is_some();
        Some(RunPage {
            runs,
            next_page_token: last.filter(|_| more).map(|w| w.page_token.clone()),
        })
    }
}

/// The runs of one watch, newest first.
#[derive(Default)]
struct List {
    /// Every run has been received once.
    listed: bool,
    by_serial: BTreeMap<u64, WatchedRun>,
    serial_of: HashMap<String, u64>,
    by_page_token: HashMap<String, u64>,
}

impl List {
    fn upsert(&mut self, watched: WatchedRun) {
        self.serial_of
            .insert(watched.run.id.clone(), watched.serial);
        self.by_page_token
            .insert(watched.page_token.clone(), watched.serial);
        self.by_serial.insert(watched.serial, watched);
    }

    fn remove(&mut self, id: &str) {
        if let Some(serial) = self.serial_of.remove(id)
            && let Some(gone) = self.by_serial.remove(&serial)
        {
            self.by_page_token.remove(&gone.page_token);
        }
    }

    fn clear(&mut self) {
        *self = List::default();
    }
}

#[cfg(test)]
mod tests {
    use bus_api::{Run, RunState};

    use super::*;

    fn run(serial: u64, state: &str, name: Option<&str>) -> WatchedRun {
        let mut run: Run = serde_json::from_value(serde_json::json!({
            "id": format!("run_{serial}"),
            "state": state,
            "image": "busybox",
            "created_at": "2026-12-01T00:00:00Z",
        }))
        .unwrap();
        run.name = name.map(str::to_owned);
        WatchedRun {
            serial,
            page_token: format!("after-{serial}"),
            run,
        }
    }

    fn listed(runs: impl IntoIterator<Item = WatchedRun>, revision: u64) -> Watched {
        let watched = Watched::new(Instant::now());
        for run in runs {
            watched.apply(RunEvent::Changed { revision, run });
        }
        watched.apply(RunEvent::Listed { revision });
        watched
    }

    fn ids(page: &RunPage) -> Vec<&str> {
        page.runs.iter().map(|r| r.id.as_str()).collect()
    }

    fn query(page_size: u32, page_token: Option<&str>) -> ListRunsQuery {
        ListRunsQuery {
            page_size: Some(page_size),
            page_token: page_token.map(str::to_owned),
            ..ListRunsQuery::default()
        }
    }

    #[test]
    fn pages_come_newest_first_with_the_runner_s_tokens() {
        let watched = listed((1..=5).map(|s| run(s, "exited", None)), 10);
        let first = watched.page(&query(2, None)).unwrap();
        assert_eq!(ids(&first), ["run_5", "run_4"]);
        assert_eq!(first.next_page_token.as_deref(), Some("after-4"));
        let second = watched.page(&query(2, Some("after-4"))).unwrap();
        assert_eq!(ids(&second), ["run_3", "run_2"]);
        let last = watched.page(&query(2, Some("after-2"))).unwrap();
        assert_eq!(ids(&last), ["run_1"]);
        assert_eq!(last.next_page_token, None);
        // Exactly a page left: no token, as the runner answers.
        let exact = watched.page(&query(5, None)).unwrap();
        assert_eq!((exact.runs.len(), exact.next_page_token), (5, None));
        // The default page size applies to 0.
        assert_eq!(watched.page(&query(0, None)).unwrap().runs.len(), 5);
    }

    #[test]
    fn filters_match_the_runner_s_and_the_rest_is_left_to_it() {
        let watched = listed(
            [
                run(1, "exited", Some("web")),
                run(2, "running", Some("web")),
                run(3, "running", None),
            ],
            4,
        );
        let running = ListRunsQuery {
            state: Some("running, queued".into()),
            ..ListRunsQuery::default()
        };
        assert_eq!(ids(&watched.page(&running).unwrap()), ["run_3", "run_2"]);
        let named = ListRunsQuery {
            name: Some("web".into()),
            ..ListRunsQuery::default()
        };
        assert_eq!(ids(&watched.page(&named).unwrap()), ["run_2", "run_1"]);
        // An unknown state is the runner's to refuse; so is a page token of no listed run.
        let unknown = ListRunsQuery {
            state: Some("runing".into()),
            ..ListRunsQuery::default()
        };
        assert!(watched.page(&unknown).is_none());
        assert!(watched.page(&query(1, Some("after-9"))).is_none());
        assert!(watched.page(&ListRunsQuery::watch()).is_none());
    }

    #[test]
    fn changes_and_deletions_apply_and_nothing_answers_before_the_listing() {
        let watched = Watched::new(Instant::now());
        watched.apply(RunEvent::Changed {
            revision: 3,
            run: run(1, "running", None),
        });
        assert!(watched.page(&ListRunsQuery::default()).is_none());
        assert_eq!(*watched.covered.borrow(), 0);
        watched.apply(RunEvent::Listed { revision: 3 });
        watched.apply(RunEvent::Changed {
            revision: 4,
            run: run(2, "queued", None),
        });
        watched.apply(RunEvent::Changed {
            revision: 5,
            run: run(1, "exited", None),
        });
        let page = watched.page(&ListRunsQuery::default()).unwrap();
        assert_eq!(ids(&page), ["run_2", "run_1"]);
        assert_eq!(page.runs[1].state, RunState::Exited);
        watched.apply(RunEvent::Deleted {
            revision: 6,
            id: "run_2".into(),
        });
        assert_eq!(
            ids(&watched.page(&ListRunsQuery::default()).unwrap()),
            ["run_1"]
        );
        assert_eq!(*watched.covered.borrow(), 6);
        watched.list().clear();
        assert!(watched.page(&ListRunsQuery::default()).is_none());
    }

    #[tokio::test]
    async fn a_list_behind_waits_for_its_watch_and_no_longer() {
        let watched = Arc::new(listed([run(1, "running", None)], 7));
        assert!(watched.caught_up(7, Duration::ZERO).await);
        assert!(!watched.caught_up(8, Duration::from_millis(20)).await);
        let later = watched.clone();
        let line = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            later.apply(RunEvent::Alive { revision: 8 });
        });
        assert!(watched.caught_up(8, Duration::from_secs(10)).await);
        line.await.unwrap();
    }
}
