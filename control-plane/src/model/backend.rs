//! Backend policy: how client proxies call a service's endpoints (balancing, bulkheads, ejection, breaking).

use std::time::Duration;

use super::ServiceRef;

/// Settings a client proxy applies when calling a service's endpoints. `None` parts use the proxy defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendPolicy {
    /// The service these settings apply to.
    pub service: ServiceRef,
    /// How a request picks an endpoint.
    pub load_balancer: Option<LoadBalancer>,
    /// Bulkhead limits.
    pub limits: Option<ConnectionLimits>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// Circuit breaker for the whole service.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Active health checking (boxed: most policies have none).
    pub health_check: Option<Box<HealthCheck>>,
}

/// Active health checks of a service's endpoints; `None` fields take the proxy defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What a probe asks.
    pub probe: HealthProbe,
    /// Between rounds of probes (default 10 s).
    pub interval: Option<Duration>,
    /// Per probe (default 1 s).
    pub timeout: Option<Duration>,
    /// Passing probes in a row that bring an endpoint back (default 2).
    pub healthy_threshold: Option<u32>,
    /// Failing probes in a row that take it out (default 3).
    pub unhealthy_threshold: Option<u32>,
}

/// What a health check probe asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// `GET path`, healthy when the status is within `expected_statuses` (default 200-399).
    Http {
        /// The request path.
        path: String,
        /// Statuses counted healthy, both ends included.
        expected_statuses: Option<(u32, u32)>,
    },
    /// `grpc.health.v1.Health/Check` for `service` (empty: the whole server), healthy when SERVING.
    Grpc {
        /// The service asked about.
        service: String,
    },
}

/// How a request picks an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    /// The algorithm; `None` means the proxy default (P2C-EWMA).
    pub algorithm: Option<LoadBalancingAlgorithm>,
    /// What ring hashing hashes; required with, and only with, [`LoadBalancingAlgorithm::RingHash`].
    pub hash_key: Option<HashKey>,
    /// Slow start: a new or readmitted endpoint's share of traffic grows linearly over this window.
    pub slow_start: Option<Duration>,
}

/// A load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancingAlgorithm {
    /// Each endpoint in turn, honouring weights.
    RoundRobin,
    /// Fewest requests in flight among two random picks.
    LeastRequest,
    /// Power of two choices on the moving average of latency times load.
    P2cEwma,
    /// Consistent hashing of a request property (session affinity).
    RingHash,
}

/// The request property that ring hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Value of this request header.
    Header(String),
    /// Value of this cookie.
    Cookie(String),
    /// Value of this query parameter.
    QueryParameter(String),
    /// The client's address.
    SourceIp,
}

/// Bulkhead limits per client proxy and service; `None` means no limit (connect timeout: proxy default).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionLimits {
    /// Connections open to all endpoints together.
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection or a concurrency slot.
    pub max_pending_requests: Option<u32>,
    /// Requests in flight to the service.
    pub max_concurrent_requests: Option<u32>,
    /// Requests sent over one connection before it is replaced.
    pub max_requests_per_connection: Option<u32>,
    /// Deadline for establishing a connection (TCP + TLS).
    pub connect_timeout: Option<Duration>,
    /// Retries in flight to the service; a retry beyond it is not sent.
    pub max_concurrent_retries: Option<u32>,
}

/// Passive health checking; `None` fields take the proxy defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutlierDetection {
    /// Eject after this many consecutive failures; `None` disables this kind of ejection.
    pub consecutive_5xx: Option<u32>,
    /// How often success rates are evaluated (only with [`Self::success_rate`]).
    pub interval: Option<Duration>,
    /// Duration of the first ejection (the n-th lasts n times this).
    pub base_ejection_time: Option<Duration>,
    /// Never eject more than this percentage (0–100] of the endpoints.
    pub max_ejection_percent: Option<f64>,
    /// Ejection by success rate relative to the peers; `None`: off.
    pub success_rate: Option<SuccessRateEjection>,
}

/// Ejection of endpoints whose success rate over an interval is far below their peers' (Envoy's model);
/// `None` fields take the proxy defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SuccessRateEjection {
    /// Endpoints with enough requests needed for an evaluation (default 5).
    pub minimum_hosts: Option<u32>,
    /// Requests an endpoint must serve in the interval to be evaluated (default 100).
    pub request_volume: Option<u32>,
    /// Standard deviations below the mean success rate that eject (default 1.9).
    pub stdev_factor: Option<f64>,
}

/// Circuit breaker for the whole service, per client proxy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CircuitBreaker {
    /// Failure ratio (0–1] that opens the breaker; `None` disables it.
    pub failure_ratio_threshold: Option<f64>,
    /// Requests the window must hold before the breaker may open.
    pub min_requests: Option<u32>,
    /// Length of the sliding window.
    pub window: Option<Duration>,
    /// How long the breaker stays open before going half-open.
    pub open_duration: Option<Duration>,
    /// Probe requests allowed while half-open.
    pub half_open_max_requests: Option<u32>,
    /// Operator override; `None` lets the breaker follow the traffic.
    pub manual_override: Option<BreakerOverride>,
}

/// A manual override of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerOverride {
    /// Always open: every request fails fast.
    ForceOpen,
    /// Always closed: the breaker never opens.
    ForceClosed,
}
