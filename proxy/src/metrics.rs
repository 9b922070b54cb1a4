//! Prometheus metrics: names, the recorder, and pre-registered handles for the hot path.
//!
//! Handles are resolved once per target (outbound: service, route rule, backend) when the state
//! is built, not per request: the hot path only bumps atomics. Labels are bounded — never paths
//! or ids, only names from the state. docs/metrics.md lists every family.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::StatusCode;
use metrics::{
    Counter, Gauge, Histogram, Label, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::errors::Reason;

/// Metric names (the public contract dashboards use).
pub mod names {
    pub const REQUESTS: &str = "shoal_requests_total";
    pub const REQUEST_DURATION: &str = "shoal_request_duration_seconds";
    pub const TCP_OPENED: &str = "shoal_tcp_connections_opened_total";
    pub const TCP_CLOSED: &str = "shoal_tcp_connections_closed_total";
    pub const TCP_ACTIVE: &str = "shoal_tcp_connections_active";
    pub const TCP_READ_BYTES: &str = "shoal_tcp_read_bytes_total";
    pub const TCP_WRITE_BYTES: &str = "shoal_tcp_write_bytes_total";
    pub const DETECTIONS: &str = "shoal_protocol_detections_total";
    pub const PROXY_ERRORS: &str = "shoal_proxy_errors_total";
    pub const STATE_UPDATES: &str = "shoal_state_updates_total";
    pub const STATE_VERSION: &str = "shoal_state_version";
    pub const AUTHZ: &str = "shoal_authz_decisions_total";
    pub const TLS_REFUSED: &str = "shoal_inbound_tls_refused_total";
    pub const TLS_ORIGINATED: &str = "shoal_outbound_tls_connections_total";
    pub const RESENT: &str = "shoal_upstream_requests_resent_total";
    pub const RETRIES: &str = "shoal_retries_total";
    pub const RETRIES_RECOVERED: &str = "shoal_retries_recovered_total";
    pub const RETRIES_SKIPPED: &str = "shoal_retries_skipped_total";
    pub const BACKEND_OVERLOADED: &str = "shoal_backend_overloaded_total";
    pub const BACKEND_IN_FLIGHT: &str = "shoal_backend_requests_in_flight";
    pub const BACKEND_PENDING: &str = "shoal_backend_requests_pending";
    pub const BACKEND_CONNECTIONS: &str = "shoal_backend_connections_open";
    pub const CIRCUIT_STATE: &str = "shoal_backend_circuit_state";
    pub const CIRCUIT_TRANSITIONS: &str = "shoal_backend_circuit_transitions_total";
    pub const OUTLIER_EJECTIONS: &str = "shoal_outlier_ejections_total";
    pub const OUTLIER_EJECTED: &str = "shoal_outlier_ejected_endpoints";
    pub const ZONE_FAILOVERS: &str = "shoal_zone_failovers_total";
    pub const HEALTH_CHECKS: &str = "shoal_health_checks_total";
    pub const ENDPOINTS_UNHEALTHY: &str = "shoal_endpoints_unhealthy";
    pub const SPANS_EXPORTED: &str = "shoal_tracing_spans_exported_total";
    pub const SPANS_DROPPED: &str = "shoal_tracing_spans_dropped_total";
    pub const MIRROR_REQUESTS: &str = "shoal_mirror_requests_total";
    pub const MIRROR_MISMATCHES: &str = "shoal_mirror_mismatches_total";
    pub const MIRROR_SKIPPED: &str = "shoal_mirror_skipped_total";
}

/// Latency buckets (seconds): sub-millisecond resolution where a sidecar hop lives, up to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global Prometheus recorder and describes every metric.
///
/// Must run before any handle is created (handles made earlier are no-ops).
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    Ok(handle)
}

