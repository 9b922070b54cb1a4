//! The control plane's own certificate, for the TLS of its discovery listener: issued by its own CA for
//! `spiffe://<trust-domain>/ns/<namespace>/sa/shoal-control-plane`, with a key generated in memory (never
//! written anywhere), reissued at ~70 % of its life and as soon as a CA rotation changes the signer, so the
//! certificate proxies see always chains to the root that is active now.
//!
//! [`ServerCert`] is a rustls [`ResolvesServerCert`]: every handshake reads the current certificate, so a
//! swap applies to the next connection without rebuilding the server configuration.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use super::Identity;
use super::ca::{CaError, Csr};
use super::spiffe::WorkloadId;

/// The service account of the control plane's SPIFFE id.
pub const SERVICE_ACCOUNT: &str = "shoal-control-plane";
/// The share of a certificate's life after which it is reissued.
const RENEW_AT: f64 = 0.7;
/// Wait before retrying a failed reissue (the current certificate keeps serving meanwhile).
const RETRY: Duration = Duration::from_secs(10);

/// One issued certificate and what renewal needs to know about it.
struct Current {
    key: Arc<CertifiedKey>,
    /// Unix seconds.
    issued_at: u64,
    /// Unix seconds.
    not_after: u64,
    /// SHA-256 of the root it chains to: a different active root means the signer changed.
    root_fingerprint: String,
}

/// The discovery listener's certificate, swapped in place on renewal and rotation.
pub struct ServerCert {
    identity: Identity,
    id: WorkloadId,
    spiffe_id: String,
    current: RwLock<Arc<Current>>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert")
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl ServerCert {
    /// Issues the first certificate for the control plane in `namespace` (a DNS label).
    pub fn new(identity: &Identity, namespace: &str) -> Result<Arc<Self>, CaError> {
        let id = WorkloadId::new(namespace, SERVICE_ACCOUNT).map_err(CaError::Invalid)?;
        let spiffe_id = id.spiffe_id(identity.ca.trust_domain());
        let current = issue(identity, &id)?;
        tracing::info!(identity = %spiffe_id, not_after = current.not_after, "control-plane certificate issued for the discovery listener");
        Ok(Arc::new(Self {
            identity: identity.clone(),
            id,
            spiffe_id,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// The SPIFFE id the certificate carries.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    /// The current certificate chain (leaf first) and key.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.snapshot().key.clone()
    }

    /// The current certificate's expiry, Unix seconds.
    pub fn not_after(&self) -> u64 {
        self.snapshot().not_after
    }

    /// Issues a new certificate with the CA's active signer and swaps it in.
    pub fn renew(&self) -> Result<(), CaError> {
        let next = issue(&self.identity, &self.id)?;
        tracing::info!(identity = %self.spiffe_id, root = %next.root_fingerprint, not_after = next.not_after, "control-plane certificate renewed");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
        Ok(())
    }

    /// How long until the current certificate is due for renewal (~70 % of its life), by the CA's clock.
    pub fn renew_in(&self) -> Duration {
        let c = self.snapshot();
        let due =
            c.issued_at + ((c.not_after.saturating_sub(c.issued_at)) as f64 * RENEW_AT) as u64;
        Duration::from_secs(due.saturating_sub(self.identity.clock.unix_seconds()))
    }

    /// Whether the CA now signs with a different root than the current certificate's.
    pub fn signer_changed(&self) -> bool {
        // By state, not position: during a rotation's PENDING phase the new root is in the bundle
        // but the old one still signs.
        let active = (self.identity.ca.status().roots.into_iter())
            .find(|root| root.state == shoal_proto::v1::CaRootState::Active as i32);
        active.is_some_and(|root| root.fingerprint_sha256 != self.snapshot().root_fingerprint)
    }

    /// Keeps the certificate fresh until `closing` turns true: renews when due, and at once when a
    /// rotation changes the CA's signer (followed through the trust bundle, which changes with it).
    pub async fn maintain(self: Arc<Self>, mut closing: watch::Receiver<bool>) {
        let mut bundle = self.identity.ca.bundle();
        bundle.borrow_and_update();
        // Set after a failed reissue; otherwise the wait is recomputed from the current certificate.
        let mut retry = None;
        loop {
            let wait = retry.take().unwrap_or_else(|| self.renew_in());
            let due = tokio::select! {
                changed = bundle.changed() => {
                    if changed.is_err() { return }
                    self.signer_changed()
                }
                () = tokio::time::sleep(wait) => true,
                _ = closing.wait_for(|c| *c) => return,
            };
            if !due {
                continue;
            }
            if let Err(error) = self.renew() {
                tracing::warn!(%error, retry_in = ?RETRY, "cannot renew the control-plane certificate; the current one keeps serving");
                retry = Some(RETRY);
            }
        }
    }

    fn snapshot(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key())
    }
}

/// A fresh key pair (in memory only), a CSR over it, and the CA's signature.
fn issue(identity: &Identity, id: &WorkloadId) -> Result<Current, CaError> {
    let generate = |e: rcgen::Error| CaError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let request = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(generate)?;
    let csr = Csr::from_der(request.der()).map_err(CaError::Generate)?;
    let issued_at = identity.clock.unix_seconds();
    let issued = identity.ca.issue(&csr, id, false)?;
    let chain = (issued.chain_pem.iter())
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Generate(format!("the issued chain is not PEM: {e}")))?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_ecdsa_type(&der)
        .map_err(|e| CaError::Generate(format!("unusable key: {e}")))?;
    Ok(Current {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        issued_at,
        not_after: issued.not_after,
        root_fingerprint: issued.root_fingerprint,
    })
}

#[cfg(test)]
#[path = "server_cert_tests.rs"]
mod tests;
