//! The exporter task: batches queued spans and sends them to the collector (OTLP/gRPC
//! `TraceService.Export`) with a timeout, backing off while the collector fails. Spans of a failed
//! export are dropped and counted, never retried: the queue stays bounded whatever the collector
//! does, and a collector that is down costs the request path nothing.

use std::time::Duration;

use metrics::Counter;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::SpanRecord;
use crate::config::TracingConfig;

/// How often a partial batch checks for more spans while it waits for its flush time: a sampled
/// request wakes the task at most this often, not once per span.
const FILL_TICK: Duration = Duration::from_millis(100);
/// Backoff after a failed export: doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(10));

/// The collector client and what every export request carries.
pub(super) struct Exporter {
    client: Option<TraceServiceClient<Channel>>,
    endpoint: String,
    resource: Resource,
    exported: Counter,
    failed: Counter,
}

impl Exporter {
    /// A client connecting lazily (a collector that is not up yet is only a failed export).
    pub(super) fn new(config: &TracingConfig, resource: Resource) -> Self {
        let client = Endpoint::from_shared(config.endpoint.clone())
            .ok()
            .map(|e| {
                e.connect_timeout(config.export_timeout)
                    .timeout(config.export_timeout)
            })
            .map(|e| TraceServiceClient::new(e.connect_lazy()));
        Self {
            client,
            endpoint: config.endpoint.clone(),
            resource,
            exported: crate::metrics::spans_exported(),
            failed: crate::metrics::spans_dropped("export_failed"),
        }
    }

    /// Exports one batch; `false` when it failed (its spans are counted as dropped).
    async fn export(&mut self, batch: Vec<SpanRecord>, timeout: Duration) -> bool {
        let n = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "shoal-proxy".to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        ..Default::default()
                    }),
                    spans: batch.into_iter().map(SpanRecord::into_proto).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let Some(client) = self.client.as_mut() else {
            self.failed.increment(n);
            return false;
        };
        let result = tokio::time::timeout(timeout, client.export(request)).await;
        let problem = match result {
            Ok(Ok(resp)) => {
                // A partial success names the spans the collector rejected.
                let rejected = resp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0));
                self.exported.increment(n.saturating_sub(rejected));
                self.failed.increment(rejected.min(n));
                return true;
            }
            Ok(Err(status)) => format!("{}: {}", status.code(), status.message()),
            Err(_) => format!("no answer within SHOAL_TRACING_EXPORT_TIMEOUT ({timeout:?})"),
        };
        self.failed.increment(n);
        tracing::warn!(
            endpoint = %self.endpoint,
            spans = n,
            "span export failed ({problem}); check SHOAL_TRACING_OTLP_ENDPOINT and that the collector accepts OTLP/gRPC; spans are dropped while it fails"
        );
        false
    }
}

/// Asks the exporter for a last export of what is queued (at shutdown), and hears when it is done.
#[derive(Debug, Default)]
pub(super) struct Flush {
    asked: Notify,
    done: Notify,
}

impl Flush {
    /// Asks for the final export and waits for it, at most `limit`.
    pub(super) async fn final_export(&self, limit: Duration) {
        self.asked.notify_one();
        let _ = tokio::time::timeout(limit, self.done.notified()).await;
    }
}

/// Batches and exports until the final flush is asked for or every sender is gone.
pub(super) async fn run(
    mut exporter: Exporter,
    mut queue: mpsc::Receiver<SpanRecord>,
    config: TracingConfig,
    flush: Arc<Flush>,
) {
    let mut backoff = BACKOFF.0;
    let mut last = false;
    while !last {
        let mut batch = Vec::with_capacity(config.batch_size);
        tokio::select! {
            n = queue.recv_many(&mut batch, config.batch_size) => if n == 0 { return },
            () = flush.asked.notified() => last = true,
        }
        let flush_at = Instant::now() + config.flush_interval;
        while batch.len() < config.batch_size {
            let now = Instant::now();
            if last {
                // Everything queued, in batches, one attempt each.
                while let Ok(span) = queue.try_recv() {
                    batch.push(span);
                }
                break;
            }
            if now >= flush_at {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep((flush_at - now).min(FILL_TICK)) => {}
                () = flush.asked.notified() => last = true,
            }
            while batch.len() < config.batch_size {
                match queue.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        }
        for chunk in chunks(batch, config.batch_size) {
            if exporter.export(chunk, config.export_timeout).await {
                backoff = BACKOFF.0;
            } else if !last {
                // Spans keep queueing meanwhile, up to SHOAL_TRACING_MAX_QUEUE; past it they drop.
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = flush.asked.notified() => last = true,
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
    flush.done.notify_one();
}

/// `batch` in export requests of at most `size` spans.
fn chunks(mut batch: Vec<SpanRecord>, size: usize) -> Vec<Vec<SpanRecord>> {
    let mut out = Vec::new();
    while batch.len() > size {
        let rest = batch.split_off(size);
        out.push(std::mem::replace(&mut batch, rest));
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}
