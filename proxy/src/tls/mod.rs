//! Mutual TLS between proxies: rustls configurations built from the proxy's current identity,
//! terminating mesh connections on the inbound side and originating them on the outbound side.
//!
//! - [`explain`]: why a handshake failed, in words that say what to check.
//! - [`spiffe`]: SPIFFE ids, the SNI that names one, reading one from a certificate.
//! - [`verify`]: chain + identity checks for both ends.
//! - [`stream`]: plain-or-TLS streams, and the rewind that lets TLS see detection's bytes.
//!
//! A mesh connection says what it carries with ALPN ([`Alpn`]): `h2` (every HTTP request,
//! HTTP/1.1 ones included, multiplexed on one connection per peer), `http/1.1` (only for
//! requests that upgrade, such as WebSocket, which HTTP/2 cannot carry here) or `shoal.tcp`
//! (opaque bytes). The identity the client expects travels in the SNI. Configurations are built
//! once per certificate (renewal builds new ones); handshakes only clone an `Arc`.

pub mod explain;
pub mod spiffe;
pub mod stream;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use serde::Serialize;
use tokio::net::TcpStream;

pub use spiffe::SpiffeId;
pub use stream::{MaybeTls, Rewind};

/// The server side of a terminated mesh connection.
pub type ServerStream = tokio_rustls::server::TlsStream<Rewind>;
/// The client side of an originated mesh connection.
pub type ClientStream = tokio_rustls::client::TlsStream<crate::io::GatedTcp>;

/// The one crypto provider of the workspace.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// What a mesh connection carries, negotiated with ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Alpn {
    /// HTTP/2: every HTTP request between proxies.
    H2,
    /// HTTP/1.1: requests that upgrade the connection.
    Http1,
    /// Opaque TCP bytes.
    Tcp,
}

impl Alpn {
    const ALL: [Alpn; 3] = [Alpn::H2, Alpn::Http1, Alpn::Tcp];

    /// The ALPN protocol id.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http1 => b"http/1.1",
            Alpn::Tcp => b"shoal.tcp",
        }
    }

    fn from_id(id: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.id() == id)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Mutual TLS on a service port's inbound side (the proto's `TlsMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Only mesh mTLS connections; plain text is closed.
    Strict,
    /// Mesh mTLS and plain text.
    Permissive,
    /// No mesh TLS: TLS handshakes pass through to the app untouched; outbound proxies connect
    /// in plain text.
    Disabled,
}

/// The lowest TLS version the proxy accepts and offers between proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only (the default).
    #[serde(rename = "1.3")]
    Tls13,
}

impl MinVersion {
    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            MinVersion::Tls12 => &BOTH,
            MinVersion::Tls13 => &BOTH[..1],
        }
    }
}

/// One issued identity, ready to use: its certificate, and the configurations built from it.
#[derive(Debug)]
pub struct Credentials {
    /// Whose identity.
    pub id: SpiffeId,
    /// When the leaf certificate expires.
    pub not_after: SystemTime,
    /// How many roots the trust bundle holds (two during a CA rotation).
    pub roots: usize,
    server: Arc<ServerConfig>,
    /// Indexed by [`Alpn::index`].
    clients: [Arc<ClientConfig>; 3],
}

impl Credentials {
    /// Builds credentials from a certificate chain (leaf first), its private key and the roots
    /// to trust. The leaf must carry a SPIFFE id and chain to one of the roots.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
        min_version: MinVersion,
    ) -> Result<Self, String> {
        let leaf = chain.first().ok_or("the certificate chain is empty")?;
        let id = spiffe::identity_of(leaf)?;
        let not_after = not_after(leaf)?;
        let mut store = RootCertStore::empty();
        for root in &roots {
            store
                .add(root.clone())
                .map_err(|e| format!("trust bundle: a root is not a usable CA certificate: {e}"))?;
        }
        if store.is_empty() {
            return Err("the trust bundle holds no root certificate".into());
        }
        let store = Arc::new(store);
        let provider = provider();
        let parsed = ParsedCertificate::try_from(leaf)
            .map_err(|e| format!("cannot parse the certificate: {e}"))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &store,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| {
            format!("the certificate for {id} does not verify against the trust bundle: {e}")
        })?;

        let versions = min_version.versions();
        let client_verifier =
            verify::MeshClientVerifier::new(store.clone(), provider.clone(), id.trust_domain())?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(client_verifier))
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("the private key does not fit the certificate: {e}"))?;
        server.alpn_protocols = Alpn::ALL.iter().map(|a| a.id().to_vec()).collect();

        let resumption = Resumption::in_memory_sessions(256);
        let server_verifier = Arc::new(verify::PeerServerVerifier::new(store, provider.clone()));
        let client = |alpn: Alpn| -> Result<Arc<ClientConfig>, String> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(server_verifier.clone())
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("the private key does not fit the certificate: {e}"))?;
            c.alpn_protocols = vec![alpn.id().to_vec()];
            c.resumption = resumption.clone();
            Ok(Arc::new(c))
        };
        Ok(Self {
            id,
            not_after,
            roots: roots.len(),
            server: Arc::new(server),
            clients: [client(Alpn::H2)?, client(Alpn::Http1)?, client(Alpn::Tcp)?],
        })
    }

    /// Time left before the leaf certificate expires (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

/// The expiry of a certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let secs = parsed.validity().not_after.timestamp();
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// A terminated mesh connection.
#[derive(Debug)]
pub struct Terminated {
    /// The TLS stream.
    pub stream: ServerStream,
    /// The client proxy's identity.
    pub peer: SpiffeId,
    /// What the connection carries.
    pub alpn: Alpn,
}

/// Completes the server side of a mesh handshake whose ClientHello detection already read
/// (`prefix`). Fails on any handshake error, and when the client negotiated no mesh protocol.
pub async fn terminate(
    creds: &Credentials,
    tcp: TcpStream,
    prefix: Bytes,
    deadline: Duration,
) -> Result<Terminated, String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(creds.server.clone());
    let stream = tokio::time::timeout(deadline, acceptor.accept(Rewind::new(prefix, tcp)))
        .await
        .map_err(|_| format!("TLS handshake not finished within {deadline:?}"))?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (_, session) = stream.get_ref();
    let alpn = session
        .alpn_protocol()
        .and_then(Alpn::from_id)
        .ok_or("the client negotiated no mesh protocol (ALPN h2, http/1.1 or shoal.tcp)")?;
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the client presented no certificate")?;
    let peer = spiffe::identity_of(cert)?;
    Ok(Terminated { stream, peer, alpn })
}

/// Opens the client side of a mesh connection to a peer proxy that must prove `peer`.
pub async fn originate(
    creds: &Credentials,
    tcp: TcpStream,
    peer: &SpiffeId,
    alpn: Alpn,
) -> Result<ClientStream, String> {
    let connector = tokio_rustls::TlsConnector::from(creds.clients[alpn.index()].clone());
    let stream = connector
        .connect(peer.server_name(), tcp.into())
        .await
        .map_err(|e| explain::client_handshake(&e, peer.as_str()))?;
    let negotiated = stream.get_ref().1.alpn_protocol();
    if negotiated != Some(alpn.id()) {
        return Err(format!(
            "the peer of {peer} did not accept ALPN {} (is it a Shoal proxy?)",
            String::from_utf8_lossy(alpn.id())
        ));
    }
    Ok(stream)
}
