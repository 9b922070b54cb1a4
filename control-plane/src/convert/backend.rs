//! Wire conversions for backend policies: load balancing, limits, outlier detection, circuit breaking.

use shoal_proto::v1;
use v1::hash_key;

use super::{by_value, enumeration, millis, nonzero, qualified_only, service_ref, to_millis};
use crate::model::validate::FieldError;
use crate::model::{
    BackendPolicy, BreakerOverride, CircuitBreaker, ConnectionLimits, HashKey, HealthCheck,
    HealthProbe, LoadBalancer, LoadBalancingAlgorithm, OutlierDetection, SuccessRateEjection,
};

qualified_only!(v1::BackendPolicy => BackendPolicy: backend_policy);

pub(super) fn backend_policy(
    wire: v1::BackendPolicy,
    ns: Option<&str>,
) -> Result<BackendPolicy, FieldError> {
    let load_balancer = match wire.load_balancer {
        None => None,
        Some(lb) => Some(LoadBalancer {
            algorithm: algorithm(enumeration(lb.algorithm, "load_balancer.algorithm")?),
            hash_key: match lb.hash_key.map(|key| key.source) {
                None => None,
                Some(source) => {
                    Some(self::hash_key(source).map_err(|e| e.within("load_balancer.hash_key"))?)
                }
            },
            slow_start: millis(lb.slow_start_ms),
        }),
    };
    let breaker = match wire.circuit_breaker {
        None => None,
        Some(cb) => Some(CircuitBreaker {
            failure_ratio_threshold: nonzero(cb.failure_ratio_threshold),
            min_requests: nonzero(cb.min_requests),
            window: millis(cb.window_ms),
            open_duration: millis(cb.open_duration_ms),
            half_open_max_requests: nonzero(cb.half_open_max_requests),
            manual_override: match enumeration(cb.r#override, "circuit_breaker.override")? {
                v1::CircuitBreakerOverride::Unspecified => None,
                v1::CircuitBreakerOverride::ForceOpen => Some(BreakerOverride::ForceOpen),
                v1::CircuitBreakerOverride::ForceClosed => Some(BreakerOverride::ForceClosed),
            },
        }),
    };
    Ok(BackendPolicy {
        service: service_ref(&wire.service, ns, "service")?,
        load_balancer,
        limits: wire.limits.map(|l| ConnectionLimits {
            max_connections: nonzero(l.max_connections),
            max_pending_requests: nonzero(l.max_pending_requests),
            max_concurrent_requests: nonzero(l.max_concurrent_requests),
            max_requests_per_connection: nonzero(l.max_requests_per_connection),
            connect_timeout: millis(l.connect_timeout_ms),
            max_concurrent_retries: nonzero(l.max_concurrent_retries),
        }),
        outlier_detection: wire.outlier_detection.map(|o| OutlierDetection {
            consecutive_5xx: nonzero(o.consecutive_5xx),
            interval: millis(o.interval_ms),
            base_ejection_time: millis(o.base_ejection_time_ms),
            max_ejection_percent: nonzero(o.max_ejection_percent),
            success_rate: o.success_rate.map(|r| SuccessRateEjection {
                minimum_hosts: nonzero(r.minimum_hosts),
                request_volume: nonzero(r.request_volume),
                stdev_factor: nonzero(r.stdev_factor),
            }),
        }),
        circuit_breaker: breaker,
        health_check: match wire.health_check {
            None => None,
            Some(h) => Some(Box::new(health_check(*h)?)),
        },
    })
}

fn health_check(wire: v1::HealthCheck) -> Result<HealthCheck, FieldError> {
    let probe = match (wire.http, wire.grpc) {
        (Some(http), None) => HealthProbe::Http {
            path: http.path,
            expected_statuses: http.expected_statuses.map(|r| (r.start, r.end)),
        },
        (None, Some(grpc)) => HealthProbe::Grpc {
            service: grpc.service,
        },
        _ => {
            return Err(FieldError::new(
                "health_check",
                "set exactly one of http or grpc",
            ));
        }
    };
    Ok(HealthCheck {
        probe,
        interval: millis(wire.interval_ms),
        timeout: millis(wire.timeout_ms),
        healthy_threshold: nonzero(wire.healthy_threshold),
        unhealthy_threshold: nonzero(wire.unhealthy_threshold),
    })
}

impl From<&HealthCheck> for v1::HealthCheck {
    fn from(check: &HealthCheck) -> Self {
        let (http, grpc) = match &check.probe {
            HealthProbe::Http {
                path,
                expected_statuses,
            } => (
                Some(v1::HttpHealthCheck {
                    path: path.clone(),
                    expected_statuses: expected_statuses
                        .map(|(start, end)| v1::StatusRange { start, end }),
                }),
                None,
            ),
            HealthProbe::Grpc { service } => (
                None,
                Some(v1::GrpcHealthCheck {
                    service: service.clone(),
                }),
            ),
        };
        Self {
            http,
            grpc,
            interval_ms: to_millis(check.interval),
            timeout_ms: to_millis(check.timeout),
            healthy_threshold: check.healthy_threshold.unwrap_or(0),
            unhealthy_threshold: check.unhealthy_threshold.unwrap_or(0),
        }
    }
}

