//! One authority: a root certificate proxies trust, and the key that signs workload certificates under it
//! (the root's own key when the control plane generated the root; an intermediate's when the operator
//! supplied the root).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};

use x509_parser::pem::Pem;
use x509_parser::time::ASN1Time;

use super::CaError;
use super::record::AuthorityRecord;
use crate::identity::clock::unix_seconds;
use crate::identity::hex;
use crate::identity::spiffe::TrustDomain;

/// Lifetime of a root the control plane generates.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from this long before they are issued, for peers whose clock is behind.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A parsed, ready-to-sign authority.
pub(super) struct Authority {
    /// What is persisted.
    pub record: AuthorityRecord,
    /// SHA-256 of the root's DER, lowercase hex.
    pub fingerprint: String,
    /// Root validity, Unix seconds.
    pub root_validity: (u64, u64),
    /// Expiry of the signing certificate (leaves never outlive it), Unix seconds.
    pub signer_not_after: u64,
    /// Signs workload certificates.
    pub issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A fresh self-signed ECDSA P-256 root for `trust_domain`.
    pub fn generate_root(trust_domain: &TrustDomain, now: SystemTime) -> Result<Self, CaError> {
        let key = KeyPair::generate().map_err(CaError::generate)?;
        let mut params = ca_params(
            &format!("Shoal root CA {} {}", trust_domain, unix_seconds(now)),
            now,
            now + ROOT_LIFETIME,
        )?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let root = params.self_signed(&key).map_err(CaError::generate)?;
        Self::from_record(AuthorityRecord {
            root_pem: root.pem(),
            intermediate_pem: String::new(),
            signing_key_pem: key.serialize_pem(),
            ..AuthorityRecord::default()
        })
    }

