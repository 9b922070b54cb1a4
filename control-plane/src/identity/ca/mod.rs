//! The mesh CA: loads or creates its authority at start-up, signs workload certificates, and rotates roots.
//!
//! - **Standalone default:** a self-generated ECDSA P-256 root, 10 years, that signs workloads directly.
//! - **Operator root** (SHOAL_CP_CA_CERT_FILE + SHOAL_CP_CA_KEY_FILE): the control plane generates its own
//!   intermediate signed by that root and signs workloads with it; the root's key is used only to sign the
//!   intermediate and is not stored (see docs/identity.md).
//! - **Rotation** ([`rotation`]): a new authority joins the trust bundle `PENDING` (trusted, not signing);
//!   [`Ca::activate`] makes it `ACTIVE` once proxies have it, and the old root stays in the bundle, `RETIRING`,
//!   until every certificate it signed has expired, then [`Ca::retire_due`] drops it.
//!
//! The whole CA is one record in the store's identity table, written (fsynced) before any change is used.

mod authority;
mod files;
mod issue;
mod record;
mod rotation;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prost::Message;
use shoal_proto::v1;
use tokio::sync::watch;

pub use authority::BACKDATE;
pub use files::RootFiles;
pub use issue::{Csr, Issued};
pub use rotation::{PROPAGATION_TIMEOUT_BOUNDS, PendingRoot, Phase};

use super::clock::Clock;
use super::spiffe::TrustDomain;
use crate::store::{self, Store};
use authority::Authority;
use record::CaRecord;

/// Why the CA cannot start, rotate or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A certificate or key the operator gave is unusable; the message says which and why.
    #[error("{0}")]
    Invalid(String),
    /// A root or key file cannot be used.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A rotation is still in progress: its new root is pending, or its old root is retiring.
    #[error("a CA rotation is in progress: {}", rotation::describe_in_progress(.phase, .fingerprint, .until))]
    RotationInProgress {
        /// [`Phase::Pending`] or [`Phase::Retiring`].
        phase: Phase,
        /// The pending or retiring root.
        fingerprint: String,
        /// When that phase ends at the latest, Unix seconds: the pending root's activation deadline, or the
        /// retiring root's `retire_at`.
        until: u64,
    },
    /// The operator root in the settings is not the one the stored CA uses.
    #[error(
        "SHOAL_CP_CA_CERT_FILE holds root {configured}, but the CA in the store uses root {stored}; switch roots with `shoalctl ca rotate --cert FILE --key FILE` (no restart), then update the files"
    )]
    RootMismatch {
        /// Fingerprint of the file's root.
        configured: String,
        /// Fingerprint of the stored active root.
        stored: String,
    },
    /// Generating or signing failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
    /// The stored CA cannot be read.
    #[error("the stored CA is unreadable: {0}")]
    Corrupt(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl CaError {
    fn generate(error: rcgen::Error) -> Self {
        Self::Generate(error.to_string())
    }
}

/// How the CA is set up: from the `SHOAL_CP_*` settings.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// The trust domain of every SPIFFE id issued.
    pub trust_domain: TrustDomain,
    /// Lifetime of workload certificates.
    pub cert_ttl: Duration,
    /// The operator's root, if any; `None` generates one.
    pub root: Option<RootFiles>,
    /// The longest a rotation's new root stays pending (trusted, not signing) while proxies that have not
    /// acknowledged it are connected.
    pub propagation_timeout: Duration,
}

/// The authorities in effect: the active one first, then any pending or retiring one.
struct Authorities {
    list: Vec<Authority>,
}

impl Authorities {
    fn active(&self) -> &Authority {
        // Never empty: load_or_create and every rotation step leave an active authority first.
        &self.list[0]
    }

    fn pending(&self) -> Option<&Authority> {
        self.list.iter().find(|a| a.record.pending)
    }

    fn retiring(&self) -> Option<&Authority> {
        self.list.iter().find(|a| a.record.retiring)
    }

    fn record(&self) -> CaRecord {
        CaRecord {
            authorities: self.list.iter().map(|a| a.record.clone()).collect(),
        }
    }

    fn roots_pem(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|a| a.record.root_pem.clone())
            .collect()
    }
}

/// The mesh CA. Share it in an `Arc`.
pub struct Ca {
    store: Store,
    clock: Arc<dyn Clock>,
    settings: CaSettings,
    authorities: RwLock<Arc<Authorities>>,
    /// Held (on a blocking thread) by each rotation step from reading the authorities to installing the next
    /// ones: a rotation, an activation and a retirement never interleave.
    steps: Mutex<()>,
    /// The roots of the trust bundle (PEM, active first); changes on every rotation step.
    bundle: watch::Sender<Vec<String>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.settings.trust_domain)
            .field("roots", &self.snapshot().list.len())
            .finish()
    }
}

