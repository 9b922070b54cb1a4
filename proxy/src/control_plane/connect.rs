//! The TLS connector tonic's channel calls for `https://` control-plane addresses: TCP, then a rustls
//! handshake that checks the control plane's chain (anchors ∪ pushed bundle) and SPIFFE id, presents the
//! proxy's current certificate when it has one, and requires ALPN `h2`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Trust;
use crate::tls::verify::PeerServerVerifier;

/// A connection to the control plane, as tonic wants it.
pub(super) type Io = TokioIo<TlsStream<TcpStream>>;

/// Connects to the control plane over TLS.
#[derive(Debug, Clone)]
pub(super) struct TlsConnector {
    trust: Arc<Trust>,
}

impl TlsConnector {
    pub(super) fn new(trust: Arc<Trust>) -> Self {
        Self { trust }
    }
}

impl tonic::codegen::Service<http::Uri> for TlsConnector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Io, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let trust = self.trust.clone();
        Box::pin(async move { connect(trust, uri).await.map_err(std::io::Error::other) })
    }
}

async fn connect(trust: Arc<Trust>, uri: http::Uri) -> Result<Io, String> {
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| format!("{uri} names no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("TCP connection to {host}:{port} failed: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let config = client_config(&trust)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(trust.identity.server_name(), tcp)
        .await
        .map_err(|e| {
            format!(
                "TLS handshake with the control plane at {host}:{port} failed: {e} (it must prove {} with a certificate chaining to SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE or the trust bundle it pushed; check the anchors file and SHOAL_CONTROL_PLANE_IDENTITY)",
                trust.identity
            )
        })?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!(
            "the control plane at {host}:{port} did not negotiate ALPN h2 (is it a Shoal control plane?)"
        ));
    }
    Ok(TokioIo::new(stream))
}

/// A configuration for one connection: the roots in effect now, the current client certificate.
fn client_config(trust: &Arc<Trust>) -> Result<Arc<ClientConfig>, String> {
    let provider = crate::tls::provider();
    let mut roots = RootCertStore::empty();
    // A bundle root that does not parse as a CA is skipped: the others (and the anchors) still count.
    let pushed = trust.pushed.load();
    for root in trust.anchors.iter().chain(pushed.iter()) {
        let _ = roots.add(root.clone());
    }
    let verifier = PeerServerVerifier::new(Arc::new(roots), provider.clone());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(ClientCert(trust.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Presents the proxy's current workload certificate, if any.
#[derive(Debug)]
struct ClientCert(Arc<Trust>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.presentable()
    }

    fn has_certs(&self) -> bool {
        self.0.client_cert.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;
    use crate::control_plane::{ControlPlane, DEFAULT_IDENTITY, TlsSettings};
    use crate::tls::SpiffeId;

    #[test]
    fn presents_the_current_certificate_until_it_expires() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        let cp = ControlPlane::new(Some(TlsSettings {
            anchors_file: "anchors.pem".into(),
            anchors: Vec::new(),
            identity: SpiffeId::parse(DEFAULT_IDENTITY).unwrap(),
        }));
        let resolver = ClientCert(cp.tls.clone().unwrap());
        assert!(
            resolver.resolve(&[], &[]).is_none(),
            "none before the first"
        );

        let mut certificates = cp.client_certificates();
        assert!(!cp.presents_client_certificate());

        let hour = Duration::from_secs(3600);
        cp.set_client_certificate(Some((certified.clone(), SystemTime::now() + hour)));
        let presented = resolver.resolve(&[], &[]).expect("the current certificate");
        assert!(Arc::ptr_eq(&presented, &certified));
        // Streams opened without one learn that they can reconnect to present it.
        assert!(certificates.has_changed().unwrap() && cp.presents_client_certificate());
        certificates.borrow_and_update();

        // Expired (the control plane was away too long): the handshake goes without one, so the
        // join token can still get a new certificate.
        cp.set_client_certificate(Some((certified.clone(), SystemTime::now() - hour)));
        assert!(resolver.resolve(&[], &[]).is_none());
        assert!(!cp.presents_client_certificate());
        // A stream opened now (without one) hears of the next certificate.
        cp.set_client_certificate(Some((certified, SystemTime::now() + hour)));
        assert!(certificates.has_changed().unwrap() && cp.presents_client_certificate());
    }
}
