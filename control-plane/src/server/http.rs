//! The metrics listener: `/metrics` (Prometheus), `/ready`, `/live`. Its own port, so scrapes and probes
//! never queue behind gRPC traffic.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves the metrics endpoints until `closing` turns true.
pub(super) async fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    ready: Arc<AtomicBool>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = closing.wait_for(|closing| *closing) => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors and the like: the next accept may succeed.
            continue;
        };
        let (prometheus, ready) = (prometheus.clone(), ready.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = route(&prometheus, &ready, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            // A client that goes away mid-request is not worth a log line.
            let _ = connection.await;
        });
    }
}

fn route(
    prometheus: &PrometheusHandle,
    ready: &AtomicBool,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let body = prometheus.render();
            let content_type = "text/plain; version=0.0.4; charset=utf-8";
            respond(StatusCode::OK, content_type, body)
        }
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") if ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, "ready\n")
        }
        (&Method::GET, "/ready") => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting or shutting down\n",
        ),
        (_, "/metrics" | "/live" | "/ready") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed here\n")
        }
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!("no endpoint {path}: try /metrics /ready /live\n"),
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let value = header::HeaderValue::from_static(content_type);
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}
