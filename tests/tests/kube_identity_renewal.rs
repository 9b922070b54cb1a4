//! Renewals of workload certificates in Kubernetes mode, with real processes: the control plane
//! (`SHOAL_CP_KUBERNETES=true`, certificates of `SHOAL_CP_CERT_TTL=30s` so a proxy renews after ~21 s) verifies
//! proxies' projected tokens with TokenReview against the fake API server. The proxy reads its token file
//! at every certification, renewals included (the kubelet rewrites it at 80 % of its lifetime), so:
//! a renewal after the file was rewritten (the old token revoked) succeeds with the new token while mTLS
//! traffic keeps flowing; a renewal refused (token revoked, not replaced) keeps the still-valid certificate
//! serving, is retried with backoff, says why on both sides, and succeeds once the file holds a valid token;
//! an API server that cannot review at renewal time does not stop the renewal (the current certificate
//! proves the proxy instead).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use serde_json::Value;
use shoal_tests::control_plane::{ControlPlane, MeshClient};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{control_plane_builder, publish_meshed_web, token_proxy};
use shoal_tests::process::TempDir;
use shoal_tests::wait::eventually;
use shoal_tests::{HttpBackend, Proxy};

/// The certificates' lifetime: proxies renew at 65–75 % of it (19.5–22.5 s), leaving ≥ 7.5 s of validity.
const TTL: Duration = Duration::from_secs(30);
/// Long enough for a renewal (≤ 22.5 s after the certificate) and a retry.
const RENEWAL_DEADLINE: Duration = Duration::from_secs(45);
const DEADLINE: Duration = Duration::from_secs(20);
const CP_TOKEN: &str = "control-plane-token";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";

/// The fake API server, a control plane in Kubernetes mode issuing [`TTL`] certificates, and a directory for
/// token files.
async fn cluster() -> (FakeKube, ControlPlane, TempDir) {
    let kube = FakeKube::start(CP_TOKEN).await;
    let dir = TempDir::new("kube-renewal").unwrap();
    let cp = control_plane_builder(&kube, dir.path())
        .env("SHOAL_CP_CERT_TTL", format!("{}s", TTL.as_secs()))
        .start()
        .await;
    (kube, cp, dir)
}

