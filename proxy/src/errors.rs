//! Errors of the data path, and the one place they become HTTP responses.
//!
//! Every response the proxy makes itself carries a stable reason in the `shoal-proxy-error`
//! header, so on-call engineers can tell a proxy-made 502 from an application's 502 at a glance.
//! The reason strings are part of the public contract (documented in docs/errors.md): metric
//! labels and dashboards depend on them, so never rename one.

use std::fmt;

use http::{HeaderValue, StatusCode};

/// The response header naming why the proxy answered by itself.
pub const ERROR_HEADER: &str = "shoal-proxy-error";

/// One error an HTTP request can meet in the proxy, with enough context to explain itself.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct ProxyError {
    /// What went wrong, in the stable vocabulary of [`Reason`].
    pub kind: Reason,
    /// Human-readable context: the address, setting or identity involved, and what to check.
    pub detail: String,
    /// The upstream provably did not process the request (an HTTP/2 stream it refused): safe to
    /// send again whatever the method.
    pub(crate) unprocessed: bool,
    /// The status to answer with instead of the reason's own (an injected fault's).
    pub(crate) status: Option<u16>,
    /// `Retry-After` seconds to answer with (a rate limit).
    pub(crate) retry_after: Option<u64>,
    /// The gRPC status to answer a gRPC call with instead of the reason's (an injected fault's).
    pub(crate) grpc_status: Option<u8>,
}

impl ProxyError {
    /// An error of `kind` with `detail` saying what to check.
    pub fn new(kind: Reason, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            unprocessed: false,
            status: None,
            retry_after: None,
            grpc_status: None,
        }
    }

    /// Answers with `status` instead of the reason's own.
    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// The status the proxy answers with.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or_else(|| self.kind.status())
    }

    /// Marks the request as never processed by the upstream.
    pub(crate) fn unprocessed(mut self) -> Self {
        self.unprocessed = true;
        self
    }

    /// The gRPC status a gRPC call gets: an injected fault's own; else, for a fault's explicit
    /// HTTP status, what the gRPC spec tells a client to make of that status; else the reason's.
    pub(crate) fn grpc_code(&self) -> u8 {
        match (self.grpc_status, self.status) {
            (Some(code), _) => code,
            (None, Some(status)) => grpc::from_http(status),
            (None, None) => self.kind.grpc_status(),
        }
    }

    /// The `grpc-message` of a gRPC call's answer: `<reason>: <detail>`, percent-encoded as the
    /// gRPC spec requires (so a client's status message reads exactly that).
    pub(crate) fn grpc_message(&self) -> HeaderValue {
        let text = format!("{}: {}", self.kind, self.detail);
        let mut out = String::with_capacity(text.len());
        for b in text.bytes() {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        // Only visible ASCII and spaces remain: always a valid header value.
        HeaderValue::from_str(&out).unwrap_or_else(|_| self.kind.header_value())
    }

    /// The body of the proxy's answer: the reason, then what to check.
    pub fn body_text(&self) -> String {
        format!("shoal-proxy: {}: {}\n", self.kind, self.detail)
    }

    /// The whole HTTP/1.1 answer, for a request refused before any HTTP library saw it (the
    /// request framing gate, `io::framing`): the same fields as every proxy-made response, and
    /// the connection closes after it.
    pub fn http1_response(&self, request_id: &str) -> Vec<u8> {
        let status = self.kind.status();
        let body = self.body_text();
        format!(
            "HTTP/1.1 {} {}\r\n{ERROR_HEADER}: {}\r\nx-request-id: {request_id}\r\n\
             content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.kind,
            body.len(),
        )
        .into_bytes()
    }
}

/// Who is at fault: this says where an on-call engineer should look first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (downstream) sent something wrong.
    Downstream,
    /// The server (upstream) failed or misbehaved.
    Upstream,
    /// The proxy itself (configuration, limits, shutdown).
    Proxy,
}

