//! The shape of a request pipeline: stages that each take a request with what the stages above
//! decided ([`Req`]), add their own decision, and call the stage below.
//!
//! Tower's shape — a config-only [`Layer`] wraps an inner service into a [`Service`] whose
//! `call` returns a future — with two differences, both deliberate:
//!
//! - `call` takes `&self`: a stage holds configuration only (runtime state lives in the state
//!   snapshot's runtime handles, `balance::Load` and friends), so one stack serves every
//!   connection without a clone per request.
//! - no `poll_ready`: no stage queues. A stage that is out of capacity (a bulkhead's cap, an
//!   open breaker) answers at once with the proxy's error, so back-pressure has nothing to wait
//!   on; tower's readiness protocol would add a poll and a buffer per stage for nothing.
//!
//! Stages are generic over their inner service and return `impl Future`, so a composed stack is
//! one concrete type with no boxing or dynamic dispatch per stage.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, Request, Response, StatusCode};
use tokio::time::Instant;

use super::Conn;
use super::body::{RequestBody, ResponseBody};
use crate::errors::{ProxyError, Reason, grpc};
use crate::metrics::RequestMetrics;

/// One stage: takes a request, returns its outcome.
pub(crate) trait Service<R> {
    /// Handles `req` (never fails: an error is part of the [`Exchange`]).
    fn call(&self, req: R) -> impl Future<Output = Exchange> + Send;
}

/// Wraps an inner stage into this stage; holds configuration only.
pub(crate) trait Layer<S> {
    /// The stage with `S` below it.
    type Service;

    /// Puts this stage above `inner`.
    fn layer(&self, inner: S) -> Self::Service;
}

/// Declares a stage that wraps the stage below it, `$stage<S>`, and its layer `$layer`, which holds
/// no configuration (a stage's decisions come from the request's target and the state snapshot).
macro_rules! stage {
    ($(#[$doc:meta])* $vis:vis $stage:ident, $layer:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        $vis struct $stage<S>(S);

        #[doc = concat!("Puts [`", stringify!($stage), "`] above a stage.")]
        #[derive(Debug, Clone, Copy)]
        $vis struct $layer;

        impl<S> $crate::http::stack::Layer<S> for $layer {
            type Service = $stage<S>;

            fn layer(&self, inner: S) -> $stage<S> {
                $stage(inner)
            }
        }
    };
}
pub(crate) use stage;

/// Builds a stack from the bottom up, one stage a line.
pub(crate) struct Stack<S>(S);

impl<S> Stack<S> {
    /// A stack whose bottom stage is `bottom`.
    pub(crate) fn new(bottom: S) -> Self {
        Self(bottom)
    }

    /// Puts `layer`'s stage above the stack.
    pub(crate) fn push<L: Layer<S>>(self, layer: L) -> Stack<L::Service> {
        Stack(layer.layer(self.0))
    }

    /// The composed stack.
    pub(crate) fn into_inner(self) -> S {
        self.0
    }
}

/// A request on its way down a stack, with what the stages above decided about it (`target`).
#[derive(Debug)]
pub(crate) struct Req<'c, T> {
    /// The downstream connection it arrived on.
    pub(crate) conn: &'c Conn,
    /// The request itself.
    pub(crate) http: Request<RequestBody>,
    /// When it arrived (the response timeout and latency run from here).
    pub(crate) start: Instant,
    /// It asks to switch protocols (an HTTP/1 upgrade): not retried, and between proxies it needs
    /// an HTTP/1.1 connection of its own.
    pub(crate) upgrade: bool,
    /// When its response head must have arrived (set by the timeout stage).
    pub(crate) deadline: Option<Instant>,
    /// It is a gRPC call (`headers::is_grpc`, looked at once on arrival): the proxy's own answers
    /// to it are gRPC statuses, and a Shoal proxy's gRPC answer from upstream is read as such.
    pub(crate) grpc: bool,
    /// What the stages above decided.
    pub(crate) target: T,
}

