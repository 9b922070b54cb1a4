//! Success-rate outlier detection (Envoy's model): every `interval`, each endpoint that served at
//! least `request_volume` exchanges in it has a success rate; when at least `minimum_hosts`
//! endpoints have one, those below mean − `stdev_factor` × standard deviation are ejected, the
//! worst first, within `max_ejection_percent` — an endpoint failing half its requests among
//! healthy peers leaves balancing although it never fails `consecutive_5xx` times in a row.
//!
//! The evaluation runs off the request path, in a task per backend ([`Evaluation`]); requests
//! only count their outcome in the endpoint's `Health`. The evaluation and the counts outlive
//! state snapshots: a discovery update hands the task the new snapshot's endpoints
//! ([`Evaluation::set_members`]); the task ends when no snapshot holds the evaluation any more.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::Load;
use super::outlier::{EjectionReason, OutlierConfig};

/// Success-rate ejection settings, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SuccessRateConfig {
    /// How often the rates are evaluated (each over the interval just ended).
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) interval: Duration,
    /// Endpoints with `request_volume` exchanges needed for an evaluation.
    pub(crate) minimum_hosts: u32,
    /// Exchanges an endpoint must have in the interval to be evaluated.
    pub(crate) request_volume: u32,
    /// Standard deviations below the mean that eject.
    pub(crate) stdev_factor: f64,
}

/// Defaults (the proto's, Envoy's).
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_MINIMUM_HOSTS: u32 = 5;
pub(crate) const DEFAULT_REQUEST_VOLUME: u32 = 100;
pub(crate) const DEFAULT_STDEV_FACTOR: f64 = 1.9;
/// The largest `stdev_factor` (the control plane's `MAX_STDEV_FACTOR`).
pub(crate) const MAX_STDEV_FACTOR: f64 = 10.0;

/// Of the endpoints' `(exchanges, failures)` over one interval, the indices of those to eject,
/// lowest success rate first; `None` entries (ejected endpoints) take no part.
pub(crate) fn outliers(windows: &[Option<(u32, u32)>], config: &SuccessRateConfig) -> Vec<usize> {
    let rates: Vec<(usize, f64)> = windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| rate(*w, config).map(|r| (i, r)))
        .collect();
    if rates.is_empty() || rates.len() < config.minimum_hosts as usize {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - config.stdev_factor * variance.sqrt();
    let mut below: Vec<(usize, f64)> = rates.into_iter().filter(|(_, r)| *r < threshold).collect();
    below.sort_by(|a, b| a.1.total_cmp(&b.1));
    below.into_iter().map(|(i, _)| i).collect()
}

/// An endpoint's success rate over a window, when it had enough exchanges to be evaluated.
pub(crate) fn rate(window: Option<(u32, u32)>, config: &SuccessRateConfig) -> Option<f64> {
    let (requests, failures) = window?;
    (requests > 0 && requests >= config.request_volume)
        .then(|| 1.0 - f64::from(failures.min(requests)) / f64::from(requests))
}

/// One endpoint the evaluation looks at.
type Member = (SocketAddr, Arc<Load>);

/// A backend's success-rate evaluation: its settings, the current snapshot's endpoints, and the
/// task that evaluates them every interval (running while the evaluation is alive).
#[derive(Debug)]
pub(crate) struct Evaluation {
    config: OutlierConfig,
    members: ArcSwap<Vec<Member>>,
}

impl Evaluation {
    /// An evaluation under `config` (which has `success_rate`), its task spawned on the current
    /// Tokio runtime (none outside one: state built in unit tests is never evaluated).
    pub(crate) fn spawn(config: OutlierConfig) -> Arc<Self> {
        let interval = config
            .success_rate
            .as_ref()
            .map_or(DEFAULT_INTERVAL, |s| s.interval);
        let evaluation = Arc::new(Self {
            config,
            members: ArcSwap::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(Arc::downgrade(&evaluation), interval));
        }
        evaluation
    }

    /// The settings it evaluates by (an update keeps the evaluation only when they stay).
    pub(crate) fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Hands it the endpoints of the snapshot now serving.
    pub(crate) fn set_members(&self, members: Vec<Member>) {
        self.members.store(Arc::new(members));
    }