fn algorithm(wire: v1::LoadBalancingAlgorithm) -> Option<LoadBalancingAlgorithm> {
    use v1::LoadBalancingAlgorithm as Wire;
    match wire {
        Wire::Unspecified => None,
        Wire::RoundRobin => Some(LoadBalancingAlgorithm::RoundRobin),
        Wire::LeastRequest => Some(LoadBalancingAlgorithm::LeastRequest),
        Wire::P2cEwma => Some(LoadBalancingAlgorithm::P2cEwma),
        Wire::RingHash => Some(LoadBalancingAlgorithm::RingHash),
    }
}

fn hash_key(source: Option<hash_key::Source>) -> Result<HashKey, FieldError> {
    Ok(match source {
        None => {
            return Err(FieldError::new(
                "",
                "set one of header, cookie, query_parameter or source_ip",
            ));
        }
        Some(hash_key::Source::Header(name)) => HashKey::Header(name),
        Some(hash_key::Source::Cookie(name)) => HashKey::Cookie(name),
        Some(hash_key::Source::QueryParameter(name)) => HashKey::QueryParameter(name),
        Some(hash_key::Source::SourceIp(true)) => HashKey::SourceIp,
        Some(hash_key::Source::SourceIp(false)) => {
            return Err(FieldError::new("source_ip", "must be true when set"));
        }
    })
}

impl From<&BackendPolicy> for v1::BackendPolicy {
    fn from(policy: &BackendPolicy) -> Self {
        use v1::LoadBalancingAlgorithm as Wire;
        let load_balancer = policy.load_balancer.as_ref().map(|lb| v1::LoadBalancer {
            algorithm: match lb.algorithm {
                None => Wire::Unspecified,
                Some(LoadBalancingAlgorithm::RoundRobin) => Wire::RoundRobin,
                Some(LoadBalancingAlgorithm::LeastRequest) => Wire::LeastRequest,
                Some(LoadBalancingAlgorithm::P2cEwma) => Wire::P2cEwma,
                Some(LoadBalancingAlgorithm::RingHash) => Wire::RingHash,
            }
            .into(),
            hash_key: lb.hash_key.as_ref().map(|key| v1::HashKey {
                source: Some(match key {
                    HashKey::Header(name) => hash_key::Source::Header(name.clone()),
                    HashKey::Cookie(name) => hash_key::Source::Cookie(name.clone()),
                    HashKey::QueryParameter(name) => hash_key::Source::QueryParameter(name.clone()),
                    HashKey::SourceIp => hash_key::Source::SourceIp(true),
                }),
            }),
            slow_start_ms: to_millis(lb.slow_start),
        });
        Self {
            service: policy.service.to_string(),
            load_balancer,
            limits: policy.limits.as_ref().map(|l| v1::ConnectionLimits {
                max_connections: l.max_connections.unwrap_or(0),
                max_pending_requests: l.max_pending_requests.unwrap_or(0),
                max_concurrent_requests: l.max_concurrent_requests.unwrap_or(0),
                max_requests_per_connection: l.max_requests_per_connection.unwrap_or(0),
                connect_timeout_ms: to_millis(l.connect_timeout),
                max_concurrent_retries: l.max_concurrent_retries.unwrap_or(0),
            }),
            outlier_detection: policy
                .outlier_detection
                .as_ref()
                .map(|o| v1::OutlierDetection {
                    consecutive_5xx: o.consecutive_5xx.unwrap_or(0),
                    interval_ms: to_millis(o.interval),
                    base_ejection_time_ms: to_millis(o.base_ejection_time),
                    max_ejection_percent: o.max_ejection_percent.unwrap_or(0.0),
                    success_rate: o.success_rate.as_ref().map(|r| v1::SuccessRateEjection {
                        minimum_hosts: r.minimum_hosts.unwrap_or(0),
                        request_volume: r.request_volume.unwrap_or(0),
                        stdev_factor: r.stdev_factor.unwrap_or(0.0),
                    }),
                }),
            circuit_breaker: policy
                .circuit_breaker
                .as_ref()
                .map(|cb| v1::CircuitBreaker {
                    failure_ratio_threshold: cb.failure_ratio_threshold.unwrap_or(0.0),
                    min_requests: cb.min_requests.unwrap_or(0),
                    window_ms: to_millis(cb.window),
                    open_duration_ms: to_millis(cb.open_duration),
                    half_open_max_requests: cb.half_open_max_requests.unwrap_or(0),
                    r#override: match cb.manual_override {
                        None => v1::CircuitBreakerOverride::Unspecified,
                        Some(BreakerOverride::ForceOpen) => v1::CircuitBreakerOverride::ForceOpen,
                        Some(BreakerOverride::ForceClosed) => {
                            v1::CircuitBreakerOverride::ForceClosed
                        }
                    }
                    .into(),
                }),
            health_check: policy.health_check.as_deref().map(|h| Box::new(h.into())),
        }
    }
}

by_value!(BackendPolicy => v1::BackendPolicy);