    /// An authority under an operator's root (`root_pem` + its PKCS#8 `key_pem`): the control plane makes its
    /// own ECDSA P-256 intermediate, signed by that root and valid as long as it, and signs workloads with
    /// it. The root's key is used only here: it is not stored.
    pub fn under_root(
        root_pem: &str,
        key_pem: &str,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<Self, CaError> {
        let (root_der, root_pem) = first_certificate(root_pem, "root certificate")?;
        let Inspected {
            validity: root_validity,
            public_key: root_key_raw,
            is_ca,
        } = inspect(&root_der, "root certificate")?;
        if !is_ca {
            return Err(CaError::Invalid(
                "root certificate is not a CA certificate (basicConstraints CA:TRUE is missing)"
                    .into(),
            ));
        }
        let now_secs = unix_seconds(now);
        if root_validity.1 <= now_secs || root_validity.0 > now_secs {
            return Err(CaError::Invalid(format!(
                "root certificate is not valid now (valid from {} to {}, Unix seconds)",
                root_validity.0, root_validity.1
            )));
        }
        let root_key = KeyPair::from_pem(key_pem).map_err(|e| {
            CaError::Invalid(format!(
                "root private key is not a PKCS#8 PEM key rcgen can use: {e}"
            ))
        })?;
        if root_key.public_key_raw() != root_key_raw.as_slice() {
            return Err(CaError::Invalid(
                "root private key does not belong to the root certificate (their public keys differ)".into(),
            ));
        }
        let root_issuer = Issuer::from_ca_cert_pem(&root_pem, root_key)
            .map_err(|e| CaError::Invalid(format!("root certificate cannot sign: {e}")))?;
        let key = KeyPair::generate().map_err(CaError::generate)?;
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(root_validity.1);
        let mut params = ca_params(
            &format!("Shoal intermediate CA {} {}", trust_domain, now_secs),
            now,
            not_after,
        )?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.use_authority_key_identifier_extension = true;
        let intermediate = params
            .signed_by(&key, &root_issuer)
            .map_err(CaError::generate)?;
        Self::from_record(AuthorityRecord {
            root_pem,
            intermediate_pem: intermediate.pem(),
            signing_key_pem: key.serialize_pem(),
            ..AuthorityRecord::default()
        })
    }

    /// Parses a stored authority.
    pub fn from_record(record: AuthorityRecord) -> Result<Self, CaError> {
        let (root_der, _) = first_certificate(&record.root_pem, "stored root certificate")?;
        let root_validity = inspect(&root_der, "stored root certificate")?.validity;
        let signer_pem = if record.intermediate_pem.is_empty() {
            &record.root_pem
        } else {
            &record.intermediate_pem
        };
        let (signer_der, _) = first_certificate(signer_pem, "stored signing certificate")?;
        let (_, signer_not_after) = inspect(&signer_der, "stored signing certificate")?.validity;
        let key = KeyPair::from_pem(&record.signing_key_pem)
            .map_err(|e| CaError::Corrupt(format!("stored signing key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(signer_pem, key)
            .map_err(|e| CaError::Corrupt(format!("stored signing certificate: {e}")))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &root_der);
        Ok(Self {
            fingerprint: hex(digest.as_ref()),
            root_validity,
            signer_not_after,
            issuer,
            record,
        })
    }

    /// The intermediates to send with a leaf (none when the root signs).
    pub fn intermediates(&self) -> Vec<String> {
        if self.record.intermediate_pem.is_empty() {
            Vec::new()
        } else {
            vec![self.record.intermediate_pem.clone()]
        }
    }
}

/// Parameters shared by roots and intermediates.
fn ca_params(
    name: &str,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Shoal");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now - BACKDATE, not_after)?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// A random, positive 128-bit serial number.
pub(super) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Generate("the system random generator failed".into()))?;
    // Positive (top bit clear) and never shortened by DER (first byte non-zero).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Sets the validity of `params` (rcgen takes `time`'s dates; x509-parser converts from Unix seconds).
pub(super) fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(), CaError> {
    let date = |time: SystemTime| {
        let secs = i64::try_from(unix_seconds(time)).unwrap_or(i64::MAX);
        ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|_| CaError::Generate(format!("date out of range: {secs}")))
    };
    params.not_before = date(not_before)?;
    params.not_after = date(not_after)?;
    Ok(())
}

/// The DER of the one certificate in `text` (PEM), and that PEM block alone.
pub(super) fn first_certificate(text: &str, what: &str) -> Result<(Vec<u8>, String), CaError> {
    let invalid = |reason: String| CaError::Invalid(format!("{what}: {reason}"));
    let mut blocks = Pem::iter_from_buffer(text.as_bytes());
    let pem = match blocks.next() {
        Some(Ok(pem)) if pem.label == "CERTIFICATE" => pem,
        Some(Ok(pem)) => {
            return Err(invalid(format!(
                "expected a CERTIFICATE PEM block, found {}",
                pem.label
            )));
        }
        Some(Err(e)) => return Err(invalid(format!("not PEM: {e}"))),
        None => return Err(invalid("no PEM certificate found".into())),
    };
    if blocks.next().is_some() {
        return Err(invalid(
            "holds more than one PEM block; give exactly one certificate".into(),
        ));
    }
    let begin = text.find("-----BEGIN").unwrap_or(0);
    let end = text.rfind("-----").map_or(text.len(), |i| i + 5);
    Ok((pem.contents, format!("{}\n", &text[begin..end])))
}

/// What the CA needs to know of a certificate.
struct Inspected {
    /// `notBefore`, `notAfter`, Unix seconds.
    validity: (u64, u64),
    /// The subject public key, as a key pair's `public_key_raw` gives it.
    public_key: Vec<u8>,
    /// basicConstraints CA:TRUE.
    is_ca: bool,
}

/// Validity, subject public key and CA flag of a DER certificate.
fn inspect(der: &[u8], what: &str) -> Result<Inspected, CaError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CaError::Invalid(format!("{what}: not an X.509 certificate: {e}")))?;
    let validity = cert.validity();
    let secs = |t: ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    let is_ca = cert.is_ca();
    let key = cert.public_key().subject_public_key.data.to_vec();
    Ok(Inspected {
        validity: (secs(validity.not_before), secs(validity.not_after)),
        public_key: key,
        is_ca,
    })
}
