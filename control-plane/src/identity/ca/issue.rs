//! Signing a workload certificate: the CSR contributes only its public key (its signature is checked); the
//! CA writes everything else. One SPIFFE URI SAN, not a CA, digitalSignature + keyEncipherment, serverAuth +
//! clientAuth, valid from [`BACKDATE`] ago for the configured lifetime, never past the signer's expiry.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateSigningRequestDer;

use super::authority::{random_serial, set_validity};
use super::{BACKDATE, Ca, CaError};
use crate::identity::spiffe::WorkloadId;

/// A parsed certificate signing request whose self-signature verified.
pub struct Csr(CertificateSigningRequestParams);

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Csr")
    }
}

impl Csr {
    /// Parses a PEM CSR (`-----BEGIN CERTIFICATE REQUEST-----`) and verifies its signature.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        CertificateSigningRequestParams::from_pem(text)
            .map(Self)
            .map_err(|e| describe("csr_pem", e))
    }

    /// Parses a DER CSR and verifies its signature.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
            .map(Self)
            .map_err(|e| describe("csr_der", e))
    }
}

fn describe(field: &str, error: rcgen::Error) -> String {
    match error {
        rcgen::Error::InvalidCertificationRequestSignature => format!(
            "{field}: the CSR's signature does not verify against its public key (corrupted or altered request)"
        ),
        rcgen::Error::CouldNotParseCertificationRequest => {
            format!("{field}: not a PKCS#10 certificate signing request")
        }
        rcgen::Error::UnsupportedExtension => format!(
            "{field}: the CSR requests an extension the CA does not read; send a CSR with no extensions (subject and SANs are ignored anyway)"
        ),
        other => format!("{field}: unusable CSR: {other}"),
    }
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf first, then any intermediate, PEM.
    pub chain_pem: Vec<String>,
    /// The roots to trust, PEM (active first).
    pub trust_bundle_pem: Vec<String>,
    /// Leaf expiry, Unix seconds.
    pub not_after: u64,
    /// The SPIFFE id in the certificate.
    pub spiffe_id: String,
    /// SHA-256 fingerprint of the root it chains to.
    pub root_fingerprint: String,
}

/// The subject's organizational unit of a certificate granted on a Kubernetes service-account token (or renewed
/// from one): its renewal with the certificate alone is accepted only while the API server cannot review tokens
/// (`identity::certify`). The subject is free in an X.509-SVID (peers read the SPIFFE id from the SAN).
pub const KUBERNETES_MARK: &str = "shoal:kubernetes-token";

impl Ca {
    /// Signs a certificate for `id` over the CSR's public key, with the active authority; `kubernetes`: granted
    /// on a Kubernetes service-account token, so marked with [`KUBERNETES_MARK`].
    pub fn issue(&self, csr: &Csr, id: &WorkloadId, kubernetes: bool) -> Result<Issued, CaError> {
        let authorities = self.snapshot();
        let active = authorities.active();
        let spiffe_id = id.spiffe_id(&self.settings.trust_domain);
        let now = self.clock.now();
        let not_after = std::cmp::min(
            now + self.settings.cert_ttl,
            SystemTime::UNIX_EPOCH + Duration::from_secs(active.signer_not_after),
        );
        let mut request = csr.0.clone();
        let params = &mut request.params;
        // Everything the CSR asked for is dropped: the CA decides the whole certificate.
        params.distinguished_name = DistinguishedName::new();
        if kubernetes {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, KUBERNETES_MARK);
        }
        params.subject_alt_names =
            vec![SanType::URI(spiffe_id.clone().try_into().map_err(|e| {
                CaError::Generate(format!("SPIFFE id {spiffe_id}: {e}"))
            })?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.name_constraints = None;
        params.crl_distribution_points = Vec::new();
        params.custom_extensions = Vec::new();
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(params, now - BACKDATE, not_after)?;
        let leaf = request
            .signed_by(&active.issuer)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let mut chain_pem = vec![leaf.pem()];
        chain_pem.extend(active.intermediates());
        Ok(Issued {
            chain_pem,
            trust_bundle_pem: authorities.roots_pem(),
            not_after: crate::identity::clock::unix_seconds(not_after),
            spiffe_id,
            root_fingerprint: active.fingerprint.clone(),
        })
    }
}
