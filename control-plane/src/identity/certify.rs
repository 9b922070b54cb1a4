//! `shoal.v1.Identity.Certify`: a proxy's CSR and credential in, a workload certificate out. Checks run
//! cheapest first and the credential last, so a garbage request never consumes a token use.

use std::sync::Arc;

use shoal_proto::v1;
use shoal_proto::v1::identity_server::{Identity as IdentityRpc, IdentityServer};
use tonic::{Request, Response, Status};

use super::ca::{Ca, Csr};
use super::credentials::{CredentialVerifier, Granted, Refusal};
use super::metrics;
use super::spiffe::WorkloadId;

/// The Identity service: the CA plus the verifier of each credential kind.
#[derive(Clone)]
pub struct CertifyService {
    ca: Arc<Ca>,
    join_tokens: Arc<dyn CredentialVerifier>,
    /// `None` in standalone mode: Kubernetes tokens are refused with a message saying so.
    kubernetes: Option<Arc<dyn CredentialVerifier>>,
}

impl CertifyService {
    /// The service over `ca`, verifying join tokens with `join_tokens` and Kubernetes tokens with
    /// `kubernetes` (when configured).
    pub fn new(
        ca: Arc<Ca>,
        join_tokens: Arc<dyn CredentialVerifier>,
        kubernetes: Option<Arc<dyn CredentialVerifier>>,
    ) -> Self {
        Self {
            ca,
            join_tokens,
            kubernetes,
        }
    }

    /// The generated server wrapper, ready to add to a tonic router.
    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }

    async fn certify(&self, req: v1::CertifyRequest) -> Result<v1::CertifyResponse, Refused> {
        let requested = WorkloadId::new(&req.namespace, &req.service_account)
            .map_err(|e| Refused::invalid("invalid_request", e))?;
        let csr = match &req.csr {
            Some(v1::certify_request::Csr::CsrPem(pem)) => Csr::from_pem(pem),
            Some(v1::certify_request::Csr::CsrDer(der)) => Csr::from_der(der),
            None => Err("csr: required: a PKCS#10 CSR in csr_pem or csr_der".to_owned()),
        };
        let csr = csr.map_err(|e| Refused::invalid("invalid_csr", e))?;
        if let Some(v1::certify_request::Credential::Renewal(renewal)) = &req.credential {
            let der = csr_der(&req).map_err(|e| Refused::invalid("invalid_csr", e))?;
            let roots = self.ca.roots_pem();
            let td = self.ca.trust_domain();
            let (granted, kubernetes) = super::renewal::verify(
                renewal, &der, &requested, &roots, td,
            )
            .map_err(|refusal| Refused {
                reason: refusal.reason(),
                status: refusal.status(td),
            })?;
            // A certificate granted on a Kubernetes token is renewed with a token, so a revoked service account
            // or a deleted pod ends it (a stolen certificate and key cannot renew themselves for ever); with the
            // certificate alone only while the API server cannot review tokens, lest an outage expire the mesh.
            if kubernetes
                && let Some(tokens) = &self.kubernetes
                && !tokens.unavailable_lately()
            {
                return Err(Refused::unauthenticated(
                    "token_required",
                    "renewal: this certificate was granted on a Kubernetes service-account token: renew with \
                     kubernetes_service_account_token (a certificate alone renews it only while the API server \
                     cannot review tokens)",
                ));
            }
            let granted = Granted {
                kubernetes,
                ..Granted::identity(granted)
            };
            return self.issue(csr, granted).await;
        }
        let (verifier, credential) = match &req.credential {
            Some(v1::certify_request::Credential::JoinToken(token)) => {
                (self.join_tokens.clone(), token.as_str())
            }
            Some(v1::certify_request::Credential::KubernetesServiceAccountToken(token)) => {
                let Some(kubernetes) = &self.kubernetes else {
                    return Err(Refused::unauthenticated(
                        "invalid_credential",
                        "kubernetes_service_account_token: this control plane does not verify Kubernetes tokens (standalone mode); use a join token",
                    ));
                };
                (kubernetes.clone(), token.as_str())
            }
            Some(v1::certify_request::Credential::Renewal(_)) => unreachable!("handled above"),
            None => {
                return Err(Refused::unauthenticated(
                    "missing_credential",
                    "credential: required: a join_token, a kubernetes_service_account_token or a renewal",
                ));
            }
        };
        let granted =
            (verifier.verify(credential, &requested).await).map_err(|refusal| Refused {
                reason: refusal.reason(),
                status: refusal.status(self.ca.trust_domain()),
            })?;
        self.issue(csr, granted).await
    }

    /// Signs `csr` for `granted`.
    async fn issue(&self, csr: Csr, granted: Granted) -> Result<v1::CertifyResponse, Refused> {
        let (ca, csr_id, kubernetes) = (self.ca.clone(), granted.identity, granted.kubernetes);
        // Signing is a few hundred microseconds of ECDSA: off the async workers with the rest of the CA.
        let issued = tokio::task::spawn_blocking(move || ca.issue(&csr, &csr_id, kubernetes))
            .await
            .map_err(|e| Refused::unavailable(format!("signing failed: {e}")))?
            .map_err(|e| Refused::unavailable(format!("signing failed: {e}")))?;
        let (pod, pod_uid) = granted.pod.map(|p| (p.name, p.uid)).unzip();
        tracing::info!(
            spiffe_id = %issued.spiffe_id,
            pod,
            pod_uid,
            not_after = issued.not_after,
            root = %issued.root_fingerprint,
            "workload certificate issued"
        );
        Ok(v1::CertifyResponse {
            certificate_chain_pem: issued.chain_pem,
            trust_bundle_pem: issued.trust_bundle_pem,
            not_after_unix_seconds: issued.not_after,
            spiffe_id: issued.spiffe_id,
        })
    }
}

