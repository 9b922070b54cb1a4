//! Slow start (`load_balancer.slow_start`): an endpoint that joins a backend in a discovery update,
//! or is readmitted after an outlier ejection, gets a share of its traffic growing linearly from
//! [`MIN_SHARE`] to all of it over the window — a cold cache, JIT or connection pool is not hit by
//! its full share at once (Envoy's slow start, with aggression 1). Each algorithm applies the share
//! its own way: round robin skips the endpoint's turn with probability 1 − share; P2C and least
//! request divide its weight by it, so its cost rises (a load penalty).
//!
//! Endpoints of the first state, or a balancer whose endpoints are all new, start at full share:
//! there is no warm peer to take the rest of the traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The share a warming endpoint starts with (Envoy's `min_weight_percent` default).
pub(crate) const MIN_SHARE: f64 = 0.1;

/// When an endpoint began warming up: nanoseconds since its load's epoch, plus one (0: warm).
#[derive(Debug, Default)]
pub(crate) struct Warmup(AtomicU64);

impl Warmup {
    /// Starts (or restarts) the window at `now_ns`.
    pub(crate) fn begin(&self, now_ns: u64) {
        self.0.store(now_ns.saturating_add(1), Ordering::Relaxed);
    }

    /// The endpoint's share of its traffic at `now_ns` under a window of `window`: 1 when warm;
    /// marks it warm once the window has passed (so later reads are one load).
    pub(crate) fn share(&self, now_ns: u64, window: Duration) -> f64 {
        let since = self.0.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let elapsed = now_ns.saturating_sub(since - 1);
        let share = linear(Duration::from_nanos(elapsed), window);
        if share >= 1.0 {
            self.0.store(0, Ordering::Relaxed);
        }
        share
    }
}

/// The share after `elapsed` of a `window`: linear from [`MIN_SHARE`] to 1.
pub(crate) fn linear(elapsed: Duration, window: Duration) -> f64 {
    if window.is_zero() {
        return 1.0;
    }
    let progress = elapsed.as_secs_f64() / window.as_secs_f64();
    progress.clamp(MIN_SHARE, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_grows_linearly_from_the_minimum_to_all() {
        let w = Duration::from_secs(10);
        assert_eq!(linear(Duration::ZERO, w), MIN_SHARE);
        assert_eq!(linear(Duration::from_millis(500), w), MIN_SHARE);
        assert_eq!(linear(Duration::from_secs(5), w), 0.5);
        assert_eq!(linear(Duration::from_secs(20), w), 1.0);
        assert_eq!(linear(Duration::from_secs(1), Duration::ZERO), 1.0);
    }

    #[test]
    fn a_warmup_ends_after_its_window() {
        let w = Duration::from_secs(10);
        let warmup = Warmup::default();
        assert_eq!(warmup.share(0, w), 1.0, "warm until begun");
        warmup.begin(1_000);
        assert_eq!(warmup.share(1_000 + 5_000_000_000, w), 0.5);
        assert_eq!(warmup.share(1_000 + 10_000_000_000, w), 1.0);
        assert_eq!(warmup.0.load(Ordering::Relaxed), 0, "marked warm");
        warmup.begin(0);
        assert_eq!(warmup.share(2_500_000_000, w), 0.25, "restarted at 0");
    }
}
