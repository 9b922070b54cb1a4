//! The channel to the control plane, shared by discovery and `Certify`: TLS verified with the mesh's own
//! CA, or plaintext h2c when the address says `http://` (which only a control plane that opted in with
//! `SHOAL_CP_DISCOVERY_PLAINTEXT=true` accepts).
//!
//! The control plane must prove its SPIFFE id (`SHOAL_CONTROL_PLANE_IDENTITY`) with a certificate that
//! chains to the trust anchors (`SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE`, for bootstrap) or to the trust
//! bundle discovery pushed last, so a CA rotation never cuts the proxy off. The check is the one mesh
//! connections use ([`crate::tls::verify::PeerServerVerifier`], the identity named by the SNI). Once the
//! proxy holds a workload certificate it presents it as its client certificate; the resolver reads the
//! current one at every handshake, so renewals apply. [`ControlPlane::client_certificates`] tells a stream
//! opened without one (discovery starts while `Certify` runs; or the certificate had expired) that it can
//! reconnect to prove the workload's identity.

mod connect;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{parse_cert, parse_certs};
use crate::tls::SpiffeId;

/// The default identity the control plane must prove: `shoal-control-plane` in `shoal-system`, in the
/// control plane's default trust domain.
pub const DEFAULT_IDENTITY: &str = "spiffe://cluster.local/ns/shoal-system/sa/shoal-control-plane";

/// How the proxy verifies the control plane (settings, read at start-up).
#[derive(Debug, Clone, Serialize)]
pub struct TlsSettings {
    /// The PEM file the anchors were read from.
    pub anchors_file: PathBuf,
    /// The trust anchors (roots), for bootstrap.
    #[serde(skip)]
    pub anchors: Vec<CertificateDer<'static>>,
    /// The SPIFFE id the control plane must present.
    #[serde(serialize_with = "serialize_id")]
    pub identity: SpiffeId,
}

fn serialize_id<S: serde::Serializer>(id: &SpiffeId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(id.as_str())
}

/// What the TLS side of the channel knows, shared with every handshake.
#[derive(Debug)]
struct Trust {
    anchors: Vec<CertificateDer<'static>>,
    /// The trust bundle discovery (or Certify) delivered last.
    pushed: ArcSwap<Vec<CertificateDer<'static>>>,
    identity: SpiffeId,
    /// The proxy's workload certificate, once it has one.
    client_cert: ArcSwapOption<ClientCertificate>,
}

/// A client certificate and its expiry.
#[derive(Debug)]
struct ClientCertificate {
    key: Arc<CertifiedKey>,
    not_after: SystemTime,
}

impl Trust {
    /// The client certificate a handshake presents now: the current one, if it has not expired.
    fn presentable(&self) -> Option<Arc<CertifiedKey>> {
        let current = self.client_cert.load_full()?;
        (current.not_after > SystemTime::now()).then(|| current.key.clone())
    }
}

/// Opens channels to the control plane.
#[derive(Debug)]
pub struct ControlPlane {
    tls: Option<Arc<Trust>>,
    /// Counts the client certificates set (renewals included).
    certificates: watch::Sender<u64>,
}

impl ControlPlane {
    /// A connector; `tls` is required for `https://` addresses (the configuration checks it).
    pub fn new(tls: Option<TlsSettings>) -> Arc<Self> {
        let tls = tls.map(|t| {
            Arc::new(Trust {
                anchors: t.anchors,
                pushed: ArcSwap::default(),
                identity: t.identity,
                client_cert: ArcSwapOption::empty(),
            })
        });
        Arc::new(Self {
            tls,
            certificates: watch::Sender::new(0),
        })
    }

    /// Trusts `roots_pem` (a trust bundle from the control plane) besides the anchors, replacing the
    /// previous bundle. An unparsable bundle is refused and the previous one kept.
    pub fn set_trust_bundle(&self, roots_pem: &[String]) -> Result<(), String> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let roots = roots_pem
            .iter()
            .map(|pem| parse_cert(pem.as_bytes(), "trust bundle root"))
            .collect::<Result<Vec<_>, _>>()?;
        tls.pushed.store(Arc::new(roots));
        Ok(())
    }

    /// Presents `cert` (a certificate the control plane issued, valid until the given time) as the
    /// client certificate from the next handshake on. An expired one is not presented: the control
    /// plane would refuse the handshake, and the proxy could not even redeem its join token.
    pub fn set_client_certificate(&self, cert: Option<(Arc<CertifiedKey>, SystemTime)>) {
        if let Some(tls) = &self.tls {
            let new = cert.is_some();
            tls.client_cert
                .store(cert.map(|(key, not_after)| Arc::new(ClientCertificate { key, not_after })));
            if new {
                self.certificates.send_modify(|n| *n += 1);
            }
        }
    }

    /// Whether the next TLS handshake presents a client certificate: one is set and unexpired.
    pub fn presents_client_certificate(&self) -> bool {
        self.tls.as_ref().and_then(|t| t.presentable()).is_some()
    }

    /// Changes whenever a client certificate is set (renewals too): a connection opened while
    /// [`Self::presents_client_certificate`] was false proved no identity to the control plane, and can
    /// reconnect to prove it.
    pub fn client_certificates(&self) -> watch::Receiver<u64> {
        self.certificates.subscribe()
    }

    /// Connects `endpoint`: TLS for `https://`, plaintext h2c for `http://`. The error says what failed
    /// (the TLS verification error included) and what to check.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, String> {
        let uri = endpoint.uri().clone();
        let connected = if uri.scheme_str() == Some("https") {
            let Some(tls) = &self.tls else {
                return Err(format!(
                    "{uri} uses TLS but no trust anchors are configured (SHOAL_CONTROL_PLANE_TRUST_ANCHORS_FILE)"
                ));
            };
            endpoint
                .connect_with_connector(connect::TlsConnector::new(tls.clone()))
                .await
        } else {
            endpoint.connect().await
        };
        connected.map_err(|e| format!("cannot connect to {uri}: {}", describe(&e)))
    }
}

/// An error and its sources, outermost first (tonic's own message is only "transport error").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Reads the trust anchors file: at least one PEM certificate, each usable as a root.
pub fn read_anchors(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = parse_certs(&pem, &path.display().to_string())?;
    let mut store = rustls::RootCertStore::empty();
    for cert in &certs {
        store.add(cert.clone()).map_err(|e| {
            format!(
                "{}: a certificate is not usable as a root: {e}",
                path.display()
            )
        })?;
    }
    Ok(certs)
}
