//! Span export over OTLP (docs/tracing.md): one span per request at each hop, sent to a collector
//! off the request path.
//!
//! The request path only decides (the trace context's sampled flag, or the ratio for a request
//! without one, `trace_context::propagate`) and, for a sampled request, pushes a [`SpanRecord`] —
//! plain fields and an `Arc` of the route's metric handles, whose labels name the route and
//! backend — into a bounded channel with `try_send`. A full queue drops the span and counts it;
//! nothing on the request path waits. An unsampled request costs a branch. The background task
//! (`export`) batches, converts to OTLP (`record`) and exports with a timeout, backing off while
//! the collector fails. At shutdown, once requests have drained, what is queued is exported once
//! (`Spans::final_export`).

mod export;
mod record;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Method, Request, Uri};
use metrics::Counter;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::errors::Reason;
use crate::http::body::RequestBody;
use crate::http::headers::authority_of;
use crate::http::stack::FailedAttempt;
use crate::metrics::{Direction, RequestMetrics};
use crate::trace_context::SpanContext;

/// The request path's handle on the exporter.
#[derive(Debug)]
pub(crate) struct Spans {
    ratio: f64,
    queue: mpsc::Sender<SpanRecord>,
    dropped_full: Counter,
    flush: Arc<export::Flush>,
    export_timeout: Duration,
}

impl Spans {
    /// Starts the exporter task for `config.tracing` (on the current runtime); `None` when spans
    /// are not exported.
    pub(crate) fn start(config: &Config) -> Option<Arc<Self>> {
        let tracing = config.tracing.as_ref()?;
        let (queue, rx) = mpsc::channel(tracing.max_queue);
        let flush = Arc::new(export::Flush::default());
        tokio::spawn(export::run(
            export::Exporter::new(tracing, record::resource(config, tracing)),
            rx,
            tracing.clone(),
            flush.clone(),
        ));
        Some(Arc::new(Self {
            ratio: tracing.sampling_ratio,
            queue,
            dropped_full: crate::metrics::spans_dropped("queue_full"),
            flush,
            export_timeout: tracing.export_timeout,
        }))
    }

    /// At shutdown, once requests have drained: exports what is queued (one attempt, within the
    /// export timeout and at most 2 s, so a collector that is down does not hold the exit).
    pub(crate) async fn final_export(&self) {
        let limit = self.export_timeout.min(Duration::from_secs(2));
        self.flush.final_export(limit).await;
    }

    /// The share of requests without a sampling decision that are sampled.
    pub(crate) fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Queues a finished span; drops it (counted) when the queue is full.
    pub(crate) fn submit(&self, span: SpanRecord) {
        if self.queue.try_send(span).is_err() {
            self.dropped_full.increment(1);
        }
    }
}

/// What a sampled request's span needs from the request, captured before the stack consumes it.
pub(crate) struct SpanStart {
    method: Method,
    uri: Uri,
    authority: Option<String>,
}

impl SpanStart {
    /// Captures the request's method, target and authority.
    pub(crate) fn of(req: &Request<RequestBody>) -> Self {
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            authority: authority_of(req).map(str::to_string),
        }
    }

    /// The finished span.
    pub(crate) fn finish(self, end: End) -> SpanRecord {
        let duration = end.started.elapsed();
        SpanRecord {
            start: SystemTime::now() - duration,
            duration,
            start_instant: end.started,
            method: self.method,
            uri: self.uri,
            authority: self.authority,
            end,
        }
    }
}

/// How a request ended, for its span.
pub(crate) struct End {
    /// Inbound (a server span) or outbound (a client span).
    pub(crate) direction: Direction,
    /// The hop's ids and parent.
    pub(crate) ctx: SpanContext,
    /// When the request arrived.
    pub(crate) started: Instant,
    /// The HTTP status the caller's answer stands for (a proxy's gRPC answer: its error's status).
    pub(crate) status: u16,
    /// The gRPC status in the answer's head (a trailers-only answer to a gRPC call).
    pub(crate) grpc_status: Option<u8>,
    /// The proxy's error reason, when it answered itself.
    pub(crate) reason: Option<Reason>,
    /// The downstream client.
    pub(crate) client: SocketAddr,
    /// The endpoint the (last attempt of the) request was sent to.
    pub(crate) endpoint: Option<SocketAddr>,
    /// The handles it was counted in: their labels name the service, route and backend.
    pub(crate) metrics: Arc<RequestMetrics>,
    /// Attempts the retry stage gave up on (span events).
    pub(crate) retried: Vec<FailedAttempt>,
}

/// One finished span, as queued for export.
pub(crate) struct SpanRecord {
    start: SystemTime,
    duration: Duration,
    start_instant: Instant,
    method: Method,
    uri: Uri,
    authority: Option<String>,
    end: End,
}
