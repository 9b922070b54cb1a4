//! The proxy's workload identity: where its certificate comes from, keeping it fresh, and the
//! trust bundle it verifies peers against.
//!
//! - [`certify`]: the control plane's CA (`shoal.v1.Identity/Certify`): a key pair generated in
//!   memory (it never leaves the process), a CSR plus a credential (join token or Kubernetes
//!   service-account token), renewal at ~70 % of the certificate's lifetime with jitter (with the
//!   current certificate for join tokens, with the re-read token file in Kubernetes), retries with
//!   backoff while the control plane is away or refuses (the current certificate keeps serving).
//! - [`files`]: a certificate, key and trust bundle from PEM files (an external CA such as
//!   cert-manager, or tests), re-read when they change.
//!
//! Discovery keeps the trust bundle current between renewals (several roots during a CA
//! rotation): [`Identity::set_trust_bundle`] rebuilds the TLS configurations with the new
//! roots and the same certificate.

pub mod certify;
pub mod files;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::control_plane::ControlPlane;
use crate::sync::lock;
use crate::tls::{Credentials, MinVersion};

/// Where the proxy's certificate comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Source {
    /// PEM files.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// PKCS#8 (or SEC1/PKCS#1) private key.
        key: PathBuf,
        /// Root certificates to trust.
        trust_bundle: PathBuf,
    },
    /// The control plane's `Identity.Certify`.
    ControlPlane {
        /// `https://host:port` (TLS) or `http://host:port` (plaintext) of the control plane's identity service.
        addr: String,
        /// The credential.
        token: Token,
    },
}

/// The credential sent with each CSR.
#[derive(Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Token {
    /// A join token given inline (never shown).
    Join(#[serde(skip)] String),
    /// A join token in a file, re-read for every request.
    JoinFile(PathBuf),
    /// A Kubernetes projected service-account token file, re-read for every request, renewals
    /// included (the kubelet rotates it; the control plane reviews it each time).
    KubernetesFile(PathBuf),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Join(_) => f.write_str("Join(<redacted>)"),
            Token::JoinFile(p) => write!(f, "JoinFile({})", p.display()),
            Token::KubernetesFile(p) => write!(f, "KubernetesFile({})", p.display()),
        }
    }
}

/// Identity settings.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityConfig {
    /// Where the certificate comes from.
    pub source: Source,
    /// The workload's namespace (the certificate's identity).
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
    /// Lowest TLS version between proxies.
    pub min_version: MinVersion,
}

/// What `/config` shows about identity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentityStatus {
    /// The SPIFFE id of the current certificate.
    pub spiffe_id: Option<String>,
    /// Its expiry, in seconds since the Unix epoch.
    pub not_after_unix_seconds: Option<u64>,
    /// Roots in the trust bundle.
    pub trust_roots: usize,
    /// Certificates obtained since start.
    pub certificates: u64,
    /// The last error of the certificate source, if the last attempt failed.
    pub last_error: Option<String>,
}

/// The raw material behind the current credentials, kept to rebuild them when the trust
/// bundle changes. Deliberately not `Debug`: it holds the private key.
struct Material {
    chain: Vec<CertificateDer<'static>>,
    /// The chain as the control plane sent it (PEM), for renewals; empty for file identities.
    chain_pem: Vec<String>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
}

/// The proxy's identity, shared by every connection.
pub struct Identity {
    cfg: IdentityConfig,
    /// The channel to the control plane (Certify), which also presents the current certificate.
    control_plane: Arc<ControlPlane>,
    current: ArcSwapOption<Credentials>,
    material: Mutex<Option<Material>>,
    status: Mutex<IdentityStatus>,
    /// Tells discovery which trust domain's bundle to follow once the first certificate is in.
    trust_domain: tokio::sync::watch::Sender<Option<String>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cfg", &self.cfg)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Describes the identity metrics (call once the recorder is installed).
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        "shoal_identity_certificate_expiry_seconds",
        Unit::Seconds,
        "Seconds until the proxy's certificate expires (0 without one)"
    );
    describe_counter!(
        "shoal_identity_certificates_total",
        "Certificate requests and loads, by result (issued, error)"
    );
}

