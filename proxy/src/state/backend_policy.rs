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
use http::HeaderName;

use crate::balance::{
    DEFAULT_BASE_EJECTION, DEFAULT_EXPECTED_STATUSES, DEFAULT_HC_INTERVAL, DEFAULT_HC_TIMEOUT,
    DEFAULT_HEALTHY_THRESHOLD, DEFAULT_INTERVAL, DEFAULT_MAX_EJECTION_PERCENT,
    DEFAULT_MINIMUM_HOSTS, DEFAULT_REQUEST_VOLUME, DEFAULT_STDEV_FACTOR,
    DEFAULT_UNHEALTHY_THRESHOLD, HashKey, HealthCheckConfig, MAX_STDEV_FACTOR, OutlierConfig,
    ProbeKind, SuccessRateConfig,
};
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
    #[serde(default)]
    pub(crate) health_check: Option<HealthCheckSpec>,
}

/// Active health checks as written: exactly one of `http` or `grpc`, and the timing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckSpec {
    #[serde(default)]
    pub(crate) http: Option<HttpCheckSpec>,
    #[serde(default)]
    pub(crate) grpc: Option<GrpcCheckSpec>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) interval: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) healthy_threshold: Option<u32>,
    #[serde(default)]
    pub(crate) unhealthy_threshold: Option<u32>,
}

/// An HTTP check: `GET path`, healthy when the status is within `expected_statuses`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpCheckSpec {
    pub(crate) path: String,
    #[serde(default)]
    pub(crate) expected_statuses: Option<StatusRangeSpec>,
}

/// A range of HTTP statuses, both ends included.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusRangeSpec {
    pub(crate) start: u16,
    pub(crate) end: u16,
}

/// A gRPC check: `grpc.health.v1.Health/Check` for `service` (empty: the whole server).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrpcCheckSpec {
    #[serde(default)]
    pub(crate) service: String,
}

