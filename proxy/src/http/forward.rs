//! Forwarding one HTTP request: resolve where it goes, rewrite it for the next hop, send it,
//! and hand back the response — or the proxy's own explanation of what failed.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version as HttpVersion, header};
use tokio::time::Instant;

use super::body::{RequestBody, ResponseBody};
use super::deadline::ConnDeadline;
use super::headers::{is_upgrade, strip_hop_by_hop};
use super::{Conn, Downstream, respond};
use crate::balance::Picked;
use crate::endpoint::{Peer, Version};
use crate::errors::{ProxyError, Reason};
use crate::metrics::{Direction, RequestMetrics};
use crate::state::{Protocol, Service, State};
use crate::trace_context::{self, TraceIds};

static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
/// Between proxies: the request was HTTP/1.1 before it rode the mesh's HTTP/2 connection, and
/// the inbound proxy restores that version for the app.
static ORIG_PROTO: http::HeaderName = http::HeaderName::from_static("shoal-orig-proto");
/// Inbound, added for the app: the caller's mesh identity (removed from what callers send, so
/// it cannot be forged).
static CLIENT_ID: http::HeaderName = http::HeaderName::from_static("shoal-client-id");

/// Where one request goes.
struct Target {
    /// The endpoint, and the identity its proxy must prove when it is in the mesh.
    peer: Peer,
    /// The HTTP version on the wire to `peer`.
    version: Version,
    /// The request rides the mesh's HTTP/2 connection but is HTTP/1.1 for the app.
    orig_http1: bool,
    /// The matched route rule's timeout, which wins over the default.
    route_timeout: Option<Duration>,
    metrics: Arc<RequestMetrics>,
    /// The balancer's choice (a known service): in flight until the target is dropped, told
    /// how long the response head took.
    picked: Option<Picked>,
}

/// Reports an exchange's latency to the balancer when dropped: the time to the response head,
/// or — when no head came (an error, a timeout, the client gone) — at least [`FAILED_RTT`], so
/// an endpoint that fails fast does not look fast and draw more traffic.
struct Timing<'a> {
    picked: Option<&'a Picked>,
    /// The request's arrival: routing takes microseconds, and this saves a clock read.
    start: Instant,
    answered: bool,
}

/// The latency a failed exchange counts as.
const FAILED_RTT: Duration = Duration::from_secs(1);

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.picked {
            let now = Instant::now();
            let rtt = now.saturating_duration_since(self.start);
            p.observe(
                if self.answered {
                    rtt
                } else {
                    rtt.max(FAILED_RTT)
                },
                now,
            );
        }
    }
}

/// Handles one request; never fails (every error becomes a response).
pub async fn handle(conn: &Conn, mut req: Request<RequestBody>) -> Response<ResponseBody> {
    let start = Instant::now();
    let ids = trace_context::propagate(req.headers_mut());
    let access = conn.shared.config.access_log.then(|| AccessLine::new(&req));
    if conn.direction == Direction::Inbound
        && let Err(e) = crate::inbound::authorize_http(conn, &req)
    {
        let metrics = unrouted_metrics(conn);
        return finish(conn, Err(e), &ids, start, metrics, None, access);
    }
    let target = match resolve(conn, &req).await {
        Ok(t) => t,
        Err(e) => {
            return finish(
                conn,
                Err(e),
                &ids,
                start,
                unrouted_metrics(conn),
                None,
                access,
            );
        }
    };
    let result = forward(conn, req, &target, start).await;
    finish(
        conn,
        result,
        &ids,
        start,
        &target.metrics,
        Some(target.peer.0),
        access,
    )
}

/// Where a request that never reached a destination is counted.
fn unrouted_metrics(conn: &Conn) -> &RequestMetrics {
    match conn.direction {
        Direction::Inbound => inbound_metrics(conn),
        Direction::Outbound => &conn.shared.passthrough_metrics,
    }
}

