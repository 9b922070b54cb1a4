//! Certificates from the control plane's CA (`shoal.v1.Identity/Certify`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use shoal_proto::v1;
use v1::certify_request::{Credential, Csr};

use super::{Identity, Material, Source, Token, parse_cert, parse_certs, renew_after};

/// First retry delay after a failed request; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Deadline of one Certify call (connect included).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Obtains and renews the certificate for the life of the process.
pub(super) async fn run(identity: Arc<Identity>) {
    let Source::ControlPlane { addr, token } = identity.cfg.source.clone() else {
        return;
    };
    let mut retry = RETRY_MIN;
    loop {
        let attempt = tokio::time::timeout(CALL_TIMEOUT, request(&identity, &addr, &token))
            .await
            .unwrap_or_else(|_| Err(format!("no answer from {addr} within {CALL_TIMEOUT:?}")));
        let result =
            attempt.and_then(|(material, lifetime)| identity.install(material).map(|()| lifetime));
        match result {
            Ok(lifetime) => {
                retry = RETRY_MIN;
                let wait = renew_after(lifetime);
                let id = identity.status().spiffe_id.unwrap_or_default();
                tracing::info!(identity = %id, valid_for = ?lifetime, renew_in = ?wait, "workload certificate issued");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                identity.failed(&e);
                let left = identity.current().map(|c| c.remaining());
                let wait = retry.mul_f64(0.5 + fastrand::f64());
                tracing::warn!(addr = %addr, error = %e, current_certificate_valid_for = ?left, retry_in = ?wait, "cannot obtain a workload certificate; check SHOAL_IDENTITY_TOKEN and the control plane");
                tokio::time::sleep(wait).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One Certify call with a fresh key pair; returns the material and the certificate's lifetime.
async fn request(
    identity: &Identity,
    addr: &str,
    token: &Token,
) -> Result<(Material, Duration), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a key pair: {e}"))?;
    // The CA sets subject and SANs from the verified identity; the CSR only carries the key.
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| format!("cannot build the CSR: {e}"))?;
    // A proxy with a join token renews with what it is (its current certificate, and proof it holds the key):
    // the token is for joining, and may be single-use or expired by now. A Kubernetes token is the API
    // server's word that the pod and its service account still exist, so it is sent at every certification,
    // renewals included (the kubelet keeps the file fresh): a deleted pod or service account stops renewing.
    let kubernetes = matches!(token, Token::KubernetesFile(_));
    if !kubernetes && let Some(renewal) = renewal(identity, csr.der()) {
        match call(identity, addr, &csr, Credential::Renewal(renewal)).await {
            Ok(resp) => return material(resp, key),
            Err(e) => {
                tracing::info!(error = %e.message, "renewal with the current certificate refused; trying the token")
            }
        }
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("cannot read the token file {}: {e}", p.display()))
    };
    let credential = match token {
        Token::Join(t) => Credential::JoinToken(t.clone()),
        Token::JoinFile(p) => Credential::JoinToken(read(p)?),
        Token::KubernetesFile(p) => Credential::KubernetesServiceAccountToken(read(p)?),
    };
    match call(identity, addr, &csr, credential).await {
        Ok(resp) => material(resp, key),
        // The control plane could not ask the API server (down, RBAC): not a verdict on the token, so a
        // running proxy renews with its certificate rather than let the mesh's certificates run out with
        // the API server. A refused token (revoked, pod deleted) is a verdict: no fallback.
        Err(Refused {
            code: tonic::Code::Unavailable,
            message,
        }) if kubernetes => {
            let Some(renewal) = renewal(identity, csr.der()) else {
                return Err(message);
            };
            tracing::info!(error = %message, "the control plane cannot verify the Kubernetes token now; renewing with the current certificate");
            let resp = call(identity, addr, &csr, Credential::Renewal(renewal))
                .await
                .map_err(|e| {
                    format!(
                        "{message}; renewal with the current certificate: {}",
                        e.message
                    )
                })?;
            material(resp, key)
        }
        Err(e) => Err(e.message),
    }
}

/// The renewal credential: the current chain, and the current key's signature over the new CSR;
/// `None` without a current, unexpired certificate.
fn renewal(identity: &Identity, csr_der: &[u8]) -> Option<v1::Renewal> {
    let current = identity.current()?;
    if current.remaining().is_zero() {
        return None;
    }
    let guard = super::lock(&identity.material);
    let m = guard.as_ref()?;
    let key = rustls::crypto::ring::sign::any_ecdsa_type(&m.key).ok()?;
    let signer = key.choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])?;
    let csr_signature = signer.sign(csr_der).ok()?;
    if m.chain_pem.is_empty() {
        return None;
    }
    Some(v1::Renewal {
        certificate_chain_pem: m.chain_pem.clone(),
        csr_signature,
    })
}

/// Why a `Certify` call failed: the gRPC code (`Unknown` when no call was made) and the message for `/config`.
struct Refused {
    code: tonic::Code,
    message: String,
}

impl From<String> for Refused {
    fn from(message: String) -> Self {
        Self {
            code: tonic::Code::Unknown,
            message,
        }
    }
}

/// One `Certify` call.
async fn call(
    identity: &Identity,
    addr: &str,
    csr: &rcgen::CertificateSigningRequest,
    credential: Credential,
) -> Result<v1::CertifyResponse, Refused> {
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .map_err(|e| format!("invalid identity address {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(2));
    let channel = identity.control_plane.connect(endpoint).await?;
    let response = v1::identity_client::IdentityClient::new(channel)
        .certify(v1::CertifyRequest {
            csr: Some(Csr::CsrDer(csr.der().to_vec())),
            credential: Some(credential),
            namespace: identity.cfg.namespace.clone(),
            service_account: identity.cfg.service_account.clone(),
        })
        .await
        .map_err(|s| Refused {
            code: s.code(),
            message: format!("Certify refused ({:?}): {}", s.code(), s.message()),
        })
        .map(tonic::Response::into_inner)?;
    // Roots that came from the verified control plane: it may present a certificate from any of them.
    if let Err(error) = (identity.control_plane).set_trust_bundle(&response.trust_bundle_pem) {
        tracing::warn!(%error, "the trust bundle Certify returned is unusable for the control-plane channel");
    }
    Ok(response)
}

/// The material of an issued certificate with its `key`, and the certificate's lifetime.
fn material(
    resp: v1::CertifyResponse,
    key: rcgen::KeyPair,
) -> Result<(Material, Duration), String> {
    let chain = resp
        .certificate_chain_pem
        .iter()
        .map(|pem| parse_cert(pem.as_bytes(), "issued certificate"))
        .collect::<Result<Vec<_>, _>>()?;
    let roots = parse_certs(resp.trust_bundle_pem.join("\n").as_bytes(), "trust bundle")?;
    let leaf = chain
        .first()
        .ok_or("the control plane returned no certificate")?;
    let lifetime = crate::tls::not_after(leaf)?
        .duration_since(SystemTime::now())
        .map_err(|_| "the control plane returned an expired certificate".to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let material = Material {
        chain,
        chain_pem: resp.certificate_chain_pem,
        key,
        roots,
    };
    Ok((material, lifetime))
}
