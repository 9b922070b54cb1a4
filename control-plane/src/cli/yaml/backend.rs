//! YAML of `BackendPolicy`: load balancing, limits, outlier detection, circuit breaker, health checks.

use serde::{Deserialize, Serialize};
use shoal_proto::v1;
use v1::resource::Spec as Wire;

use super::SpecYaml;
use super::common::{is_zero, plain_message, wire_enum};

wire_enum! {
    /// `load_balancer.algorithm`; left out: `p2c_ewma`.
    Algorithm => v1::LoadBalancingAlgorithm { RoundRobin, LeastRequest, P2cEwma, RingHash }
}

wire_enum! {
    /// `circuit_breaker.override`.
    Override => v1::CircuitBreakerOverride { ForceOpen, ForceClosed }
}

plain_message! {
    /// `limits`: bulkhead limits.
    Limits => v1::ConnectionLimits {
        max_connections: u32,
        max_pending_requests: u32,
        max_concurrent_requests: u32,
        max_requests_per_connection: u32,
        connect_timeout_ms: u64,
        max_concurrent_retries: u32,
    }
}

plain_message! {
    /// `outlier_detection.success_rate`: ejection by success rate relative to the peers.
    SuccessRate => v1::SuccessRateEjection {
        minimum_hosts: u32,
        request_volume: u32,
        stdev_factor: f64,
    }
}

/// `outlier_detection`: passive health checking.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Outliers {
    #[serde(skip_serializing_if = "is_zero")]
    consecutive_5xx: u32,
    #[serde(skip_serializing_if = "is_zero")]
    interval_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    base_ejection_time_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    max_ejection_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    success_rate: Option<SuccessRate>,
}

impl From<Outliers> for v1::OutlierDetection {
    fn from(yaml: Outliers) -> Self {
        Self {
            consecutive_5xx: yaml.consecutive_5xx,
            interval_ms: yaml.interval_ms,
            base_ejection_time_ms: yaml.base_ejection_time_ms,
            max_ejection_percent: yaml.max_ejection_percent,
            success_rate: yaml.success_rate.map(Into::into),
        }
    }
}

impl From<&v1::OutlierDetection> for Outliers {
    fn from(wire: &v1::OutlierDetection) -> Self {
        Self {
            consecutive_5xx: wire.consecutive_5xx,
            interval_ms: wire.interval_ms,
            base_ejection_time_ms: wire.base_ejection_time_ms,
            max_ejection_percent: wire.max_ejection_percent,
            success_rate: wire.success_rate.as_ref().map(Into::into),
        }
    }
}

plain_message! {
    /// `health_check.http.expected_statuses`: both ends included.
    StatusRange => v1::StatusRange {
        start: u32,
        end: u32,
    }
}

plain_message! {
    /// `health_check.grpc`: `grpc.health.v1.Health/Check`.
    GrpcCheck => v1::GrpcHealthCheck {
        service: String,
    }
}

/// `health_check.http`: `GET path`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HttpCheck {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_statuses: Option<StatusRange>,
}

/// `health_check`: active health checks (exactly one of `http` or `grpc`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HealthCheck {
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<HttpCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc: Option<GrpcCheck>,
    #[serde(skip_serializing_if = "is_zero")]
    interval_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    timeout_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    healthy_threshold: u32,
    #[serde(skip_serializing_if = "is_zero")]
    unhealthy_threshold: u32,
}

impl From<HealthCheck> for v1::HealthCheck {
    fn from(yaml: HealthCheck) -> Self {
        Self {
            http: yaml.http.map(|h| v1::HttpHealthCheck {
                path: h.path,
                expected_statuses: h.expected_statuses.map(Into::into),
            }),
            grpc: yaml.grpc.map(Into::into),
            interval_ms: yaml.interval_ms,
            timeout_ms: yaml.timeout_ms,
            healthy_threshold: yaml.healthy_threshold,
            unhealthy_threshold: yaml.unhealthy_threshold,
        }
    }
}

impl From<&v1::HealthCheck> for HealthCheck {
    fn from(wire: &v1::HealthCheck) -> Self {
        Self {
            http: wire.http.as_ref().map(|h| HttpCheck {
                path: h.path.clone(),
                expected_statuses: h.expected_statuses.as_ref().map(Into::into),
            }),
            grpc: wire.grpc.as_ref().map(Into::into),
            interval_ms: wire.interval_ms,
            timeout_ms: wire.timeout_ms,
            healthy_threshold: wire.healthy_threshold,
            unhealthy_threshold: wire.unhealthy_threshold,
        }
    }
}

