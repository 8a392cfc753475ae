//! Memory given back after a burst, once the relay has gone quiet.
//!
//! A burst (a restart with every user catching up on a backlog, a wave of registrations) leaves
//! two kinds of memory behind that nothing uses any more: the SQLite queue connection's page
//! cache (up to 64 MiB, kept for the connection's life), and the pages glibc's allocator keeps
//! on its free lists, which it returns to the system only from the top of each heap. After 500
//! users caught up on 1,024 messages each, the relay held 190 MB of anonymous memory of which
//! 17 MB was live; released, 41 MB (docs/PERFORMANCE.md, "Memory").
//!
//! Both releases cost little, but not nothing while traffic flows: a cache released under load
//! is read back at once, and glibc's trim walks every arena holding its lock, stalling any
//! thread that allocates there. So they run only when the relay has been quiet for a whole
//! check interval after at least a burst's worth of activity.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::storage::Storage;

/// How often the relay checks whether it has gone quiet; memory goes back between one and two
/// intervals after a burst ends.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// At most this much activity in an interval counts as quiet: a few users chatting, or
/// reconnecting, on a small relay.
const QUIET_EVENTS: u64 = 100;
/// Activity since the last release that makes a release worth it: less leaves too little
/// behind to be seen.
const BURST_EVENTS: u64 = 1_000;

/// Decides, from a running count of events, when a burst has been followed by quiet.
#[derive(Debug, Default)]
struct QuietAfterBurst {
    /// The count at the previous check.
    last: u64,
    /// The count at the last release.
    released_at: u64,
}

impl QuietAfterBurst {
    /// Takes the count at this check; true if memory should be released now.
    fn observe(&mut self, count: u64) -> bool {
        let in_interval = count.saturating_sub(self.last);
        self.last = count;
        if in_interval <= QUIET_EVENTS && count.saturating_sub(self.released_at) >= BURST_EVENTS {
            self.released_at = count;
            return true;
        }
        false
    }
}

/// The events that leave memory behind: connections, logins, messages stored and acknowledged.
fn activity(metrics: &Metrics) -> u64 {
    metrics.connections_total.get()
        + metrics.logins.get()
        + metrics.messages_stored.get()
        + metrics.messages_acknowledged.get()
}

/// Checks every [`CHECK_EVERY`] and releases memory after each burst, until aborted.
pub(crate) async fn run_release_when_quiet(metrics: Arc<Metrics>, storage: Arc<dyn Storage>) {
    let mut quiet = QuietAfterBurst { last: activity(&metrics), released_at: 0 };
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !quiet.observe(activity(&metrics)) {
            continue;
        }
        storage.release_memory().await;
        metrics.memory_releases.inc();
        match tokio::task::spawn_blocking(trim_allocator).await {
            Ok(released) => tracing::debug!(released, "memory released after a burst"),
            Err(error) => tracing::warn!(%error, "releasing freed memory failed"),
        }
    }
}

/// Asks glibc's allocator to return every whole free page of its arenas to the system; true if
/// it returned any. Elsewhere there is no such call, and nothing is done.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(unsafe_code, reason = "malloc_trim has no safe binding; it is the only unsafe call")]
fn trim_allocator() -> bool {
    // SAFETY: malloc_trim takes no pointer and touches only the allocator's own free lists,
    // under the allocator's locks; it may be called from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_allocator() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_quiet_releases_once() {
        let mut quiet = QuietAfterBurst::default();
        assert!(!quiet.observe(50), "quiet, but no burst yet");
        assert!(!quiet.observe(20_000), "in the middle of a burst");
        assert!(!quiet.observe(40_000), "still in it");
        assert!(quiet.observe(40_010), "quiet after the burst");
        assert!(!quiet.observe(40_020), "released already; nothing new since");
        assert!(!quiet.observe(40_020 + QUIET_EVENTS));
    }

    #[test]
    fn steady_traffic_is_not_quiet() {
        let mut quiet = QuietAfterBurst::default();
        let mut count = 0;
        for _ in 0..100 {
            count += QUIET_EVENTS + 1;
            assert!(!quiet.observe(count), "{count}");
        }
        // The traffic stops: what it left behind goes back.
        assert!(quiet.observe(count));
    }

    #[test]
    fn small_activity_adds_up_to_a_burst() {
        let mut quiet = QuietAfterBurst::default();
        let mut releases = 0;
        for check in 1..=40 {
            releases += usize::from(quiet.observe(check * QUIET_EVENTS));
        }
        // 4,000 events in quiet steps: a release every 1,000.
        assert_eq!(releases, 4);
    }

    /// Memory freed between live allocations stays with glibc until trimmed (free() returns
    /// only the top of a heap); the trim returns it and leaves the live allocations alone.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trimming_returns_pages_freed_between_live_allocations() {
        let (freed, kept): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            (0..1_000u16).map(|i| (vec![1; 64 * 1024], vec![(i % 251) as u8; 64])).unzip();
        drop(freed);
        assert!(trim_allocator(), "64 MB free between live allocations, none returned");
        assert!(
            kept.iter()
                .enumerate()
                .all(|(i, live)| live.iter().all(|&b| usize::from(b) == i % 251))
        );
    }
}
