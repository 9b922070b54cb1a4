//! The fake API server's TokenReview endpoint (`POST /apis/authentication.k8s.io/v1/tokenreviews`), for
//! the control plane's verification of proxies' projected service-account tokens (`tests/tests/kube_identity.rs`).
//!
//! A test registers the tokens it hands to proxies ([`TokenReviews::register`]), each with the service
//! account it was issued for and its audiences, as the kubelet's projected tokens are. A review answers
//! what the real API server answers: `authenticated` with `system:serviceaccount:NS:SA` and the audiences
//! both sides share; for an unknown token or one for none of the requested audiences, `authenticated: false`
//! and an `error`. [`TokenReviews::fail_with`] makes the endpoint itself fail (RBAC missing, a broken API
//! server).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

/// The path of the TokenReview collection.
pub const PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The audience the API server assumes when a review names none (its own `--api-audiences`).
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

struct Registered {
    namespace: String,
    service_account: String,
    pod: String,
    audiences: Vec<String>,
}

#[derive(Default)]
struct Inner {
    tokens: BTreeMap<String, Registered>,
    failure: Option<StatusCode>,
    /// Every review received: the token (as sent), whether it was authenticated, and when.
    reviews: Vec<(String, bool, Instant)>,
}

/// The tokens the fake API server knows, and the reviews it answered.
#[derive(Default)]
pub struct TokenReviews {
    inner: Mutex<Inner>,
}

impl TokenReviews {
    /// Makes `token` valid for `audiences`, authenticating as the service account `namespace/service_account`
    /// of the pod `pod`.
    pub fn register(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        pod: &str,
        audiences: &[&str],
    ) {
        self.inner.lock().unwrap().tokens.insert(
            token.to_owned(),
            Registered {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                pod: pod.to_owned(),
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            },
        );
    }

    /// Makes `token` invalid (expired, its pod deleted).
    pub fn revoke(&self, token: &str) {
        self.inner.lock().unwrap().tokens.remove(token);
    }

    /// `Some(code)`: every review is answered with that error status instead; `None`: answered again.
    pub fn fail_with(&self, code: Option<StatusCode>) {
        self.inner.lock().unwrap().failure = code;
    }

    /// The reviews received so far: each token and whether it was authenticated.
    pub fn reviews(&self) -> Vec<(String, bool)> {
        let inner = self.inner.lock().unwrap();
        (inner.reviews.iter())
            .map(|(token, ok, _)| (token.clone(), *ok))
            .collect()
    }

    /// When `token` was reviewed, in order, and whether it was authenticated each time.
    pub fn reviews_of(&self, token: &str) -> Vec<(bool, Instant)> {
        let inner = self.inner.lock().unwrap();
        (inner.reviews.iter())
            .filter(|(t, _, _)| t == token)
            .map(|(_, ok, at)| (*ok, *at))
            .collect()
    }

    /// Answers one request to [`PATH`]: the status code and the JSON body.
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> (StatusCode, Value) {
        if req.method() != Method::POST {
            return failure(StatusCode::METHOD_NOT_ALLOWED, "tokenreviews: create only");
        }
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return failure(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let Ok(review) = serde_json::from_slice::<Value>(&body) else {
            return failure(StatusCode::BAD_REQUEST, "the body is not JSON");
        };
        if review["kind"] != "TokenReview" || review["apiVersion"] != "authentication.k8s.io/v1" {
            return failure(
                StatusCode::BAD_REQUEST,
                "expected an authentication.k8s.io/v1 TokenReview",
            );
        }
        let token = review["spec"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut requested: Vec<String> = (review["spec"]["audiences"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        if requested.is_empty() {
            requested.push(API_AUDIENCE.to_owned());
        }
        let mut inner = self.inner.lock().unwrap();
        if let Some(code) = inner.failure {
            return failure(
                code,
                "tokenreviews.authentication.k8s.io is forbidden (the fake was told to fail)",
            );
        }
        let status = match inner.tokens.get(&token) {
            None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
            Some(t) => {
                let shared: Vec<&String> = t
                    .audiences
                    .iter()
                    .filter(|a| requested.contains(a))
                    .collect();
                if shared.is_empty() {
                    json!({"user": {}, "error": format!(
                        "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                        t.audiences, requested
                    )})
                } else {
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": format!("system:serviceaccount:{}:{}", t.namespace, t.service_account),
                            "uid": format!("uid-{}-{}", t.namespace, t.service_account),
                            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", t.namespace), "system:authenticated"],
                            "extra": {
                                "authentication.kubernetes.io/pod-name": [t.pod],
                                "authentication.kubernetes.io/pod-uid": [format!("uid-{}", t.pod)],
                            },
                        },
                        "audiences": shared,
                    })
                }
            }
        };
        let authenticated = status["authenticated"] == true;
        inner.reviews.push((token, authenticated, Instant::now()));
        let mut answer = review;
        answer["status"] = status;
        (StatusCode::CREATED, answer)
    }
}

fn failure(code: StatusCode, message: &str) -> (StatusCode, Value) {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": code.canonical_reason(), "code": code.as_u16()
    });
    (code, body)
}