fn describe() {
    use names::*;
    describe_counter!(
        REQUESTS,
        "HTTP requests completed, by direction, service (outbound: the service the caller named; inbound: this proxy's), route (the route rule; default when none matched), backend (outbound: the service the split sent the request to), tls (inbound: over mesh mTLS), status code and proxy error reason (empty when the upstream answered)"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from receiving a request to its response head, by direction, service, route, backend (outbound), tls (inbound) and status class"
    );
    describe_counter!(TCP_OPENED, "Accepted connections, by direction");
    describe_counter!(
        TCP_CLOSED,
        "Closed connections, by direction and detected protocol"
    );
    describe_gauge!(TCP_ACTIVE, "Open connections, by direction");
    describe_counter!(
        TCP_READ_BYTES,
        Unit::Bytes,
        "Bytes read from clients, by direction and protocol (counted when the connection closes)"
    );
    describe_counter!(
        TCP_WRITE_BYTES,
        Unit::Bytes,
        "Bytes written to clients, by direction and protocol (counted when the connection closes)"
    );
    describe_counter!(
        DETECTIONS,
        "Protocol detection outcomes, by direction and result (http1, http2, tls, opaque, skipped, timeout)"
    );
    describe_counter!(
        PROXY_ERRORS,
        "Errors the proxy handled itself, by direction and reason"
    );
    describe_counter!(
        STATE_UPDATES,
        "State updates from the state file, by result (applied, rejected)"
    );
    describe_gauge!(STATE_VERSION, "Version of the state currently served");
    describe_counter!(
        TLS_REFUSED,
        "Inbound connections closed for mTLS reasons, by reason (plaintext, handshake, wrong-identity, no-certificate)"
    );
    describe_counter!(
        TLS_ORIGINATED,
        "Outbound mTLS handshakes with peer proxies, by result (ok, failed)"
    );
    describe_counter!(
        RESENT,
        "Requests re-sent on a new HTTP/2 connection because the upstream provably never processed them (RFC 9113 §8.7), by direction, service, route, backend (outbound), tls (inbound) and reason (goaway: the stream was above the GOAWAY's last-stream-id; refused: RST_STREAM REFUSED_STREAM)"
    );
    describe_counter!(
        RETRIES,
        "Retries sent by a route rule's retry policy, by service (the service the caller named) and route (the rule)"
    );
    describe_counter!(
        RETRIES_RECOVERED,
        "Requests that succeeded after at least one retry, by service (the service the caller named) and route (the rule)"
    );
    describe_counter!(
        RETRIES_SKIPPED,
        "Retries a policy allowed but the proxy did not send, by service (the service the caller named), route (the rule) and reason (budget_exhausted, body_too_large, deadline, concurrent_retries)"
    );
    describe_counter!(
        BACKEND_OVERLOADED,
        "Requests a backend policy's cap refused with 503 backend-overloaded, by service and limit (max_concurrent_requests, max_pending_requests, max_connections: waited its connect timeout for a connection)"
    );
    describe_gauge!(
        BACKEND_IN_FLIGHT,
        "Requests in flight to a service under its backend policy's limits.max_concurrent_requests, by service"
    );
    describe_gauge!(
        BACKEND_PENDING,
        "Requests waiting for a connection at a service's limits.max_connections, by service"
    );
    describe_gauge!(
        BACKEND_CONNECTIONS,
        "Connections open to a service's endpoints under its backend policy's connection limits, by service"
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "A service's circuit breaker: 0 closed, 1 open, 2 half-open (forced open shows 1, forced closed 0), by service"
    );
    describe_counter!(
        CIRCUIT_TRANSITIONS,
        "Circuit breaker transitions, by service and to (open, half_open, closed)"
    );
    describe_gauge!(
        OUTLIER_EJECTED,
        "Endpoints currently ejected by outlier detection (probing included), by service"
    );
    describe_counter!(
        OUTLIER_EJECTIONS,
        "Endpoints ejected from load balancing by outlier detection, by service (the backend) and reason (consecutive_failures, success_rate, probe_failed: ejected again after its probe failed)"
    );
    describe_counter!(
        HEALTH_CHECKS,
        "Active health check probes, by service (the backend) and result (healthy, unhealthy)"
    );
    describe_gauge!(
        ENDPOINTS_UNHEALTHY,
        "Endpoints currently out of load balancing because their active health checks failed, by service"
    );
    describe_counter!(
        ZONE_FAILOVERS,
        "Requests balanced over every endpoint of a backend because too few endpoints of the proxy's zone were in balancing, by service (the backend) and zone (SHOAL_ZONE)"
    );
    describe_counter!(
        SPANS_EXPORTED,
        "Trace spans the OTLP collector accepted (docs/tracing.md)"
    );
    describe_counter!(
        SPANS_DROPPED,
        "Trace spans dropped, by reason: queue_full (SHOAL_TRACING_MAX_QUEUE reached), export_failed (the collector refused them or did not answer)"
    );
    describe_counter!(
        MIRROR_REQUESTS,
        "Requests a mirror policy selected for copying, by service (the service the caller named), route (the rule), mirror (the shadow service) and result (match, mismatch, failed: the shadow gave no complete answer, skipped)"
    );
    describe_counter!(
        MIRROR_MISMATCHES,
        "Parts of a mirrored response that differed from the primary's, by service, route, mirror and part (status, header, body); one mismatched request counts once per part that differed"
    );
    describe_counter!(
        MIRROR_SKIPPED,
        "Mirror copies not sent or not compared, by service, route, mirror and reason (in_flight_limit: SHOAL_MIRROR_MAX_IN_FLIGHT copies were already in flight; body_too_large: the request body is over 64 KiB; primary_incomplete: the primary request or response did not complete)"
    );
    describe_counter!(
        AUTHZ,
        "Inbound authorization decisions, by policy (the protected service), deciding rule (or default) and decision"
    );
    crate::identity::describe_metrics();
}

