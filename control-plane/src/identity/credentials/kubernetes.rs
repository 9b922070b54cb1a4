//! Kubernetes projected service-account tokens, verified through the TokenReview API. The HTTP client that
//! calls the API server belongs to the Kubernetes integration; here is the verifier over a [`TokenReview`]
//! trait object, so it is tested with a fake.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BoundPod, CredentialVerifier, Granted, Refusal};
use crate::identity::spiffe::WorkloadId;

/// What the API server answered to a TokenReview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReviewResult {
    /// `status.authenticated`.
    pub authenticated: bool,
    /// `status.user.username`, e.g. `system:serviceaccount:shop:web`.
    pub username: String,
    /// `status.audiences` the token was accepted for.
    pub audiences: Vec<String>,
    /// `status.error`, when not authenticated.
    pub error: String,
    /// `status.user.extra["authentication.kubernetes.io/pod-name"]`: the pod a projected token is bound to
    /// (empty for tokens not bound to a pod).
    pub pod_name: String,
    /// `status.user.extra["authentication.kubernetes.io/pod-uid"]`.
    pub pod_uid: String,
}

/// Calls the Kubernetes TokenReview API (`authentication.k8s.io/v1`).
#[tonic::async_trait]
pub trait TokenReview: Send + Sync {
    /// Reviews `token` for `audiences`; `Err` when the API cannot be reached (the message says why).
    async fn review(&self, token: &str, audiences: &[String]) -> Result<TokenReviewResult, String>;
}

/// Verifies Kubernetes service-account tokens: authenticated, for our audience, and naming the requested
/// service account.
#[derive(Clone)]
pub struct KubernetesTokens {
    review: Arc<dyn TokenReview>,
    audiences: Vec<String>,
    /// When a review last failed because the API could not answer, Unix seconds; 0 once one answered again.
    unavailable_at: Arc<AtomicU64>,
}

/// How long after a review the API could not answer a certificate granted on a token may be renewed with the
/// certificate alone: the proxy falls back to that right after its token attempt was answered UNAVAILABLE.
pub const UNAVAILABLE_WINDOW: Duration = Duration::from_secs(120);