/// `kind: BackendPolicy`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct BackendPolicySpec {
    service: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer: Option<LoadBalancer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outlier_detection: Option<Outliers>,
    #[serde(skip_serializing_if = "Option::is_none")]
    circuit_breaker: Option<Breaker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_check: Option<HealthCheck>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LoadBalancer {
    #[serde(skip_serializing_if = "Option::is_none")]
    algorithm: Option<Algorithm>,
    /// One of `header`, `cookie`, `query_parameter`, `source_ip: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    hash_key: Option<HashKey>,
    #[serde(skip_serializing_if = "is_zero")]
    slow_start_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HashKey {
    Header(String),
    Cookie(String),
    QueryParameter(String),
    SourceIp(bool),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Breaker {
    #[serde(skip_serializing_if = "is_zero")]
    failure_ratio_threshold: f64,
    #[serde(skip_serializing_if = "is_zero")]
    min_requests: u32,
    #[serde(skip_serializing_if = "is_zero")]
    window_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    open_duration_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    half_open_max_requests: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    r#override: Option<Override>,
}

impl SpecYaml for BackendPolicySpec {
    fn into_wire(self) -> Result<Wire, String> {
        use v1::hash_key::Source;
        let load_balancer = self.load_balancer.map(|lb| v1::LoadBalancer {
            algorithm: Algorithm::to_wire(lb.algorithm),
            hash_key: lb.hash_key.map(|key| v1::HashKey {
                source: Some(match key {
                    HashKey::Header(h) => Source::Header(h),
                    HashKey::Cookie(c) => Source::Cookie(c),
                    HashKey::QueryParameter(q) => Source::QueryParameter(q),
                    HashKey::SourceIp(s) => Source::SourceIp(s),
                }),
            }),
            slow_start_ms: lb.slow_start_ms,
        });
        let circuit_breaker = self.circuit_breaker.map(|b| v1::CircuitBreaker {
            failure_ratio_threshold: b.failure_ratio_threshold,
            min_requests: b.min_requests,
            window_ms: b.window_ms,
            open_duration_ms: b.open_duration_ms,
            half_open_max_requests: b.half_open_max_requests,
            r#override: Override::to_wire(b.r#override),
        });
        Ok(Wire::BackendPolicy(v1::BackendPolicy {
            service: self.service,
            load_balancer,
            limits: self.limits.map(Into::into),
            outlier_detection: self.outlier_detection.map(Into::into),
            circuit_breaker,
            health_check: self.health_check.map(|h| Box::new(h.into())),
        }))
    }

    fn from_wire(spec: &Wire) -> Option<Self> {
        use v1::hash_key::Source;
        let Wire::BackendPolicy(policy) = spec else {
            return None;
        };
        let load_balancer = policy.load_balancer.as_ref().map(|lb| LoadBalancer {
            algorithm: Algorithm::from_wire(lb.algorithm),
            hash_key: lb.hash_key.as_ref().and_then(|k| k.source.clone()).map(
                |source| match source {
                    Source::Header(h) => HashKey::Header(h),
                    Source::Cookie(c) => HashKey::Cookie(c),
                    Source::QueryParameter(q) => HashKey::QueryParameter(q),
                    Source::SourceIp(s) => HashKey::SourceIp(s),
                },
            ),
            slow_start_ms: lb.slow_start_ms,
        });
        let circuit_breaker = policy.circuit_breaker.as_ref().map(|b| Breaker {
            failure_ratio_threshold: b.failure_ratio_threshold,
            min_requests: b.min_requests,
            window_ms: b.window_ms,
            open_duration_ms: b.open_duration_ms,
            half_open_max_requests: b.half_open_max_requests,
            r#override: Override::from_wire(b.r#override),
        });
        Some(Self {
            service: policy.service.clone(),
            load_balancer,
            limits: policy.limits.as_ref().map(Into::into),
            outlier_detection: policy.outlier_detection.as_ref().map(Into::into),
            circuit_breaker,
            health_check: policy.health_check.as_deref().map(Into::into),
        })
    }
}
