//! Outlier detection (passive health checking) of a backend's endpoints: an endpoint whose last
//! `consecutive_failures` exchanges all failed (5xx, or an upstream-side error: connect failure,
//! reset, timeout) is ejected from balancing for `base_ejection_time` × the number of times it was
//! ejected; once that time passes it gets one probe request — readmitted if it succeeds, ejected
//! again (for longer) if it fails. At most `max_ejection_percent` of the endpoints are ejected at
//! once, and always at least one endpoint stays (Envoy's outlier detection and Linkerd's failure
//! accrual work this way).
//!
//! The state of each endpoint lives in its `Load`, so it survives state snapshots like the rest
//! of what the balancer learnt.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Outlier detection settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct OutlierConfig {
    /// Failures in a row that eject an endpoint.
    pub(crate) consecutive_failures: u32,
    /// The first ejection's length; the n-th lasts n times this.
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) base_ejection_time: Duration,
    /// The most endpoints ejected at once, in percent of the ready ones (at least one may be).
    pub(crate) max_ejection_percent: f64,
}

/// Defaults (the proto's).
pub(crate) const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_MAX_EJECTION_PERCENT: f64 = 10.0;

impl OutlierConfig {
    /// How many of `ready` endpoints may be ejected at once: the percentage, at least one, never
    /// all.
    pub(crate) fn max_ejected(&self, ready: usize) -> usize {
        let by_percent = (ready as f64 * self.max_ejection_percent / 100.0).floor() as usize;
        by_percent.max(1).min(ready.saturating_sub(1))
    }
}

/// One endpoint's outlier state.
#[derive(Debug, Default)]
pub(crate) struct Health {
    consecutive: AtomicU32,
    /// Ejected until then (nanoseconds since the load's epoch); 0: not ejected.
    ejected_until_ns: AtomicU64,
    ejections: AtomicU32,
    /// A probe request is in flight (the ejection time passed).
    probing: AtomicBool,
}

/// What a pick may do with an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// In balancing.
    Healthy,
    /// Its ejection time passed and no probe is out: the next request to it is the probe.
    Probe,
    /// Ejected, or its probe is out.
    Out,
}

impl Health {
    /// The endpoint's standing at `now_ns`.
    pub(crate) fn standing(&self, now_ns: u64) -> Standing {
        match self.ejected_until_ns.load(Ordering::Relaxed) {
            0 => Standing::Healthy,
            until if now_ns < until => Standing::Out,
            _ if self.probing.load(Ordering::Relaxed) => Standing::Out,
            _ => Standing::Probe,
        }
    }

    /// Whether it is ejected (probing included).
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_until_ns.load(Ordering::Relaxed) != 0
    }

    /// Takes the probe slot; `false` when another request took it first.
    pub(crate) fn start_probe(&self) -> bool {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Records an exchange: `probe` if it was the probe. `may_eject` says whether another
    /// ejection fits the cap (asked only when this failure would eject). Returns whether the
    /// endpoint was ejected by it.
    pub(crate) fn record(
        &self,
        failed: bool,
        probe: bool,
        now_ns: u64,
        config: &OutlierConfig,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        if probe {
            self.probing.store(false, Ordering::Release);
            if failed {
                self.eject(now_ns, config);
                return true;
            }
            self.consecutive.store(0, Ordering::Relaxed);
            self.ejected_until_ns.store(0, Ordering::Relaxed);
            return false;
        }
        if !failed {
            self.consecutive.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= config.consecutive_failures && !self.is_ejected() && may_eject() {
            self.eject(now_ns, config);
            return true;
        }
        false
    }

    fn eject(&self, now_ns: u64, config: &OutlierConfig) {
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = config.base_ejection_time.saturating_mul(times);
        self.ejected_until_ns.store(
            now_ns.saturating_add(length.as_nanos() as u64).max(1),
            Ordering::Relaxed,
        );
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// Times ejected so far (`/config`).
    pub(crate) fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }
}
