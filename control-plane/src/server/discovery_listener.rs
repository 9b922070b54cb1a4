//! The discovery listener's connections: accept, tell TLS from plaintext h2c by the first byte (`0x16`,
//! a TLS handshake record, or `P`, the HTTP/2 preface), complete the TLS handshake in the connection's own
//! task (a slow client never holds up the accept loop), and hand the streams to tonic.
//!
//! Plaintext is served only when the operator opted in (`SHOAL_CP_DISCOVERY_PLAINTEXT=true`, e.g. for
//! cp-bench); otherwise the connection is closed and the refusal logged once per peer address with the fix.
//! Each stream carries a [`PeerInfo`] that handlers read from the request's extensions.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::config::env;

/// How long a new connection may take to send its first byte, and then to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused plaintext peers remembered for log-once; the set is cleared when it grows past this.
const REFUSED_PEERS_MAX: usize = 4096;

/// Describes the listener's metric (call once the recorder is installed).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shoal_cp_discovery_connections_total",
        "Connections to the discovery listener, by transport (tls, plaintext) and result (accepted, refused: plaintext without SHOAL_CP_DISCOVERY_PLAINTEXT, handshake_failed)"
    );
}

/// Who is on the other end of a discovery-listener connection.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS (false: plaintext h2c, allowed by the opt-in).
    pub tls: bool,
    /// Whether the client presented a certificate (TLS only; it chains to the trust bundle, or the
    /// handshake would have failed).
    pub client_certificate: bool,
    /// The SPIFFE id of the client certificate, verified against the trust bundle; `None` without one
    /// (or when the certificate carries no single SPIFFE id).
    pub identity: Option<String>,
}

impl PeerInfo {
    /// The peer of `request`: the listener's [`PeerInfo`], or tonic's own remote address when served
    /// by a plain tonic server (tests embedding the services).
    pub fn of<T>(request: &tonic::Request<T>) -> PeerInfo {
        match request.extensions().get::<PeerInfo>() {
            Some(info) => info.clone(),
            None => PeerInfo {
                remote_addr: request.remote_addr(),
                ..PeerInfo::default()
            },
        }
    }

    /// How the connection reached the control plane: mutual TLS, TLS without a client certificate, or
    /// plaintext (h2c through the opt-in, or a plain tonic server embedding the services).
    pub fn transport(&self) -> shoal_proto::v1::DiscoveryTransport {
        use shoal_proto::v1::DiscoveryTransport as T;
        match (self.tls, self.client_certificate) {
            (true, true) => T::Mtls,
            (true, false) => T::Tls,
            (false, _) => T::Plaintext,
        }
    }

    /// The address as text (`unknown` when not known).
    pub fn address(&self) -> String {
        self.remote_addr
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
    }
}

/// One accepted connection, plaintext or TLS.
pub enum DiscoveryIo {
    /// h2c, when allowed.
    Plain(TcpStream, PeerInfo),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>, PeerInfo),
}

impl Connected for DiscoveryIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            DiscoveryIo::Plain(_, info) | DiscoveryIo::Tls(_, info) => info.clone(),
        }
    }
}

impl AsyncRead for DiscoveryIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DiscoveryIo::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            DiscoveryIo::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DiscoveryIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            DiscoveryIo::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            DiscoveryIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            DiscoveryIo::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            DiscoveryIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            DiscoveryIo::Plain(s, _) => s.is_write_vectored(),
            DiscoveryIo::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DiscoveryIo::Plain(s, _) => Pin::new(s).poll_flush(cx),
            DiscoveryIo::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            DiscoveryIo::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            DiscoveryIo::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the accept loop shares with each connection's task.
struct Shared {
    tls: tokio_rustls::TlsAcceptor,
    plaintext_allowed: bool,
    refused: Mutex<HashSet<IpAddr>>,
    ready: mpsc::Sender<std::io::Result<DiscoveryIo>>,
}

/// The streams of `listener`, ready for tonic's `serve_with_incoming_shutdown`. The accept loop ends when
/// tonic drops the stream (shutdown).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    plaintext_allowed: bool,
) -> ReceiverStream<std::io::Result<DiscoveryIo>> {
    let (ready, rx) = mpsc::channel(64);
    let shared = Arc::new(Shared {
        tls: tokio_rustls::TlsAcceptor::from(tls),
        plaintext_allowed,
        refused: Mutex::default(),
        ready,
    });
    tokio::spawn(accept_loop(listener, shared));
    ReceiverStream::new(rx)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.ready.closed() => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                tokio::spawn(handshake(tcp, remote, shared.clone()));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "discovery listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sorts one connection into TLS or plaintext and hands it on; closes it when refused or broken.
async fn handshake(tcp: TcpStream, remote: SocketAddr, shared: Arc<Shared>) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        Ok(Ok(_)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(peer = %remote, "discovery connection sent nothing within {HANDSHAKE_TIMEOUT:?}; closed");
            return;
        }
    }
    let mut info = PeerInfo {
        remote_addr: Some(remote),
        ..PeerInfo::default()
    };
    let io = if first[0] == 0x16 {
        let _ = tcp.set_nodelay(true);
        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, shared.tls.accept(tcp)).await;
        let stream = match accepted {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::info!(peer = %remote, %error, "discovery TLS handshake failed");
                metrics::counter!("shoal_cp_discovery_connections_total", "transport" => "tls", "result" => "handshake_failed").increment(1);
                return;
            }
            Err(_) => {
                tracing::info!(peer = %remote, "discovery TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}");
                metrics::counter!("shoal_cp_discovery_connections_total", "transport" => "tls", "result" => "handshake_failed").increment(1);
                return;
            }
        };
        info.tls = true;
        let client_certs = stream.get_ref().1.peer_certificates();
        info.client_certificate = client_certs.is_some_and(|certs| !certs.is_empty());
        info.identity = client_certs
            .and_then(|certs| certs.first())
            .and_then(|cert| crate::identity::spiffe::spiffe_id_of(cert));
        metrics::counter!("shoal_cp_discovery_connections_total", "transport" => "tls", "result" => "accepted").increment(1);
        DiscoveryIo::Tls(Box::new(stream), info)
    } else if shared.plaintext_allowed {
        metrics::counter!("shoal_cp_discovery_connections_total", "transport" => "plaintext", "result" => "accepted").increment(1);
        DiscoveryIo::Plain(tcp, info)
    } else {
        metrics::counter!("shoal_cp_discovery_connections_total", "transport" => "plaintext", "result" => "refused").increment(1);
        refuse_plaintext(&shared, remote);
        return;
    };
    let _ = shared.ready.send(Ok(io)).await;
}

/// Logs a refused plaintext connection, once per peer address.
fn refuse_plaintext(shared: &Shared, remote: SocketAddr) {
    let first_time = {
        let mut refused = shared
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if refused.len() >= REFUSED_PEERS_MAX {
            refused.clear();
        }
        refused.insert(remote.ip())
    };
    if first_time {
        tracing::warn!(
            peer = %remote,
            "plaintext (h2c) connection to the discovery listener refused: connect with TLS (proxy: SHOAL_DISCOVERY_ADDR=https://HOST:PORT or HOST:PORT, with SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE), or allow plaintext with {}=true",
            env::DISCOVERY_PLAINTEXT
        );
    }
}