impl<'c, T> Req<'c, T> {
    /// The same request with `target` in place of the current one, which is returned.
    pub(crate) fn retarget<U>(self, target: U) -> (Req<'c, U>, T) {
        let Req {
            conn,
            http,
            start,
            upgrade,
            deadline,
            grpc,
            target: old,
        } = self;
        (
            Req {
                conn,
                http,
                start,
                upgrade,
                deadline,
                grpc,
                target,
            },
            old,
        )
    }
}

/// How one request went: the response (or the proxy's error), and where it was counted and sent,
/// for metrics and the access log.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// The upstream's response, or why there is none.
    pub(crate) result: Result<Response<ResponseBody>, ProxyError>,
    /// The request metrics of the route (or service, or passthrough) it was routed by; `None`
    /// before routing (the caller counts it as unrouted).
    pub(crate) metrics: Option<Arc<RequestMetrics>>,
    /// The endpoint it was sent to, once one was chosen.
    pub(crate) upstream: Option<SocketAddr>,
    /// The attempts the retry stage gave up on before this one (empty, and unallocated, unless
    /// the request was retried): the trace span's events.
    pub(crate) retried: Vec<FailedAttempt>,
}

/// A response extension on a gRPC call's trailers-only failure — HTTP 200 on the wire with a
/// `grpc-status` other than OK in its head — saying what it stands for, so that every stage above,
/// metrics and the access log count it as the failure it is ([`mark_trailers_only`], by the stage
/// that receives the response). An extension rather than a field of [`Exchange`]: only such
/// answers carry it, and every other exchange stays as small as it was (it is moved through every
/// stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrailersOnly {
    /// A Shoal proxy's answer naming this reason (the endpoint's proxy answered the call itself;
    /// `errors::relayed_reason`): counts as the reason's HTTP status, as it did when such answers
    /// were HTTP errors.
    Relayed(Reason),
    /// The app's own status: counts as the HTTP status it maps to (`errors::grpc::to_http`;
    /// UNAVAILABLE 503, INTERNAL 500, NOT_FOUND 404…). A malformed `grpc-status` counts as UNKNOWN.
    App(StatusCode),
}

