//! Identity: the mesh's certificate authority and how workloads prove who they are.
//!
//! The path of a workload certificate, in the order a `Certify` call meets it:
//!
//! - [`certify`] — the `shoal.v1.Identity` service on the discovery listener: request checks, CSR parsing
//!   (its self-signature must verify), then the credential.
//! - [`credentials`] — the [`CredentialVerifier`](credentials::CredentialVerifier) trait and its two
//!   implementations: [`JoinTokens`](credentials::JoinTokens) (hashed in the store, or in Kubernetes mode in a
//!   Secret shared by the replicas; expiring, limited uses) and [`KubernetesTokens`](credentials::KubernetesTokens) (TokenReview); and
//!   [`renewal`]: a running proxy's current certificate plus proof of its key.
//! - [`ca`] — signs the certificate: one SPIFFE URI SAN ([`spiffe`]), short-lived; and owns the roots,
//!   their persistence and rotation.
//! - [`bundle`] — pushes the trust bundle to proxies as the discovery `TrustBundle` resource, and the upkeep
//!   task that activates a rotation's pending root once proxies have it ([`propagation`]) and retires old
//!   roots on time.
//! - [`server_cert`] — the control plane's own certificate for the TLS of its discovery listener, and
//!   [`anchors`] — the public trust anchors file proxies verify that listener with at bootstrap.
//!
//! Everything secret lives in the store's identity table (in Kubernetes mode the CA record and the join tokens in
//! Secrets shared by the replicas, `ca::backend`), never in resources, logs or `Debug` output.

pub mod anchors;
pub mod bundle;
pub mod ca;
pub mod certify;
pub mod clock;
pub mod credentials;
pub mod metrics;
pub mod propagation;
pub mod renewal;
pub mod replicas;
pub mod server_cert;
pub mod spiffe;

use std::sync::Arc;

pub use ca::{Ca, CaError, CaSettings, RootFiles};
pub use certify::CertifyService;
pub use clock::{Clock, ManualClock, SystemClock};
pub use credentials::JoinTokens;

use crate::store::Store;

/// The CA and the join tokens, shared by the Identity service, the Admin API and the upkeep task.
#[derive(Clone)]
pub struct Identity {
    /// The CA.
    pub ca: Arc<Ca>,
    /// Join tokens.
    pub join_tokens: JoinTokens,
    /// The clock everything here reads.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("ca", &self.ca).finish()
    }
}

impl Identity {
    /// Loads or creates the CA in `store`. Blocks on the store: call it from a blocking thread.
    pub fn open(
        store: Store,
        settings: CaSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CaError> {
        Self::open_with(store, None, settings, clock)
    }

    /// [`Self::open`], with the CA record in `shared` when given (Kubernetes mode: the Secret every replica
    /// shares, seeded from `store`'s record if it has one and the Secret does not exist yet). Blocks: call it
    /// from a blocking thread.
    pub fn open_with(
        store: Store,
        shared: Option<Arc<dyn ca::RecordBackend>>,
        settings: CaSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CaError> {
        let ca = match shared {
            Some(backend) => {
                Ca::load_shared(backend, Some(store.clone()), settings, clock.clone())?
            }
            None => Ca::load_or_create(store.clone(), settings, clock.clone())?,
        };
        let ca = Arc::new(ca);
        Ok(Self {
            ca,
            join_tokens: JoinTokens::new(store, clock.clone()),
            clock,
        })
    }

    /// The `Identity` gRPC service, verifying join tokens, and Kubernetes tokens with `kubernetes` (the
    /// TokenReview verifier when `SHOAL_CP_KUBERNETES=true`; without it they are refused, saying so).
    pub fn certify_service(
        &self,
        kubernetes: Option<Arc<dyn credentials::CredentialVerifier>>,
    ) -> CertifyService {
        CertifyService::new(
            self.ca.clone(),
            Arc::new(self.join_tokens.clone()),
            kubernetes,
        )
    }
}

/// Lowercase hex of `bytes` (fingerprints, token ids and secrets).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
