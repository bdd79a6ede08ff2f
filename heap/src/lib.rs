//! # bus-heap — memory given back after a burst of calls
//!
//! glibc's malloc keeps what each thread's arena once held: after a thousand streams close, a
//! server stays at that high-water mark although the memory is free, and only what sits at the
//! top of an arena is ever returned by itself. bus-runner calls [`trim_periodically`] once at
//! start (busd allocates with mimalloc, which gives freed pages back by itself); every
//! [`TRIM_EVERY`] it hands the free pages of every arena back to the system (`malloc_trim`),
//! which takes well under a millisecond for heaps of its size.
//! Without glibc (musl, other systems) [`trim`] does nothing.

use std::time::Duration;

/// How often the heap is trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims the heap every [`TRIM_EVERY`], on the blocking pool, forever: spawn it.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if tokio::task::spawn_blocking(trim).await.is_err() {
            return;
        }
    }
}

/// Hands the free pages of every malloc arena back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() {
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it works on glibc's own
    // arenas under their locks, so other threads may allocate and free meanwhile.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Hands the free pages of every malloc arena back to the system (nothing to do here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// This process's anonymous resident memory (heap and stacks), in KiB.
    fn anon_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn freed_pages_held_below_a_live_allocation_are_given_back() {
        const CHUNKS: usize = 64 * 1024;
        // On a thread of its own (so in an arena other than the main one), 128 MiB in 2 KiB
        // chunks; every 256th stays allocated, so no arena can shrink from its top by itself.
        let (kept, before, after_free) = std::thread::spawn(|| {
            let before = anon_kib();
            let mut chunks: Vec<Vec<u8>> = (0..CHUNKS).map(|i| vec![i as u8; 2048]).collect();
            let kept: Vec<Vec<u8>> = chunks.iter_mut().step_by(256).map(std::mem::take).collect();
            drop(chunks);
            (kept, before, anon_kib())
        })
        .join()
        .unwrap();
        super::trim();
        let after_trim = anon_kib();
        assert_eq!(kept.len(), CHUNKS / 256);
        assert!(
            after_free > before + 64 * 1024,
            "freeing alone gave the memory back ({before} → {after_free} KiB): nothing to show"
        );
        assert!(
            after_trim + 64 * 1024 < after_free,
            "trim gave back too little: {after_free} → {after_trim} KiB"
        );
    }
}
