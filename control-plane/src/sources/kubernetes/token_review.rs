//! The TokenReview client: asks the API server (`POST /apis/authentication.k8s.io/v1/tokenreviews`) whether a
//! proxy's projected service-account token is valid, through the client the Kubernetes source built (its
//! token, CA and URL). The verdict is judged by [`KubernetesTokens`](crate::identity::credentials::KubernetesTokens).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview as Review, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::identity::credentials::{TokenReview, TokenReviewResult};

/// The longest one review may take: a proxy's `Certify` call waits for it.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// [`TokenReview`] over the Kubernetes API.
#[derive(Clone)]
pub struct KubeTokenReview {
    client: Client,
}

impl KubeTokenReview {
    /// A reviewer sending with `client` (it needs `create` on `tokenreviews.authentication.k8s.io`).
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[tonic::async_trait]
impl TokenReview for KubeTokenReview {
    async fn review(&self, token: &str, audiences: &[String]) -> Result<TokenReviewResult, String> {
        let review = Review {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(audiences.to_vec()),
            },
            ..Default::default()
        };
        let api: Api<Review> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| format!("the API server did not answer within {REVIEW_TIMEOUT:?}"))?
                .map_err(explain)?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        // Projected tokens name the pod they are bound to in the user's extra fields (one value each).
        let extra = |key: &str| {
            (user.extra.as_ref())
                .and_then(|extra| extra.get(key))
                .and_then(|values| values.first().cloned())
                .unwrap_or_default()
        };
        Ok(TokenReviewResult {
            authenticated: status.authenticated.unwrap_or(false),
            pod_name: extra("authentication.kubernetes.io/pod-name"),
            pod_uid: extra("authentication.kubernetes.io/pod-uid"),
            username: user.username.unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            error: status.error.unwrap_or_default(),
        })
    }
}

/// What to check when the review itself failed (not the token: that is a `TokenReview` answer).
fn explain(error: kube::Error) -> String {
    use crate::server::config::env;
    match &error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the API server forbids the control plane to create tokenreviews ({}): its ClusterRole needs \
             `create` on tokenreviews.authentication.k8s.io (the chart's rbac.yaml)",
            status.message
        ),
        kube::Error::Api(status) if status.code == 401 => format!(
            "the API server refused the control plane's own credentials ({}); check {}",
            status.message,
            env::KUBERNETES_TOKEN_FILE
        ),
        kube::Error::Api(status) => format!(
            "the API server answered {} to the TokenReview: {}",
            status.code, status.message
        ),
        _ => format!(
            "cannot reach the API server at {} ({}): {error}",
            env::KUBERNETES_API_URL,
            "is it up, and is the address right?"
        ),
    }
}
