//! Chaos engineering and parallel runs, applied by client proxies: `FaultInjection` and `Mirror`.

use std::time::Duration;

use super::{RouteMatch, ServiceRef};

/// Deliberate failures injected into requests to a service; delay and abort are drawn independently.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultInjection {
    /// The service whose callers see the faults.
    pub target: ServiceRef,
    /// Delay a share of requests; `None`: no delay.
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with an error; `None`: no abort. At least one of the two is set.
    pub abort: Option<FaultAbort>,
    /// Which requests the faults may hit: any entry matching (a route rule's conditions); empty: every request.
    pub matches: Vec<RouteMatch>,
}

/// Delay a share of requests before forwarding them.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    /// Share of requests delayed, 0–100.
    pub percent: f64,
    /// How long they are delayed (positive).
    pub duration: Duration,
}

/// Answer a share of requests with an error status. At least one of the statuses is set.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    /// Share of requests aborted, 0–100.
    pub percent: f64,
    /// HTTP status of the answer (200–599); `None`: 503 (then `grpc_status` is set). gRPC requests get
    /// it too when `grpc_status` is `None`.
    pub http_status: Option<u16>,
    /// gRPC code (1–16) a gRPC request is answered with, in a trailers-only HTTP 200; `None`: gRPC
    /// requests get `http_status` like any other.
    pub grpc_status: Option<u8>,
}

/// Copy a share of a service's requests to another service, fire and forget; the calling proxy compares
/// the mirror's responses with the target's.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// The service whose requests are mirrored.
    pub target: ServiceRef,
    /// The service receiving the copies (not `target` itself).
    pub mirror: ServiceRef,
    /// Port of the mirror service; `None` means the request's port number.
    pub port: Option<u16>,
    /// Share of requests copied, 0–100.
    pub percent: f64,
    /// Response header names (lower-case) compared besides the status and the body hash.
    pub compare_headers: Vec<String>,
}