/// Writes `token` to `<dir>/<name>` as the kubelet projects it (whole file replaced); returns the path.
fn project(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{token}\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

async fn identity(proxy: &Proxy) -> Value {
    proxy.config().await["identity"].clone()
}

/// Waits until `proxy` holds its `n`th certificate; returns its identity status.
async fn certificates(proxy: &Proxy, n: u64, what: &str) -> Value {
    eventually(RENEWAL_DEADLINE, what, || async {
        let identity = identity(proxy).await;
        if identity["certificates"].as_u64() >= Some(n) && identity["last_error"].is_null() {
            Ok(identity)
        } else {
            Err(identity)
        }
    })
    .await
}

/// A strict-mTLS server proxy for `web` (pod `web-0`) published through the fake API server, and a
/// `frontend` client proxy that reached it; both certified with their token files.
struct Mesh {
    app: HttpBackend,
    server: Proxy,
    client: Proxy,
}

async fn mesh(kube: &FakeKube, cp: &ControlPlane, dir: &Path) -> Mesh {
    let reviews = kube.token_reviews();
    reviews.register("web-token-1", "default", "web", "web-0", &["shoal"]);
    reviews.register(
        "frontend-token",
        "default",
        "frontend",
        "frontend-0",
        &["shoal"],
    );
    let app = HttpBackend::echo().await;
    let web_token = project(dir, "web", "web-token-1");
    let server = token_proxy(cp, "web-0.default", "web", &web_token)
        .inbound_explicit(app.addr())
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .start()
        .await;
    publish_meshed_web(kube, server.inbound().port());
    let frontend_token = project(dir, "frontend", "frontend-token");
    let client = token_proxy(cp, "frontend-0.default", "frontend", &frontend_token)
        .start()
        .await;
    eventually(DEADLINE, "a request to web answered 200", || async {
        match MeshClient::new(client.outbound()).get("web", "/").await {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    Mesh {
        app,
        server,
        client,
    }
}

/// Requests from the client proxy to `web` (a new connection to the client proxy each; the proxy pools its
/// mTLS connections to the server), until dropped.
struct Traffic {
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(client: &Proxy) -> Self {
        let (ok, failures) = (Arc::new(AtomicUsize::new(0)), Arc::default());
        let (o, f): (_, Arc<std::sync::Mutex<Vec<String>>>) = (ok.clone(), Arc::clone(&failures));
        let outbound = client.outbound();
        let task = tokio::spawn(async move {
            for i in 0.. {
                match MeshClient::new(outbound).get("web", &format!("/{i}")).await {
                    Ok(r) if r.status == 200 => _ = o.fetch_add(1, Ordering::SeqCst),
                    other => f.lock().unwrap().push(format!("#{i}: {other:?}")),
                }
                // Pacing only: ~20 requests a second.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { ok, failures, task }
    }

    /// Waits until `n` more requests succeeded.
    async fn wait_more(&self, n: usize, what: &str) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        eventually(DEADLINE, &format!("{n} more answers {what}"), || async {
            let ok = self.ok.load(Ordering::SeqCst);
            if ok >= target { Ok(()) } else { Err(ok) }
        })
        .await
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_now() -> u64 {
    (SystemTime::now().duration_since(SystemTime::UNIX_EPOCH))
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_uses_the_rewritten_token_and_mtls_keeps_serving() {
    let (kube, cp, dir) = cluster().await;
    let reviews = kube.token_reviews();
    let mesh = mesh(&kube, &cp, dir.path()).await;
    let first = identity(&mesh.server).await;
    assert_eq!(first["spiffe_id"], WEB_ID, "{first}");
    assert_eq!(first["certificates"], 1, "{first}");
    let traffic = Traffic::start(&mesh.client);
    traffic.wait_more(10, "before the token is rewritten").await;

    // The kubelet rewrites the projected token; the API server no longer accepts the old one.
    reviews.register("web-token-2", "default", "web", "web-0", &["shoal"]);
    project(dir.path(), "web", "web-token-2");
    reviews.revoke("web-token-1");

    let renewed = certificates(&mesh.server, 2, "the server proxy's renewal").await;
    assert_eq!(renewed["spiffe_id"], WEB_ID, "{renewed}");
    assert!(
        renewed["not_after_unix_seconds"].as_u64() > first["not_after_unix_seconds"].as_u64(),
        "a later expiry: {first} then {renewed}"
    );
    // The renewal was reviewed with the new token; the old one was sent once only (the first certificate).
    assert_eq!(reviews.reviews_of("web-token-2").len(), 1);
    assert!(reviews.reviews_of("web-token-2")[0].0);
    assert_eq!(reviews.reviews_of("web-token-1").len(), 1);
    // The client renewed too, with its unchanged token: one review per certification.
    certificates(&mesh.client, 2, "the client proxy's renewal").await;
    assert_eq!(reviews.reviews_of("frontend-token").len(), 2);

    // mTLS kept serving across both renewals.
    traffic.wait_more(20, "after the renewals").await;
    assert_eq!(traffic.failures(), Vec::<String>::new());
    assert_eq!(mesh.app.last().header("shoal-client-id"), Some(FRONTEND_ID));
    assert_eq!(
        cp.metric("shoal_cp_certificates_refused_total", &[]).await,
        0.0
    );
    assert!(cp.metric("shoal_cp_certificates_issued_total", &[]).await >= 4.0);
    // The issuance is logged with the pod the token is bound to.
    let logs = cp.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("workload certificate issued")
                && l.contains("web-0")
                && l.contains("uid-web-0")),
        "no issuance log naming the pod:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_renewal_keeps_the_certificate_serving_until_a_valid_token_arrives() {
    let (kube, cp, dir) = cluster().await;
    let reviews = kube.token_reviews();
    let mesh = mesh(&kube, &cp, dir.path()).await;
    let first = identity(&mesh.server).await;
    let not_after = first["not_after_unix_seconds"].as_u64().unwrap();

    // The token is revoked (its pod's binding gone, say) and the file not replaced.
    reviews.revoke("web-token-1");
    let refused = eventually(RENEWAL_DEADLINE, "the renewal refused", || async {
        let identity = identity(&mesh.server).await;
        match identity["last_error"].as_str() {
            Some(e) if e.contains("token lookup failed") => Ok(identity),
            _ => Err(identity),
        }
    })
    .await;
    let error = refused["last_error"].as_str().unwrap();
    assert!(
        error.contains("Unauthenticated") && error.contains("service-account token rejected"),
        "{error}"
    );
    // The still-valid certificate keeps serving: same certificate, and mTLS requests answered.
    assert!(unix_now() < not_after, "the test is too slow: {refused}");
    assert_eq!(refused["spiffe_id"], WEB_ID);
    assert_eq!(refused["certificates"], 1);
    assert_eq!(refused["not_after_unix_seconds"], not_after);
    let answer = MeshClient::new(mesh.client.outbound())
        .get("web", "/during")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        cp.metric(
            "shoal_cp_certificates_refused_total",
            &[("reason", "unknown_credential")]
        )
        .await
            >= 1.0
    );

    // Retried with backoff: four refused reviews, the pauses growing (500 ms, 1 s, 2 s, each ±50 %).
    let attempts = eventually(DEADLINE, "four refused attempts", || async {
        let attempts = reviews.reviews_of("web-token-1");
        if attempts.len() >= 5 {
            Ok(attempts)
        } else {
            Err(attempts.len())
        }
    })
    .await;
    let refusals: Vec<Instant> = (attempts.iter().skip(1))
        .map(|(ok, at)| {
            assert!(!ok);
            *at
        })
        .collect();
    let gaps: Vec<Duration> = refusals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(200)) && gaps[2] > gaps[0],
        "{gaps:?}"
    );
    assert!(
        mesh.server
            .metric("shoal_identity_certificates_total", &[("result", "error")])
            .await
            >= 4.0
    );

    // A valid token in the file: the next retry succeeds.
    reviews.register("web-token-2", "default", "web", "web-0", &["shoal"]);
    project(dir.path(), "web", "web-token-2");
    let renewed = certificates(&mesh.server, 2, "the renewal with the new token").await;
    assert!(renewed["not_after_unix_seconds"].as_u64() > Some(not_after));
    assert!(reviews.reviews_of("web-token-2")[0].0);
    let answer = MeshClient::new(mesh.client.outbound())
        .get("web", "/after")
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
}

/// The API server cannot review at renewal time (RBAC broken, down): that says nothing about the token, so the
/// proxy renews with its current certificate instead of letting it run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_while_reviews_fail_proves_the_current_certificate() {
    let (kube, cp, dir) = cluster().await;
    let reviews = kube.token_reviews();
    reviews.register("web-token", "default", "web", "web-0", &["shoal"]);
    let file = project(dir.path(), "web", "web-token");
    let web = token_proxy(&cp, "web-0.default", "web", &file)
        .start()
        .await;
    let first = identity(&web).await;
    assert_eq!(first["spiffe_id"], WEB_ID);

    reviews.fail_with(Some(StatusCode::FORBIDDEN));
    let renewed = certificates(&web, 2, "a renewal while reviews fail").await;
    assert_eq!(renewed["spiffe_id"], WEB_ID);
    assert!(renewed["not_after_unix_seconds"].as_u64() > first["not_after_unix_seconds"].as_u64());
    // The token was tried first (the review failed), then the certificate renewed.
    assert!(
        cp.metric(
            "shoal_cp_certificates_refused_total",
            &[("reason", "verifier_unavailable")]
        )
        .await
            >= 1.0
    );
    assert_eq!(reviews.reviews_of("web-token").len(), 1, "reviewed once");
}
