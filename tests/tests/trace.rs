//! Trace context across two proxies: client → proxy A (outbound, explicit) → proxy B (inbound,
//! explicit) → backend. W3C and B3 ids propagate, each hop gets its own span, `x-request-id` is
//! added once and kept, and both proxies' JSON access logs carry the same ids.

use std::time::Duration;

use shoal_tests::client::{H1Client, request};
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder, Recorded};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

struct Chain {
    backend: HttpBackend,
    a: Proxy,
    b: Proxy,
}

async fn chain() -> Chain {
    let backend = HttpBackend::echo().await;
    let b = ProxyBuilder::new()
        .inbound_explicit(backend.addr())
        .access_log()
        .json_logs()
        .start()
        .await;
    let a = ProxyBuilder::new()
        .outbound_explicit()
        .access_log()
        .json_logs()
        .start()
        .await;
    Chain { backend, a, b }
}

impl Chain {
    /// Sends `GET path` with `headers` through A to B to the backend; returns what the backend
    /// saw and the response's `x-request-id` (if any).
    async fn send(&self, path: &str, headers: &[(&str, &str)]) -> std::sync::Arc<Recorded> {
        let mut c = H1Client::connect(self.a.outbound()).await.unwrap();
        // Host names proxy B's inbound listener: A passes it through (IP:PORT authority).
        let mut req = request("GET", path, Some(&self.b.inbound().to_string()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = c
            .send(req.body(shoal_tests::client::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        let seen = self.backend.last();
        assert_eq!(seen.uri.path(), path);
        seen
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn w3c_trace_id_is_kept_and_each_hop_gets_a_new_span() {
    let chain = chain().await;
    let traceparent = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    let seen = chain
        .send(
            "/w3c",
            &[
                ("traceparent", &traceparent),
                ("tracestate", "vendor=opaque"),
            ],
        )
        .await;
    let tp = seen
        .header("traceparent")
        .expect("traceparent reaches the backend");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE_ID, "the trace id is kept: {tp}");
    assert!(is_lower_hex(parts[2], 16), "{tp}");
    assert_ne!(
        parts[2], SPAN_ID,
        "the proxies replace the parent span id: {tp}"
    );
    assert_ne!(parts[2], "0000000000000000");
    assert_eq!(parts[3], "01", "the sampled flag is kept: {tp}");
    assert_eq!(seen.header("tracestate"), Some("vendor=opaque"));

    // x-request-id: added by A (the client sent none), kept by B.
    let request_id = seen
        .header("x-request-id")
        .expect("x-request-id reaches the backend")
        .to_string();
    assert_eq!(seen.header_all("x-request-id").len(), 1);

    // Both access logs: one line each for this request, with the same ids.
    for (name, proxy) in [("A", &chain.a), ("B", &chain.b)] {
        let line = shoal_tests::eventually(
            Duration::from_secs(5),
            &format!("proxy {name}'s access log line"),
            || async {
                proxy
                    .json_log_lines()
                    .into_iter()
                    .find(|l| l["target"] == "access" && l["path"] == "/w3c")
                    .ok_or("none yet")
            },
        )
        .await;
        assert_eq!(
            line["request_id"],
            request_id.as_str(),
            "proxy {name}: {line}"
        );
        assert_eq!(line["trace_id"], TRACE_ID, "proxy {name}: {line}");
        assert_eq!(line["status"], 200, "proxy {name}: {line}");
        assert_eq!(line["method"], "GET", "proxy {name}: {line}");
        let direction = if name == "A" { "outbound" } else { "inbound" };
        assert_eq!(line["direction"], direction, "proxy {name}: {line}");
    }
}

#[tokio::test]
async fn a_client_request_id_is_kept_and_a_trace_is_started_when_missing() {
    let chain = chain().await;
    let seen = chain
        .send("/rid", &[("x-request-id", "req-from-client-1")])
        .await;
    assert_eq!(seen.header_all("x-request-id"), ["req-from-client-1"]);
    // No trace context at all: A starts one (unsampled) and B continues it.
    let tp = seen.header("traceparent").expect("a new trace is started");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert!(
        is_lower_hex(parts[1], 32) && parts[1] != "0".repeat(32),
        "{tp}"
    );
    assert_eq!(
        parts[3], "00",
        "a trace the proxy starts is not sampled: {tp}"
    );
    for proxy in [&chain.a, &chain.b] {
        let line =
            shoal_tests::eventually(Duration::from_secs(5), "an access log line", || async {
                proxy
                    .json_log_lines()
                    .into_iter()
                    .find(|l| l["target"] == "access" && l["path"] == "/rid")
                    .ok_or("none yet")
            })
            .await;
        assert_eq!(line["request_id"], "req-from-client-1", "{line}");
        assert_eq!(
            line["trace_id"], parts[1],
            "both hops log the trace A started: {line}"
        );
    }
}

#[tokio::test]
async fn b3_single_header_is_propagated() {
    let chain = chain().await;
    let seen = chain
        .send("/b3", &[("b3", &format!("{TRACE_ID}-{SPAN_ID}-1"))])
        .await;
    let b3 = seen.header("b3").expect("b3 reaches the backend");
    let parts: Vec<&str> = b3.split('-').collect();
    assert!(parts.len() >= 2, "{b3}");
    assert_eq!(parts[0], TRACE_ID, "{b3}");
    assert!(is_lower_hex(parts[1], 16), "{b3}");
    assert_ne!(parts[1], SPAN_ID, "each hop has its own span id: {b3}");
    assert_eq!(
        parts.get(2),
        Some(&"1"),
        "the sampling decision is kept: {b3}"
    );
    assert!(seen.header("x-request-id").is_some());
}

#[tokio::test]
async fn b3_multi_headers_are_propagated() {
    let chain = chain().await;
    let seen = chain
        .send(
            "/b3multi",
            &[
                ("x-b3-traceid", TRACE_ID),
                ("x-b3-spanid", SPAN_ID),
                ("x-b3-sampled", "1"),
            ],
        )
        .await;
    assert_eq!(seen.header("x-b3-traceid"), Some(TRACE_ID));
    let span = seen.header("x-b3-spanid").expect("x-b3-spanid");
    let parent = seen.header("x-b3-parentspanid").expect("x-b3-parentspanid");
    assert!(
        is_lower_hex(span, 16) && is_lower_hex(parent, 16),
        "{span} {parent}"
    );
    assert_ne!(span, SPAN_ID, "B's span is new");
    assert_ne!(
        parent, SPAN_ID,
        "after two hops the parent is A's span, not the client's"
    );
    assert_ne!(span, parent);
    assert_eq!(seen.header("x-b3-sampled"), Some("1"));
    // The access logs tie the hops together through the B3 trace id.
    for proxy in [&chain.a, &chain.b] {
        let line =
            shoal_tests::eventually(Duration::from_secs(5), "an access log line", || async {
                proxy
                    .json_log_lines()
                    .into_iter()
                    .find(|l| l["target"] == "access" && l["path"] == "/b3multi")
                    .ok_or("none yet")
            })
            .await;
        assert_eq!(line["trace_id"], TRACE_ID, "{line}");
    }
}
