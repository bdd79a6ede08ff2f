//! Builds in flight, which the image service keeps beside its records.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Builds in flight: how to cancel each, and how followers learn of new output.
#[derive(Debug, Default)]
pub struct Live {
    builds: Mutex<HashMap<String, Arc<LiveBuild>>>,
}

/// One build in flight.
#[derive(Debug)]
pub struct LiveBuild {
    pub(super) cancel: watch::Sender<bool>,
    /// The last stored seq and whether the build has ended; changes wake log followers.
    pub progress: watch::Sender<(u64, bool)>,
}

impl Live {
    /// The build `id`, if it is in flight.
    pub fn get(&self, id: &str) -> Option<Arc<LiveBuild>> {
        self.lock().get(id).cloned()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveBuild>>> {
        self.builds.lock().unwrap_or_else(|e| e.into_inner())
    }
}
