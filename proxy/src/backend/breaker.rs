//! A failure-ratio circuit breaker for one backend (per proxy): **closed** — requests flow, and
//! their outcomes are counted over a sliding window; **open** once the window holds at least
//! `min_requests` and failures ÷ requests reaches the threshold — requests are answered 503
//! `circuit-open` at once; **half-open** after `open_duration` — up to `half_open_max_requests`
//! probe requests go through; one failing probe opens it again, the probes all succeeding close it.
//! An operator can force it open or closed.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge};
use serde::Serialize;
use tokio::time::Instant;

use crate::window::Window;

/// A breaker's settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct BreakerConfig {
    /// failures ÷ requests at or above which it opens; `None`: only the override acts.
    pub(crate) failure_ratio_threshold: Option<f64>,
    pub(crate) min_requests: u32,
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) window: Duration,
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) open_duration: Duration,
    pub(crate) half_open_max_requests: u32,
    #[serde(rename = "override")]
    pub(crate) force: BreakerOverride,
}

impl BreakerConfig {
    /// Whether `other` counts failures the same way (a changed override keeps the counts).
    pub(crate) fn same_window(&self, other: &BreakerConfig) -> bool {
        self.failure_ratio_threshold == other.failure_ratio_threshold
            && self.min_requests == other.min_requests
            && self.window == other.window
            && self.open_duration == other.open_duration
            && self.half_open_max_requests == other.half_open_max_requests
    }
}

/// The operator's override.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BreakerOverride {
    /// The breaker follows the traffic.
    #[default]
    None,
    /// Every request is refused.
    ForceOpen,
    /// The breaker never opens.
    ForceClosed,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The breaker's state.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    /// When it last opened (nanoseconds since `epoch`).
    opened_ns: AtomicU64,
    /// Probes in flight while half-open.
    probes: AtomicU32,
    /// Requests and failures while closed.
    counts: Window,
    epoch: Instant,
    metrics: BreakerMetrics,
}

/// `shoal_backend_circuit_state` (0 closed, 1 open, 2 half-open) and the transitions into each.
#[derive(Debug)]
struct BreakerMetrics {
    state: Gauge,
    to_open: Counter,
    to_half_open: Counter,
    to_closed: Counter,
}

impl BreakerMetrics {
    fn new(service: &str) -> Self {
        use crate::metrics::names::{CIRCUIT_STATE, CIRCUIT_TRANSITIONS};
        let to = |state: &'static str| metrics::counter!(CIRCUIT_TRANSITIONS, "service" => service.to_string(), "to" => state);
        Self {
            state: metrics::gauge!(CIRCUIT_STATE, "service" => service.to_string()),
            to_open: to("open"),
            to_half_open: to("half_open"),
            to_closed: to("closed"),
        }
    }
}

/// What the breaker decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: send it, and report how it went.
    Counted,
    /// Half-open: send it as a probe, and report how it went.
    Probe,
    /// Forced closed: send it; its outcome is not counted.
    Uncounted,
    /// Open: refuse it.
    Refused,
}

impl Breaker {
    /// A closed breaker of `service` (its metrics' label).
    pub(crate) fn new(config: BreakerConfig, service: &str) -> Self {
        Self {
            counts: Window::new(config.window),
            config,
            state: AtomicU8::new(CLOSED),
            opened_ns: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            epoch: Instant::now(),
            metrics: BreakerMetrics::new(service),
        }
    }

    /// Sets the state gauge under the operator's override `force` (forced open shows as open,
    /// forced closed as closed).
    pub(crate) fn show_state(&self, force: BreakerOverride) {
        let state = match force {
            BreakerOverride::ForceOpen => OPEN,
            BreakerOverride::ForceClosed => CLOSED,
            BreakerOverride::None => self.state.load(Ordering::Relaxed),
        };
        self.metrics.state.set(f64::from(state));
    }

    fn ns(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Whether a request may go now; `force` is the operator's override (current, where the
    /// rest of the config may be an earlier snapshot's).
    pub(crate) fn admit(&self, now: Instant, force: BreakerOverride) -> Admission {
        match force {
            BreakerOverride::ForceOpen => return Admission::Refused,
            BreakerOverride::ForceClosed => return Admission::Uncounted,
            BreakerOverride::None => {}
        }
        match self.state.load(Ordering::Acquire) {
            CLOSED => Admission::Counted,
            OPEN => {
                let open_for = self
                    .ns(now)
                    .saturating_sub(self.opened_ns.load(Ordering::Relaxed));
                if open_for < self.config.open_duration.as_nanos() as u64 {
                    return Admission::Refused;
                }
                // The first request after the open period turns it half-open.
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.metrics.state.set(f64::from(HALF_OPEN));
                    self.metrics.to_half_open.increment(1);
                }
                self.probe()
            }
            _ => self.probe(),
        }
    }

    fn probe(&self) -> Admission {
        let max = self.config.half_open_max_requests;
        let taken = self
            .probes
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |p| {
                (p < max).then_some(p + 1)
            });
        if taken.is_ok() {
            Admission::Probe
        } else {
            Admission::Refused
        }
    }

    /// Reports how an admitted request went.
    pub(crate) fn record(&self, admission: Admission, failed: bool, now: Instant) {
        match admission {
            Admission::Counted => {
                self.counts.add(now, 1, u64::from(failed));
                let Some(threshold) = self.config.failure_ratio_threshold else {
                    return;
                };
                if !failed {
                    return;
                }
                let (requests, failures) = self.counts.sums(now);
                if requests >= u64::from(self.config.min_requests)
                    && failures as f64 >= threshold * requests as f64
                {
                    self.open(now, CLOSED);
                }
            }
            Admission::Probe => {
                self.probes.fetch_sub(1, Ordering::AcqRel);
                if failed {
                    self.open(now, HALF_OPEN);
                } else if self
                    .state
                    .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    self.counts.clear();
                    self.metrics.state.set(f64::from(CLOSED));
                    self.metrics.to_closed.increment(1);
                    tracing::info!("circuit breaker closed: a probe request succeeded");
                }
            }
            Admission::Uncounted | Admission::Refused => {}
        }
    }

    /// A request admitted as a probe ended without a verdict (the client went away): its probe
    /// slot is free again.
    pub(crate) fn abandon(&self, admission: Admission) {
        if admission == Admission::Probe {
            self.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn open(&self, now: Instant, from: u8) {
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.opened_ns.store(self.ns(now), Ordering::Relaxed);
            self.metrics.state.set(f64::from(OPEN));
            self.metrics.to_open.increment(1);
            tracing::warn!(
                open_for = ?self.config.open_duration,
                "circuit breaker opened: requests fail fast with circuit-open"
            );
        }
    }

    /// `closed`, `open`, `half_open`, or the override (`/config`).
    pub(crate) fn state_name(&self, force: BreakerOverride) -> &'static str {
        match (force, self.state.load(Ordering::Relaxed)) {
            (BreakerOverride::ForceOpen, _) => "forced_open",
            (BreakerOverride::ForceClosed, _) => "forced_closed",
            (_, CLOSED) => "closed",
            (_, OPEN) => "open",
            _ => "half_open",
        }
    }

    /// The state name of a breaker no request has used yet.
    pub(crate) fn idle_state_name(force: BreakerOverride) -> &'static str {
        match force {
            BreakerOverride::ForceOpen => "forced_open",
            BreakerOverride::ForceClosed => "forced_closed",
            BreakerOverride::None => "closed",
        }
    }
}

#[cfg(test)]
mod tests;
