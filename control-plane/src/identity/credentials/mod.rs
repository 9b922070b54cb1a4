//! Credentials a proxy presents to `Certify`, behind one trait: join tokens (standalone) and Kubernetes
//! projected service-account tokens (verified with the TokenReview API).

mod join_tokens;
mod kubernetes;
mod shared_tokens;

pub use join_tokens::{JoinTokenInfo, JoinTokens, NewJoinToken, TokenError};
pub use kubernetes::{KubernetesTokens, TokenReview, TokenReviewResult};

use super::spiffe::{TrustDomain, WorkloadId};

/// Why a credential does not get the caller the identity it asked for. Each maps to one gRPC code and one
/// bounded `reason` label of `shoal_cp_certificates_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The credential cannot be a valid one (wrong format).
    #[error("{0}")]
    Malformed(String),
    /// No such token.
    #[error("{0}")]
    Unknown(String),
    /// The token's lifetime is over.
    #[error("{0}")]
    Expired(String),
    /// A limited-use token was used up.
    #[error("{0}")]
    Exhausted(String),
    /// The token was revoked.
    #[error("{0}")]
    Revoked(String),
    /// The credential is valid but proves another identity than the one requested.
    #[error("{what} grants {granted}, not {requested}")]
    NotGranted {
        /// What the credential is, e.g. `join token 3f2a…`.
        what: String,
        /// The identity the credential proves.
        granted: WorkloadId,
        /// The identity requested.
        requested: WorkloadId,
    },
    /// The verifier cannot answer now (the TokenReview API is down, the store failed).
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    /// The `reason` label of `shoal_cp_certificates_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "invalid_credential",
            Self::Unknown(_) => "unknown_credential",
            Self::Expired(_) => "expired_credential",
            Self::Exhausted(_) => "exhausted_credential",
            Self::Revoked(_) => "revoked_credential",
            Self::NotGranted { .. } => "identity_not_granted",
            Self::Unavailable(_) => "verifier_unavailable",
        }
    }

    /// The gRPC status `Certify` answers with (the codes identity.proto documents), identities written as
    /// SPIFFE ids of `trust_domain`.
    pub fn status(&self, trust_domain: &TrustDomain) -> tonic::Status {
        match self {
            Self::NotGranted {
                what,
                granted,
                requested,
            } => tonic::Status::permission_denied(format!(
                "{what} grants {}, not {}",
                granted.spiffe_id(trust_domain),
                requested.spiffe_id(trust_domain)
            )),
            Self::Unavailable(_) => tonic::Status::unavailable(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

/// What a verified credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The identity the certificate is issued for.
    pub identity: WorkloadId,
    /// The pod a Kubernetes projected token is bound to (the TokenReview's `status.user.extra`), logged with
    /// the issuance so a certificate can be traced to the pod that asked; `None` for other credentials.
    pub pod: Option<BoundPod>,
    /// Granted on a Kubernetes service-account token (or the renewal of a certificate that was): the
    /// certificate is marked so (`ca::KUBERNETES_MARK`), and its renewal by certificate alone is accepted only
    /// while the API server cannot review tokens (`identity::certify`).
    pub kubernetes: bool,
}

impl Granted {
    /// A grant of `identity` not bound to a pod, on another credential than a Kubernetes token.
    pub fn identity(identity: WorkloadId) -> Self {
        Self {
            identity,
            pod: None,
            kubernetes: false,
        }
    }
}

/// The pod a projected service-account token was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    /// `authentication.kubernetes.io/pod-name`.
    pub name: String,
    /// `authentication.kubernetes.io/pod-uid` (empty if the API server did not say).
    pub uid: String,
}

/// Proves a workload's identity from a credential.
#[tonic::async_trait]
pub trait CredentialVerifier: Send + Sync {
    /// Checks `credential` and that it grants `requested`; returns what it proves. A verifier that counts
    /// uses consumes one (durably) only when everything else passed.
    async fn verify(&self, credential: &str, requested: &WorkloadId) -> Result<Granted, Refusal>;

    /// Whether this verifier could not check a credential lately because what it asks is unreachable (the
    /// TokenReview API): then a certificate it granted may be renewed with the certificate alone.
    fn unavailable_lately(&self) -> bool {
        false
    }
}