/// Inbound request metrics, by whether the connection is mesh mTLS.
fn inbound_metrics(conn: &Conn) -> &Arc<RequestMetrics> {
    match conn.client_id {
        Some(_) => &conn.shared.inbound_mtls_metrics,
        None => &conn.shared.inbound_metrics,
    }
}

/// An HTTP/2 request with more header fields than `SHOAL_MAX_HEADERS`: answered 431 on its stream
/// (the connection's other streams go on), never forwarded. (hyper enforces the limit for
/// HTTP/1.1 while parsing; the `h2` crate only bounds the header block's bytes.)
pub fn reject_too_many_headers(
    conn: &Conn,
    req: Request<RequestBody>,
    max: usize,
) -> Response<ResponseBody> {
    let err = ProxyError::new(
        Reason::HeadersTooLarge,
        format!(
            "the request has {} header fields, more than SHOAL_MAX_HEADERS ({max})",
            req.headers().len()
        ),
    );
    reject(conn, req, err)
}

/// Answers a request refused before routing with `err` (status, `shoal-proxy-error`), counted and
/// logged like every proxy error.
fn reject(conn: &Conn, mut req: Request<RequestBody>, err: ProxyError) -> Response<ResponseBody> {
    let ids = trace_context::propagate(req.headers_mut());
    finish(
        conn,
        Err(err),
        &ids,
        Instant::now(),
        unrouted_metrics(conn),
        None,
        None,
    )
}

/// Sends `req` to `target`; the response timeout runs from `start` (the request's arrival, read
/// once for the latency metric too).
async fn forward(
    conn: &Conn,
    mut req: Request<RequestBody>,
    target: &Target,
    start: Instant,
) -> Result<Response<ResponseBody>, ProxyError> {
    // A gRPC call carries its own deadline (grpc-timeout), which the server and client enforce;
    // the proxy's default must not cut a long call short. A route's explicit timeout still holds.
    let timeout = match target.route_timeout {
        Some(t) => Some(t),
        None if req.headers().contains_key(&GRPC_TIMEOUT) => None,
        None => conn.shared.config.http.response_timeout,
    };
    let upgrade = conn.version == Downstream::Http1 && is_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut(), upgrade);
    mesh_headers(conn, &mut req, target);
    shape_for(&mut req, target.version)?;
    // The exchange's future is made inside each arm: made before the match, the request's
    // future would keep room for it twice.
    let clients = &conn.shared.clients;
    let timed_out = |limit: Duration| {
        ProxyError::new(
            Reason::ResponseTimeout,
            format!(
                "no response head from {} within {limit:?} (SHOAL_RESPONSE_TIMEOUT or the route's timeout)",
                target.peer.0
            ),
        )
    };
    // The connection loop's timer enforces the deadline (http::deadline) when its tick is short
    // enough to meet it on time: HTTP/1's one request, or one of HTTP/2's streams. One arm for
    // both keeps the request's future (held by every HTTP/1 connection) small.
    let tick = super::loop_tick(&conn.shared.config.http);
    let on_loop = timeout
        .filter(|limit| *limit >= 2 * tick)
        .and_then(|limit| {
            let at = start + limit;
            match (&conn.response_deadline, &conn.stream_deadlines) {
                (Some(cell), _) => Some(ConnDeadline::Http1(cell.arm(at))),
                (None, Some(streams)) => Some(ConnDeadline::Http2(streams.arm(at))),
                (None, None) => None,
            }
        });
    let mut timing = Timing {
        picked: target.picked.as_ref(),
        start,
        answered: false,
    };
    let mut resp = match (timeout, on_loop) {
        (Some(limit), Some(mut armed)) => {
            let send = pin!(clients.send(&target.peer, target.version, req, upgrade));
            let expired = pin!(std::future::poll_fn(|cx| armed.poll_expired(cx)));
            match futures_util::future::select(send, expired).await {
                Either::Left((resp, _)) => resp?,
                Either::Right(_) => return Err(timed_out(limit)),
            }
        }
        (Some(limit), None) => tokio::time::timeout_at(
            start + limit,
            clients.send(&target.peer, target.version, req, upgrade),
        )
        .await
        .map_err(|_| timed_out(limit))??,
        (None, _) => {
            clients
                .send(&target.peer, target.version, req, upgrade)
                .await?
        }
    };
    timing.answered = true;
    drop(timing);
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(downstream)) = (switching, on_upgrade) {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(crate::tcp::splice_upgraded(downstream, upstream));
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    // This hop speaks its own HTTP version to the client, whatever the upstream spoke.
    *resp.version_mut() = match conn.version {
        Downstream::Http1 => HttpVersion::HTTP_11,
        Downstream::Http2 => HttpVersion::HTTP_2,
    };
    Ok(resp)
}