/// Counts a request a backend policy's cap refused (a cold path: the counter is looked up here).
pub fn backend_overloaded(service: &str, limit: &'static str) {
    counter!(names::BACKEND_OVERLOADED, "service" => service.to_string(), "limit" => limit)
        .increment(1);
}

/// Traffic direction, a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Connections to the app.
    Inbound,
    /// The app's outgoing connections.
    Outbound,
}

impl Direction {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Spans the collector accepted (docs/tracing.md).
pub fn spans_exported() -> Counter {
    counter!(names::SPANS_EXPORTED)
}

/// Spans dropped: `queue_full` (the export queue was at `SHOAL_TRACING_MAX_QUEUE`) or
/// `export_failed` (the collector refused them or did not answer).
pub fn spans_dropped(reason: &'static str) -> Counter {
    counter!(names::SPANS_DROPPED, "reason" => reason)
}

/// Counts an error the proxy handled itself.
pub fn proxy_error(direction: Direction, reason: Reason) {
    counter!(names::PROXY_ERRORS, "direction" => direction.as_str(), "reason" => reason.as_str())
        .increment(1);
}

/// Counts a protocol detection outcome.
pub fn detection(direction: Direction, result: &'static str) {
    counter!(names::DETECTIONS, "direction" => direction.as_str(), "result" => result).increment(1);
}

/// Counts an inbound connection refused for mTLS reasons (plaintext on a strict port, a failed
/// handshake, a handshake for another identity, no certificate yet).
pub fn tls_refused(reason: &'static str) {
    counter!(names::TLS_REFUSED, "reason" => reason).increment(1);
}

/// Counts an authorization decision of the inbound policy `policy` (bounded: its rules).
pub fn authz_decision(policy: &str, rule: &str, allowed: bool) {
    let decision = if allowed { "allow" } else { "deny" };
    counter!(names::AUTHZ, "policy" => policy.to_string(), "rule" => rule.to_string(), "decision" => decision)
        .increment(1);
}

/// Why a request was sent again on a new HTTP/2 connection (RFC 9113 §8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resent {
    /// Its stream was above the last-stream-id of the upstream's GOAWAY.
    Goaway,
    /// The upstream reset its stream with REFUSED_STREAM.
    Refused,
}

