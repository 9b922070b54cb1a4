//! Outlier detection (passive health checking) of a backend's endpoints: an endpoint whose last
//! `consecutive_failures` exchanges all failed (5xx, or an upstream-side error: connect failure,
//! reset, timeout) is ejected from balancing for `base_ejection_time` × the number of times it was
//! ejected; once that time passes it gets one probe request — readmitted if it succeeds, ejected
//! again (for longer) if it fails. At most `max_ejection_percent` of the endpoints are ejected at
//! once, and always at least one endpoint stays (Envoy's outlier detection and Linkerd's failure
//! accrual work this way). Success-rate ejection (`success_rate`) ejects the same way, from an
//! evaluation every interval (`super::success_rate`).
//!
//! The state of each endpoint lives in its `Load`, so it survives state snapshots like the rest
//! of what the balancer learnt.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::success_rate::SuccessRateConfig;

/// Outlier detection settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct OutlierConfig {
    /// Failures in a row that eject an endpoint (`None`: only the success rate ejects).
    pub(crate) consecutive_failures: Option<u32>,
    /// The first ejection's length; the n-th lasts n times this.
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) base_ejection_time: Duration,
    /// The most endpoints ejected at once, in percent of the ready ones (at least one may be).
    pub(crate) max_ejection_percent: f64,
    /// Ejection by success rate relative to the peers, evaluated every interval.
    pub(crate) success_rate: Option<SuccessRateConfig>,
    /// The backend's qualified name, the metrics' `service` label.
    #[serde(skip)]
    pub(crate) service: Arc<str>,
}

/// Why an endpoint was ejected (the `reason` label of `shoal_outlier_ejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EjectionReason {
    /// `consecutive_5xx` failures in a row.
    ConsecutiveFailures,
    /// The probe after its ejection time failed: ejected again, for longer.
    ProbeFailed,
    /// Its success rate over an interval was far below its peers'.
    SuccessRate,
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

    /// Counts an ejection of one of the backend's endpoints.
    pub(crate) fn ejected(&self, reason: EjectionReason) {
        let reason = match reason {
            EjectionReason::ConsecutiveFailures => "consecutive_failures",
            EjectionReason::ProbeFailed => "probe_failed",
            EjectionReason::SuccessRate => "success_rate",
        };
        metrics::counter!(
            crate::metrics::names::OUTLIER_EJECTIONS,
            "service" => self.service.to_string(),
            "reason" => reason,
        )
        .increment(1);
    }
}

impl OutlierConfig {
    /// Sets `shoal_outlier_ejected_endpoints`: `count` of the backend's endpoints are ejected now
    /// (at an ejection or a readmission, a cold path: the gauge is looked up here).
    pub(crate) fn ejected_now(&self, count: usize) {
        metrics::gauge!(
            crate::metrics::names::OUTLIER_EJECTED,
            "service" => self.service.to_string(),
        )
        .set(count as f64);
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
    /// Exchanges and failures since the last success-rate evaluation (counted only with it).
    window_requests: AtomicU32,
    window_failures: AtomicU32,
    /// The success rate of the last evaluated interval, stored as the bits of 1 + rate (0: none,
    /// the endpoint had too few exchanges or success-rate ejection is off).
    success_rate: AtomicU64,
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
        if config.success_rate.is_some() {
            self.window_requests.fetch_add(1, Ordering::Relaxed);
            if failed {
                self.window_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !failed {
            self.consecutive.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(limit) = config.consecutive_failures else {
            return false;
        };
        if n >= limit && !self.is_ejected() && may_eject() {
            self.eject(now_ns, config);
            return true;
        }
        false
    }

    /// Ejects the endpoint at `now_ns` for its next ejection time.
    pub(crate) fn eject(&self, now_ns: u64, config: &OutlierConfig) {
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

    /// Takes the exchanges and failures counted since the last call.
    pub(crate) fn take_window(&self) -> (u32, u32) {
        let requests = self.window_requests.swap(0, Ordering::Relaxed);
        let failures = self.window_failures.swap(0, Ordering::Relaxed);
        (requests, failures)
    }

    /// Records the last interval's success rate.
    pub(crate) fn set_success_rate(&self, rate: Option<f64>) {
        let bits = rate.map_or(0, |r| (1.0 + r).to_bits());
        self.success_rate.store(bits, Ordering::Relaxed);
    }

    /// The last evaluated interval's success rate (`/config`).
    pub(crate) fn success_rate(&self) -> Option<f64> {
        match self.success_rate.load(Ordering::Relaxed) {
            0 => None,
            bits => Some(f64::from_bits(bits) - 1.0),
        }
    }
}