/// gRPC status codes (gRPC's `doc/statuscodes.md`), the ones the proxy answers with or looks for.
pub(crate) mod grpc {
    /// Success.
    pub(crate) const OK: u8 = 0;
    /// The call was cancelled (by the client).
    pub(crate) const CANCELLED: u8 = 1;
    /// The caller's deadline, or the route's timeout standing for it, passed.
    pub(crate) const DEADLINE_EXCEEDED: u8 = 4;
    /// The caller may not call this (authorization policy).
    pub(crate) const PERMISSION_DENIED: u8 = 7;
    /// A quota or limit of the caller's (rate limit, metadata size).
    pub(crate) const RESOURCE_EXHAUSTED: u8 = 8;
    /// The method is not implemented (the spec's mapping of HTTP 404).
    pub(crate) const UNIMPLEMENTED: u8 = 12;
    /// A protocol or configuration error no retry can fix.
    pub(crate) const INTERNAL: u8 = 13;
    /// The service cannot take the call now; trying again (later, elsewhere) may succeed.
    pub(crate) const UNAVAILABLE: u8 = 14;
    /// The call lacks the credentials the server requires (mesh mTLS).
    pub(crate) const UNAUTHENTICATED: u8 = 16;
    /// Any other failure (the spec's mapping of other HTTP statuses).
    pub(crate) const UNKNOWN: u8 = 2;

    /// A `grpc-status` value; a malformed one is UNKNOWN (what the gRPC spec has a client make of
    /// it).
    pub(crate) fn parse(value: &[u8]) -> u8 {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(UNKNOWN)
    }

    /// The HTTP status a gRPC status stands for wherever the mesh counts by HTTP status (metrics,
    /// the access log, outlier detection, circuit breakers, retry conditions): the mapping Envoy and
    /// grpc-gateway use. OK is 200; CANCELLED 499 (the client went away); an unknown code 500.
    pub(crate) const fn to_http(code: u8) -> u16 {
        match code {
            0 => 200,
            1 => 499,
            3 | 9 | 11 => 400,
            16 => 401,
            7 => 403,
            5 => 404,
            6 | 10 => 409,
            8 => 429,
            12 => 501,
            14 => 503,
            4 => 504,
            // UNKNOWN, INTERNAL, DATA_LOSS, and codes past the spec's.
            _ => 500,
        }
    }

    /// What the gRPC spec (`doc/http-grpc-status-mapping.md`) tells a client to make of an HTTP
    /// status received without a gRPC status: how a fault's explicit `http_status` answers a gRPC call.
    pub(crate) const fn from_http(status: u16) -> u8 {
        match status {
            400 => INTERNAL,
            401 => UNAUTHENTICATED,
            403 => PERMISSION_DENIED,
            404 => UNIMPLEMENTED,
            429 | 502 | 503 | 504 => UNAVAILABLE,
            _ => UNKNOWN,
        }
    }
}

/// The reason a Shoal proxy's trailers-only answer to a gRPC call names (HTTP 200 with
/// `grpc-status` and `shoal-proxy-error`), read from a response head the upstream sent: what the
/// calling proxy counts, retries and compares it as (the reason's HTTP status), as it did when
/// that answer was an HTTP error status. `None` for any other head.
pub(crate) fn relayed_reason(headers: &http::HeaderMap) -> Option<Reason> {
    let reason = Reason::from_name(headers.get(ERROR_HEADER)?.as_bytes())?;
    headers.contains_key("grpc-status").then_some(reason)
}

// One row per reason: its name (the header value and metric label), the HTTP status it answers
// with, the gRPC status a gRPC call gets instead, the side at fault, whether another attempt may
// succeed.
macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident => ($name:literal, $status:ident, $grpc:ident, $side:ident, $retry:literal), )*) => {
        /// The stable reasons the proxy gives for answering a request itself.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// Every reason, for documentation and metric pre-registration.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable string used in the `shoal-proxy-error` header and metric labels.
            pub const fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            /// The status the proxy answers with.
            pub const fn status(self) -> StatusCode {
                match self { $(Reason::$variant => StatusCode::$status,)* }
            }

            /// The gRPC status a gRPC call gets instead of [`Reason::status`] (docs/errors.md has
            /// the table and why each).
            pub const fn grpc_status(self) -> u8 {
                match self { $(Reason::$variant => grpc::$grpc,)* }
            }

            /// The reason named `name` (a `shoal-proxy-error` value), if it is one.
            pub fn from_name(name: &[u8]) -> Option<Reason> {
                match name { $(n if n == $name.as_bytes() => Some(Reason::$variant),)* _ => None }
            }

            /// Which side is at fault.
            pub const fn side(self) -> Side {
                match self { $(Reason::$variant => Side::$side,)* }
            }

            /// Whether trying again (on another endpoint) may succeed.
            pub const fn is_retryable(self) -> bool {
                match self { $(Reason::$variant => $retry,)* }
            }
        }
    };
}