/// The headers proxies use between themselves: the caller's identity for the app (inbound), and
/// the original HTTP version when HTTP/1.1 rides the mesh's HTTP/2 (outbound). What a caller sent
/// under those names is dropped, so neither can be forged.
fn mesh_headers(conn: &Conn, req: &mut Request<RequestBody>, target: &Target) {
    let headers = req.headers_mut();
    // Callers almost never send them: one pass over the names beats a hash lookup per name, as
    // in `strip_hop_by_hop`.
    if headers.keys().any(|k| k == ORIG_PROTO || k == CLIENT_ID) {
        headers.remove(&ORIG_PROTO);
        headers.remove(&CLIENT_ID);
    }
    if let Some(id) = &conn.client_id_header {
        headers.insert(CLIENT_ID.clone(), id.clone());
    }
    if target.orig_http1 {
        headers.insert(ORIG_PROTO.clone(), HeaderValue::from_static("HTTP/1.1"));
    }
}

fn finish(
    conn: &Conn,
    result: Result<Response<ResponseBody>, ProxyError>,
    ids: &TraceIds,
    start: Instant,
    metrics: &RequestMetrics,
    upstream: Option<SocketAddr>,
    access: Option<AccessLine>,
) -> Response<ResponseBody> {
    let (resp, reason) = match result {
        Ok(resp) => (resp, None),
        Err(e) => {
            let dest = upstream.map_or_else(|| "-".to_string(), |a| a.to_string());
            (
                respond::error(conn.direction, conn.version, &e, ids, &dest),
                Some(e.kind),
            )
        }
    };
    let elapsed = start.elapsed();
    metrics.record(resp.status(), reason, elapsed);
    if let Some(line) = access {
        line.log(conn, &resp, ids, upstream, reason, elapsed);
    }
    resp
}

