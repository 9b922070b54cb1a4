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
use tokio::sync::mpsc;
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

/// Batches and exports until every sender is gone (the proxy is shutting down).
pub(super) async fn run(
    mut exporter: Exporter,
    mut queue: mpsc::Receiver<SpanRecord>,
    config: TracingConfig,
) {
    let mut backoff = BACKOFF.0;
    loop {
        let mut batch = Vec::with_capacity(config.batch_size);
        if queue.recv_many(&mut batch, config.batch_size).await == 0 {
            return;
        }
        let flush_at = Instant::now() + config.flush_interval;
        while batch.len() < config.batch_size {
            let now = Instant::now();
            if now >= flush_at {
                break;
            }
            tokio::time::sleep((flush_at - now).min(FILL_TICK)).await;
            while batch.len() < config.batch_size {
                match queue.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
        }
        if exporter.export(batch, config.export_timeout).await {
            backoff = BACKOFF.0;
        } else {
            // Spans keep queueing meanwhile, up to SHOAL_TRACING_MAX_QUEUE; past it they drop.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }
}
