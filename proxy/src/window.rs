//! A sliding window of two counters (requests and retries, requests and failures), in ten slots
//! each tagged with the slot-time it counts, so adding costs two relaxed atomic operations and no
//! lock. Used by the retry budget (`retry::Budget`) and the circuit breaker
//! (`backend::Breaker`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Slots per window: the window slides in tenths.
const SLOTS: u64 = 10;

/// Counts of two things over the last `window`.
#[derive(Debug)]
pub(crate) struct Window {
    slot_ns: u64,
    epoch: Instant,
    slots: [Slot; SLOTS as usize],
}

#[derive(Debug, Default)]
struct Slot {
    /// The slot-time (since `epoch`, in slot widths) this slot counts, plus one (0: never used).
    tick: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

impl Window {
    /// A window over the last `window` (at least 10 ms).
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            slot_ns: (window.as_nanos() as u64 / SLOTS).max(1_000_000),
            epoch: Instant::now(),
            slots: Default::default(),
        }
    }

    /// The window's start (for tests that pass their own `now`).
    #[cfg(test)]
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    fn tick(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64 / self.slot_ns + 1
    }

    /// Adds `a` and `b` at `now`.
    pub(crate) fn add(&self, now: Instant, a: u64, b: u64) {
        let tick = self.tick(now);
        let slot = &self.slots[(tick % SLOTS) as usize];
        let seen = slot.tick.load(Ordering::Relaxed);
        if seen != tick
            && slot
                .tick
                .compare_exchange(seen, tick, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.a.store(0, Ordering::Relaxed);
            slot.b.store(0, Ordering::Relaxed);
        }
        if a > 0 {
            slot.a.fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            slot.b.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// The two sums over the window ending at `now`.
    pub(crate) fn sums(&self, now: Instant) -> (u64, u64) {
        let tick = self.tick(now);
        let (mut a, mut b) = (0, 0);
        for slot in &self.slots {
            let t = slot.tick.load(Ordering::Relaxed);
            if t != 0 && t + SLOTS > tick && t <= tick {
                a += slot.a.load(Ordering::Relaxed);
                b += slot.b.load(Ordering::Relaxed);
            }
        }
        (a, b)
    }

    /// Forgets everything counted.
    pub(crate) fn clear(&self) {
        for slot in &self.slots {
            slot.tick.store(0, Ordering::Relaxed);
        }
    }
}
