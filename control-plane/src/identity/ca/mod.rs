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
//! The whole CA is one record, written before any change is used: in the store's identity table (standalone), or in
//! a Secret every replica shares and follows (Kubernetes mode; [`backend`]).

mod authority;
pub mod backend;
#[cfg(test)]
pub(crate) mod backend_fake;
mod files;
mod issue;
mod load;
mod record;
mod rotation;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use shoal_proto::v1;
use tokio::sync::watch;

pub use authority::BACKDATE;
pub use files::RootFiles;
pub use issue::{Csr, Issued, KUBERNETES_MARK};
pub use rotation::{PROPAGATION_TIMEOUT_BOUNDS, PendingRoot, Phase};

use super::clock::Clock;
use super::spiffe::TrustDomain;
use crate::store::{self, Store};
use authority::Authority;
pub use backend::{RecordBackend, StoreBackend, Stored, WriteError};
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
    /// The shared CA record (Kubernetes mode: the Secret) could not be read or created at start-up.
    #[error(
        "{record} could not be read or created for {waited} s: {reason}; the control plane does not start a CA of its own while the shared one may exist (check the API server and the control plane's RBAC)"
    )]
    Unavailable {
        /// Where the record is.
        record: String,
        /// How long start-up kept trying, seconds.
        waited: u64,
        /// The last failure.
        reason: String,
    },
    /// The shared CA record kept changing under this step.
    #[error("{0} kept changing under this step (concurrent writers); try again")]
    Contended(String),
    /// The shared CA record cannot be reached or written.
    #[error("{0}")]
    Backend(String),
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
    /// The version of the stored record these are (the Secret's `resourceVersion`; empty for the store).
    version: String,
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
    backend: Arc<dyn RecordBackend>,
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
        Self::open(Arc::new(StoreBackend::new(store)), None, settings, clock)
    }

    /// Loads the CA record shared by several replicas from `backend` (Kubernetes mode: the Secret
    /// `shoal-ca-state`), or creates it when there is none: from the CA record `seed` holds (an existing install
    /// upgrading keeps its root), else a new authority. When another replica creates it first, adopts theirs.
    /// An unreachable backend is retried until its start deadline (`SHOAL_CP_CA_STATE_TIMEOUT` for the Secret).
    /// Blocks: call it from a blocking thread.
    pub fn load_shared(
        backend: Arc<dyn RecordBackend>,
        seed: Option<Store>,
        settings: CaSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CaError> {
        Self::open(backend, seed, settings, clock)
    }

    fn open(
        backend: Arc<dyn RecordBackend>,
        seed: Option<Store>,
        settings: CaSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CaError> {
        let deadline = std::time::Instant::now() + backend.start_deadline();
        let mut warned = false;
        let authorities = loop {
            match load::load_once(backend.as_ref(), seed.as_ref(), &settings, clock.as_ref())? {
                load::Attempt::Loaded(authorities) => break authorities,
                // Another replica created the record first: read theirs.
                load::Attempt::Again if std::time::Instant::now() < deadline => continue,
                load::Attempt::Again => return Err(CaError::Contended(backend.describe())),
                load::Attempt::Unreachable(error) if !backend.shared() => return Err(error),
                load::Attempt::Unreachable(error) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(CaError::Unavailable {
                            record: backend.describe(),
                            waited: backend.start_deadline().as_secs(),
                            reason: error.to_string(),
                        });
                    }
                    if !warned {
                        tracing::warn!(%error, record = %backend.describe(), deadline = ?backend.start_deadline(), "cannot read or create the shared CA record yet; retrying");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        };
        let (bundle, _) = watch::channel(authorities.roots_pem());
        Ok(Self {
            backend,
            clock,
            settings,
            authorities: RwLock::new(Arc::new(authorities)),
            steps: Mutex::new(()),
            bundle,
        })
    }

    /// Re-reads a shared record and installs it when another replica changed it (a rotation, an activation, a
    /// retirement), so the bundle follows and this replica signs with the shared active authority; returns
    /// whether it changed. Blocks on the backend.
    pub fn refresh(&self) -> Result<bool, CaError> {
        let _step = self.step();
        self.reload()
    }

    /// [`Self::refresh`] with the steps' lock held.
    fn reload(&self) -> Result<bool, CaError> {
        let Some(stored) = self.backend.read()? else {
            return Err(CaError::Corrupt(format!(
                "{} is gone; keeping the CA installed",
                self.backend.describe()
            )));
        };
        let current = self.snapshot();
        if stored.version == current.version && !stored.version.is_empty() {
            return Ok(false);
        }
        let next = load::decode(&stored)?;
        if next.record() == current.record() {
            // The same record at a new version (or the first read): remember the version only.
            self.install(next);
            return Ok(false);
        }
        tracing::info!(record = %self.backend.describe(), root = %next.active().fingerprint, roots = next.list.len(), "CA record changed by another replica: installed");
        self.install(next);
        Ok(true)
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
