//! The route stage: which service a request is for (its original destination's virtual IP, or
//! its authority), asking the control plane the first time, and which of the service's route
//! rules it matches. A destination the state does not know passes through to where the app was
//! going, so the mesh never breaks unmeshed calls.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;

use crate::endpoint::Version;
use crate::errors::{ProxyError, Reason};
use crate::http::body::RequestBody;
use crate::http::headers::authority_of;
use crate::http::send::Dest;
use crate::http::stack::{Exchange, Req, Service};
use crate::http::{Conn, Downstream};
use crate::state::{Service as MeshService, State};

/// A request matched to a known service and (maybe) one of its route rules.
#[derive(Debug)]
pub(super) struct Routed {
    /// The snapshot the route was found in; the request keeps to it.
    pub(super) state: Arc<State>,
    /// The service the request named.
    pub(super) service: Arc<MeshService>,
    /// Index of the matched rule in the service's rules.
    rule: Option<usize>,
}

impl Routed {
    /// Index of the matched route rule in the service's rules, if any.
    pub(super) fn rule_index(&self) -> Option<usize> {
        self.rule
    }

    /// The matched route rule, if any.
    pub(super) fn rule(&self) -> Option<&crate::state::RouteRule> {
        let i = self.rule?;
        self.state.routes.get(self.service.id)?.get(i)
    }
}

/// The stage: `known` serves requests to mesh services, `passthrough` the rest.
#[derive(Debug)]
pub(super) struct Route<K, P> {
    known: K,
    passthrough: P,
}

impl<K, P> Route<K, P> {
    pub(super) fn new(known: K, passthrough: P) -> Self {
        Self { known, passthrough }
    }
}

impl<'c, K, P> Service<Req<'c, ()>> for Route<K, P>
where
    K: Service<Req<'c, Routed>> + Sync,
    P: Service<Req<'c, Dest>> + Sync,
{
    async fn call(&self, req: Req<'c, ()>) -> Exchange {
        match resolve(req.conn, &req.http).await {
            Ok(Resolved::Known(routed)) => {
                // The split below counts the exchange under the backend it chooses.
                let (req, ()) = req.retarget(routed);
                self.known.call(req).await
            }
            Ok(Resolved::Passthrough(addr)) => {
                let conn = req.conn;
                let dest = Dest {
                    peer: (addr, None),
                    version: same_version(conn),
                    orig_http1: false,
                    metrics: None,
                    connect_timeout: None,
                    gate: None,
                };
                let (req, ()) = req.retarget(dest);
                self.passthrough
                    .call(req)
                    .await
                    .counted_in(&conn.shared.passthrough_metrics)
            }
            Err(e) => Exchange::failed(e),
        }
    }
}

/// The HTTP version the downstream speaks, kept upstream when nothing says otherwise.
pub(super) fn same_version(conn: &Conn) -> Version {
    match conn.version {
        Downstream::Http1 => Version::Http1,
        Downstream::Http2 => Version::Http2,
    }
}

enum Resolved {
    Known(Routed),
    Passthrough(SocketAddr),
}

/// Finds the service a request names, or where it passes through to.
async fn resolve(conn: &Conn, req: &Request<RequestBody>) -> Result<Resolved, ProxyError> {
    let shared = &conn.shared;
    let mut state = shared.store.snapshot();
    let authority = authority_of(req);
    let default_port = conn.dst.map_or(80, |d| d.port());
    let lookup = |state: &State| -> Option<Arc<MeshService>> {
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
        let rule = state.route_index(&service, req.method(), req.uri().path(), req.headers());
        return Ok(Resolved::Known(Routed {
            state,
            service,
            rule,
        }));
    }
    // Not a known service: pass through to where the app was going.
    let addr = match conn.dst {
        Some(dst) => dst,
        None => Box::pin(passthrough_addr(conn, authority)).await?,
    };
    Ok(Resolved::Passthrough(shared.check_loop(addr)?))
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
) -> Option<&'s Arc<MeshService>> {
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
