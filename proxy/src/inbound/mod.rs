//! Inbound: connections to the app. Everything goes to the app's own address — the original
//! destination (transparent) or `SHOAL_INBOUND_APP_ADDR` (explicit).
//!
//! Mesh mTLS is decided here, per connection, from the mTLS mode of the port: a handshake
//! meant for this proxy's identity is terminated (the caller's identity is then known), the
//! application's own TLS passes through, and plain text is refused in strict mode.
//! [`authz`] decides which callers may reach the app; [`rate_limit`] how often (per HTTP request).

pub mod authz;
pub(crate) mod http;
pub(crate) mod rate_limit;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

use crate::app::Shared;
use crate::config::Mode;
use crate::detect::Detected;
use crate::errors::{ProxyError, Reason};
use crate::http::Downstream;
use crate::io::{ProxyIo, Transport};
use crate::listen::Accepted;
use crate::metrics::{self, Direction};
use crate::protocol::{Carried, Served};
use crate::tls::{self, Alpn, Credentials, SpiffeId, TlsMode};

/// Serves one inbound connection.
pub async fn handle(shared: Arc<Shared>, conn: Accepted) {
    let dst = match shared.config.inbound.mode {
        Mode::Explicit => Some(shared.config.inbound.app_addr),
        _ => conn.orig_dst,
    };
    let Some(dst) = dst else {
        tracing::warn!(peer = %conn.peer, "inbound connection was not redirected by iptables (no original destination): run `shoal-proxy init` or set SHOAL_INBOUND_MODE=explicit");
        conn.metrics.closed("unknown", 0, 0);
        return;
    };
    crate::protocol::serve(shared, conn, Direction::Inbound, Some(dst)).await;
}

/// What to do with an inbound connection, once its first bytes are known.
pub(crate) enum Admit {
    /// Serve it as it is (plain text, or the application's own TLS).
    Plain,
    /// Terminate mesh mTLS with these credentials.
    Mesh(Arc<Credentials>),
    /// Plain-text HTTP on a strict port: served only so that each request can be answered
    /// 403 `mtls-required` (nothing reaches the app), so a caller learns why instead of seeing
    /// its connection closed. Already counted.
    MtlsRequired,
    /// Close it (already logged and counted).
    Refuse,
    /// Send these bytes (a TLS alert), then close (already logged and counted).
    Alert(Vec<u8>),
}

/// The mTLS mode of the app port `port`: the mode the state gives this proxy's own service
/// port, else `SHOAL_INBOUND_TLS_MODE`. When no port of the service matches (explicit inbound
/// mode fronts one app port whatever the service's ports are called) but all its ports agree,
/// that mode applies.
pub fn tls_mode(shared: &Shared, port: u16) -> TlsMode {
    let cfg = &shared.config;
    let state = shared.store.peek();
    let mut own = state
        .services
        .iter()
        .filter(|s| s.name == cfg.service_name && s.namespace == cfg.namespace);
    let mode = match own
        .clone()
        .find(|s| s.target_port == port || s.port == port)
    {
        Some(s) => s.tls_mode,
        None => {
            let first = own.next().and_then(|s| s.tls_mode);
            own.all(|s| s.tls_mode == first).then_some(first).flatten()
        }
    };
    mode.unwrap_or(cfg.inbound_tls_mode)
}

/// The protocol the state declares for this proxy's own service port `port`, if a port of the
/// service is `port` (by its target port or its port).
pub(crate) fn declared_protocol(shared: &Shared, port: u16) -> Option<crate::state::Protocol> {
    let cfg = &shared.config;
    let state = shared.store.peek();
    state
        .services
        .iter()
        .find(|s| {
            s.name == cfg.service_name
                && s.namespace == cfg.namespace
                && (s.target_port == port || s.port == port)
        })
        .map(|s| s.protocol)
}

/// Decides how to serve an inbound connection from what detection saw.
pub(crate) fn admit(shared: &Shared, detected: &Detected, dst: Option<SocketAddr>) -> Admit {
    let port = dst.map_or(0, |d| d.port());
    let mode = tls_mode(shared, port);
    if mode == TlsMode::Disabled {
        return Admit::Plain;
    }
    let wanted = match detected {
        Detected::Tls { sni: Some(sni), .. } => SpiffeId::from_server_name(sni),
        _ => None,
    };
    let refuse = |why: &str, reason: &'static str| {
        metrics::tls_refused(reason);
        tracing::warn!(port, mode = ?mode, reason, "inbound connection refused: {why}");
        Admit::Refuse
    };
    if let Detected::Tls {
        refused: Some(alert),
        ..
    } = detected
    {
        // Its SNI cannot even be read; whoever it is for, mesh ports do not take TLS below 1.2.
        refuse(
            "a TLS handshake older than TLS 1.2 (or a malformed ClientHello); mTLS ports accept TLS 1.2+ only",
            "handshake",
        );
        return Admit::Alert(alert.clone());
    }
    // A mesh handshake this proxy cannot serve is answered with an alert naming why, so the
    // caller's proxy can say what to check (`tls::explain`) rather than "end of file".
    let alert = |description| Admit::Alert(tls::explain::refusal_alert(description));
    match wanted {
        Some(wanted) => match shared.identity.as_ref().and_then(|i| i.current()) {
            Some(creds) if creds.id == wanted => Admit::Mesh(creds),
            Some(creds) => {
                refuse(
                    &format!(
                        "the caller expected identity {wanted}, but this proxy is {}; check the endpoint's identity in discovery",
                        creds.id
                    ),
                    "wrong-identity",
                );
                alert(rustls::AlertDescription::UnrecognisedName)
            }
            None => {
                refuse(
                    &format!(
                        "a mesh mTLS connection for {wanted} arrived, but this proxy has no certificate yet; check SHOAL_IDENTITY_* and /config"
                    ),
                    "no-certificate",
                );
                alert(rustls::AlertDescription::HandshakeFailure)
            }
        },
        // Plain-text HTTP can be told why; other bytes (opaque TCP, the app's own TLS) have no
        // way to carry an answer and are closed.
        None if mode == TlsMode::Strict
            && matches!(detected, Detected::Http1 | Detected::Http2) =>
        {
            metrics::tls_refused("plaintext");
            tracing::debug!(
                port,
                "plain-text HTTP on a strict mTLS port: each request is answered mtls-required"
            );
            Admit::MtlsRequired
        }
        None if mode == TlsMode::Strict => refuse(
            "the port is in strict mTLS mode and the connection is not mesh mTLS",
            "plaintext",
        ),
        None => Admit::Plain,
    }
}

