//! A finished span in OTLP's form: OpenTelemetry's HTTP semantic conventions where they name the
//! value, `shoal.*` for the mesh's own (docs/tracing.md lists them).

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, status};

use super::SpanRecord;
use crate::config::{Config, TracingConfig};
use crate::metrics::Direction;

/// The resource every span of this proxy names: its service, namespace, identity and the
/// configured extras (which may override the defaults).
pub(super) fn resource(config: &Config, tracing: &TracingConfig) -> Resource {
    let mut attrs = vec![
        ("service.name".to_string(), config.service_name.clone()),
        ("service.namespace".to_string(), config.namespace.clone()),
        (
            "shoal.service_account".to_string(),
            config.service_account.clone(),
        ),
    ];
    if let Some(d) = &config.discovery {
        attrs.push(("service.instance.id".to_string(), d.proxy_id.clone()));
    }
    for (k, v) in &tracing.resource_attributes {
        attrs.retain(|(key, _)| key != k);
        attrs.push((k.clone(), v.clone()));
    }
    Resource {
        attributes: attrs.into_iter().map(|(k, v)| string(&k, v)).collect(),
        ..Default::default()
    }
}

fn string(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl SpanRecord {
    /// The OTLP span.
    pub(super) fn into_proto(self) -> Span {
        let end = &self.end;
        let outbound = end.direction == Direction::Outbound;
        let mut attributes = vec![
            string("http.request.method", self.method.as_str().to_string()),
            int("http.response.status_code", i64::from(end.status)),
            string("url.path", self.uri.path().to_string()),
        ];
        if let Some(a) = &self.authority {
            let (host, port) = match a.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
                _ => (a.as_str(), None),
            };
            attributes.push(string("server.address", host.to_string()));
            if let Some(p) = port {
                attributes.push(int("server.port", i64::from(p)));
            }
        }
        // The other side of this hop's connection: the upstream for a client span, the caller
        // for a server span.
        let peer = if outbound {
            end.endpoint
        } else {
            Some(end.client)
        };
        if let Some(p) = peer {
            attributes.push(string("network.peer.address", p.ip().to_string()));
            attributes.push(int("network.peer.port", i64::from(p.port())));
        }
        for (label, key) in [
            ("service", "shoal.service"),
            ("route", "shoal.route"),
            ("backend", "shoal.backend"),
        ] {
            if let Some(v) = end.metrics.label(label) {
                attributes.push(string(key, v.to_string()));
            }
        }
        if let Some(e) = end.endpoint {
            attributes.push(string("shoal.endpoint", e.to_string()));
        }
        attributes.push(int("shoal.retries", end.retried.len() as i64 + 1));
        if let Some(r) = end.reason {
            attributes.push(string("shoal.proxy_error", r.as_str().to_string()));
        }
        if let Some(code) = end.grpc_status {
            attributes.push(int("rpc.grpc.status_code", i64::from(code)));
        }
        let events = end
            .retried
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let offset = a.at.saturating_duration_since(self.start_instant);
                let mut attrs = vec![int("shoal.attempt", i as i64 + 1)];
                attrs.push(int("http.response.status_code", i64::from(a.status)));
                if let Some(r) = a.reason {
                    attrs.push(string("shoal.proxy_error", r.as_str().to_string()));
                }
                if let Some(e) = a.endpoint {
                    attrs.push(string("shoal.endpoint", e.to_string()));
                }
                Event {
                    time_unix_nano: unix_nanos(self.start + offset),
                    name: "retry".to_string(),
                    attributes: attrs,
                    dropped_attributes_count: 0,
                }
            })
            .collect();
        let error = end.status >= 500 || end.reason.is_some();
        let status = Status {
            message: match end.reason {
                Some(r) => r.as_str().to_string(),
                None => String::new(),
            },
            code: if error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
        };
        let name = format!("{} {}", end.direction.as_str(), self.method.as_str());
        Span {
            trace_id: end.ctx.trace.to_bytes().to_vec(),
            span_id: end.ctx.span.to_vec(),
            parent_span_id: end.ctx.parent.map(|p| p.to_vec()).unwrap_or_default(),
            // W3C trace flags: sampled.
            flags: 1,
            name,
            kind: if outbound {
                SpanKind::Client as i32
            } else {
                SpanKind::Server as i32
            },
            start_time_unix_nano: unix_nanos(self.start),
            end_time_unix_nano: unix_nanos(self.start + self.duration.max(Duration::from_nanos(1))),
            attributes,
            events,
            status: Some(status),
            ..Default::default()
        }
    }
}
