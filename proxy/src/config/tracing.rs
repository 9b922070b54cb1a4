//! Span export settings (docs/tracing.md): where spans go, which requests are sampled, and the
//! exporter's bounds.

use std::time::Duration;

use serde::Serialize;

use super::env;
use super::parse::{self, ConfigError, Reader};

/// Span export over OTLP/gRPC.
#[derive(Debug, Clone, Serialize)]
pub struct TracingConfig {
    /// The collector's OTLP/gRPC URL (`http://HOST:PORT`; plaintext only).
    pub endpoint: String,
    /// Share of requests without a sampling decision (no trace context, or B3 without a sampled
    /// field) whose spans are exported; a caller's sampled flag always wins.
    pub sampling_ratio: f64,
    /// Spans per export request.
    pub batch_size: usize,
    /// A partial batch is exported once its first span has waited this long.
    #[serde(with = "parse::duration_serde")]
    pub flush_interval: Duration,
    /// Spans waiting for export at most; more are dropped (counted), never waited for.
    pub max_queue: usize,
    /// One export request's limit (connecting included).
    #[serde(with = "parse::duration_serde")]
    pub export_timeout: Duration,
    /// Resource attributes added to `service.name`, `service.namespace` and the proxy's own.
    pub resource_attributes: Vec<(String, String)>,
}

/// The settings, when `SHOAL_TRACING_OTLP_ENDPOINT` is set.
pub(super) fn tracing(r: &Reader<'_>) -> Result<Option<TracingConfig>, ConfigError> {
    let Some(raw) = r.opt_string(env::TRACING_OTLP_ENDPOINT) else {
        return Ok(None);
    };
    let endpoint = endpoint(r, &raw)?;
    let batch_size = r.int_in(env::TRACING_BATCH_SIZE, 512, 1..=10_000)?;
    let max_queue = r.int_in(env::TRACING_MAX_QUEUE, 2_048, 1..=1_000_000)?;
    if max_queue < batch_size {
        return Err(r.invalid(
            env::TRACING_MAX_QUEUE,
            &max_queue.to_string(),
            &format!(
                "at least {} ({batch_size}): a full batch must fit in the queue",
                env::TRACING_BATCH_SIZE
            ),
        ));
    }
    Ok(Some(TracingConfig {
        endpoint,
        sampling_ratio: r.ratio(env::TRACING_SAMPLING_RATIO, 0.01)?,
        batch_size,
        flush_interval: r.duration_min(env::TRACING_FLUSH_INTERVAL, "5s", 1)?,
        max_queue,
        export_timeout: r.duration_min(env::TRACING_EXPORT_TIMEOUT, "10s", 1)?,
        resource_attributes: resource_attributes(r)?,
    }))
}

/// `HOST:PORT` or `http://HOST:PORT`; TLS to the collector is not supported yet, so `https://` is
/// refused rather than silently sent in plain text.
fn endpoint(r: &Reader<'_>, raw: &str) -> Result<String, ConfigError> {
    if raw.starts_with("https://") {
        return Err(r.invalid(
            env::TRACING_OTLP_ENDPOINT,
            raw,
            "http://HOST:PORT: the proxy exports spans in plaintext only (TLS to the collector is not supported; run the collector beside the proxy or on a trusted network)",
        ));
    }
    let url = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let valid = url.parse::<http::Uri>().ok().filter(|u| {
        u.scheme_str() == Some("http")
            && u.authority().is_some_and(|a| a.port_u16().is_some())
            && u.path().trim_start_matches('/').is_empty()
    });
    match valid {
        Some(_) => Ok(url),
        None => Err(r.invalid(
            env::TRACING_OTLP_ENDPOINT,
            raw,
            "HOST:PORT or http://HOST:PORT of an OTLP/gRPC collector (usually port 4317)",
        )),
    }
}

/// `key=value,key=value` (OpenTelemetry's `OTEL_RESOURCE_ATTRIBUTES` form).
fn resource_attributes(r: &Reader<'_>) -> Result<Vec<(String, String)>, ConfigError> {
    let raw = r.string(env::TRACING_RESOURCE_ATTRIBUTES, "");
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
            _ => {
                return Err(r.invalid(
                    env::TRACING_RESOURCE_ATTRIBUTES,
                    &raw,
                    &format!("comma-separated key=value pairs (`{pair}` is not one)"),
                ));
            }
        }
    }
    Ok(out)
}
