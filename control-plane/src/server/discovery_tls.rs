//! TLS of the discovery listener (port 15010): the server configuration and the client-certificate check.
//!
//! - The server certificate is the control plane's own ([`ServerCert`]), read per handshake.
//! - Client certificates are requested but optional: `Certify`'s first call has none (the join token is
//!   the bootstrap credential). A presented one must chain to the current trust bundle, retiring roots
//!   included, or the handshake fails; [`BundleClientVerifier`] follows the bundle, so a rotation applies
//!   to the next handshake.
//! - TLS 1.3, and 1.2 for older clients; ALPN `h2` (gRPC).

use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;

use crate::identity::Identity;
use crate::identity::server_cert::ServerCert;

/// Checks client certificates against the trust bundle in effect now.
#[derive(Debug)]
pub struct BundleClientVerifier {
    provider: Arc<CryptoProvider>,
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl BundleClientVerifier {
    /// A verifier trusting `roots_pem`.
    pub fn new(provider: Arc<CryptoProvider>, roots_pem: &[String]) -> Result<Self, String> {
        let inner = build(&provider, roots_pem)?;
        Ok(Self {
            provider,
            inner: RwLock::new(inner),
        })
    }

    /// Trusts `roots_pem` from the next handshake on; on error the current roots stay.
    pub fn set_roots(&self, roots_pem: &[String]) -> Result<(), String> {
        let next = build(&self.provider, roots_pem)?;
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// Follows the CA's trust bundle until `closing` turns true.
    pub async fn follow(self: Arc<Self>, identity: Identity, mut closing: watch::Receiver<bool>) {
        let mut roots = identity.ca.bundle();
        loop {
            let current = roots.borrow_and_update().clone();
            if let Err(error) = self.set_roots(&current) {
                tracing::warn!(%error, "cannot trust the new bundle for client certificates; keeping the previous roots");
            }
            tokio::select! {
                changed = roots.changed() => if changed.is_err() { return },
                _ = closing.wait_for(|c| *c) => return,
            }
        }
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn build(
    provider: &Arc<CryptoProvider>,
    roots_pem: &[String],
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for pem in roots_pem {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("trust bundle root is not PEM: {e}"))?;
        roots
            .add(der)
            .map_err(|e| format!("trust bundle root is unusable: {e}"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("cannot build the client-certificate verifier: {e}"))
}

impl ClientCertVerifier for BundleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Certify's bootstrap call has no certificate yet.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from the swappable inner verifier; proxies send their one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// The discovery listener's rustls configuration: `cert` as the server certificate, `clients` checking
/// client certificates.
pub fn server_config(
    cert: Arc<ServerCert>,
    clients: Arc<BundleClientVerifier>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
