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
use super::grpc_outcome::GrpcOutcome;
use super::headers::{authority_of, is_grpc, is_upgrade, strip_hop_by_hop};
use super::stack::{GRPC_STATUS, Req, Service, stands_for};
use super::{Conn, Downstream, respond};
use crate::errors::{ProxyError, Reason};
use crate::metrics::{Direction, RequestMetrics};
use crate::otlp::{End, SpanStart, Spans};
use crate::trace_context::{self, TraceIds};

/// Handles one request; never fails (every error becomes a response).
pub async fn handle(conn: &Conn, mut req: Request<RequestBody>) -> Response<ResponseBody> {
    let start = Instant::now();
    let spans = conn.shared.spans.as_ref();
    let ids = trace_context::propagate(req.headers_mut(), spans.map_or(0.0, |s| s.ratio()));
    // Only a sampled request pays for its span (a copy of its method, target and authority),
    // boxed so that every request's future stays small (it is moved as a whole).
    let span = spans
        .filter(|_| ids.span.sampled)
        .map(|s| (s.clone(), Box::new(SpanStart::of(&req))));
    // Boxed: every request's future carries the slot across its await, few fill it.
    let access =
        (conn.shared.config.access_log).then(|| Box::new(AccessLine::new(&req, conn, &ids)));
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
    let (mut resp, reason, status) = answer(conn, result, &ids, exchange.upstream, grpc);
    let span = span.map(|(spans, start_span)| {
        let end = End {
            direction: conn.direction,
            ctx: ids.span,
            started: start,
            status: status.as_u16(),
            grpc_status: None,
            reason,
            client: conn.client,
            endpoint: exchange.upstream,
            metrics: metrics.clone(),
            retried: exchange.retried,
        };
        Box::new(SampledSpan {
            spans,
            start: *start_span,
            end,
        })
    });
    let tally = Tally {
        elapsed: start.elapsed(),
        upstream: exchange.upstream,
        reason,
        access,
        span,
    };
    count(&mut resp, grpc, metrics, status, tally);
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
    let grpc = is_grpc(req.headers());
    let (mut resp, reason, status) = answer(conn, Err(err), &ids, None, grpc);
    let tally = Tally {
        elapsed: Duration::ZERO,
        upstream: None,
        reason,
        access: None,
        span: None,
    };
    count(&mut resp, grpc, unrouted_metrics(conn), status, tally);
    resp
}

/// The response to send, the proxy's reason if it answered itself, and the HTTP status the answer
/// stands for — the one metrics, the access log and the span count: a trailers-only gRPC failure
/// (HTTP 200 on the wire; a proxy's answer or the app's, `stack::TrailersOnly`) counts as the
/// status it stands for, so a dashboard's error rate sees it. `grpc`: the request is a gRPC call,
/// so the proxy's own answer is a gRPC status.
fn answer(
    conn: &Conn,
    result: Result<Response<ResponseBody>, ProxyError>,
    ids: &TraceIds,
    upstream: Option<SocketAddr>,
    grpc: bool,
) -> (Response<ResponseBody>, Option<Reason>, StatusCode) {
    match result {
        Ok(resp) => {
            let status = stands_for(&resp);
            (resp, None, status)
        }
        Err(e) => {
            let dest = upstream.map_or_else(|| "-".to_string(), |a| a.to_string());
            let resp = respond::error(conn.direction, conn.version, &e, ids, &dest, grpc);
            (resp, Some(e.kind), e.status())
        }
    }
}

/// Where a request is counted once its outcome is known: its metrics, its access-log line, its span.
struct Tally {
    /// The time to the response head: what the latency histogram measures.
    elapsed: Duration,
    upstream: Option<SocketAddr>,
    /// The proxy's reason, when it answered itself.
    reason: Option<Reason>,
    access: Option<Box<AccessLine>>,
    /// The sampled span (boxed: most requests have none, and a tally is moved).
    span: Option<Box<SampledSpan>>,
}

