//! A real OTLP/gRPC trace receiver (the `TraceService` of `opentelemetry-proto` on tonic's server,
//! over a socket): it records every span it is sent, flattened for assertions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// One received span: ids in lower-case hex, attributes as text.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    /// The resource's other attributes.
    pub resource: BTreeMap<String, String>,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent: String,
    /// The span's name.
    pub name: String,
    /// OTLP `SpanKind` (2 server, 3 client).
    pub kind: i32,
    /// Attributes, values as text (ints in decimal).
    pub attrs: BTreeMap<String, String>,
    /// OTLP status code (0 unset, 1 ok, 2 error) and message.
    pub status: (i32, String),
    /// Events: name and attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// Start and end, Unix nanoseconds.
    pub times: (u64, u64),
}

impl ReceivedSpan {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Collector {
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: Mutex<usize>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The gRPC service over the shared record.
struct Service(Arc<Collector>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.0.requests.lock().unwrap() += 1;
        let mut out = Vec::new();
        for rs in request.into_inner().resource_spans {
            let mut resource = map(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            let service = resource.remove("service.name").unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        service: service.clone(),
                        resource: resource.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        attrs: map(&s.attributes),
                        status: s.status.map(|st| (st.code, st.message)).unwrap_or_default(),
                        events: s
                            .events
                            .iter()
                            .map(|e| (e.name.clone(), map(&e.attributes)))
                            .collect(),
                        times: (s.start_time_unix_nano, s.end_time_unix_nano),
                    });
                }
            }
        }
        self.0.spans.lock().unwrap().extend(out);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver, serving until dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    collector: Arc<Collector>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Listens on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local_addr");
        let collector = Arc::new(Collector::default());
        let service = TraceServiceServer::new(Service(collector.clone()));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Self {
            addr,
            collector,
            task,
        }
    }

    /// Its address (`SHOAL_TRACING_OTLP_ENDPOINT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans.lock().unwrap().clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> usize {
        *self.collector.requests.lock().unwrap()
    }

    /// Waits until the spans of `trace_id` number at least `n`, then returns them.
    pub async fn wait_for_trace(&self, trace_id: &str, n: usize) -> Vec<ReceivedSpan> {
        crate::wait::eventually(
            Duration::from_secs(10),
            "spans at the OTLP receiver",
            || async {
                let spans: Vec<_> = self
                    .spans()
                    .into_iter()
                    .filter(|s| s.trace_id == trace_id)
                    .collect();
                if spans.len() >= n {
                    Ok(spans)
                } else {
                    Err(format!(
                        "{} of {n} spans of trace {trace_id}: {spans:#?}",
                        spans.len()
                    ))
                }
            },
        )
        .await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
