//! The bottom stage of every stack: shape the request for the wire to one endpoint and send it
//! on a pooled connection (`endpoint::Clients`).
//!
//! Shaping: hop-by-hop fields dropped, the mesh's own headers set (and what a caller sent under
//! their names dropped, so they cannot be forged), the request target in the form the upstream's
//! HTTP version wants.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri, Version as HttpVersion, header};

use super::body::RequestBody;
use super::headers::strip_hop_by_hop;
use super::stack::{Exchange, Req, Service};
use super::timeout::{Timed, Who};
use crate::endpoint::{Peer, Version};
use crate::errors::{ProxyError, Reason};

/// Between proxies: the request was HTTP/1.1 before it rode the mesh's HTTP/2 connection, and
/// the inbound proxy restores that version for the app.
pub(crate) static ORIG_PROTO: http::HeaderName = http::HeaderName::from_static("shoal-orig-proto");
/// Inbound, added for the app: the caller's mesh identity (removed from what callers send, so
/// it cannot be forged).
static CLIENT_ID: http::HeaderName = http::HeaderName::from_static("shoal-client-id");

/// One endpoint, and how to speak to it.
#[derive(Debug)]
pub(crate) struct Dest {
    /// The endpoint, and the identity its proxy must prove when it is in the mesh.
    pub(crate) peer: Peer,
    /// The HTTP version on the wire to `peer`.
    pub(crate) version: Version,
    /// The request rides the mesh's HTTP/2 connection but is HTTP/1.1 for the app.
    pub(crate) orig_http1: bool,
    /// The metrics the request counts in, when a stage above chose them (an outbound backend);
    /// `None`: the connection's own (inbound, passthrough). Re-sends count in them too.
    pub(crate) metrics: Option<std::sync::Arc<crate::metrics::RequestMetrics>>,
    /// A backend policy's connect timeout (TCP and mTLS), instead of `SHOAL_CONNECT_TIMEOUT`.
    pub(crate) connect_timeout: Option<std::time::Duration>,
    /// A backend policy's connection limits.
    pub(crate) gate: Option<std::sync::Arc<crate::endpoint::ConnGate>>,
}

impl Timed for Dest {
    fn route_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    fn who(&self) -> Who {
        Who::Addr(self.peer.0)
    }
}

/// The stage (no configuration: connections come from the process's `endpoint::Clients`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Send;

impl<'c> Service<Req<'c, Dest>> for Send {
    async fn call(&self, req: Req<'c, Dest>) -> Exchange {
        let Req {
            conn,
            mut http,
            upgrade,
            target: dest,
            ..
        } = req;
        let upstream = Some(dest.peer.0);
        strip_hop_by_hop(http.headers_mut(), upgrade);
        mesh_headers(conn.client_id_header.as_ref(), &mut http, dest.orig_http1);
        let counted = dest
            .metrics
            .as_deref()
            .unwrap_or_else(|| super::forward::unrouted_metrics(conn));
        let result = match shape_for(&mut http, dest.version) {
            Ok(()) => {
                conn.shared
                    .clients
                    .send(
                        &dest.peer,
                        dest.version,
                        http,
                        upgrade,
                        crate::endpoint::ConnPolicy {
                            connect_timeout: dest.connect_timeout,
                            gate: dest.gate.as_ref(),
                        },
                        counted,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        Exchange {
            result,
            metrics: dest.metrics,
            upstream,
            retried: Vec::new(),
        }
    }
}

/// The headers proxies use between themselves: the caller's identity for the app (inbound), and
/// the original HTTP version when HTTP/1.1 rides the mesh's HTTP/2 (outbound). What a caller sent
/// under those names is dropped, so neither can be forged.
fn mesh_headers(client_id: Option<&HeaderValue>, req: &mut Request<RequestBody>, orig_http1: bool) {
    let headers = req.headers_mut();
    // Callers almost never send them: one pass over the names beats a hash lookup per name, as
    // in `strip_hop_by_hop`.
    if headers.keys().any(|k| k == ORIG_PROTO || k == CLIENT_ID) {
        headers.remove(&ORIG_PROTO);
        headers.remove(&CLIENT_ID);
    }
    if let Some(id) = client_id {
        headers.insert(CLIENT_ID.clone(), id.clone());
    }
    if orig_http1 {
        headers.insert(ORIG_PROTO.clone(), HeaderValue::from_static("HTTP/1.1"));
    }
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