reasons! {
    /// The request was malformed (framing, header syntax) and was not forwarded.
    MalformedRequest => ("malformed-request", BAD_REQUEST, INTERNAL, Downstream, false),
    /// The request head exceeded `SHOAL_MAX_HEADER_BYTES` or `SHOAL_MAX_HEADERS`.
    HeadersTooLarge => ("headers-too-large", REQUEST_HEADER_FIELDS_TOO_LARGE, RESOURCE_EXHAUSTED, Downstream, false),
    /// The request target exceeded the HTTP library's URI limit.
    UriTooLong => ("uri-too-long", URI_TOO_LONG, RESOURCE_EXHAUSTED, Downstream, false),
    /// The service's authorization policy does not allow this caller (identity, port, path, method).
    Unauthorized => ("unauthorized", FORBIDDEN, PERMISSION_DENIED, Downstream, false),
    /// The request names no destination the proxy can reach (no authority, no original destination).
    NoDestination => ("no-destination", BAD_REQUEST, INTERNAL, Downstream, false),
    /// The destination resolves to the proxy's own listener: forwarding would loop.
    ForwardingLoop => ("forwarding-loop", LOOP_DETECTED, INTERNAL, Proxy, false),
    /// The destination's name could not be resolved.
    UpstreamUnresolvable => ("upstream-unresolvable", BAD_GATEWAY, UNAVAILABLE, Upstream, true),
    /// The upstream refused the TCP connection (nothing listening).
    UpstreamConnectRefused => ("upstream-connect-refused", BAD_GATEWAY, UNAVAILABLE, Upstream, true),
    /// The upstream did not accept the TCP connection within `SHOAL_CONNECT_TIMEOUT`.
    UpstreamConnectTimeout => ("upstream-connect-timeout", GATEWAY_TIMEOUT, UNAVAILABLE, Upstream, true),
    /// Connecting to the upstream failed for another reason (unreachable network, ...).
    UpstreamConnectError => ("upstream-connect-error", BAD_GATEWAY, UNAVAILABLE, Upstream, true),
    /// The mTLS handshake with the endpoint's proxy failed: it did not prove the identity discovery
    /// gives the endpoint, its certificate does not chain to the trust bundle, or it is no Shoal proxy.
    UpstreamTlsHandshake => ("upstream-tls-handshake", BAD_GATEWAY, UNAVAILABLE, Upstream, true),
    /// The endpoint is in the mesh (mTLS required) but this proxy has no certificate yet.
    NoIdentity => ("no-identity", SERVICE_UNAVAILABLE, UNAVAILABLE, Proxy, true),
    /// The upstream closed or reset the connection before sending a complete response head.
    UpstreamReset => ("upstream-reset", BAD_GATEWAY, UNAVAILABLE, Upstream, false),
    /// The upstream's response was malformed (framing, header syntax, smuggling attempt).
    UpstreamMalformedResponse => ("upstream-malformed-response", BAD_GATEWAY, INTERNAL, Upstream, false),
    /// No response head arrived within the response timeout.
    ResponseTimeout => ("response-timeout", GATEWAY_TIMEOUT, DEADLINE_EXCEEDED, Upstream, false),
    /// The service is known but has no ready endpoint.
    NoEndpoints => ("no-endpoints", SERVICE_UNAVAILABLE, UNAVAILABLE, Proxy, false),
    /// The listener's connection limit (`SHOAL_MAX_CONNECTIONS`) was reached.
    ConnectionLimit => ("connection-limit", SERVICE_UNAVAILABLE, UNAVAILABLE, Proxy, true),
    /// The backend's cap on requests in flight (its backend policy) was reached; not sent.
    BackendOverloaded => ("backend-overloaded", SERVICE_UNAVAILABLE, UNAVAILABLE, Proxy, false),
    /// The backend's circuit breaker is open (too many recent failures); not sent.
    CircuitOpen => ("circuit-open", SERVICE_UNAVAILABLE, UNAVAILABLE, Proxy, false),
    /// A fault injection aborted the request (its status is the fault's); not sent.
    FaultInjected => ("fault-injected", SERVICE_UNAVAILABLE, UNAVAILABLE, Proxy, false),
    /// The service's rate limit is reached for this caller; not sent to the app.
    RateLimited => ("rate-limited", TOO_MANY_REQUESTS, RESOURCE_EXHAUSTED, Downstream, false),
    /// Inbound: the port is in strict mTLS mode and this request arrived in plain text (not over
    /// mesh mTLS), so it was not passed to the app.
    MtlsRequired => ("mtls-required", FORBIDDEN, UNAUTHENTICATED, Downstream, false),
    /// Outbound: this proxy sent the request in plain text to an endpoint whose proxy requires
    /// mesh mTLS (it answered `mtls-required`): this proxy has no identity, or its view of the
    /// service disables mTLS, or gives the endpoint no identity.
    UpstreamRequiresMtls => ("upstream-requires-mtls", BAD_GATEWAY, UNAUTHENTICATED, Proxy, false),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    /// The header value for this reason (static: no allocation on the error path).
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// Classifies an error from connecting a TCP socket into a reason.
pub fn connect_reason(err: &std::io::Error) -> Reason {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => Reason::UpstreamConnectRefused,
        std::io::ErrorKind::TimedOut => Reason::UpstreamConnectTimeout,
        _ => Reason::UpstreamConnectError,
    }
}

