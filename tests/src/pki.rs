//! A throwaway PKI for mTLS tests: a mesh CA, workload certificates with SPIFFE ids, and the
//! broken ones the proxy must refuse (self-signed, expired, wrong identity, other root).
//!
//! ```ignore
//! let ca = TestCa::new("mesh");
//! let web = ca.workload("spiffe://cluster.local/ns/default/sa/web");
//! let files = web.write(&dir, &ca); // SHOAL_IDENTITY_* paths
//! ```

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

/// Paths of a workload's identity files, for `SHOAL_IDENTITY_*`.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
}

impl IdentityFiles {
    /// The proxy settings naming these files.
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("SHOAL_IDENTITY_CERT_FILE", self.cert.display().to_string()),
            ("SHOAL_IDENTITY_KEY_FILE", self.key.display().to_string()),
            (
                "SHOAL_IDENTITY_TRUST_BUNDLE_FILE",
                self.trust_bundle.display().to_string(),
            ),
        ]
    }
}

/// The validity of a certificate.
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    /// Valid now (and for years).
    Current,
    /// Expired in 2021.
    Expired,
}

impl TestCa {
    /// A self-signed root named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key pair");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signed root");
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs a CSR (DER) for `spiffe_id`, valid for `lifetime` from now, as a control plane's CA
    /// would (only the CSR's public key is used). Returns the certificate PEM.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        spiffe_id: &str,
        lifetime: std::time::Duration,
    ) -> String {
        let csr = rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .expect("a valid CSR");
        let mut params = leaf_params(spiffe_id, Validity::Current);
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(60)).into();
        params.not_after = (now + lifetime).into();
        params
            .signed_by(&csr.public_key, &self.issuer)
            .expect("signed leaf")
            .pem()
    }

    /// A workload certificate for `spiffe_id`, valid now.
    pub fn workload(&self, spiffe_id: &str) -> Leaf {
        self.issue(spiffe_id, Validity::Current)
    }

    /// A workload certificate for `spiffe_id` with the given validity.
    pub fn issue(&self, spiffe_id: &str, validity: Validity) -> Leaf {
        let key = KeyPair::generate().expect("key pair");
        let params = leaf_params(spiffe_id, validity);
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn leaf_params(spiffe_id: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .subject_alt_names
        .push(SanType::URI(spiffe_id.try_into().expect("URI SAN")));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if let Validity::Expired = validity {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    params
}

impl Leaf {
    /// A self-signed certificate for `spiffe_id` (no CA vouches for it).
    pub fn self_signed(spiffe_id: &str) -> Self {
        let key = KeyPair::generate().expect("key pair");
        let cert = leaf_params(spiffe_id, Validity::Current)
            .self_signed(&key)
            .expect("self-signed leaf");
        Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the certificate, key and `bundle` (root PEMs) into `dir` under `name`.
    pub fn write(&self, dir: &Path, name: &str, bundle: &[&str]) -> IdentityFiles {
        let files = IdentityFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            trust_bundle: dir.join(format!("{name}-bundle.pem")),
        };
        std::fs::write(&files.cert, &self.cert_pem).expect("write cert");
        std::fs::write(&files.key, &self.key_pem).expect("write key");
        std::fs::write(&files.trust_bundle, bundle.concat()).expect("write bundle");
        files
    }
}