/// Counts an outbound mTLS connection attempt to a peer proxy, by result (`ok`, `failed`).
pub fn tls_originated(result: &'static str) {
    counter!(names::TLS_ORIGINATED, "result" => result).increment(1);
}

/// Pre-registered handles for the requests of one target: outbound, a (service, route rule,
/// backend) — the service the caller named, the rule it matched and the backend the split sent it
/// to; inbound, the local service and whether the request came over mesh mTLS.
#[derive(Debug)]
pub struct RequestMetrics {
    /// The target's labels, in exposition order; each counter adds `status_code` and `reason`.
    labels: Vec<Label>,
    /// Latency histograms per status class 1xx..5xx (index = class - 1).
    latency: [Histogram; 5],
    /// The counter of the first (status, reason) this target saw — nearly always its usual
    /// one — read without a lock.
    first: OnceLock<(u16, Option<Reason>, Counter)>,
    /// Counters per (status, reason), created on first use; a handful per target.
    counts: Mutex<Vec<(u16, Option<Reason>, Counter)>>,
    /// Re-sends of requests the upstream never processed, by reason, created on first use (most
    /// targets never see one, and a series at 0 per target would only add noise).
    resent: [OnceLock<Counter>; 2],
}

impl RequestMetrics {
    /// Handles for outbound requests to `service` that matched `route` and were sent to
    /// `backend` (qualified names; `route` is `default` when no rule matched, and then `backend`
    /// is `service` itself).
    pub fn outbound(service: &str, route: &str, backend: &str) -> Arc<Self> {
        Self::with_labels(vec![
            Label::new("direction", Direction::Outbound.as_str()),
            Label::new("service", service.to_string()),
            Label::new("route", route.to_string()),
            Label::new("backend", backend.to_string()),
        ])
    }

    /// Handles for inbound requests, labelled by whether they arrived over mesh mTLS
    /// (`tls="true"`) or in plain text (`tls="false"`, a permissive port). Inbound requests have
    /// no `backend`: this proxy's app is the backend, and `service` already names it.
    pub fn inbound(service: &str, mtls: bool) -> Arc<Self> {
        let tls = if mtls { "true" } else { "false" };
        Self::with_labels(vec![
            Label::new("direction", Direction::Inbound.as_str()),
            Label::new("service", service.to_string()),
            Label::new("route", "default"),
            Label::new("tls", tls),
        ])
    }

    /// The value of the target's label `key` (`service`, `route`, `backend`), if it has one.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.key() == key)
            .map(|l| l.value())
    }

    fn with_labels(labels: Vec<Label>) -> Arc<Self> {
        let class = |c: &'static str| {
            let mut l = labels.clone();
            l.push(Label::new("status_class", c));
            histogram!(names::REQUEST_DURATION, l)
        };
        Arc::new(Self {
            latency: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            labels,
            first: OnceLock::new(),
            counts: Mutex::new(Vec::new()),
            resent: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// Counts a request re-sent because the upstream provably never processed it: `goaway`
    /// (its stream was above a GOAWAY's last-stream-id) or `refused` (REFUSED_STREAM).
    pub fn resent(&self, reason: Resent) {
        let (slot, value) = match reason {
            Resent::Goaway => (&self.resent[0], "goaway"),
            Resent::Refused => (&self.resent[1], "refused"),
        };
        slot.get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.push(Label::new("reason", value));
            counter!(names::RESENT, labels)
        })
        .increment(1);
    }

    /// Records one completed request.
    pub fn record(&self, status: StatusCode, reason: Option<Reason>, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.latency[class].record(elapsed.as_secs_f64());
        let code = status.as_u16();
        if let Some((c, r, counter)) = self.first.get()
            && *c == code
            && *r == reason
        {
            // A lock is two atomic operations; this path is a load.
            counter.increment(1);
            return;
        }
        // Never held across an await; uncontended on the single-threaded runtime. Incrementing
        // under the lock avoids cloning the handle (two atomic operations) per request.
        let mut counts = crate::sync::lock(&self.counts);
        match counts.iter().find(|(c, r, _)| *c == code && *r == reason) {
            Some((_, _, counter)) => counter.increment(1),
            None => {
                let mut labels = self.labels.clone();
                labels.push(Label::new("status_code", code.to_string()));
                labels.push(Label::new("reason", reason.map_or("", Reason::as_str)));
                let counter = counter!(names::REQUESTS, labels);
                counter.increment(1);
                if self.first.get().is_none() {
                    // Under the lock, so only one (status, reason) ever gets here first.
                    let _ = self.first.set((code, reason, counter));
                    return;
                }
                counts.push((code, reason, counter));
            }
        }
    }
}

