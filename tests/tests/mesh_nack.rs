//! The NACK path through real processes: a real control plane pushes a resource a real proxy
//! refuses; the NACK stays visible in `shoalctl status` and the proxy's `/config`, does not
//! disturb traffic, and fixing it brings the proxy back to SYNCED. The rejection is per resource:
//! an endpoint update in the same push applies.
//!
//! The control plane refuses at `apply` everything a proxy's checks would reject, services
//! claiming one host included (`model/validate`), so what a real proxy can still NACK from the
//! real control plane is what only the proxy knows: here its own certificate. A proxy whose
//! workload certificate comes from files (`SHOAL_IDENTITY_CERT_FILE`), issued by a CA the control
//! plane does not have, refuses the mesh's trust bundle: trusting only those roots, it could not
//! verify its own certificate (docs/mtls.md). Rotating the control plane onto that CA as an
//! operator root (`shoalctl ca rotate --cert`) puts it in the bundle, which the proxy then takes.
//! Pushes of what the control plane refuses (an invalid route) are in discovery_partial_nack.rs,
//! from a hand-driven server.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use shoal_tests::backend::text_response;
use shoal_tests::control_plane::{
    ControlPlane, ControlPlaneBuilder, MeshClient, registration_yaml,
};
use shoal_tests::pki::{IdentityFiles, TestCa};
use shoal_tests::process::TempDir;
use shoal_tests::{HttpBackend, Proxy};

async fn named(name: &'static str) -> HttpBackend {
    HttpBackend::respond(move |_| text_response(200, name)).await
}

fn service(name: &str, hosts: &str) -> String {
    format!(
        "kind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n  hosts: [{hosts}]\n"
    )
}

const ID: &str = "spiffe://cluster.local/ns/default/sa/nack";
/// How the proxy's NACK of the control plane's trust bundle reads (`shoalctl status`, `/config`).
const REJECTION: &str = "trust_bundle cluster.local: the certificate for spiffe://cluster.local/ns/default/sa/nack does not verify against the trust bundle";
const WAIT: Duration = Duration::from_secs(10);

/// A CA the control plane does not have, and the proxy's identity files from it.
fn foreign_identity(dir: &TempDir) -> (TestCa, IdentityFiles) {
    let ca = TestCa::new("file-ca");
    let files = ca.workload(ID).write(dir.path(), "nack", &[ca.root_pem()]);
    (ca, files)
}

/// Services `alpha` (host `alpha.example`, endpoint `a`) and `beta` (`beta.example`, `b`), and a
/// proxy `proxy_id` with the `files` identity that has called both (so it subscribes to both).
/// The proxy NACKed the control plane's trust bundle when it connected.
async fn alpha_and_beta(
    cp: &ControlPlane,
    proxy_id: &str,
    files: &IdentityFiles,
    a: &HttpBackend,
    b: &HttpBackend,
) -> (Proxy, MeshClient) {
    cp.apply(&format!(
        "{}{}---\n{}{}",
        service("alpha", "alpha.example"),
        registration_yaml("alpha-0", "alpha", a.addr(), None),
        service("beta", "beta.example"),
        registration_yaml("beta-0", "beta", b.addr(), None),
    ))
    .await;
    let proxy = cp.proxy_builder(proxy_id).identity(files).start().await;
    let row = cp.wait_proxy_state(proxy_id, "NACKED", WAIT).await;
    assert!(row.last_nack.starts_with(REJECTION), "{row:?}");
    let mut client = MeshClient::new(proxy.outbound());
    assert_eq!(client.body("alpha").await.unwrap(), "alpha");
    assert_eq!(client.body("beta").await.unwrap(), "beta");
    assert_eq!(client.body("alpha.example").await.unwrap(), "alpha");
    assert_eq!(client.body("beta.example").await.unwrap(), "beta");
    (proxy, client)
}

/// `shoalctl status -o wide`'s row of `proxy`'s `resource` (`service/beta.default`).
async fn wide_row(cp: &ControlPlane, proxy: &str, resource: &str) -> String {
    let wide = cp.ctl(&["status", "-o", "wide"], None).await.success();
    wide.stdout
        .lines()
        .find(|l| l.starts_with(proxy) && l.split_whitespace().nth(1) == Some(resource))
        .unwrap_or_else(|| panic!("no {resource} row:\n{}", wide.stdout))
        .to_string()
}

