//! Workload identity in Kubernetes mode: the real control plane (`SHOAL_CP_KUBERNETES=true`) verifies proxies'
//! projected service-account tokens with TokenReview against the fake API server
//! (`shoal_tests::fake_kube_tokenreview`), real proxies read their token from a file
//! (`SHOAL_IDENTITY_TOKEN_KIND=kubernetes`). Checked: the certificate a proxy gets (its service account's
//! SPIFFE id), mTLS between two such proxies, each refusal's reason on both sides (the proxy's `/config`, the
//! control plane's metric), and a rewritten token file used at the next attempt.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use shoal_tests::control_plane::{ControlPlane, ControlPlaneBuilder, MeshClient};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{control_plane_builder, publish_meshed_web, token_proxy};
use shoal_tests::process::TempDir;
use shoal_tests::wait::eventually;
use shoal_tests::{HttpBackend, Proxy};

const DEADLINE: Duration = Duration::from_secs(30);
/// The control plane's own token at the fake API server.
const CP_TOKEN: &str = "control-plane-token";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";

/// The fake API server, a control plane in Kubernetes mode watching it, and a directory for token files.
async fn cluster() -> (FakeKube, ControlPlane, TempDir) {
    let kube = FakeKube::start(CP_TOKEN).await;
    let dir = TempDir::new("kube-identity").unwrap();
    let cp = control_plane_builder(&kube, dir.path()).start().await;
    (kube, cp, dir)
}

/// Writes `token` to `<dir>/<name>` as the kubelet projects it; returns the path.
fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, token).unwrap();
    path
}

/// Waits until `proxy`'s `/config` shows an identity error containing `says`; returns it.
async fn refused(proxy: &Proxy, says: &str) -> String {
    eventually(
        DEADLINE,
        &format!("the proxy's identity.last_error saying {says:?}"),
        || async {
            let identity = proxy.config().await["identity"].clone();
            match identity["last_error"].as_str() {
                Some(error) if error.contains(says) => Ok(error.to_owned()),
                _ => Err(identity),
            }
        },
    )
    .await
}