    /// Ends an interval: takes every endpoint's counts, records its rate, and ejects the
    /// outliers the cap allows.
    pub(crate) fn evaluate(&self) {
        let Some(config) = &self.config.success_rate else {
            return;
        };
        let members = self.members.load();
        let windows: Vec<Option<(u32, u32)>> = members
            .iter()
            .map(|(_, load)| {
                let window = load.health.take_window();
                // An ejected endpoint's few exchanges (its probe) say nothing of its rate.
                let window = (!load.health.is_ejected()).then_some(window);
                load.health.set_success_rate(rate(window, config));
                window
            })
            .collect();
        let ejected = members
            .iter()
            .filter(|(_, l)| l.health.is_ejected())
            .count();
        let room = self
            .config
            .max_ejected(members.len())
            .saturating_sub(ejected);
        let outliers = outliers(&windows, config);
        if !outliers.is_empty() {
            self.config.ejected_now(ejected + outliers.len().min(room));
        }
        for i in outliers.into_iter().take(room) {
            let (addr, load) = &members[i];
            load.health.eject(load.now_ns(), &self.config);
            self.config.ejected(EjectionReason::SuccessRate);
            tracing::warn!(
                endpoint = %addr,
                success_rate = load.health.success_rate(),
                ejections = load.health.ejections(),
                "endpoint ejected from load balancing by outlier detection: success rate far below its peers'"
            );
        }
    }
}

/// The evaluation task: every `interval` while the evaluation lives.
async fn run(evaluation: Weak<Evaluation>, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(evaluation) = evaluation.upgrade() else {
            return;
        };
        evaluation.evaluate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(minimum_hosts: u32, request_volume: u32, stdev_factor: f64) -> SuccessRateConfig {
        SuccessRateConfig {
            interval: DEFAULT_INTERVAL,
            minimum_hosts,
            request_volume,
            stdev_factor,
        }
    }

    #[test]
    fn an_endpoint_far_below_its_peers_is_an_outlier() {
        // Rates 1, 1, 1, 1, 0.5: mean 0.9, deviation 0.2, threshold 0.9 − 1.9 × 0.2 = 0.52.
        let windows = [100, 100, 100, 100, 50].map(|ok| Some((100, 100 - ok)));
        assert_eq!(outliers(&windows, &config(5, 100, 1.9)), [4]);
        // A laxer factor keeps it: 0.9 − 2.1 × 0.2 = 0.48.
        assert!(outliers(&windows, &config(5, 100, 2.1)).is_empty());
    }

    #[test]
    fn too_few_endpoints_or_requests_evaluate_nothing() {
        let windows = [100, 100, 100, 100, 50].map(|ok| Some((100, 100 - ok)));
        assert!(
            outliers(&windows, &config(6, 100, 1.9)).is_empty(),
            "6 hosts needed"
        );
        assert!(
            outliers(&windows, &config(5, 101, 1.9)).is_empty(),
            "101 requests needed"
        );
        // Ejected endpoints (None) and quiet ones do not count towards the minimum.
        let mut windows = windows.to_vec();
        windows[0] = None;
        assert!(outliers(&windows, &config(5, 100, 1.9)).is_empty());
    }

    #[test]
    fn equal_rates_eject_nothing_and_the_worst_comes_first() {
        let same = [Some((10, 5)); 4];
        assert!(outliers(&same, &config(1, 1, 0.1)).is_empty());
        // 1, 1, 1, 1, 1, 0.6, 0.2: mean 0.83, deviation ≈ 0.29; factor 1 → threshold ≈ 0.54.
        let windows = [10, 10, 10, 10, 10, 6, 2].map(|ok| Some((10, 10 - ok)));
        assert_eq!(outliers(&windows, &config(5, 10, 1.0)), [6]);
        assert_eq!(outliers(&windows, &config(5, 10, 0.3)), [6, 5]);
    }

    #[test]
    fn rate_is_the_share_of_successes() {
        let c = config(1, 4, 1.0);
        assert_eq!(rate(Some((4, 1)), &c), Some(0.75));
        assert_eq!(rate(Some((3, 0)), &c), None, "below the request volume");
        assert_eq!(rate(None, &c), None);
        assert_eq!(rate(Some((0, 0)), &config(1, 0, 1.0)), None);
    }
}