/// Terminates a mesh mTLS connection and serves what it carries.
pub(crate) async fn serve_mesh(
    shared: Arc<Shared>,
    conn: Accepted,
    prefix: BytesMut,
    dst: Option<SocketAddr>,
    creds: Arc<Credentials>,
) {
    let deadline = shared.config.http.header_read_timeout;
    let terminated = match tls::terminate(&creds, conn.stream, prefix.freeze(), deadline).await {
        Ok(t) => t,
        Err(e) => {
            metrics::tls_refused("handshake");
            tracing::warn!(peer = %conn.peer, error = %e, "inbound mTLS handshake failed; nothing reached the app");
            conn.metrics.closed("unknown", 0, 0);
            return;
        }
    };
    let (carried, protocol) = match terminated.alpn {
        Alpn::H2 => (Carried::Http(Downstream::Http2), "http2"),
        Alpn::Http1 => (Carried::Http(Downstream::Http1), "http1"),
        Alpn::Tcp => (Carried::Opaque, "opaque"),
    };
    tracing::debug!(peer = %conn.peer, client = %terminated.peer, ?carried, "inbound mTLS connection");
    let io = ProxyIo::new(
        Transport::Tls(Box::new(terminated.stream)),
        bytes::Bytes::new(),
        protocol,
        conn.metrics.clone(),
    );
    let served = Served {
        peer: conn.peer,
        permit: conn.permit,
        drain: conn.drain,
        mtls_required: false,
    };
    crate::protocol::carry(
        shared,
        io,
        served,
        Direction::Inbound,
        dst,
        carried,
        Some(terminated.peer),
    )
    .await;
}

/// Applies the service's authorization policy to one inbound call; `None` when the service has
/// no policy (every caller is accepted). Decisions are counted.
fn authorize(shared: &Shared, call: &authz::Call<'_>) -> Option<authz::Decision> {
    let state = shared.store.peek();
    if state.authorization.is_empty() {
        return None;
    }
    let policy = state.authorization.get(&shared.own_service)?;
    let creds = shared.identity.as_ref().and_then(|i| i.current());
    let call = authz::Call {
        local_trust_domain: creds.as_ref().map(|c| c.id.trust_domain()),
        ..*call
    };
    let decision = policy.decide(&call);
    let allowed = decision.action == authz::Action::Allow;
    metrics::authz_decision(&policy.service, &decision.rule, allowed);
    Some(decision)
}

/// Authorizes an inbound HTTP request: `Err` (403 `unauthorized`, naming the policy, the rule
/// and the caller; logged once where every proxy error is) when the policy denies it.
pub(crate) fn authorize_http<B>(
    conn: &crate::http::Conn,
    req: &::http::Request<B>,
) -> Result<(), ProxyError> {
    let call = authz::Call {
        client: conn.client_id.as_ref(),
        local_trust_domain: None,
        port: conn.dst.map_or(0, |d| d.port()),
        http: Some((req.method(), req.uri().path())),
    };
    match authorize(&conn.shared, &call) {
        Some(d) if d.action == authz::Action::Deny => Err(ProxyError::new(
            Reason::Unauthorized,
            format!(
                "policy {} ({}) does not allow {} to call this service; check the service's AuthorizationPolicy",
                conn.shared.own_service,
                d.rule,
                conn.client_id
                    .as_ref()
                    .map_or_else(|| "a plain-text caller".to_string(), ToString::to_string),
            ),
        )),
        _ => Ok(()),
    }
}

/// The answer to a plain-text request on a strict port: 403 `mtls-required`, naming the port,
/// the service and what the caller should check. Callers through a Shoal proxy get it explained
/// from their own side too (`upstream-requires-mtls`, `http::mtls_explain`).
pub(crate) fn mtls_required(conn: &crate::http::Conn) -> ProxyError {
    let port = conn.dst.map_or(0, |d| d.port());
    ProxyError::new(
        Reason::MtlsRequired,
        format!(
            "port {port} of {} accepts only mesh mTLS (tls_mode strict) and this request came in plain text, so it was not passed to the app; \
             call it through a Shoal proxy that has an identity (SHOAL_IDENTITY_*) and whose view of the service does not set tls_mode: disabled (docs/mtls.md)",
            conn.shared.own_service,
        ),
    )
}

/// Authorizes an inbound opaque TCP connection; `false` means close it.
pub(crate) fn authorize_tcp(shared: &Shared, client: Option<&SpiffeId>, port: u16) -> bool {
    let call = authz::Call {
        client,
        local_trust_domain: None,
        port,
        http: None,
    };
    match authorize(shared, &call) {
        Some(d) if d.action == authz::Action::Deny => {
            let client =
                client.map_or_else(|| "a plain-text caller".to_string(), ToString::to_string);
            tracing::warn!(policy = %shared.own_service, rule = %d.rule, %client, port, "authorization denied an opaque TCP connection; closing it");
            false
        }
        _ => true,
    }
}
