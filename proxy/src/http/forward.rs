//! Handling one HTTP request: trace context, the direction's stack (`inbound::http`,
//! `outbound::http`), then the response for this hop — upgrades spliced, hop-by-hop fields
//! dropped, this hop's HTTP version — or the proxy's own explanation of what failed, counted,
//! logged, and (when sampled) queued for export as the hop's span (`otlp`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Version as HttpVersion};
use tokio::time::Instant;

use super::body::{RequestBody, ResponseBody};
use super::headers::{authority_of, is_upgrade, strip_hop_by_hop};
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
    let req = Req {
        conn,
        http: req,
        start,
        upgrade,
        deadline: None,
        target: (),
    };
    let exchange = match conn.direction {
        Direction::Inbound => crate::inbound::http::stack().call(req).await,
        Direction::Outbound => crate::outbound::http::stack().call(req).await,
    };
    let result = match conn.direction {
        // A strict endpoint refusing this proxy's plain text is explained from this side.
        Direction::Outbound => {
            super::mtls_explain::explain(conn, exchange.result, exchange.upstream)
        }
        Direction::Inbound => exchange.result,
    };
    let result = result.map(|resp| for_this_hop(conn, resp, on_upgrade));
    let metrics = exchange
        .metrics
        .as_ref()
        .unwrap_or_else(|| unrouted_metrics(conn));
    let (resp, reason) = finish(
        conn,
        result,
        &ids,
        start,
        metrics,
        exchange.upstream,
        access,
    );
    if let Some((spans, span)) = span {
        spans.submit((*span).finish(End {
            direction: conn.direction,
            ctx: ids.span,
            started: start,
            status: resp.status().as_u16(),
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
    let (resp, _) = finish(
        conn,
        Err(err),
        &ids,
        Instant::now(),
        unrouted_metrics(conn),
        None,
        None,
    );
    resp
}

fn finish(
    conn: &Conn,
    result: Result<Response<ResponseBody>, ProxyError>,
    ids: &TraceIds,
    start: Instant,
    metrics: &RequestMetrics,
    upstream: Option<SocketAddr>,
    access: Option<AccessLine>,
) -> (Response<ResponseBody>, Option<Reason>) {
    let (resp, reason) = match result {
        Ok(resp) => (resp, None),
        Err(e) => {
            let dest = upstream.map_or_else(|| "-".to_string(), |a| a.to_string());
            (
                respond::error(conn.direction, conn.version, &e, ids, &dest),
                Some(e.kind),
            )
        }
    };
    let elapsed = start.elapsed();
    metrics.record(resp.status(), reason, elapsed);
    if let Some(line) = access {
        line.log(conn, &resp, ids, upstream, reason, elapsed);
    }
    (resp, reason)
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
        resp: &Response<ResponseBody>,
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
            status = resp.status().as_u16(),
            upstream = %upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
            reason = reason.map_or("-", Reason::as_str),
            duration_us = respond::micros(elapsed),
            request_id = ids.request_id.as_str(),
            trace_id = %ids.trace_id,
        );
    }
}
