//! The HTTP/1.1 demo apps: `backend` answers with its version; `frontend` calls `backend` and `greeter`
//! through its sidecar and reports what they said.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long the frontend waits for each call; a demo should say "timed out", not hang.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one connection as `backend <version>`.
pub(super) async fn serve_backend(stream: TcpStream, version: Arc<str>) {
    let service = service_fn(move |_req: Request<Incoming>| {
        // The same line for every request, so `sort | uniq -c` counts versions.
        let body = format!("backend {version}\n");
        async move { Ok::<_, Infallible>(text(StatusCode::OK, body)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Serves one connection as the frontend, whose calls go to the sidecar at `outbound`.
pub(super) async fn serve_frontend(stream: TcpStream, outbound: SocketAddr) {
    let service = service_fn(move |req: Request<Incoming>| async move {
        // Passing the trace context on is the one thing an app must do for traces to span hops.
        let trace = req.headers().get("traceparent").cloned();
        let (backend, greeter) = tokio::join!(
            call_backend(outbound, trace.clone()),
            super::grpc::say_hello(outbound, "frontend", trace),
        );
        let status = if backend.is_ok() && greeter.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        };
        let show = |r: Result<String, String>| r.unwrap_or_else(|e| format!("error: {e}"));
        let body = format!(
            "frontend, through the mesh:\n  backend (HTTP/1.1) said: {}\n  greeter (gRPC) said:    {}\n",
            show(backend),
            show(greeter),
        );
        Ok::<_, Infallible>(text(status, body))
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// `GET / Host: backend` through the sidecar: the body's first line, or what went wrong.
async fn call_backend(outbound: SocketAddr, trace: Option<HeaderValue>) -> Result<String, String> {
    let call = async {
        let stream = TcpStream::connect(outbound)
            .await
            .map_err(|e| format!("cannot reach the sidecar at {outbound}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with the sidecar: {e}"))?;
        tokio::spawn(conn);
        let mut req = Request::get("/").header(header::HOST, "backend");
        if let Some(trace) = trace {
            req = req.header("traceparent", trace);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&body.to_bytes()).trim().to_owned();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
