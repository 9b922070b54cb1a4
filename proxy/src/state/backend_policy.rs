//! `backend_policies` of the state description: a backend service's load-balancing algorithm,
//! bulkhead caps (requests, connections, pending requests, requests per connection, retries) and
//! circuit breaker, as written (the state file, or a `BackendPolicy` from
//! discovery), checked and resolved into `backend::BackendPolicy`.

use std::time::Duration;

use serde::Deserialize;

use super::spec::humantime_opt;
use crate::backend::{
    Algorithm, BackendPolicy, BreakerConfig, BreakerOverride, DEFAULT_BREAKER_MIN_REQUESTS,
    DEFAULT_BREAKER_OPEN, DEFAULT_BREAKER_PROBES, DEFAULT_BREAKER_WINDOW,
};
use crate::balance::{DEFAULT_BASE_EJECTION, DEFAULT_MAX_EJECTION_PERCENT, OutlierConfig};
use crate::endpoint::ConnLimits;

/// One backend policy as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendPolicySpec {
    /// The service (`name` or `name.namespace`) the policy applies to, every port of it.
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    pub(crate) limits: Option<LimitsSpec>,
    #[serde(default)]
    pub(crate) circuit_breaker: Option<BreakerSpec>,
    #[serde(default)]
    pub(crate) outlier_detection: Option<OutlierSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutlierSpec {
    /// Failures in a row (5xx or upstream errors) that eject an endpoint; required.
    pub(crate) consecutive_5xx: Option<u32>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) base_ejection_time: Option<Duration>,
    #[serde(default)]
    pub(crate) max_ejection_percent: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoadBalancerSpec {
    #[serde(default)]
    pub(crate) algorithm: Algorithm,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSpec {
    #[serde(default)]
    pub(crate) max_concurrent_requests: Option<u32>,
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    #[serde(default)]
    pub(crate) max_pending_requests: Option<u32>,
    #[serde(default)]
    pub(crate) max_requests_per_connection: Option<u32>,
    #[serde(default)]
    pub(crate) max_concurrent_retries: Option<u32>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) connect_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerSpec {
    #[serde(default)]
    pub(crate) failure_ratio_threshold: Option<f64>,
    #[serde(default)]
    pub(crate) min_requests: Option<u32>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) window: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) open_duration: Option<Duration>,
    #[serde(default)]
    pub(crate) half_open_max_requests: Option<u32>,
    #[serde(default, rename = "override")]
    pub(crate) force: BreakerOverride,
}

impl BackendPolicySpec {
    /// Checks the policy (the control plane's checks, `validate/policy.rs`) and fills in the
    /// defaults; errors name the field under `at`.
    pub(crate) fn resolve(&self, at: &str) -> Result<BackendPolicy, String> {
        let positive = |field: &str, v: Option<u32>| match v {
            Some(0) => Err(format!("{at}.{field}: must be positive when set")),
            _ => Ok(()),
        };
        let in_range = |field: &str, d: Option<Duration>| match d {
            Some(d) if d.is_zero() || d > Duration::from_secs(24 * 3600) => {
                Err(format!("{at}.{field}: must be between 1ms and 24h"))
            }
            _ => Ok(()),
        };
        let limits = self.limits.clone().unwrap_or_default();
        for (field, value) in [
            ("max_concurrent_requests", limits.max_concurrent_requests),
            ("max_connections", limits.max_connections),
            ("max_pending_requests", limits.max_pending_requests),
            (
                "max_requests_per_connection",
                limits.max_requests_per_connection,
            ),
            ("max_concurrent_retries", limits.max_concurrent_retries),
        ] {
            positive(&format!("limits.{field}"), value)?;
        }
        in_range("limits.connect_timeout", limits.connect_timeout)?;
        let circuit_breaker = match &self.circuit_breaker {
            None => None,
            Some(b) => {
                if let Some(r) = b.failure_ratio_threshold
                    && !(r > 0.0 && r <= 1.0)
                {
                    return Err(format!(
                        "{at}.circuit_breaker.failure_ratio_threshold: {r} is not a ratio in (0, 1]"
                    ));
                }
                positive("circuit_breaker.min_requests", b.min_requests)?;
                positive(
                    "circuit_breaker.half_open_max_requests",
                    b.half_open_max_requests,
                )?;
                in_range("circuit_breaker.window", b.window)?;
                in_range("circuit_breaker.open_duration", b.open_duration)?;
                Some(BreakerConfig {
                    failure_ratio_threshold: b.failure_ratio_threshold,
                    min_requests: b.min_requests.unwrap_or(DEFAULT_BREAKER_MIN_REQUESTS),
                    window: b.window.unwrap_or(DEFAULT_BREAKER_WINDOW),
                    open_duration: b.open_duration.unwrap_or(DEFAULT_BREAKER_OPEN),
                    half_open_max_requests: b
                        .half_open_max_requests
                        .unwrap_or(DEFAULT_BREAKER_PROBES),
                    force: b.force,
                })
            }
        };
        let outlier_detection = match &self.outlier_detection {
            None => None,
            Some(o) => {
                let at = format!("{at}.outlier_detection");
                let consecutive = match o.consecutive_5xx {
                    Some(n) if n > 0 => n,
                    _ => {
                        return Err(format!(
                            "{at}.consecutive_5xx: required and positive (failures in a row that eject an endpoint)"
                        ));
                    }
                };
                in_range("outlier_detection.base_ejection_time", o.base_ejection_time)?;
                let percent = o
                    .max_ejection_percent
                    .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT);
                if !(percent > 0.0 && percent <= 100.0) {
                    return Err(format!(
                        "{at}.max_ejection_percent: {percent} is not a percentage in (0, 100]"
                    ));
                }
                Some(OutlierConfig {
                    consecutive_failures: consecutive,
                    base_ejection_time: o.base_ejection_time.unwrap_or(DEFAULT_BASE_EJECTION),
                    max_ejection_percent: percent,
                })
            }
        };
        Ok(BackendPolicy {
            load_balancer: self
                .load_balancer
                .as_ref()
                .map_or_else(Algorithm::default, |lb| lb.algorithm),
            max_concurrent_requests: limits.max_concurrent_requests,
            circuit_breaker,
            outlier_detection,
            connect_timeout: limits.connect_timeout,
            connections: ConnLimits {
                max_connections: limits.max_connections,
                max_pending_requests: limits.max_pending_requests,
                max_requests_per_connection: limits.max_requests_per_connection,
            },
            max_concurrent_retries: limits.max_concurrent_retries,
        })
    }
}
