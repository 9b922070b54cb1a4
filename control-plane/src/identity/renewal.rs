//! Renewal: a proxy proves it holds a certificate this CA issued, and that certificate's key, to get
//! the next one. Join tokens are for joining; a running workload renews with what it already is (as
//! SPIRE agents and Istio's sidecars do), so a single-use or expired token never strands it.

use std::sync::Arc;

use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use shoal_proto::v1;

use super::ca::KUBERNETES_MARK;
use super::credentials::Refusal;
use super::spiffe::{TrustDomain, WorkloadId, spiffe_id_of};

/// Checks `renewal` for a CSR whose DER is `csr_der`: the chain leads to one of `roots_pem` and is
/// unexpired, its leaf carries exactly `requested`, and `csr_signature` is the leaf key's signature
/// over the CSR. Returns the identity proven, and whether the certificate was granted on a Kubernetes
/// service-account token ([`KUBERNETES_MARK`] in its subject).
pub fn verify(
    renewal: &v1::Renewal,
    csr_der: &[u8],
    requested: &WorkloadId,
    roots_pem: &[String],
    trust_domain: &TrustDomain,
) -> Result<(WorkloadId, bool), Refusal> {
    let malformed = |m: String| Refusal::Malformed(format!("renewal: {m}"));
    let chain = renewal
        .certificate_chain_pem
        .iter()
        .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(format!("certificate_chain_pem: not PEM certificates: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| malformed("certificate_chain_pem: empty".into()))?;
    let mut roots = RootCertStore::empty();
    for root in roots_pem {
        if let Ok(der) = CertificateDer::from_pem_slice(root.as_bytes()) {
            let _ = roots.add(der);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| Refusal::Unavailable(format!("renewal: no usable root: {e}")))?;
    verifier
        .verify_client_cert(leaf, &chain[1..], UnixTime::now())
        .map_err(|e| {
            let text = e.to_string();
            if text.contains("expired") {
                Refusal::Expired(format!(
                    "renewal: the certificate has expired ({text}); use a join token"
                ))
            } else {
                Refusal::Unknown(format!(
                    "renewal: the certificate was not issued by this CA's current roots ({text})"
                ))
            }
        })?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| malformed(format!("cannot parse the certificate: {e}")))?;
    let uri = spiffe_id_of(leaf.as_ref())
        .ok_or_else(|| malformed("the certificate carries no single SPIFFE id".into()))?;
    if uri != requested.spiffe_id(trust_domain) {
        let granted = granted_identity(&uri).ok_or_else(|| {
            malformed(format!(
                "the certificate's identity {uri} is not a workload identity"
            ))
        })?;
        return Err(Refusal::NotGranted {
            what: "the renewed certificate".into(),
            granted,
            requested: requested.clone(),
        });
    }
    let key = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(csr_der, &renewal.csr_signature).map_err(|_| {
        malformed(
            "csr_signature is not the certificate key's ECDSA P-256 signature of the CSR".into(),
        )
    })?;
    let kubernetes = (cert.subject().iter_organizational_unit())
        .any(|ou| ou.as_str().is_ok_and(|ou| ou == KUBERNETES_MARK));
    Ok((requested.clone(), kubernetes))
}

/// The namespace and service account in `spiffe://<td>/ns/<ns>/sa/<sa>`.
fn granted_identity(uri: &str) -> Option<WorkloadId> {
    let path = uri.strip_prefix("spiffe://")?.split_once('/')?.1;
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["ns", ns, "sa", sa] => WorkloadId::new(ns, sa).ok(),
        _ => None,
    }
}