/// The DER bytes of the request's CSR (what a renewal signs).
fn csr_der(req: &v1::CertifyRequest) -> Result<Vec<u8>, String> {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject;
    match &req.csr {
        Some(v1::certify_request::Csr::CsrDer(der)) => Ok(der.clone()),
        Some(v1::certify_request::Csr::CsrPem(pem)) => {
            CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
                .map(|d| d.as_ref().to_vec())
                .map_err(|e| format!("csr_pem: {e}"))
        }
        None => Err("csr: required".into()),
    }
}

/// A refused `Certify`: the gRPC answer and the metric's reason.
struct Refused {
    reason: &'static str,
    status: Status,
}

impl Refused {
    fn invalid(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            status: Status::invalid_argument(message),
        }
    }

    fn unauthenticated(reason: &'static str, message: &str) -> Self {
        Self {
            reason,
            status: Status::unauthenticated(message),
        }
    }

    fn unavailable(message: String) -> Self {
        Self {
            reason: Refusal::Unavailable(String::new()).reason(),
            status: Status::unavailable(message),
        }
    }
}

#[tonic::async_trait]
impl IdentityRpc for CertifyService {
    async fn certify(
        &self,
        request: Request<v1::CertifyRequest>,
    ) -> Result<Response<v1::CertifyResponse>, Status> {
        let peer = crate::server::PeerInfo::of(&request).address();
        let req = request.into_inner();
        // Logged as requested, never the credential.
        let (namespace, service_account) = (req.namespace.clone(), req.service_account.clone());
        match self.certify(req).await {
            Ok(response) => {
                metrics::issued();
                Ok(Response::new(response))
            }
            Err(refused) => {
                metrics::refused(refused.reason);
                tracing::warn!(
                    %peer,
                    namespace,
                    service_account,
                    reason = refused.reason,
                    error = refused.status.message(),
                    "workload certificate refused"
                );
                Err(refused.status)
            }
        }
    }
}

#[cfg(test)]
#[path = "certify_tests.rs"]
mod tests;