/// Finds the destination of a request.
async fn resolve(conn: &Conn, req: &Request<RequestBody>) -> Result<Target, ProxyError> {
    let shared = &conn.shared;
    let same_version = match conn.version {
        Downstream::Http1 => Version::Http1,
        Downstream::Http2 => Version::Http2,
    };
    if conn.direction == Direction::Inbound {
        let addr = conn.dst.ok_or_else(|| {
            ProxyError::new(
                Reason::NoDestination,
                "inbound connection without a destination",
            )
        })?;
        // Over the mesh, HTTP/1.1 requests arrive on HTTP/2 and go back to HTTP/1.1 for the app.
        let orig_http1 = conn.client_id.is_some()
            && req
                .headers()
                .get(&ORIG_PROTO)
                .is_some_and(|v| v.as_bytes() == b"HTTP/1.1");
        return Ok(Target {
            peer: (addr, None),
            version: if orig_http1 {
                Version::Http1
            } else {
                same_version
            },
            orig_http1: false,
            route_timeout: None,
            metrics: inbound_metrics(conn).clone(),
            picked: None,
        });
    }
    let mut state = shared.store.snapshot();
    let authority = authority_of(req);
    let default_port = conn.dst.map_or(80, |d| d.port());
    let lookup = |state: &State| -> Option<Arc<Service>> {
        conn.dst
            .and_then(|dst| state.by_addr(&dst))
            .or_else(|| authority.and_then(|a| lookup_authority(state, a, default_port)))
            .cloned()
    };
    let mut service = lookup(&state);
    if service.is_none()
        && let Some(d) = &shared.discovery
    {
        // First request to this destination: ask the control plane (bounded wait), look again.
        // Boxed: a cold path that would otherwise size every request's future.
        let bound = Box::pin(async {
            match conn.dst {
                Some(dst) => d.ensure_address(dst).await,
                None => match authority.map(split_authority) {
                    Some((host, port)) => match host.parse::<std::net::IpAddr>() {
                        Ok(ip) => {
                            d.ensure_address(SocketAddr::new(ip, port.unwrap_or(80)))
                                .await
                        }
                        Err(_) => {
                            if let Some(q) = d.service_for_host(host) {
                                d.ensure_service(&q).await;
                            }
                            None
                        }
                    },
                    None => None,
                },
            }
        })
        .await;
        state = shared.store.snapshot();
        service = lookup(&state).or_else(|| {
            bound.and_then(|(svc, port)| state.by_authority(&format!("{svc}:{port}")).cloned())
        });
    }
    if let Some(service) = service {
        let rule = state.route(&service, req.method(), req.uri().path(), req.headers());
        let backend = rule.map_or(&service, |r| r.pick_backend());
        let mut picked = backend.balancer.pick().ok_or_else(|| {
            ProxyError::new(
                Reason::NoEndpoints,
                format!(
                    "service {} has no ready endpoints; check its endpoints in /config",
                    backend.qualified_name()
                ),
            )
        })?;
        let app_version = match backend.protocol {
            Protocol::Http1 => Version::Http1,
            Protocol::Http2 => Version::Http2,
            Protocol::Auto | Protocol::Tcp => same_version,
        };
        let addr = shared.check_loop(picked.addr)?;
        let tls = crate::outbound::mesh_identity(shared, backend, picked.identity.take());
        // Between proxies every request rides one multiplexed HTTP/2 connection, except
        // upgrades (WebSocket), which HTTP/2 cannot carry here: they get their own HTTP/1.1 one.
        let upgrade = conn.version == Downstream::Http1 && is_upgrade(req.headers());
        let (version, orig_http1) = match &tls {
            None => (app_version, false),
            Some(_) if upgrade => (Version::Http1, false),
            Some(_) => (Version::Http2, app_version == Version::Http1),
        };
        return Ok(Target {
            peer: (addr, tls),
            version,
            orig_http1,
            route_timeout: rule.and_then(|r| r.timeout),
            metrics: rule.map_or_else(|| service.metrics.clone(), |r| r.metrics.clone()),
            picked: Some(picked),
        });
    }
    // Not a known service: pass through to where the app was going.
    let addr = match conn.dst {
        Some(dst) => dst,
        None => Box::pin(passthrough_addr(conn, authority)).await?,
    };
    Ok(Target {
        peer: (shared.check_loop(addr)?, None),
        version: same_version,
        orig_http1: false,
        route_timeout: None,
        metrics: shared.passthrough_metrics.clone(),
        picked: None,
    })
}

