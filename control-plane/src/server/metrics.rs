//! The Prometheus recorder: installed once per process, shared by every part of the control plane.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Buckets (seconds) for latency histograms, such as discovery's push-to-ACK time: from a millisecond, where
/// a local push lives, to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histograms are folded into their buckets, which keeps their memory bounded.
pub(super) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder handle, installing the recorder on first use. If another recorder is already
/// installed (an embedding program's), `/metrics` serves an empty page and says so in the log.
pub fn recorder() -> PrometheusHandle {
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new();
    let builder = match builder.set_buckets(LATENCY_BUCKETS) {
        Ok(builder) => builder,
        // Only fails for an empty bucket list, which ours is not.
        Err(_) => PrometheusBuilder::new(),
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!(
            "another metrics recorder is installed in this process: /metrics will be empty"
        );
    }
    crate::admin::metrics::describe();
    crate::discovery::describe_metrics();
    crate::identity::metrics::describe();
    super::discovery_listener::describe_metrics();
    super::webhook::describe_metrics();
    handle
}
