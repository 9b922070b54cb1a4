//! Handling one HTTP request: trace context, the direction's stack (`inbound::http`,
//! `outbound::http`), then the response for this hop — upgrades spliced, hop-by-hop fields
//! dropped, this hop's HTTP version — or the proxy's own explanation of what failed, counted,
//! logged, and (when sampled) queued for export as the hop's span (`otlp`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, Version as HttpVersion};
use tokio::time::Instant;

use super::body::{RequestBody, ResponseBody};
use super::headers::{authority_of, is_grpc, is_upgrade, strip_hop_by_hop};
use super::stack::{Req, Service};
use super::{Conn, Downstream, respond};
use crate::errors::{ProxyError, Reason};
use crate::metrics::{Direction, RequestMetrics};
use crate::otlp::{End, SpanStart, Spans};
use crate::trace_context::{self, TraceIds};

/// Handles one request; never fails (every error becomes a response).
pub async fn handle(conn: &Conn, mut req: Request<RequestBody>) -> Response<ResponseBody> {
    let start = Instant::now();
    let spans = conn.shared.spans.as_deref();
    let ids = trace_context::propagate(req.headers_mut(), spans.map_or(0.0, Spans::ratio));
    // Only a sampled request pays for its span (a copy of its method, target and authority),
    // boxed so that every request's future stays small (it is moved as a whole).
    let span = spans
        .filter(|_| ids.span.sampled)
        .map(|s| (s, Box::new(SpanStart::of(&req))));
    let access = conn.shared.config.access_log.then(|| AccessLine::new(&req));
    let upgrade = conn.version == Downstream::Http1 && is_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // Decided once: a gRPC call gets the proxy's own answers as gRPC statuses.
    let grpc = is_grpc(req.headers());
    let req = Req {
        conn,
        http: req,
        start,
        upgrade,
        deadline: None,
        grpc,
        target: (),
    };
    let exchange = match conn.direction {
        Direction::Inbound => crate::inbound::http::stack().call(req).await,
        Direction::Outbound => crate::outbound::http::stack().call(req).await,
    };
    let relayed = exchange.relayed();
    let result = match conn.direction {
        // A strict endpoint refusing this proxy's plain text is explained from this side.
        Direction::Outbound => {
            super::mtls_explain::explain(conn, exchange.result, exchange.upstream, relayed)
        }
        Direction::Inbound => exchange.result,
    };
    let result = result.map(|resp| for_this_hop(conn, resp, on_upgrade));
    let metrics = exchange
        .metrics
        .as_ref()
        .unwrap_or_else(|| unrouted_metrics(conn));
    let answer = Answer { grpc, relayed };
    let (resp, reason, status) = finish(
        conn,
        result,
        &ids,
        start,
        metrics,
        exchange.upstream,
        access,
        answer,
    );
    if let Some((spans, span)) = span {
        spans.submit((*span).finish(End {
            direction: conn.direction,
            ctx: ids.span,
            started: start,
            status: status.as_u16(),
            grpc_status: grpc_status_of(&resp, grpc),
            reason,
            client: conn.client,
            endpoint: exchange.upstream,
            metrics: metrics.clone(),
            retried: exchange.retried,
        }));
    }
    resp
}