/// Classifies a hyper client error (after the connection was established) into a reason.
pub fn upstream_reason(err: &hyper::Error) -> Reason {
    // A failure of the request body we were streaming is the client's (a malformed chunk, or the
    // client going away mid-body, on HTTP/1 or HTTP/2), not the upstream's.
    if err.is_user()
        && std::error::Error::source(err).is_some_and(|s| {
            s.downcast_ref::<hyper::Error>().is_some() || s.downcast_ref::<h2::Error>().is_some()
        })
    {
        return Reason::MalformedRequest;
    }
    if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
        Reason::UpstreamMalformedResponse
    } else if err.is_timeout() {
        Reason::ResponseTimeout
    } else {
        Reason::UpstreamReset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_unique_and_lowercase() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate reason {r}");
            assert!(
                r.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
            );
            assert!(r.status().is_client_error() || r.status().is_server_error());
        }
    }

    #[test]
    fn every_reason_has_a_grpc_status_and_reads_back_from_its_name() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_name(r.as_str().as_bytes()), Some(*r));
            assert!((1..=16).contains(&r.grpc_status()), "{r}");
        }
        assert_eq!(Reason::from_name(b"no-such-reason"), None);
        assert_eq!(Reason::UpstreamConnectRefused.grpc_status(), 14);
        assert_eq!(Reason::ResponseTimeout.grpc_status(), 4);
        assert_eq!(
            Reason::UpstreamConnectTimeout.grpc_status(),
            14,
            "never sent"
        );
        assert_eq!(Reason::Unauthorized.grpc_status(), 7);
        assert_eq!(Reason::MtlsRequired.grpc_status(), 16);
        assert_eq!(Reason::RateLimited.grpc_status(), 8);
        assert_eq!(Reason::BackendOverloaded.grpc_status(), 14);
    }

    #[test]
    fn a_faults_statuses_decide_its_grpc_status() {
        let fault = || ProxyError::new(Reason::FaultInjected, "x");
        assert_eq!(fault().with_status(429).grpc_code(), 14, "the spec's 429");
        assert_eq!(fault().with_status(404).grpc_code(), 12);
        assert_eq!(fault().with_status(500).grpc_code(), 2);
        let mut both = fault().with_status(429);
        both.grpc_status = Some(8);
        assert_eq!(both.grpc_code(), 8, "its own gRPC status wins");
        assert_eq!(ProxyError::new(Reason::Unauthorized, "x").grpc_code(), 7);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        let err = ProxyError::new(Reason::NoEndpoints, "50% of \"a\" → b\nc");
        assert_eq!(
            err.grpc_message().to_str().unwrap(),
            "no-endpoints: 50%25 of \"a\" %E2%86%92 b%0Ac"
        );
    }

    #[test]
    fn a_proxys_grpc_answer_is_recognised_from_its_head() {
        let mut h = http::HeaderMap::new();
        h.insert(
            ERROR_HEADER,
            HeaderValue::from_static("upstream-connect-refused"),
        );
        assert_eq!(
            relayed_reason(&h),
            None,
            "no grpc-status: not a gRPC answer"
        );
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(relayed_reason(&h), Some(Reason::UpstreamConnectRefused));
        h.insert(ERROR_HEADER, HeaderValue::from_static("made-up"));
        assert_eq!(relayed_reason(&h), None);
    }

    #[test]
    fn connect_errors_classify() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_reason(&refused), Reason::UpstreamConnectRefused);
        assert_eq!(
            Reason::UpstreamConnectRefused.status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            Reason::UpstreamConnectTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