/// Explicit mode, unknown authority: an IP:PORT authority, else the configured target, else DNS.
async fn passthrough_addr(conn: &Conn, authority: Option<&str>) -> Result<SocketAddr, ProxyError> {
    if let Some(addr) = authority.and_then(|a| a.parse::<SocketAddr>().ok()) {
        return Ok(addr);
    }
    let target = conn.shared.config.outbound.target.as_deref();
    let name = match target.or(authority) {
        Some(n) => n,
        None => {
            return Err(ProxyError::new(
                Reason::NoDestination,
                "the request has no Host or :authority and SHOAL_OUTBOUND_TARGET is not set",
            ));
        }
    };
    let with_port = if name
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        name.to_string()
    } else {
        format!("{name}:80")
    };
    match tokio::net::lookup_host(&with_port).await {
        Ok(mut addrs) => addrs.next().ok_or_else(|| {
            ProxyError::new(
                Reason::UpstreamUnresolvable,
                format!("{with_port} resolved to no address"),
            )
        }),
        Err(e) => Err(ProxyError::new(
            Reason::UpstreamUnresolvable,
            format!(
                "cannot resolve {with_port}: {e}; it is not a service in the proxy's state either"
            ),
        )),
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host header's.
fn authority_of(req: &Request<RequestBody>) -> Option<&str> {
    req.uri().authority().map(Authority::as_str).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// `host[:port]` → (host, port).
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

fn lookup_authority<'s>(
    state: &'s State,
    authority: &str,
    default_port: u16,
) -> Option<&'s Arc<Service>> {
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()));
    let lower = authority.bytes().all(|b| !b.is_ascii_uppercase());
    if lower && (has_port || default_port == 80) {
        // The index holds `host:port`, and bare hosts for port 80: no allocation on the hot path.
        return state.by_authority(authority);
    }
    let mut key = authority.to_ascii_lowercase();
    if !has_port {
        key.push(':');
        key.push_str(&default_port.to_string());
    }
    state.by_authority(&key)
}

/// Rewrites the request line for the upstream's HTTP version.
fn shape_for(req: &mut Request<RequestBody>, version: Version) -> Result<(), ProxyError> {
    match version {
        Version::Http1 => {
            // Origin-form request target, authority in Host. The target's authority wins over
            // a Host field that disagrees (RFC 9112 §3.2.2; HTTP/2's :authority likewise): it is
            // what the request was routed by.
            if let Some(authority) = req.uri().authority().cloned() {
                let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
                    ProxyError::new(
                        Reason::MalformedRequest,
                        "authority is not a valid Host value",
                    )
                })?;
                req.headers_mut().insert(header::HOST, host);
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(pq);
            }
            if req.version() == HttpVersion::HTTP_2 {
                *req.version_mut() = HttpVersion::HTTP_11;
            }
        }
        Version::Http2 => {
            if req.uri().authority().is_none() {
                let host = req.headers_mut().remove(header::HOST).ok_or_else(|| {
                    ProxyError::new(
                        Reason::NoDestination,
                        "an HTTP/1 request without Host cannot be sent over HTTP/2",
                    )
                })?;
                let authority = Authority::try_from(host.as_bytes()).map_err(|_| {
                    ProxyError::new(
                        Reason::MalformedRequest,
                        "the Host header is not a valid authority",
                    )
                })?;
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(authority);
                if parts.path_and_query.is_none() {
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                }
                *req.uri_mut() = Uri::from_parts(parts).map_err(|_| {
                    ProxyError::new(
                        Reason::MalformedRequest,
                        "cannot form an HTTP/2 request target",
                    )
                })?;
            } else {
                req.headers_mut().remove(header::HOST);
            }
            *req.version_mut() = HttpVersion::HTTP_2;
        }
    }
    Ok(())
}

/// What an access-log line needs from the request (captured only when access logs are on).
struct AccessLine {
    method: http::Method,
    path: String,
    authority: String,
}

impl AccessLine {
    fn new(req: &Request<RequestBody>) -> Self {
        Self {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            authority: authority_of(req).unwrap_or("-").to_string(),
        }
    }

    fn log(
        self,
        conn: &Conn,
        resp: &Response<ResponseBody>,
        ids: &TraceIds,
        upstream: Option<SocketAddr>,
        reason: Option<Reason>,
        elapsed: Duration,
    ) {
        tracing::info!(
            target: "access",
            direction = conn.direction.as_str(),
            client = %conn.client,
            method = %self.method,
            authority = %self.authority,
            path = %self.path,
            status = resp.status().as_u16(),
            upstream = %upstream.map_or_else(|| "-".to_string(), |a| a.to_string()),
            reason = reason.map_or("-", Reason::as_str),
            duration_us = respond::micros(elapsed),
            request_id = ids.request_id.as_str(),
            trace_id = %ids.trace_id,
        );
    }
}