/// The upstream's response as this hop sends it: a protocol switch spliced to the client,
/// hop-by-hop fields dropped, this hop's HTTP version.
fn for_this_hop(
    conn: &Conn,
    mut resp: Response<ResponseBody>,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ResponseBody> {
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(downstream)) = (switching, on_upgrade) {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(crate::tcp::splice_upgraded(downstream, upstream));
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    // This hop speaks its own HTTP version to the client, whatever the upstream spoke.
    *resp.version_mut() = match conn.version {
        Downstream::Http1 => HttpVersion::HTTP_11,
        Downstream::Http2 => HttpVersion::HTTP_2,
    };
    resp
}

/// Where a request that no stage counted is counted: one that never reached a destination, an
/// inbound request, one passing through.
pub(crate) fn unrouted_metrics(conn: &Conn) -> &Arc<RequestMetrics> {
    match conn.direction {
        Direction::Inbound => crate::inbound::http::metrics(conn),
        Direction::Outbound => &conn.shared.passthrough_metrics,
    }
}

/// An HTTP/2 request with more header fields than `SHOAL_MAX_HEADERS`: answered 431 on its stream
/// (the connection's other streams go on), never forwarded. (hyper enforces the limit for
/// HTTP/1.1 while parsing; the `h2` crate only bounds the header block's bytes.)
pub fn reject_too_many_headers(
    conn: &Conn,
    req: Request<RequestBody>,
    max: usize,
) -> Response<ResponseBody> {
    let err = ProxyError::new(
        Reason::HeadersTooLarge,
        format!(
            "the request has {} header fields, more than SHOAL_MAX_HEADERS ({max})",
            req.headers().len()
        ),
    );
    reject(conn, req, err)
}

/// Answers a request refused before routing with `err` (status, `shoal-proxy-error`), counted and
/// logged like every proxy error.
fn reject(conn: &Conn, mut req: Request<RequestBody>, err: ProxyError) -> Response<ResponseBody> {
    // Refused before its head was even read whole: no span (a malformed request is not traced).
    let ids = trace_context::propagate(req.headers_mut(), 0.0);
    let answer = Answer {
        grpc: is_grpc(req.headers()),
        relayed: None,
    };
    let (resp, _, _) = finish(
        conn,
        Err(err),
        &ids,
        Instant::now(),
        unrouted_metrics(conn),
        None,
        None,
        answer,
    );
    resp
}

/// What shapes and classifies the answer beyond the result itself.
#[derive(Clone, Copy)]
struct Answer {
    /// The request is a gRPC call: the proxy's own answer is a gRPC status.
    grpc: bool,
    /// The response is a Shoal proxy's gRPC answer naming this reason (`stack::Relayed`).
    relayed: Option<Reason>,
}

/// The response to send, the proxy's reason if it answered itself, and the HTTP status the answer
/// stands for — the one metrics, the access log and the span count: a proxy's gRPC answer (HTTP
/// 200 on the wire) counts as its error's status, so a dashboard's error rate sees it.
#[allow(clippy::too_many_arguments)]
fn finish(
    conn: &Conn,
    result: Result<Response<ResponseBody>, ProxyError>,
    ids: &TraceIds,
    start: Instant,
    metrics: &RequestMetrics,
    upstream: Option<SocketAddr>,
    access: Option<AccessLine>,
    answer: Answer,
) -> (Response<ResponseBody>, Option<Reason>, StatusCode) {
    let (resp, reason, status) = match result {
        Ok(resp) => {
            let status = answer.relayed.map_or(resp.status(), Reason::status);
            (resp, None, status)
        }
        Err(e) => {
            let dest = upstream.map_or_else(|| "-".to_string(), |a| a.to_string());
            let resp = respond::error(conn.direction, conn.version, &e, ids, &dest, answer.grpc);
            (resp, Some(e.kind), e.status())
        }
    };
    let elapsed = start.elapsed();
    metrics.record(status, reason, elapsed);
    if let Some(line) = access {
        line.log(conn, status, ids, upstream, reason, elapsed);
    }
    (resp, reason, status)
}

/// The gRPC status in a response head (a trailers-only answer, the proxy's own or relayed), for
/// the span; only a gRPC call's 200 is looked at, and only when the span is sampled.
fn grpc_status_of(resp: &Response<ResponseBody>, grpc: bool) -> Option<u8> {
    if !grpc || resp.status() != StatusCode::OK {
        return None;
    }
    let v = resp.headers().get("grpc-status")?;
    std::str::from_utf8(v.as_bytes()).ok()?.parse().ok()
}

/// What an access-log line needs from the request (captured only when access logs are on).
struct AccessLine {
    method: http::Method,
    path: String,
    authority: String,
}

impl AccessLine {
    fn new(req: &Request<RequestBody>) -> Self {
        Self {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            authority: authority_of(req).unwrap_or("-").to_string(),
        }
    }

    fn log(
        self,
        conn: &Conn,
        status: StatusCode,
        ids: &TraceIds,
        upstream: Option<SocketAddr>,
        reason: Option<Reason>,
        elapsed: Duration,
    ) {
        tracing::info!(
            target: "access",
            direction = conn.direction.as_str(),
            client = %conn.client,
            method = %self.method,
            authority = %self.authority,
            path = %self.path,
            status = status.as_u16(),
            upstream = %upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
            reason = reason.map_or("-", Reason::as_str),
            duration_us = respond::micros(elapsed),
            request_id = ids.request_id.as_str(),
            trace_id = %ids.trace_id,
        );
    }
}