impl Ca {
    /// Loads the CA from the store, or creates it (and stores it) on first start. Blocks on the store.
    pub fn load_or_create(
        store: Store,
        settings: CaSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CaError> {
        let stored = store.secret_get(record::KEY)?;
        let authorities = match stored {
            Some(bytes) => {
                let record = CaRecord::decode(bytes.as_slice())
                    .map_err(|e| CaError::Corrupt(e.to_string()))?;
                let list = (record.authorities.into_iter())
                    .map(Authority::from_record)
                    .collect::<Result<Vec<_>, _>>()?;
                if list
                    .first()
                    .is_none_or(|a| a.record.pending || a.record.retiring)
                {
                    return Err(CaError::Corrupt(
                        "the stored CA has no active authority first".into(),
                    ));
                }
                let authorities = Authorities { list };
                if let Some(root) = &settings.root {
                    let (der, _) =
                        authority::first_certificate(&root.cert_pem, "SHOAL_CP_CA_CERT_FILE")?;
                    let configured =
                        super::hex(ring::digest::digest(&ring::digest::SHA256, &der).as_ref());
                    if !authorities.list.iter().any(|a| a.fingerprint == configured) {
                        return Err(CaError::RootMismatch {
                            configured,
                            stored: authorities.active().fingerprint.clone(),
                        });
                    }
                }
                tracing::info!(root = %authorities.active().fingerprint, roots = authorities.list.len(), "CA loaded from the store");
                if let Some(pending) = authorities.pending() {
                    tracing::info!(root = %pending.fingerprint, since = pending.record.pending_since, "CA rotation resumed: the new root is pending until proxies have it");
                }
                authorities
            }
            None => {
                let now = clock.now();
                let authority = match &settings.root {
                    Some(root) => Authority::under_root(
                        &root.cert_pem,
                        &root.key_pem,
                        &settings.trust_domain,
                        now,
                    )?,
                    None => Authority::generate_root(&settings.trust_domain, now)?,
                };
                let authorities = Authorities {
                    list: vec![authority],
                };
                store.secret_put(record::KEY, authorities.record().encode_to_vec())?;
                let origin = if settings.root.is_some() {
                    "intermediate under the operator's root"
                } else {
                    "self-signed root"
                };
                tracing::info!(root = %authorities.active().fingerprint, origin, "CA created and stored");
                authorities
            }
        };
        let (bundle, _) = watch::channel(authorities.roots_pem());
        Ok(Self {
            store,
            clock,
            settings,
            authorities: RwLock::new(Arc::new(authorities)),
            steps: Mutex::new(()),
            bundle,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.settings.trust_domain
    }

    /// Lifetime of workload certificates.
    pub fn cert_ttl(&self) -> Duration {
        self.settings.cert_ttl
    }

    /// The roots proxies must trust (PEM, active first).
    pub fn roots_pem(&self) -> Vec<String> {
        self.snapshot().roots_pem()
    }

    /// Follows the trust bundle: the current roots, and a change on every rotation step (rotation,
    /// activation, retirement).
    pub fn bundle(&self) -> watch::Receiver<Vec<String>> {
        self.bundle.subscribe()
    }

    /// Roots, states and the certificate lifetime, as `Admin.CaStatus` answers.
    pub fn status(&self) -> v1::CaStatusResponse {
        let authorities = self.snapshot();
        let roots = authorities.list.iter().map(|a| v1::CaRoot {
            certificate_pem: a.record.root_pem.clone(),
            fingerprint_sha256: a.fingerprint.clone(),
            not_before_unix_seconds: a.root_validity.0,
            not_after_unix_seconds: a.root_validity.1,
            state: if a.record.pending {
                v1::CaRootState::Pending
            } else if a.record.retiring {
                v1::CaRootState::Retiring
            } else {
                v1::CaRootState::Active
            } as i32,
            retire_at_unix_seconds: a.record.retire_at,
            pending_since_unix_seconds: a.record.pending_since,
            activate_by_unix_seconds: if a.record.pending {
                self.activate_by(a)
            } else {
                0
            },
        });
        v1::CaStatusResponse {
            trust_domain: self.settings.trust_domain.to_string(),
            roots: roots.collect(),
            workload_certificate_ttl_seconds: self.settings.cert_ttl.as_secs(),
        }
    }

    fn snapshot(&self) -> Arc<Authorities> {
        self.authorities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