/// `shoalctl status -o wide` says `resource` of `proxy` is NACKED with the trust-bundle error,
/// and each of `synced` is SYNCED.
async fn assert_rows(cp: &ControlPlane, proxy: &str, synced: &[&str]) {
    let bundle = wide_row(cp, proxy, "trust_bundle/cluster.local").await;
    assert!(
        bundle.contains("NACKED") && bundle.contains(REJECTION),
        "{bundle}"
    );
    for resource in synced {
        let line = wide_row(cp, proxy, resource).await;
        assert!(line.contains("SYNCED"), "{line}");
    }
}

/// `/config`'s discovery counters: (updates applied whole, updates NACKed).
async fn counts(proxy: &Proxy) -> (u64, u64) {
    let config = proxy.config().await;
    let count = |k: &str| config["discovery"][k].as_u64().expect("a discovery count");
    (count("acked"), count("nacked"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_update_is_nacked_visible_and_harmless() {
    let dir = TempDir::new("mesh-nack").unwrap();
    let (ca, files) = foreign_identity(&dir);
    let (a, b) = (named("alpha").await, named("beta").await);
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&format!(
        "{}{}---\n{}{}",
        service("alpha", "alpha.example"),
        registration_yaml("alpha-0", "alpha", a.addr(), None),
        service("beta", "beta.example"),
        registration_yaml("beta-0", "beta", b.addr(), None),
    ))
    .await;
    let proxy = cp
        .proxy_builder("nack-proxy")
        .identity(&files)
        .start()
        .await;

    // The trust bundle is the one resource the proxy holds yet: its NACK is the last update, so
    // `/config` shows it.
    let row = cp.wait_proxy_state("nack-proxy", "NACKED", WAIT).await;
    assert!(row.last_nack.starts_with(REJECTION), "{row:?}");
    let config = proxy.config().await;
    let last_error = config["sync"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains(REJECTION), "{config}");
    assert!(
        config["discovery"]["nacked"].as_u64() >= Some(1),
        "{config}"
    );
    assert_eq!(config["discovery"]["connected"], true, "{config}");
    // The last good trust roots stay: the file's one root, not the control plane's.
    assert_eq!(config["identity"]["trust_roots"], 1, "{config}");
    assert!(
        proxy
            .metric("shoal_discovery_updates_total", &[("result", "nacked")])
            .await
            >= 1.0
    );

    // Traffic runs: services pushed after the rejected bundle apply, every name goes where it
    // should, and the rejected resource alone stays NACKED.
    let mut client = MeshClient::new(proxy.outbound());
    for _ in 0..20 {
        assert_eq!(client.body("alpha").await.unwrap(), "alpha");
        assert_eq!(client.body("beta").await.unwrap(), "beta");
        assert_eq!(client.body("alpha.example").await.unwrap(), "alpha");
        assert_eq!(client.body("beta.example").await.unwrap(), "beta");
    }
    assert_rows(
        &cp,
        "nack-proxy",
        &[
            "service/alpha.default",
            "endpoints/alpha.default",
            "service/beta.default",
        ],
    )
    .await;
    let row = cp.wait_proxy_state("nack-proxy", "NACKED", WAIT).await;
    assert!(row.last_nack.starts_with(REJECTION), "{row:?}");

    // The fix: the control plane rotates onto the proxy's CA as an operator root. The bundle then
    // holds it, the proxy takes it, and is SYNCED again.
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&cert, ca.root_pem()).unwrap();
    std::fs::write(&key, ca.key_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    cp.ctl(&["ca", "rotate", "--cert", &cert, "--key", &key], None)
        .await
        .success();
    let row = cp.wait_proxy_state("nack-proxy", "SYNCED", WAIT).await;
    assert_eq!(row.last_nack, "", "{row:?}");
    let config = proxy.config().await;
    assert!(config["sync"]["last_error"].is_null(), "{config}");
    assert_eq!(config["identity"]["trust_roots"], 2, "{config}");
    assert_eq!(client.body("alpha.example").await.unwrap(), "alpha");
}

/// Pushes are batched so the two changes that follow the first travel in one response.
const PUSH_INTERVAL: &str = "3s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_resource_does_not_hold_back_an_endpoint_update_in_the_same_push() {
    let dir = TempDir::new("mesh-nack-partial").unwrap();
    let (_ca, files) = foreign_identity(&dir);
    let (a, b) = (named("alpha").await, named("beta").await);
    let a2 = named("alpha-2").await;
    let cp = ControlPlaneBuilder::new()
        .env("SHOAL_CP_PUSH_INTERVAL", PUSH_INTERVAL)
        .start()
        .await;
    let (proxy, mut client) = alpha_and_beta(&cp, "partial-proxy", &files, &a, &b).await;
    let (acked, nacked) = counts(&proxy).await;

    // A change to a subscribed key opens the push interval at once; what follows within it goes
    // out together, in one response.
    cp.apply(&service("alpha", "alpha.example, alpha.test"))
        .await;
    // One push: a CA rotation changes the trust bundle (still without the proxy's CA), and alpha
    // gets a second endpoint.
    cp.ctl(&["ca", "rotate"], None).await.success();
    let applied = cp
        .apply(&registration_yaml("alpha-1", "alpha", a2.addr(), None))
        .await;
    assert!(
        applied
            .stdout
            .contains("endpoint-registration/alpha-1.default created"),
        "{applied:?}"
    );

    // The endpoint update applied: the new endpoint gets traffic.
    let outbound = proxy.outbound();
    shoal_tests::eventually(WAIT, "traffic on alpha's new endpoint", || async move {
        match MeshClient::new(outbound).body("alpha.example").await {
            Ok(body) if body == "alpha-2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // It came in the NACKed response: one update applied whole (the first change), one NACKed.
    assert_eq!(counts(&proxy).await, (acked + 1, nacked + 1));
    // Only the bundle was rejected, and status says so.
    let row = cp.wait_proxy_state("partial-proxy", "NACKED", WAIT).await;
    assert!(row.last_nack.starts_with(REJECTION), "{row:?}");
    assert_rows(
        &cp,
        "partial-proxy",
        &[
            "service/alpha.default",
            "endpoints/alpha.default",
            "endpoints/beta.default",
        ],
    )
    .await;
    // The rest keeps working on the last good state.
    assert_eq!(client.body("beta.example").await.unwrap(), "beta");
    let alpha = client.body("alpha.test").await.unwrap();
    assert!(["alpha", "alpha-2"].contains(&alpha.as_str()), "{alpha}");
    let config = proxy.config().await;
    let last_error = config["sync"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains(REJECTION), "{config}");
    assert_eq!(config["identity"]["trust_roots"], 1, "{config}");

    // Re-applying what is stored answers `unchanged` and pushes nothing: the next real change is
    // the only push the proxy receives.
    let pushes = cp.metric("shoal_cp_pushes_total", &[]).await;
    let version = config["sync"]["version"].as_u64().expect("sync.version");
    let again = cp
        .apply(&registration_yaml("alpha-1", "alpha", a2.addr(), None))
        .await;
    assert!(
        again
            .stdout
            .contains("endpoint-registration/alpha-1.default unchanged"),
        "{again:?}"
    );
    cp.apply(&service("beta", "beta2.example")).await;
    // Within the push interval of the last push the change waits for its end: wait for the
    // proxy's next state version, then check it was the one push.
    let proxy = &proxy;
    shoal_tests::eventually(WAIT, "the proxy's next state", || async move {
        match proxy.config().await["sync"]["version"].as_u64() {
            Some(v) if v > version => Ok(v),
            other => Err(format!("sync.version {other:?}")),
        }
    })
    .await;
    assert_eq!(cp.metric("shoal_cp_pushes_total", &[]).await, pushes + 1.0);
    assert_eq!(client.body("beta2.example").await.unwrap(), "beta");
    let config = proxy.config().await;
    assert_eq!(
        config["sync"]["version"].as_u64(),
        Some(version + 1),
        "{config}"
    );
}
