//! Retry policy of a route rule, and its runtime state: the budget and the metrics.
//!
//! The policy (conditions, attempts, backoff, timeouts) is configuration, part of the state
//! snapshot. The budget is runtime state: it outlives snapshots ([`Retry::inherit`]), so an update
//! that does not change a rule's policy keeps what the budget has counted. The retry *stage*
//! (`outbound::http::retry`) uses both.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, counter};
use serde::Serialize;
use tokio::time::Instant;

use crate::window::Window;

/// A class of failure that may be retried (the names are the API's, docs/resilience.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RetryOn {
    /// The connection to the endpoint could not be established (refused, timed out, TLS failed).
    ConnectFailure,
    /// The endpoint refused the HTTP/2 stream before processing it.
    RefusedStream,
    /// The connection or stream was reset before a response head.
    Reset,
    /// Any 5xx response.
    ServerError,
    /// 502, 503 or 504, from the endpoint or the proxy.
    GatewayError,
    /// 503 only.
    ServiceUnavailable,
    /// The attempt's own timeout fired.
    PerTryTimeout,
    /// gRPC status UNAVAILABLE (14) in the response head (a trailers-only response).
    GrpcUnavailable,
    /// gRPC status RESOURCE_EXHAUSTED (8) in the response head.
    GrpcResourceExhausted,
}

/// Defaults of a policy's unset fields (the proto's: shoal.v1.RetryPolicy).
pub(crate) const DEFAULT_ATTEMPTS: u32 = 2;
pub(crate) const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub(crate) const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
pub(crate) const DEFAULT_BUDGET_RATIO: f64 = 0.2;
pub(crate) const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// The conditions of a policy that names none.
pub(crate) const DEFAULT_RETRY_ON: [RetryOn; 3] = [
    RetryOn::ConnectFailure,
    RetryOn::RefusedStream,
    RetryOn::ServiceUnavailable,
];
/// The most attempts a policy may ask for (the control plane's limit too).
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// A route rule's retry policy with every default filled in (what `/config` shows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RetryPolicy {
    /// Attempts, the first included.
    pub(crate) attempts: u32,
    /// Deadline of each attempt.
    #[serde(serialize_with = "crate::state::serialize_duration_opt")]
    pub(crate) per_try_timeout: Option<Duration>,
    /// What may be retried.
    pub(crate) retry_on: Vec<RetryOn>,
    /// Further statuses that may be retried.
    pub(crate) retryable_status_codes: Vec<u16>,
    /// Backoff before the first retry; it doubles per retry up to `backoff_max`, with full jitter.
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) backoff_base: Duration,
    #[serde(serialize_with = "crate::state::serialize_duration")]
    pub(crate) backoff_max: Duration,
    /// Retries may add at most this share of the rule's requests ...
    pub(crate) budget_ratio: f64,
    /// ... plus this many per second.
    pub(crate) budget_min_retries_per_second: u32,
    /// POST, PATCH (and other non-idempotent methods) are retried too.
    pub(crate) retry_non_idempotent: bool,
}

impl RetryPolicy {
    /// Whether `on` is one of the policy's conditions.
    pub(crate) fn retries_on(&self, on: RetryOn) -> bool {
        self.retry_on.contains(&on)
    }

    /// The backoff before retry number `n` (1 for the first): full jitter over an exponentially
    /// growing window, so retries from many clients do not arrive together.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let window = self
            .backoff_base
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.backoff_max);
        window.mul_f64(fastrand::f64())
    }
}

/// A rule's retry policy and its runtime state.
#[derive(Debug, Serialize)]
pub(crate) struct Retry {
    #[serde(flatten)]
    pub(crate) policy: RetryPolicy,
    /// Retries the budget allows now.
    #[serde(rename = "budget_available", serialize_with = "serialize_available")]
    pub(crate) budget: Arc<Budget>,
    #[serde(skip)]
    pub(crate) metrics: RetryMetrics,
}

fn serialize_available<S: serde::Serializer>(b: &Arc<Budget>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_u64(b.available(Instant::now()))
}