/// A sampled request's span: where it goes, how it started, how it ended but for its statuses.
struct SampledSpan {
    spans: Arc<Spans>,
    start: SpanStart,
    end: End,
}

impl Tally {
    /// Counts the request as answered `status` (`grpc_status`: its gRPC status, asked for only when
    /// the span is sampled).
    fn record(
        self,
        metrics: &RequestMetrics,
        status: StatusCode,
        grpc_status: impl FnOnce() -> Option<u8>,
    ) {
        metrics.record(status, self.reason, self.elapsed);
        if let Some(line) = self.access {
            line.log(status, self.upstream, self.reason, self.elapsed);
        }
        if let Some(span) = self.span {
            let SampledSpan {
                spans,
                start,
                mut end,
            } = *span;
            end.status = status.as_u16();
            end.grpc_status = grpc_status();
            spans.submit(start.finish(end));
        }
    }
}

/// Counts the request whose response is `resp`, standing for `status`: now, or — a gRPC call whose
/// status is still to come in its trailers — when the response ends (`http::grpc_outcome`), by
/// that status; its latency is still the head's, its span ends then.
fn count(
    resp: &mut Response<ResponseBody>,
    grpc: bool,
    metrics: &Arc<RequestMetrics>,
    status: StatusCode,
    tally: Tally,
) {
    if grpc && tally.reason.is_none() && streams_its_status(resp) {
        let metrics = metrics.clone();
        let report = move |status, code| tally.record(&metrics, status, || code);
        resp.body_mut()
            .report_grpc_outcome(GrpcOutcome::new(Box::new(report)));
        return;
    }
    tally.record(metrics, status, || grpc_status_of(resp, grpc));
}

/// Whether a gRPC call's response carries its status in trailers still to come: a 200 without
/// one in its head (not trailers-only) whose body has not ended.
fn streams_its_status(resp: &Response<ResponseBody>) -> bool {
    use http_body::Body;
    resp.status() == StatusCode::OK
        && !resp.headers().contains_key(&GRPC_STATUS)
        && !resp.body().is_end_stream()
}

/// The gRPC status in a response head (a trailers-only answer, the proxy's own or relayed), for
/// the span; only a gRPC call's 200 is looked at, and only when the span is sampled.
fn grpc_status_of(resp: &Response<ResponseBody>, grpc: bool) -> Option<u8> {
    if !grpc || resp.status() != StatusCode::OK {
        return None;
    }
    Some(crate::errors::grpc::parse(
        resp.headers().get(&GRPC_STATUS)?.as_bytes(),
    ))
}

/// What an access-log line needs from the request and its connection (captured only when access
/// logs are on; owned, so a streamed gRPC response's line can wait for its end).
struct AccessLine {
    direction: Direction,
    client: SocketAddr,
    method: http::Method,
    path: String,
    authority: String,
    request_id: trace_context::RequestId,
    trace_id: trace_context::TraceId,
}

impl AccessLine {
    fn new(req: &Request<RequestBody>, conn: &Conn, ids: &TraceIds) -> Self {
        Self {
            direction: conn.direction,
            client: conn.client,
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            authority: authority_of(req).unwrap_or("-").to_string(),
            request_id: ids.request_id.clone(),
            trace_id: ids.trace_id,
        }
    }

    fn log(
        self,
        status: StatusCode,
        upstream: Option<SocketAddr>,
        reason: Option<Reason>,
        elapsed: Duration,
    ) {
        tracing::info!(
            target: "access",
            direction = self.direction.as_str(),
            client = %self.client,
            method = %self.method,
            authority = %self.authority,
            path = %self.path,
            status = status.as_u16(),
            upstream = %upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
            reason = reason.map_or("-", Reason::as_str),
            duration_us = respond::micros(elapsed),
            request_id = self.request_id.as_str(),
            trace_id = %self.trace_id,
        );
    }
}