async fn refusals(cp: &ControlPlane, reason: &str) -> f64 {
    cp.metric("shoal_cp_certificates_refused_total", &[("reason", reason)])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_certify_proxies_that_speak_mtls() {
    let (kube, cp, dir) = cluster().await;
    let reviews = kube.token_reviews();
    reviews.register("token-web", "default", "web", "web-0", &["shoal"]);
    reviews.register(
        "token-frontend",
        "default",
        "frontend",
        "frontend-0",
        &["shoal"],
    );

    let app = HttpBackend::echo().await;
    let web_token = token_file(dir.path(), "web", "token-web");
    let server = token_proxy(&cp, "web-0.default", "web", &web_token)
        .inbound_explicit(app.addr())
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .start()
        .await;
    assert_eq!(server.config().await["identity"]["spiffe_id"], WEB_ID);

    // The Service `web`, its pod (meshed, service account web) and a slice pointing at the server proxy.
    publish_meshed_web(&kube, server.inbound().port());

    let frontend_token = token_file(dir.path(), "frontend", "token-frontend");
    let client = token_proxy(&cp, "frontend-0.default", "frontend", &frontend_token)
        .start()
        .await;
    assert_eq!(client.config().await["identity"]["spiffe_id"], FRONTEND_ID);
    let mut c = MeshClient::new(client.outbound());
    eventually(DEADLINE, "a request to web answered 200", || async {
        match MeshClient::new(client.outbound()).get("web", "/").await {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(c.get("web", "/").await.unwrap().status, 200);
    // The server proxy (strict mTLS) authenticated the caller as its service account's SPIFFE id.
    assert_eq!(app.last().header("shoal-client-id"), Some(FRONTEND_ID));
    let tls_ok = client
        .metric("shoal_outbound_tls_connections_total", &[("result", "ok")])
        .await;
    assert!(tls_ok >= 1.0, "no mTLS connection was made");
    // Both certificates came from a TokenReview of the proxy's token.
    let reviewed = reviews.reviews();
    for token in ["token-web", "token-frontend"] {
        assert!(
            reviewed.contains(&(token.to_owned(), true)),
            "{token} not reviewed: {reviewed:?}"
        );
    }
    assert!(
        cp.metric("shoal_cp_certificates_issued_total", &[]).await >= 2.0,
        "{}",
        cp.metrics().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_say_why_and_a_rewritten_token_is_used() {
    let (kube, cp, dir) = cluster().await;
    let reviews = kube.token_reviews();
    reviews.register("token-web", "default", "web", "web-0", &["shoal"]);
    reviews.register(
        "token-api-audience",
        "default",
        "web",
        "web-0",
        &["https://kubernetes.default.svc"],
    );

    // A token the API server does not know.
    let file = token_file(dir.path(), "unknown", "token-nobody-issued");
    let unknown = token_proxy(&cp, "unknown", "web", &file)
        .unready()
        .start()
        .await;
    let error = refused(&unknown, "token lookup failed").await;
    assert!(error.contains("Unauthenticated"), "{error}");
    assert!(refusals(&cp, "unknown_credential").await >= 1.0);
    drop(unknown);

    // A valid token for another audience (the pod's default token, not the projected one).
    let file = token_file(dir.path(), "audience", "token-api-audience");
    let audience = token_proxy(&cp, "audience", "web", &file)
        .unready()
        .start()
        .await;
    let error = refused(&audience, "SHOAL_CP_KUBERNETES_AUDIENCES").await;
    assert!(error.contains("not for the audience"), "{error}");
    assert!(refusals(&cp, "invalid_credential").await >= 1.0);
    drop(audience);

    // web's token presented by a proxy claiming another service account.
    let file = token_file(dir.path(), "impostor", "token-web");
    let impostor = token_proxy(&cp, "impostor", "admin", &file)
        .unready()
        .start()
        .await;
    let error = refused(&impostor, "PermissionDenied").await;
    assert!(
        error.contains(&format!(
            "grants {WEB_ID}, not spiffe://cluster.local/ns/default/sa/admin"
        )),
        "{error}"
    );
    assert!(refusals(&cp, "identity_not_granted").await >= 1.0);
    drop(impostor);

    // The API server refuses the review itself (no RBAC): unavailable, saying what to fix.
    reviews.fail_with(Some(StatusCode::FORBIDDEN));
    let file = token_file(dir.path(), "rbac", "token-web");
    let rbac = token_proxy(&cp, "rbac", "web", &file)
        .unready()
        .start()
        .await;
    let error = refused(&rbac, "Unavailable").await;
    assert!(error.contains("tokenreviews"), "{error}");
    assert!(refusals(&cp, "verifier_unavailable").await >= 1.0);
    // Once the API server answers again, the proxy's retry gets its certificate.
    reviews.fail_with(None);
    eventually(DEADLINE, "the rbac proxy certified", || async {
        let identity = rbac.config().await["identity"].clone();
        if identity["spiffe_id"] == WEB_ID {
            Ok(())
        } else {
            Err(identity)
        }
    })
    .await;
    drop(rbac);

    // The kubelet rewrites the projected token file: the proxy's next attempt reads the new token.
    let file = token_file(dir.path(), "rotated", "token-expired");
    let rotated = token_proxy(&cp, "rotated", "web", &file)
        .unready()
        .start()
        .await;
    refused(&rotated, "token lookup failed").await;
    reviews.register("token-rotated", "default", "web", "web-1", &["shoal"]);
    std::fs::write(&file, "token-rotated\n").unwrap();
    eventually(DEADLINE, "the rotated proxy certified", || async {
        let identity = rotated.config().await["identity"].clone();
        if identity["spiffe_id"] == WEB_ID {
            Ok(())
        } else {
            Err(identity)
        }
    })
    .await;
    assert!(
        reviews
            .reviews()
            .contains(&("token-rotated".to_owned(), true))
    );
    assert!(
        !(reviews.reviews().iter()).any(|(token, ok)| token == "token-expired" && *ok),
        "the old token was never accepted"
    );
}

/// An API server that cannot be reached: `UNAVAILABLE`, naming the setting to check, and counted as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_unavailable_not_a_bad_token() {
    let (kube, cp, dir) = cluster().await;
    let url = kube.url();
    let addr: std::net::SocketAddr = url.split("://").nth(1).unwrap().parse().unwrap();
    drop(kube);
    // Hold the port, bound but not listening, so connections are refused: another test's fake API
    // server must not take it over (it would answer the review: "token rejected").
    let _hold = shoal_tests::wait::eventually(
        std::time::Duration::from_secs(10),
        "the fake API server's port to be free",
        || async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            Ok::<_, std::io::Error>(socket)
        },
    )
    .await;
    let file = token_file(dir.path(), "token", "token-web");
    let p = token_proxy(&cp, "web", "web", &file)
        .unready()
        .start()
        .await;
    let error = refused(&p, "Unavailable").await;
    assert!(
        error.contains("cannot reach the API server")
            && error.contains("SHOAL_CP_KUBERNETES_API_URL"),
        "{error}"
    );
    assert!(refusals(&cp, "verifier_unavailable").await >= 1.0);
    assert_eq!(refusals(&cp, "unknown_credential").await, 0.0);
}

/// Without `SHOAL_CP_KUBERNETES=true` there is nothing to review tokens with: refused, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_control_planes_refuse_kubernetes_tokens() {
    let cp = ControlPlaneBuilder::new().start().await;
    let dir = TempDir::new("kube-identity").unwrap();
    let file = token_file(dir.path(), "token", "a-kubernetes-token");
    let p = token_proxy(&cp, "web", "web", &file)
        .unready()
        .start()
        .await;
    let error = refused(&p, "standalone mode").await;
    assert!(error.contains("join token"), "{error}");
    let _: Value = p.config().await;
}