/// Pre-registered connection handles for one direction.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    direction: Direction,
    opened: Counter,
    active: Gauge,
}

impl ConnMetrics {
    /// Registers the handles for `direction`.
    pub fn new(direction: Direction) -> Self {
        let d = direction.as_str();
        Self {
            direction,
            opened: counter!(names::TCP_OPENED, "direction" => d),
            active: gauge!(names::TCP_ACTIVE, "direction" => d),
        }
    }

    /// The direction these handles count.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Counts an accepted connection.
    pub fn opened(&self) {
        self.opened.increment(1);
        self.active.increment(1.0);
    }

    /// Counts a closed connection with the bytes it moved.
    pub fn closed(&self, protocol: &'static str, read: u64, written: u64) {
        let d = self.direction.as_str();
        self.active.decrement(1.0);
        counter!(names::TCP_CLOSED, "direction" => d, "protocol" => protocol).increment(1);
        counter!(names::TCP_READ_BYTES, "direction" => d, "protocol" => protocol).increment(read);
        counter!(names::TCP_WRITE_BYTES, "direction" => d, "protocol" => protocol)
            .increment(written);
    }
}

/// The mirror counters of one (service, route, mirror), registered when the state is built.
#[derive(Debug)]
pub(crate) struct MirrorMetrics {
    /// The shadow answered like the primary.
    pub(crate) matched: Counter,
    /// It answered differently (the parts below say how).
    pub(crate) mismatched: Counter,
    /// It gave no complete answer (no endpoint, an error, a timeout, a broken body).
    pub(crate) failed: Counter,
    /// The copy was skipped (the reasons below say why).
    pub(crate) skipped: Counter,
    /// Mismatches per part.
    pub(crate) status: Counter,
    pub(crate) header: Counter,
    pub(crate) body: Counter,
    /// Skips per reason.
    pub(crate) in_flight_limit: Counter,
    pub(crate) body_too_large: Counter,
    pub(crate) primary_incomplete: Counter,
}

impl MirrorMetrics {
    /// The handles of `service`'s requests on `route` mirrored to `mirror`.
    pub(crate) fn new(service: &str, route: &str, mirror: &str) -> Self {
        let labels = || {
            [
                Label::new("service", service.to_string()),
                Label::new("route", route.to_string()),
                Label::new("mirror", mirror.to_string()),
            ]
        };
        let with = |name: &'static str, key: &'static str, value: &'static str| {
            let mut l = labels().to_vec();
            l.push(Label::from_static_parts(key, value));
            metrics::counter!(name, l)
        };
        Self {
            matched: with(names::MIRROR_REQUESTS, "result", "match"),
            mismatched: with(names::MIRROR_REQUESTS, "result", "mismatch"),
            failed: with(names::MIRROR_REQUESTS, "result", "failed"),
            skipped: with(names::MIRROR_REQUESTS, "result", "skipped"),
            status: with(names::MIRROR_MISMATCHES, "part", "status"),
            header: with(names::MIRROR_MISMATCHES, "part", "header"),
            body: with(names::MIRROR_MISMATCHES, "part", "body"),
            in_flight_limit: with(names::MIRROR_SKIPPED, "reason", "in_flight_limit"),
            body_too_large: with(names::MIRROR_SKIPPED, "reason", "body_too_large"),
            primary_incomplete: with(names::MIRROR_SKIPPED, "reason", "primary_incomplete"),
        }
    }
}