/// Marks `resp`, the response to a gRPC call, with [`TrailersOnly`] when it is a trailers-only
/// failure. (A status sent in trailers after the response began arrives after the head has gone
/// on: metrics count it when the response ends, `http::grpc_outcome`.)
pub(crate) fn mark_trailers_only(resp: &mut Response<ResponseBody>) {
    if resp.status() != StatusCode::OK {
        return;
    }
    let Some(value) = resp.headers().get(&GRPC_STATUS) else {
        return;
    };
    let code = grpc::parse(value.as_bytes());
    if code == grpc::OK {
        return;
    }
    let mark = match crate::errors::relayed_reason(resp.headers()) {
        Some(reason) => TrailersOnly::Relayed(reason),
        None => TrailersOnly::App(
            StatusCode::from_u16(grpc::to_http(code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        ),
    };
    resp.extensions_mut().insert(mark);
}

/// The HTTP status `resp` stands for: its own, or a marked trailers-only gRPC failure's.
pub(crate) fn stands_for(resp: &Response<ResponseBody>) -> StatusCode {
    match resp.extensions().get::<TrailersOnly>() {
        Some(TrailersOnly::Relayed(reason)) => reason.status(),
        Some(TrailersOnly::App(status)) => *status,
        None => resp.status(),
    }
}

/// `grpc-status`: a gRPC call's status, in its trailers or, for a trailers-only answer, its head.
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// An attempt that failed and was retried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailedAttempt {
    /// When the retry stage saw its outcome.
    pub(crate) at: Instant,
    /// The status it got (the proxy's own for an error).
    pub(crate) status: u16,
    /// The proxy's error reason, if it failed without a response.
    pub(crate) reason: Option<crate::errors::Reason>,
    /// The endpoint it was sent to.
    pub(crate) endpoint: Option<SocketAddr>,
}

impl FailedAttempt {
    /// The outcome of `exchange`, seen now.
    pub(crate) fn of(exchange: &Exchange) -> Self {
        let (status, reason) = match &exchange.result {
            Ok(_) => (exchange.answer_status().as_u16(), None),
            Err(e) => (e.kind.status().as_u16(), Some(e.kind)),
        };
        Self {
            at: Instant::now(),
            status,
            reason,
            endpoint: exchange.upstream,
        }
    }
}

impl Exchange {
    /// A request that failed before reaching an endpoint.
    pub(crate) fn failed(err: ProxyError) -> Self {
        Self {
            result: Err(err),
            metrics: None,
            upstream: None,
            retried: Vec::new(),
        }
    }

    /// The reason of a Shoal proxy's gRPC answer from upstream ([`TrailersOnly::Relayed`]), if the
    /// response is one.
    pub(crate) fn relayed(&self) -> Option<Reason> {
        let resp = self.result.as_ref().ok()?;
        match resp.extensions().get::<TrailersOnly>() {
            Some(TrailersOnly::Relayed(reason)) => Some(*reason),
            _ => None,
        }
    }

    /// The HTTP status the response stands for ([`stands_for`]: a trailers-only gRPC failure
    /// counts as its HTTP equivalent); for an error, the proxy's own status (`ProxyError::status`).
    pub(crate) fn answer_status(&self) -> StatusCode {
        match &self.result {
            Ok(resp) => stands_for(resp),
            Err(e) => e.status(),
        }
    }

    /// Whether it counts as the upstream's failure (outlier detection, circuit breakers): a 5xx
    /// (a trailers-only gRPC failure by the status it stands for), or an error on the upstream's side
    /// (connect failure, reset, timeout, malformed response), not a client's or the proxy's.
    pub(crate) fn upstream_failed(&self) -> bool {
        match &self.result {
            Ok(_) => self.answer_status().is_server_error(),
            Err(e) => e.kind.side() == crate::errors::Side::Upstream,
        }
    }

    /// Records the metrics it counts in, unless a stage below already did.
    pub(crate) fn counted_in(mut self, metrics: &Arc<RequestMetrics>) -> Self {
        if self.metrics.is_none() {
            self.metrics = Some(metrics.clone());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(status: u16, headers: &[(&str, &str)]) -> (Option<TrailersOnly>, StatusCode) {
        let mut resp = Response::builder().status(status);
        for (k, v) in headers {
            resp = resp.header(*k, *v);
        }
        let mut resp = resp.body(ResponseBody::local("")).unwrap();
        mark_trailers_only(&mut resp);
        let mark = resp.extensions().get::<TrailersOnly>().copied();
        (mark, stands_for(&resp))
    }

    #[test]
    fn a_trailers_only_failure_stands_for_its_http_status() {
        let app = |code: &str| marked(200, &[("grpc-status", code)]);
        assert_eq!(app("0"), (None, StatusCode::OK));
        assert_eq!(
            marked(200, &[]),
            (None, StatusCode::OK),
            "a streamed answer"
        );
        for (code, status) in [
            ("14", 503),
            ("13", 500),
            ("2", 500),
            ("4", 504),
            ("5", 404),
            ("8", 429),
            ("12", 501),
            ("16", 401),
            ("1", 499),
            ("99", 500),
            ("bad", 500),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                app(code),
                (Some(TrailersOnly::App(status)), status),
                "grpc-status {code}"
            );
        }
        // A Shoal proxy's answer: its reason's status.
        let relayed = marked(
            200,
            &[
                ("grpc-status", "14"),
                ("shoal-proxy-error", "upstream-connect-refused"),
            ],
        );
        assert_eq!(
            relayed,
            (
                Some(TrailersOnly::Relayed(Reason::UpstreamConnectRefused)),
                StatusCode::BAD_GATEWAY
            )
        );
        // Not a gRPC answer's 200: left as it is.
        assert_eq!(
            marked(503, &[("grpc-status", "14")]),
            (None, StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
