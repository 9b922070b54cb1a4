//! Responses the proxy makes itself: the one place errors become HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Response, header};

use super::Downstream;
use super::body::ResponseBody;
use crate::errors::{ERROR_HEADER, ProxyError, Reason};
use crate::io::Rejected;
use crate::metrics::{self, Direction};
use crate::trace_context::TraceIds;

/// Turns `err` into a response with its status and stable reason, logged once; `downstream` is the
/// client's HTTP version (only HTTP/1.1 has a `Connection` field to close with). A gRPC call
/// (`grpc`, `headers::is_grpc`) gets a gRPC status instead, whatever the error.
pub fn error(
    direction: Direction,
    downstream: Downstream,
    err: &ProxyError,
    ids: &TraceIds,
    destination: &str,
    grpc: bool,
) -> Response<ResponseBody> {
    metrics::proxy_error(direction, err.kind);
    tracing::warn!(
        direction = direction.as_str(),
        reason = err.kind.as_str(),
        request_id = ids.request_id.as_str(),
        trace_id = %ids.trace_id,
        destination,
        "{}",
        err.detail
    );
    let mut resp = if grpc {
        grpc_error(err, ids)
    } else {
        http_error(err, ids)
    };
    let h = resp.headers_mut();
    if downstream == Downstream::Http1
        && matches!(
            err.kind,
            Reason::MalformedRequest | Reason::UpstreamMalformedResponse | Reason::MtlsRequired
        )
    {
        // Nothing more can be trusted on a connection whose framing went wrong, and a strict
        // port keeps no plain-text connection open once it has explained why. (On HTTP/2 the
        // field does not exist: the h2 crate refuses a head carrying it.)
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The answer to any other request: the error's HTTP status, and a text body saying what failed
/// and what to check.
fn http_error(err: &ProxyError, ids: &TraceIds) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::local(err.body_text()));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(ERROR_HEADER, err.kind.header_value());
    if let Some(secs) = err.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-request-id", ids.request_id.to_header_value());
    resp
}

/// A gRPC call's answer to `err`: a trailers-only response (HTTP 200, the gRPC status and message in
/// the head, no body), which every gRPC client reads as the call's status: the reason's gRPC status
/// (`ProxyError::grpc_code`), and `<reason>: <detail>` as its message. (An HTTP error status would
/// reach a gRPC client as INTERNAL, or a guess from the status, without the reason.) The same
/// `shoal-proxy-error` and `x-request-id` as every proxy answer.
fn grpc_error(err: &ProxyError, ids: &TraceIds) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(u16::from(err.grpc_code())));
    h.insert("grpc-message", err.grpc_message());
    h.insert(ERROR_HEADER, err.kind.header_value());
    if let Some(secs) = err.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    h.insert("x-request-id", ids.request_id.to_header_value());
    resp
}

/// Logs and counts a request head the framing gate refused before hyper saw it, once the
/// connection has ended. (A body whose framing broke fails its request, which is answered,
/// logged and counted where every request error is.)
pub fn refused(rejected: &Rejected, client: SocketAddr, direction: Direction) {
    metrics::proxy_error(direction, rejected.reason);
    tracing::warn!(%client, direction = direction.as_str(), reason = rejected.reason.as_str(), request_id = %rejected.request_id, "{}; refused the request and closed the connection; nothing was forwarded", rejected.detail);
}

/// Logs and counts a downstream connection that ended with an error (a client reset, a
/// timeout, or a request head hyper refused that the framing gate let through).
pub fn connection_error(err: &hyper::Error, client: SocketAddr, direction: Direction) {
    let reason = if err.is_parse_too_large() {
        Some(Reason::HeadersTooLarge)
    } else if err.is_parse() {
        Some(Reason::MalformedRequest)
    } else {
        None
    };
    match reason {
        Some(reason) => {
            metrics::proxy_error(direction, reason);
            tracing::info!(%client, direction = direction.as_str(), reason = reason.as_str(), error = %err, "rejected a request from the client and closed the connection");
        }
        None if err.is_timeout() => {
            tracing::debug!(%client, "client connection closed: the request head did not arrive within SHOAL_HEADER_READ_TIMEOUT");
        }
        None => tracing::debug!(%client, error = %err, "client connection ended"),
    }
}

/// Formats a duration for access logs (microseconds).
pub fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}