impl Identity {
    /// Loads file-based credentials now (an error stops start-up), or starts obtaining a
    /// certificate from the control plane in the background.
    /// `control_plane` reaches `Certify` and, from the first certificate on, presents it.
    pub fn start(
        cfg: IdentityConfig,
        control_plane: Arc<ControlPlane>,
    ) -> Result<Arc<Self>, String> {
        let identity = Arc::new(Self {
            cfg: cfg.clone(),
            control_plane,
            current: ArcSwapOption::empty(),
            material: Mutex::new(None),
            status: Mutex::default(),
            trust_domain: tokio::sync::watch::channel(None).0,
        });
        match &cfg.source {
            Source::Files {
                cert,
                key,
                trust_bundle,
            } => {
                let material = files::read(cert, key, trust_bundle)?;
                identity.install(material)?;
                tokio::spawn(files::watch(identity.clone()));
            }
            Source::ControlPlane { .. } => {
                tokio::spawn(certify::run(identity.clone()));
            }
        }
        Ok(identity)
    }

    /// The current credentials, if the proxy has a certificate.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Status for `/config`.
    pub fn status(&self) -> IdentityStatus {
        lock(&self.status).clone()
    }

    /// The settings.
    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    /// Follows the trust domain of the current certificate (`None` until there is one).
    pub fn trust_domain(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.trust_domain.subscribe()
    }

    /// Replaces the credentials with `material`; on error the previous ones stay.
    fn install(&self, material: Material) -> Result<(), String> {
        let creds = Credentials::new(
            material.chain.clone(),
            material.key.clone_key(),
            material.roots.clone(),
            self.cfg.min_version,
        )?;
        let id = creds.id.clone();
        let td = id.trust_domain().to_string();
        {
            let mut s = lock(&self.status);
            s.spiffe_id = Some(id.to_string());
            s.not_after_unix_seconds = creds
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs());
            s.trust_roots = creds.roots;
            s.certificates += 1;
            s.last_error = None;
        }
        let not_after = creds.not_after;
        self.current.store(Some(Arc::new(creds)));
        // A certificate the control plane issued is also the proxy's client certificate towards it.
        // One from files may come from another CA, which the control plane would refuse at the
        // handshake, cutting the proxy off from discovery: those are not presented.
        if matches!(self.cfg.source, Source::ControlPlane { .. }) {
            match rustls::crypto::ring::sign::any_supported_type(&material.key) {
                Ok(key) => self.control_plane.set_client_certificate(Some((
                    Arc::new(rustls::sign::CertifiedKey::new(material.chain.clone(), key)),
                    not_after,
                ))),
                Err(error) => {
                    tracing::warn!(%error, "the workload key cannot sign for the control-plane channel")
                }
            }
        }
        *lock(&self.material) = Some(material);
        self.trust_domain.send_if_modified(|cur| {
            let changed = cur.as_deref() != Some(td.as_str());
            *cur = Some(td);
            changed
        });
        metrics::counter!("shoal_identity_certificates_total", "result" => "issued").increment(1);
        Ok(())
    }

    /// Records a failed attempt to obtain or load a certificate.
    fn failed(&self, error: &str) {
        lock(&self.status).last_error = Some(error.to_string());
        metrics::counter!("shoal_identity_certificates_total", "result" => "error").increment(1);
    }

    /// Replaces the trusted roots (PEM, from discovery), keeping the certificate. An unusable
    /// bundle is refused and the current one kept; the error names the problem.
    pub fn set_trust_bundle(&self, roots_pem: &[String]) -> Result<(), String> {
        let roots = roots_pem
            .iter()
            .map(|pem| parse_cert(pem.as_bytes(), "trust bundle root"))
            .collect::<Result<Vec<_>, _>>()?;
        let guard = lock(&self.material);
        let Some(m) = guard.as_ref() else {
            return Ok(()); // No certificate yet: the bundle arrives with it.
        };
        if m.roots == roots {
            return Ok(());
        }
        let material = Material {
            chain: m.chain.clone(),
            chain_pem: m.chain_pem.clone(),
            key: m.key.clone_key(),
            roots,
        };
        drop(guard);
        self.install(material)
            .inspect(|()| tracing::info!(roots = roots_pem.len(), "trust bundle updated"))
    }

    /// Updates the expiry gauge (housekeeping, once a second).
    pub fn report(&self) {
        let left = self.current().map_or(0.0, |c| c.remaining().as_secs_f64());
        metrics::gauge!("shoal_identity_certificate_expiry_seconds").set(left);
    }
}

/// One PEM certificate.
pub(crate) fn parse_cert(pem: &[u8], what: &str) -> Result<CertificateDer<'static>, String> {
    CertificateDer::from_pem_slice(pem).map_err(|e| format!("{what}: not a PEM certificate: {e}"))
}

/// Every PEM certificate in `pem` (at least one).
pub(crate) fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate found"));
    }
    Ok(certs)
}

/// How long to wait before renewing a certificate valid for `lifetime` from now: ~70 % of it,
/// ±5 % jitter so proxies started together do not renew together.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.65 + fastrand::f64() * 0.10)
}