impl KubernetesTokens {
    /// A verifier asking `review`, requiring one of `audiences` (e.g. `shoal`) in the accepted token.
    pub fn new(review: Arc<dyn TokenReview>, audiences: Vec<String>) -> Self {
        Self {
            review,
            audiences,
            unavailable_at: Arc::new(AtomicU64::new(0)),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tonic::async_trait]
impl CredentialVerifier for KubernetesTokens {
    async fn verify(&self, credential: &str, requested: &WorkloadId) -> Result<Granted, Refusal> {
        if credential.trim().is_empty() {
            return Err(Refusal::Malformed(
                "kubernetes_service_account_token is empty".into(),
            ));
        }
        let result = match self.review.review(credential, &self.audiences).await {
            Ok(result) => {
                self.unavailable_at.store(0, Ordering::Relaxed);
                result
            }
            Err(e) => {
                self.unavailable_at.store(unix_now(), Ordering::Relaxed);
                return Err(Refusal::Unavailable(format!(
                    "Kubernetes TokenReview failed: {e}"
                )));
            }
        };
        if !result.authenticated {
            let why = if result.error.is_empty() {
                "not authenticated"
            } else {
                &result.error
            };
            // The API server says "expired" in its error for expired tokens, and names the audiences for a
            // token requested for others (a pod's default token, not the projected one): keep both apart.
            return Err(if why.contains("expired") {
                Refusal::Expired(format!("Kubernetes service-account token rejected: {why}"))
            } else if why.contains("audience") {
                Refusal::Malformed(format!(
                    "Kubernetes service-account token rejected: it is not for the audience {:?} \
                     (SHOAL_CP_KUBERNETES_AUDIENCES; the proxy must use a projected token requested for it): {why}",
                    self.audiences
                ))
            } else {
                Refusal::Unknown(format!("Kubernetes service-account token rejected: {why}"))
            });
        }
        if !self.audiences.is_empty()
            && !result.audiences.iter().any(|a| self.audiences.contains(a))
        {
            return Err(Refusal::Malformed(format!(
                "Kubernetes service-account token is for audiences {:?}, expected one of {:?}",
                result.audiences, self.audiences
            )));
        }
        let parts: Vec<&str> = result.username.split(':').collect();
        let granted = match parts.as_slice() {
            ["system", "serviceaccount", ns, sa] => WorkloadId::new(ns, sa).ok(),
            _ => None,
        };
        let Some(granted) = granted else {
            return Err(Refusal::Malformed(format!(
                "Kubernetes token authenticates {:?}, not a service account (system:serviceaccount:<ns>:<sa>)",
                result.username
            )));
        };
        if granted != *requested {
            return Err(Refusal::NotGranted {
                what: "Kubernetes service-account token".into(),
                granted,
                requested: requested.clone(),
            });
        }
        // The pod is logged with the issuance, not checked: the certificate names the service account only,
        // and every pod of it is the same identity to its peers.
        let pod = (!result.pod_name.is_empty()).then_some(BoundPod {
            name: result.pod_name,
            uid: result.pod_uid,
        });
        Ok(Granted {
            identity: granted,
            pod,
            kubernetes: true,
        })
    }

    fn unavailable_lately(&self) -> bool {
        let at = self.unavailable_at.load(Ordering::Relaxed);
        at != 0 && unix_now().saturating_sub(at) <= UNAVAILABLE_WINDOW.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Result<TokenReviewResult, String>);

    #[tonic::async_trait]
    impl TokenReview for Fake {
        async fn review(
            &self,
            token: &str,
            audiences: &[String],
        ) -> Result<TokenReviewResult, String> {
            assert_eq!(token, "jwt");
            assert_eq!(audiences, ["shoal"]);
            self.0.clone()
        }
    }

    fn verifier(result: Result<TokenReviewResult, String>) -> KubernetesTokens {
        KubernetesTokens::new(Arc::new(Fake(result)), vec!["shoal".into()])
    }

    fn ok(username: &str) -> Result<TokenReviewResult, String> {
        Ok(TokenReviewResult {
            authenticated: true,
            username: username.into(),
            audiences: vec!["shoal".into()],
            error: String::new(),
            pod_name: "web-0".into(),
            pod_uid: "0b5e".into(),
        })
    }

    /// A review the API could not answer is remembered (a certificate granted on a token may then be renewed
    /// with the certificate alone); one it answered, even with a refusal, ends that.
    #[tokio::test]
    async fn an_unanswered_review_is_remembered_until_one_is_answered() {
        let web = WorkloadId::new("shop", "web").unwrap();
        let tokens = verifier(Err("connection refused".into()));
        assert!(!tokens.unavailable_lately());
        let refused = tokens.verify("jwt", &web).await.unwrap_err();
        assert_eq!(refused.reason(), "verifier_unavailable");
        assert!(tokens.unavailable_lately());
        let answered = KubernetesTokens {
            review: Arc::new(Fake(ok("system:serviceaccount:shop:web"))),
            ..tokens.clone()
        };
        assert!(answered.verify("jwt", &web).await.unwrap().kubernetes);
        assert!(!tokens.unavailable_lately(), "the same state, shared");
    }

    #[tokio::test]
    async fn service_account_tokens_grant_their_service_account_only() {
        let web = WorkloadId::new("shop", "web").unwrap();
        let admin = WorkloadId::new("shop", "admin").unwrap();
        let granted = verifier(ok("system:serviceaccount:shop:web"))
            .verify("jwt", &web)
            .await;
        let granted = granted.unwrap();
        assert_eq!(granted.identity, web);
        let pod = granted.pod.unwrap();
        assert_eq!((pod.name.as_str(), pod.uid.as_str()), ("web-0", "0b5e"));
        // A token bound to no pod (a legacy Secret-based one) grants the same, without a pod.
        let mut unbound = ok("system:serviceaccount:shop:web").unwrap();
        (unbound.pod_name, unbound.pod_uid) = (String::new(), String::new());
        let granted = verifier(Ok(unbound)).verify("jwt", &web).await.unwrap();
        assert_eq!(
            granted,
            Granted {
                kubernetes: true,
                ..Granted::identity(web.clone())
            }
        );
        let refused = verifier(ok("system:serviceaccount:shop:web"))
            .verify("jwt", &admin)
            .await;
        assert_eq!(refused.unwrap_err().reason(), "identity_not_granted");
        let user = verifier(ok("alice")).verify("jwt", &web).await.unwrap_err();
        assert!(user.to_string().contains("not a service account"), "{user}");

        let mut wrong_audience = ok("system:serviceaccount:shop:web").unwrap();
        wrong_audience.audiences = vec!["https://kubernetes.default.svc".into()];
        let refused = verifier(Ok(wrong_audience))
            .verify("jwt", &web)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("audiences"), "{refused}");

        let expired = TokenReviewResult {
            authenticated: false,
            error: "token has expired".into(),
            ..ok("").unwrap()
        };
        let refused = verifier(Ok(expired)).verify("jwt", &web).await.unwrap_err();
        assert_eq!(refused.reason(), "expired_credential");
        let not_ours = TokenReviewResult {
            authenticated: false,
            error: "[invalid bearer token, token audiences [\"api\"] is invalid for the target audiences [\"shoal\"]]".into(),
            ..ok("").unwrap()
        };
        let refused = verifier(Ok(not_ours))
            .verify("jwt", &web)
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), "invalid_credential");
        assert!(
            refused
                .to_string()
                .contains("SHOAL_CP_KUBERNETES_AUDIENCES"),
            "{refused}"
        );
        let down = verifier(Err("connection refused".into()))
            .verify("jwt", &web)
            .await
            .unwrap_err();
        assert_eq!(
            down.status(&Default::default()).code(),
            tonic::Code::Unavailable
        );
    }
}
