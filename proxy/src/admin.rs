//! The admin listener: `/metrics`, `/ready`, `/live`, `/config`, `/log-level`, `/shutdown`.
//!
//! Kept off the data path (its own listener and port) so scrapes and probes never queue behind
//! application traffic. State-changing endpoints accept only loopback clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::app::Shared;

/// Serves the admin endpoints until the process exits.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, peer, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

async fn route(shared: &Shared, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let local_only = || {
        text(
            StatusCode::FORBIDDEN,
            format!(
                "{} is only accepted from loopback clients (you are {peer})\n",
                req.uri().path()
            ),
        )
    };
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/metrics") => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(shared.prometheus.render())))
            .unwrap_or_default(),
        (Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (Method::GET, "/ready") => {
            if shared.drain.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if shared
                .identity
                .as_ref()
                .is_some_and(|i| i.current().is_none())
            {
                // Without its certificate the proxy cannot serve mesh traffic: not ready yet.
                let error = shared.identity.as_ref().and_then(|i| i.status().last_error);
                let why = error.map_or_else(
                    || "waiting for the workload certificate".to_string(),
                    |e| format!("no workload certificate: {e}"),
                );
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                )
            } else if shared.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n")
            }
        }
        (Method::GET, "/config") => {
            let body = serde_json::json!({
                "config": &*shared.config,
                "state": &*shared.store.snapshot(),
                "sync": shared.store.status(),
                "discovery": shared.discovery.as_ref().map(|d| d.status()),
                "identity": shared.identity.as_ref().map(|i| i.status()),
                "draining": shared.drain.is_draining(),
                "log_level": shared.log.get(),
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::to_vec_pretty(&body).unwrap_or_default(),
                )))
                .unwrap_or_default()
        }
        (Method::GET, "/log-level") => text(StatusCode::OK, format!("{}\n", shared.log.get())),
        (Method::PUT | Method::POST, "/log-level") => {
            if !peer.ip().is_loopback() {
                return local_only();
            }
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "log filter too long (4 KiB at most)\n",
                    );
                }
            };
            let directives = String::from_utf8_lossy(&body);
            match shared.log.set(&directives) {
                Ok(()) => {
                    tracing::info!(filter = %directives.trim(), "log filter changed");
                    text(StatusCode::OK, format!("{}\n", directives.trim()))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Method::POST, "/shutdown") => {
            if !peer.ip().is_loopback() {
                return local_only();
            }
            tracing::info!(%peer, "shutdown requested through the admin endpoint");
            shared.drain.drain();
            text(
                StatusCode::ACCEPTED,
                "shutting down: draining connections\n",
            )
        }
        (_, "/metrics" | "/live" | "/ready" | "/config" | "/log-level" | "/shutdown") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET /metrics /ready /live /config /log-level; PUT /log-level; POST /shutdown\n",
        ),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!(
                "no admin endpoint {path}: try /metrics /ready /live /config /log-level /shutdown\n"
            ),
        ),
    }
}
