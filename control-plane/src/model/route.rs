//! Routing: which backends a service's requests go to, with per-rule timeouts and retries.

use std::time::Duration;

use super::ServiceRef;

/// How requests to a service are routed (HTTP and gRPC traffic).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The service whose requests this route handles.
    pub parent: ServiceRef,
    /// Rules in priority order: the first rule with a matching entry handles the request.
    pub rules: Vec<RouteRule>,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRule {
    /// Optional name, used as the `route` metric label; empty when unnamed.
    pub name: String,
    /// The rule applies when any entry matches; an empty list matches every request.
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go, split by weight; empty means the parent service itself.
    pub backends: Vec<WeightedBackend>,
    /// Overall deadline, retries included; `None` means the proxy's default.
    pub timeout: Option<Duration>,
    /// Retries; `None` means no retries.
    pub retry: Option<RetryPolicy>,
    /// Header edits made to matching requests before they are sent; `None`: none.
    pub request_headers: Option<HeaderModifier>,
    /// Header edits made to the responses on their way back; `None`: none.
    pub response_headers: Option<HeaderModifier>,
    /// Answer matching requests with this redirect instead of forwarding them (the rule has no backends).
    pub redirect: Option<RequestRedirect>,
}

/// Edits to a message's headers (Gateway API's `HTTPHeaderFilter`): remove, then set, then add.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderModifier {
    /// Replace the header's values with this one.
    pub set: Vec<(String, String)>,
    /// Append this value.
    pub add: Vec<(String, String)>,
    /// Remove every value of the header.
    pub remove: Vec<String>,
}

/// A redirect the calling proxy answers (Gateway API's `HTTPRequestRedirectFilter`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestRedirect {
    /// `http` or `https`; `None` keeps the request's.
    pub scheme: Option<String>,
    /// `None` keeps the request's host.
    pub hostname: Option<String>,
    /// `None` keeps the request's port (or the scheme's default when `scheme` is set).
    pub port: Option<u16>,
    /// `None` keeps the request's path.
    pub path: Option<PathModifier>,
    /// 301, 302, 303, 307 or 308; `None` means 302.
    pub status_code: Option<u16>,
}

/// How a redirect rewrites the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    /// Replace the whole path.
    ReplaceFullPath(String),
    /// Replace the path prefix the rule matched.
    ReplacePrefixMatch(String),
}

/// Conditions on a request; all set conditions must hold, and at least one must be set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    /// Path condition; `None` matches any path.
    pub path: Option<PathMatch>,
    /// Header conditions; all must hold.
    pub headers: Vec<HeaderMatch>,
    /// HTTP method, case-sensitive; `None` matches any method.
    pub method: Option<String>,
}

impl RouteMatch {
    /// Whether the entry sets no condition at all (which validation rejects: omit `matches` instead).
    pub fn is_empty(&self) -> bool {
        self.path.is_none() && self.headers.is_empty() && self.method.is_none()
    }
}

/// A condition on the request path (without query string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path equals this string.
    Exact(String),
    /// The path starts with this prefix on segment boundaries (`/api` matches `/api/users`, not `/apiary`).
    Prefix(String),
    /// The whole path matches this regular expression.
    Regex(String),
}

/// A condition on a request header (names are case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// What its value must be.
    pub value: ValueMatch,
}

/// A condition on a header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Exactly this value.
    Exact(String),
    /// The whole value matches this regular expression.
    Regex(String),
}

/// A share of traffic sent to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedBackend {
    /// The service receiving this share.
    pub service: ServiceRef,
    /// Port of that service; `None` means the request's port number.
    pub port: Option<u16>,
    /// Relative weight among the rule's backends; 0 receives no traffic.
    pub weight: u32,
}

/// When and how failed requests are retried. `None` fields take the proxy defaults documented in the proto.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryPolicy {
    /// Maximum attempts, the first included (1 means no retry).
    pub attempts: Option<u32>,
    /// Deadline for each attempt.
    pub per_try_timeout: Option<Duration>,
    /// The failures that may be retried; empty means the defaults.
    pub retry_on: Vec<RetryOn>,
    /// Extra HTTP status codes that may be retried.
    pub retryable_status_codes: Vec<u16>,
    /// Backoff before the first retry.
    pub backoff_base: Option<Duration>,
    /// Upper bound of the backoff.
    pub backoff_max: Option<Duration>,
    /// Retry budget: retries may add at most this fraction (0–1] of the original requests.
    pub budget_ratio: Option<f64>,
    /// Retries allowed per second regardless of the ratio.
    pub budget_min_retries_per_second: Option<u32>,
    /// Retry non-idempotent methods too.
    pub retry_non_idempotent: bool,
}

/// A class of failure that may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// The connection could not be established.
    ConnectFailure,
    /// The endpoint refused the HTTP/2 stream before processing it.
    RefusedStream,
    /// The connection was reset or closed before a response arrived.
    Reset,
    /// Any 5xx response.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// 503 only.
    ServiceUnavailable,
    /// A per-try timeout fired.
    PerTryTimeout,
    /// gRPC `UNAVAILABLE`.
    GrpcUnavailable,
    /// gRPC `RESOURCE_EXHAUSTED`.
    GrpcResourceExhausted,
}