impl Retry {
    /// The policy with a fresh budget, counted under `service` and `route`.
    pub(crate) fn new(policy: RetryPolicy, service: &str, route: &str) -> Self {
        let budget = Arc::new(Budget::new(
            policy.budget_ratio,
            policy.budget_min_retries_per_second,
        ));
        Self {
            policy,
            budget,
            metrics: RetryMetrics::new(service, route),
        }
    }

    /// Takes over `previous`'s budget when its terms are the same (a policy whose budget changed
    /// starts a new one). Called before the snapshot serves a request.
    pub(crate) fn inherit(&mut self, previous: &Retry) {
        if previous.policy.budget_ratio == self.policy.budget_ratio
            && previous.policy.budget_min_retries_per_second
                == self.policy.budget_min_retries_per_second
        {
            self.budget = previous.budget.clone();
        }
    }
}

/// The retry metrics of one (service, route), registered when the state is built.
#[derive(Debug)]
pub(crate) struct RetryMetrics {
    /// Retries sent.
    pub(crate) retries: Counter,
    /// Requests that succeeded after at least one retry.
    pub(crate) recovered: Counter,
    /// Retries not sent because the budget was spent.
    pub(crate) budget_exhausted: Counter,
    /// Retries not sent because the request body was too large to keep.
    pub(crate) body_too_large: Counter,
    /// Retries not sent because the request's deadline would pass first.
    pub(crate) deadline: Counter,
    /// Retries not sent because the backend policy's `limits.max_concurrent_retries` retries were
    /// in flight.
    pub(crate) concurrent_retries: Counter,
}

impl RetryMetrics {
    fn new(service: &str, route: &str) -> Self {
        let skipped = |reason: &'static str| counter!(crate::metrics::names::RETRIES_SKIPPED, "service" => service.to_string(), "route" => route.to_string(), "reason" => reason);
        Self {
            retries: counter!(crate::metrics::names::RETRIES, "service" => service.to_string(), "route" => route.to_string()),
            recovered: counter!(crate::metrics::names::RETRIES_RECOVERED, "service" => service.to_string(), "route" => route.to_string()),
            budget_exhausted: skipped("budget_exhausted"),
            body_too_large: skipped("body_too_large"),
            deadline: skipped("deadline"),
            concurrent_retries: skipped("concurrent_retries"),
        }
    }
}

/// The window a budget counts over (Linkerd's and Finagle's: 10 s).
const WINDOW: Duration = Duration::from_secs(10);

/// A retry budget: over the last [`WINDOW`], retries may be at most `ratio` of the requests plus
/// `min_per_second` × the window's seconds. So during a full outage, attempts ÷ requests stays near
/// 1 + `ratio` instead of multiplying load by the attempt count (Linkerd, Finagle, gRPC's retry
/// throttling and Envoy's `retry_budget` work the same way).
#[derive(Debug)]
pub(crate) struct Budget {
    ratio: f64,
    min_per_second: u32,
    /// Requests and retries.
    counts: Window,
}

impl Budget {
    /// A budget allowing `ratio` of the requests plus `min_per_second` retries per second.
    pub(crate) fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            min_per_second,
            counts: Window::new(WINDOW),
        }
    }

    /// Counts one original request (retries are not deposits).
    pub(crate) fn deposit(&self, now: Instant) {
        self.counts.add(now, 1, 0);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        if self.available(now) == 0 {
            return false;
        }
        self.counts.add(now, 0, 1);
        true
    }

    /// Retries allowed now.
    pub(crate) fn available(&self, now: Instant) -> u64 {
        let (requests, retries) = self.counts.sums(now);
        let allowed = (requests as f64 * self.ratio) as u64
            + u64::from(self.min_per_second) * WINDOW.as_secs();
        allowed.saturating_sub(retries)
    }

    #[cfg(test)]
    fn epoch(&self) -> Instant {
        self.counts.epoch()
    }
}

#[cfg(test)]
mod tests;
