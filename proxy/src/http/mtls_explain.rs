//! The caller's side of a strict endpoint's refusal.
//!
//! A proxy whose port is `strict` answers a plain-text request 403 `mtls-required`
//! (`inbound::mtls_required`). That answer can only guess why the caller sent plain text; the
//! caller's own proxy knows (its identity, its view of the service and the endpoint). So on the
//! outbound side such an answer becomes this proxy's own `upstream-requires-mtls`, which says
//! which of those made it send plain text and what to change. Only a 403 is looked at further
//! (or, for a gRPC call, the strict proxy's gRPC answer naming `mtls-required`, already read by the
//! balance stage: `stack::TrailersOnly`), so the common response costs one comparison.

use std::net::SocketAddr;

use http::{Response, StatusCode};

use super::Conn;
use super::body::ResponseBody;
use crate::errors::{ERROR_HEADER, ProxyError, Reason};
use crate::tls::TlsMode;

/// `result`, or `upstream-requires-mtls` when the upstream (`upstream`) is a strict proxy that
/// refused this proxy's plain text (`relayed`: the reason of its gRPC answer, if it was one).
pub(super) fn explain(
    conn: &Conn,
    result: Result<Response<ResponseBody>, ProxyError>,
    upstream: Option<SocketAddr>,
    relayed: Option<Reason>,
) -> Result<Response<ResponseBody>, ProxyError> {
    match &result {
        Ok(_) if relayed == Some(Reason::MtlsRequired) => {
            Err(upstream_requires_mtls(conn, upstream))
        }
        Ok(resp) if is_mtls_required(resp) => Err(upstream_requires_mtls(conn, upstream)),
        _ => result,
    }
}

/// Whether `resp` is a Shoal proxy's `mtls-required` answer.
fn is_mtls_required(resp: &Response<ResponseBody>) -> bool {
    resp.status() == StatusCode::FORBIDDEN
        && resp
            .headers()
            .get(ERROR_HEADER)
            .is_some_and(|v| v.as_bytes() == Reason::MtlsRequired.as_str().as_bytes())
}

/// The error naming the endpoint, its service, and why this proxy sent plain text to it.
fn upstream_requires_mtls(conn: &Conn, upstream: Option<SocketAddr>) -> ProxyError {
    let shared = &conn.shared;
    let addr = upstream.map_or_else(|| "the endpoint".to_string(), |a| a.to_string());
    let state = shared.store.peek();
    // The error path only: a scan of the state is fine here.
    let found = upstream.and_then(|a| {
        state
            .services
            .iter()
            .find_map(|s| s.endpoints.iter().find(|e| e.addr == a).map(|e| (s, e)))
    });
    let service = found.map_or_else(
        || "a service this proxy does not know".to_string(),
        |(s, _)| s.qualified_name(),
    );
    let why = match found {
        _ if shared.identity.is_none() => "this proxy has no identity configured (none of SHOAL_IDENTITY_TOKEN, SHOAL_IDENTITY_TOKEN_FILE, SHOAL_IDENTITY_CERT_FILE is set), so it sends plain text to every endpoint: give it an identity".to_string(),
        Some((s, _)) if s.tls_mode == Some(TlsMode::Disabled) => format!(
            "this proxy's view of {service} sets tls_mode: disabled, so it sends plain text: set tls_mode to strict or permissive on the Service (shoalctl apply, or the state file)"
        ),
        Some((_, e)) if e.identity.is_none() => format!(
            "discovery gives the endpoint {addr} no identity, so this proxy treats it as outside the mesh: check the endpoint's identity in its registration (or the state file) and in /config"
        ),
        Some((s, _)) if shared.config.server_first_ports.binary_search(&s.port).is_ok() => format!(
            "port {} is in SHOAL_SERVER_FIRST_PORTS and {service} does not set tls_mode: strict in this proxy's view, so it sends plain text: set tls_mode: strict on the Service",
            s.port
        ),
        Some(_) => "this proxy's view of the endpoint should have used mTLS; check /config (identity, the service's tls_mode) on both proxies".to_string(),
        None => "the endpoint is not a mesh endpoint in this proxy's state, so the request passed through in plain text: call the service by its mesh name, or check /config".to_string(),
    };
    ProxyError::new(
        Reason::UpstreamRequiresMtls,
        format!(
            "{addr} ({service}) requires mesh mTLS (its proxy's port is strict and answered mtls-required), but this proxy sent the request in plain text: {why} (docs/mtls.md)"
        ),
    )
}