impl HealthCheckSpec {
    /// The checks, checked; errors name the field under `at` (`….health_check`).
    fn resolve(&self, at: &str) -> Result<HealthCheckConfig, String> {
        let kind = match (&self.http, &self.grpc) {
            (Some(h), None) => {
                if !h.path.starts_with('/')
                    || http::uri::PathAndQuery::try_from(h.path.as_str()).is_err()
                {
                    return Err(format!(
                        "{at}.http.path: {:?} is not a request path starting with /",
                        h.path
                    ));
                }
                let expected = match h.expected_statuses {
                    None => DEFAULT_EXPECTED_STATUSES,
                    Some(r)
                        if (100..=599).contains(&r.start) && (r.start..=599).contains(&r.end) =>
                    {
                        (r.start, r.end)
                    }
                    Some(r) => {
                        return Err(format!(
                            "{at}.http.expected_statuses: {}-{} is not a range of statuses within 100-599",
                            r.start, r.end
                        ));
                    }
                };
                ProbeKind::Http {
                    path: h.path.clone(),
                    expected_statuses: expected,
                }
            }
            (None, Some(g)) => ProbeKind::Grpc {
                service: g.service.clone(),
            },
            _ => return Err(format!("{at}: exactly one of http or grpc")),
        };
        let in_range = |field: &str, d: Option<Duration>, default: Duration| match d {
            Some(d) if d.is_zero() || d > Duration::from_secs(24 * 3600) => {
                Err(format!("{at}.{field}: must be between 1ms and 24h"))
            }
            d => Ok(d.unwrap_or(default)),
        };
        let threshold = |field: &str, v: Option<u32>, default: u32| match v {
            Some(0) => Err(format!("{at}.{field}: must be positive when set")),
            v => Ok(v.unwrap_or(default)),
        };
        Ok(HealthCheckConfig {
            kind,
            interval: in_range("interval", self.interval, DEFAULT_HC_INTERVAL)?,
            timeout: in_range("timeout", self.timeout, DEFAULT_HC_TIMEOUT)?,
            healthy_threshold: threshold(
                "healthy_threshold",
                self.healthy_threshold,
                DEFAULT_HEALTHY_THRESHOLD,
            )?,
            unhealthy_threshold: threshold(
                "unhealthy_threshold",
                self.unhealthy_threshold,
                DEFAULT_UNHEALTHY_THRESHOLD,
            )?,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutlierSpec {
    /// Failures in a row (5xx or upstream errors) that eject an endpoint; this or
    /// `success_rate` is required.
    #[serde(default)]
    pub(crate) consecutive_5xx: Option<u32>,
    /// How often success rates are evaluated (only with `success_rate`).
    #[serde(default, with = "humantime_opt")]
    pub(crate) interval: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    pub(crate) base_ejection_time: Option<Duration>,
    #[serde(default)]
    pub(crate) max_ejection_percent: Option<f64>,
    #[serde(default)]
    pub(crate) success_rate: Option<SuccessRateSpec>,
}

/// Ejection by success rate relative to the peers, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SuccessRateSpec {
    #[serde(default)]
    pub(crate) minimum_hosts: Option<u32>,
    #[serde(default)]
    pub(crate) request_volume: Option<u32>,
    #[serde(default)]
    pub(crate) stdev_factor: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoadBalancerSpec {
    #[serde(default)]
    pub(crate) algorithm: Algorithm,
    /// A new or readmitted endpoint's share of traffic grows over this window.
    #[serde(default, with = "humantime_opt")]
    pub(crate) slow_start: Option<Duration>,
    /// What `ring_hash` hashes: exactly one of the fields (the control plane's `HashKey` oneof).
    #[serde(default)]
    pub(crate) hash_key: Option<HashKeySpec>,
}

/// A ring hash's key as written: `{header: x-user}`, `{cookie: session}`,
/// `{query_parameter: user}` or `{source_ip: true}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HashKeySpec {
    #[serde(default)]
    pub(crate) header: Option<String>,
    #[serde(default)]
    pub(crate) cookie: Option<String>,
    #[serde(default)]
    pub(crate) query_parameter: Option<String>,
    #[serde(default)]
    pub(crate) source_ip: Option<bool>,
}

impl HashKeySpec {
    /// The key, checked; errors name the field under `at` (`….load_balancer.hash_key`).
    fn resolve(&self, at: &str) -> Result<HashKey, String> {
        let named = |field: &str, name: &str| {
            if name.is_empty() {
                Err(format!(
                    "{at}.{field}: must name a {}",
                    field.replace('_', " ")
                ))
            } else {
                Ok(name.to_owned())
            }
        };
        match (
            &self.header,
            &self.cookie,
            &self.query_parameter,
            self.source_ip,
        ) {
            (Some(h), None, None, None) => HeaderName::from_bytes(h.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("{at}.header: {h:?} is not a header name")),
            (None, Some(c), None, None) => named("cookie", c).map(HashKey::Cookie),
            (None, None, Some(q), None) => named("query_parameter", q).map(HashKey::QueryParameter),
            (None, None, None, Some(true)) => Ok(HashKey::SourceIp),
            (None, None, None, Some(false)) => {
                Err(format!("{at}.source_ip: must be true when set"))
            }
            _ => Err(format!(
                "{at}: exactly one of header, cookie, query_parameter or source_ip"
            )),
        }
    }
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
        let slow_start = self.load_balancer.as_ref().and_then(|lb| lb.slow_start);
        in_range("load_balancer.slow_start", slow_start)?;
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
                positive("outlier_detection.consecutive_5xx", o.consecutive_5xx)?;
                if o.consecutive_5xx.is_none() && o.success_rate.is_none() {
                    return Err(format!(
                        "{at}: ejects nothing: set consecutive_5xx (failures in a row that eject an endpoint), success_rate or both"
                    ));
                }
                in_range("outlier_detection.interval", o.interval)?;
                if o.interval.is_some() && o.success_rate.is_none() {
                    return Err(format!(
                        "{at}.interval: only used with success_rate (how often success rates are evaluated)"
                    ));
                }
                let success_rate = match &o.success_rate {
                    None => None,
                    Some(r) => {
                        positive(
                            "outlier_detection.success_rate.minimum_hosts",
                            r.minimum_hosts,
                        )?;
                        positive(
                            "outlier_detection.success_rate.request_volume",
                            r.request_volume,
                        )?;
                        let factor = r.stdev_factor.unwrap_or(DEFAULT_STDEV_FACTOR);
                        if !(factor > 0.0 && factor <= MAX_STDEV_FACTOR) {
                            return Err(format!(
                                "{at}.success_rate.stdev_factor: {factor} is not in (0, {MAX_STDEV_FACTOR}]"
                            ));
                        }
                        Some(SuccessRateConfig {
                            interval: o.interval.unwrap_or(DEFAULT_INTERVAL),
                            minimum_hosts: r.minimum_hosts.unwrap_or(DEFAULT_MINIMUM_HOSTS),
                            request_volume: r.request_volume.unwrap_or(DEFAULT_REQUEST_VOLUME),
                            stdev_factor: factor,
                        })
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
                    consecutive_failures: o.consecutive_5xx,
                    base_ejection_time: o.base_ejection_time.unwrap_or(DEFAULT_BASE_EJECTION),
                    max_ejection_percent: percent,
                    success_rate,
                    service: "".into(),
                })
            }
        };
        let (algorithm, hash_key) = match &self.load_balancer {
            None => (Algorithm::default(), None),
            Some(lb) => {
                let at = format!("{at}.load_balancer.hash_key");
                let key = match (&lb.hash_key, lb.algorithm == Algorithm::RingHash) {
                    (Some(key), true) => Some(key.resolve(&at)?),
                    (None, false) => None,
                    (None, true) => {
                        return Err(format!(
                            "{at}: required with algorithm ring_hash (what to hash: a header, cookie, query_parameter or source_ip)"
                        ));
                    }
                    (Some(_), false) => {
                        return Err(format!("{at}: only used with algorithm ring_hash"));
                    }
                };
                (lb.algorithm, key)
            }
        };
        Ok(BackendPolicy {
            load_balancer: algorithm,
            hash_key,
            max_concurrent_requests: limits.max_concurrent_requests,
            circuit_breaker,
            outlier_detection,
            connect_timeout: limits.connect_timeout,
            slow_start,
            connections: ConnLimits {
                max_connections: limits.max_connections,
                max_pending_requests: limits.max_pending_requests,
                max_requests_per_connection: limits.max_requests_per_connection,
            },
            max_concurrent_retries: limits.max_concurrent_retries,
            health_check: match &self.health_check {
                None => None,
                Some(h) => Some(h.resolve(&format!("{at}.health_check"))?),
            },
        })
    }
}
