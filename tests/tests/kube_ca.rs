//! The CA shared by control-plane replicas in Kubernetes mode: two real control planes on one fake API server
//! keep one CA record in the Secret `shoal-ca-state`. Checked: both serve the same single generated root, and
//! proxies certified through different replicas speak mTLS to each other; `shoalctl ca rotate` sent to the
//! replica not holding the Lease puts the pending root in both replicas' bundles (a second rotation on the other
//! replica is refused); the holder does not activate it while a proxy connected to the other replica has not
//! ACKed it (a raw discovery client), and does once it has; both replicas then sign with the new root; a replica
//! started on an empty store takes the CA from the Secret; a single-replica install's root seeds the Secret; an
//! API server that cannot serve the Secret holds start-up, then stops it naming the Secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use shoal_proto::v1;
use shoal_tests::control_plane::{
    ControlPlane, ControlPlaneBuilder, MeshClient, certify_plaintext,
    hello_then_bundle_subscription, root_states,
};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{TOKEN, control_plane, control_plane_builder, publish_meshed_web};
use shoal_tests::process::TempDir;
use shoal_tests::wait::eventually;
use shoal_tests::{HttpBackend, Proxy, ProxyBuilder};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(30);
/// Lease duration (15 s) plus a few rounds (2 s each) and room for a loaded machine.
const ELECTION: Duration = Duration::from_secs(45);
/// How long the test watches the holder not activate: the settling period (15 s) and a few reports.
const HELD: Duration = Duration::from_secs(22);
const NAMESPACE: &str = "shoal-system";
const WEB_ID: &str = "spiffe://cluster.local/ns/default/sa/web";
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";
/// Long enough that an activation seen in these tests is never the timeout's.
const SETTINGS: [(&str, &str); 2] = [
    ("SHOAL_CP_CA_PROPAGATION_TIMEOUT", "5m"),
    // For the raw discovery client (no TLS set-up needed to play a proxy that does not ACK) and the raw Certify
    // calls.
    ("SHOAL_CP_DISCOVERY_PLAINTEXT", "true"),
];

fn fingerprints(status: &Value) -> Vec<String> {
    (status["roots"].as_array().unwrap().iter())
        .map(|r| r["fingerprintSha256"].as_str().unwrap().to_owned())
        .collect()
}

/// A proxy of `default/<service_account>` certifying itself through `cp` with the Kubernetes token `token`.
fn proxy(cp: &ControlPlane, dir: &TempDir, service_account: &str, token: &str) -> ProxyBuilder {
    let file = dir.path().join(format!("token-{service_account}"));
    std::fs::write(&file, token).unwrap();
    cp.proxy_builder(&format!("{service_account}-0.default"))
        .env("SHOAL_SERVICE_ACCOUNT", service_account)
        .env("SHOAL_IDENTITY_TOKEN_FILE", file.display())
        .env("SHOAL_IDENTITY_TOKEN_KIND", "kubernetes")
}

/// Waits until a request from `client` to `web` is answered 200 (over mTLS: the server is strict).
async fn wait_web(client: &Proxy) {
    eventually(DEADLINE, "a request to web answered 200", || async {
        match MeshClient::new(client.outbound()).get("web", "/").await {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Waits until `proxy` holds `roots` trust roots.
async fn wait_roots(proxy: &Proxy, roots: u64) {
    eventually(
        DEADLINE,
        &format!("{roots} roots in the proxy's bundle"),
        || async {
            let identity = proxy.config().await["identity"].clone();
            if identity["trust_roots"].as_u64() == Some(roots) {
                Ok(())
            } else {
                Err(identity)
            }
        },
    )
    .await;
}

/// Waits until `cp`'s roots are in the states `states`.
async fn wait_states(cp: &ControlPlane, states: [&str; 2], within: Duration) -> Value {
    eventually(within, &format!("roots {states:?}"), || async {
        let status = cp.ca_status().await;
        if root_states(&status) == states {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await
}

/// A discovery stream driven by hand: says `Hello`, subscribes to the trust bundle, ACKs only when told.
struct RawProxy {
    tx: mpsc::Sender<v1::DiscoveryRequest>,
    responses: tonic::Streaming<v1::DiscoveryResponse>,
}

impl RawProxy {
    async fn connect(cp: &ControlPlane, proxy_id: &str) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(cp.discovery_url_plaintext())
            .unwrap()
            .connect()
            .await
            .expect("discovery listener");
        let hello = v1::Hello {
            proxy_id: proxy_id.into(),
            ..Default::default()
        };
        let (tx, outgoing) = hello_then_bundle_subscription(hello).await;
        let responses = v1::discovery_client::DiscoveryClient::new(channel)
            .stream(outgoing)
            .await
            .expect("stream")
            .into_inner();
        Self { tx, responses }
    }

    /// The number of roots of the next trust bundle pushed, and its nonce (not ACKed).
    async fn next_bundle(&mut self) -> (usize, String) {
        let response = tokio::time::timeout(DEADLINE, self.responses.next())
            .await
            .expect("a push")
            .expect("stream open")
            .expect("a response");
        match &response.resources[0].payload {
            Some(v1::discovery_resource::Payload::TrustBundle(b)) => {
                (b.roots_pem.len(), response.nonce.clone())
            }
            other => panic!("expected a trust bundle, got {other:?}"),
        }
    }

    async fn ack(&self, nonce: String) {
        let ack = v1::DiscoveryRequest {
            request: Some(v1::discovery_request::Request::Ack(v1::Ack { nonce })),
        };
        self.tx.send(ack).await.expect("stream open");
    }
}

/// A workload certificate for `default/web` from `cp` (Identity.Certify over plaintext, the Kubernetes token
/// `token-web`): its chain, leaf first.
async fn certify(cp: &ControlPlane) -> Vec<String> {
    let credential =
        v1::certify_request::Credential::KubernetesServiceAccountToken("token-web".into());
    let answer = certify_plaintext(cp, "default", "web", credential)
        .await
        .expect("Certify");
    assert_eq!(answer.spiffe_id, WEB_ID);
    answer.certificate_chain_pem
}

/// Whether `chain` (leaf first) verifies against `root` alone, as a TLS peer would.
fn chains_to(chain: &[String], root: &str) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut store = rustls::RootCertStore::empty();
    store.add(der(root)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
            .build()
            .unwrap();
    let intermediates: Vec<_> = chain[1..].iter().map(|c| der(c)).collect();
    verifier
        .verify_client_cert(&der(&chain[0]), &intermediates, UnixTime::now())
        .is_ok()
}

/// Waits until `proxy_id` is connected to `cp` and subscribed to the trust bundle.
async fn wait_subscribed(cp: &ControlPlane, proxy_id: &str) {
    eventually(DEADLINE, &format!("{proxy_id} subscribed"), || async {
        let out = cp.ctl(&["status", "-o", "wide"], None).await.stdout;
        if (out.lines())
            .any(|l| l.starts_with(proxy_id) && l.contains("trust_bundle/cluster.local"))
        {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_ca_rotate_anywhere_and_activate_once_every_replicas_proxies_have_it() {
    let kube = FakeKube::start(TOKEN).await;
    let reviews = kube.token_reviews();
    reviews.register("token-web", "default", "web", "web-0", &["shoal"]);
    reviews.register(
        "token-frontend",
        "default",
        "frontend",
        "frontend-0",
        &["shoal"],
    );
    let (dir_a, dir_b, dir_t) = (
        TempDir::new("ca-a").unwrap(),
        TempDir::new("ca-b").unwrap(),
        TempDir::new("ca-tokens").unwrap(),
    );
    let a = control_plane(&kube, &dir_a, &SETTINGS).await;
    let b = control_plane(&kube, &dir_b, &SETTINGS).await;

    // One generated root, the same on both, kept in the Secret.
    let (status_a, status_b) = (a.ca_status().await, b.ca_status().await);
    assert_eq!(root_states(&status_a), ["ACTIVE"]);
    assert_eq!(fingerprints(&status_a), fingerprints(&status_b));
    let old = fingerprints(&status_a)[0].clone();
    let secret = kube
        .secret(NAMESPACE, "shoal-ca-state")
        .expect("the Secret");
    assert!(secret["data"]["ca-record"].is_string(), "{secret}");
    for cp in [&a, &b] {
        assert!(!cp.logs().contains("PRIVATE KEY"), "{}", cp.logs());
    }

    // A server proxy certified through a, a client through b: mTLS between them.
    let app = HttpBackend::echo().await;
    let server = proxy(&a, &dir_t, "web", "token-web")
        .inbound_explicit(app.addr())
        .env("SHOAL_INBOUND_TLS_MODE", "strict")
        .start()
        .await;
    assert_eq!(server.config().await["identity"]["spiffe_id"], WEB_ID);
    publish_meshed_web(&kube, server.inbound().port());
    let client = proxy(&b, &dir_t, "frontend", "token-frontend")
        .start()
        .await;
    assert_eq!(client.config().await["identity"]["spiffe_id"], FRONTEND_ID);
    wait_web(&client).await;
    assert_eq!(app.last().header("shoal-client-id"), Some(FRONTEND_ID));

    // Which one holds the Lease.
    let a_holds = eventually(ELECTION, "one leader", || async {
        let leaders = (
            a.metric("shoal_cp_leader", &[]).await,
            b.metric("shoal_cp_leader", &[]).await,
        );
        match leaders {
            (1.0, 0.0) => Ok(true),
            (0.0, 1.0) => Ok(false),
            other => Err(other),
        }
    })
    .await;
    let (holder, other) = if a_holds { (&a, &b) } else { (&b, &a) };

    // A proxy of the other replica that has the current bundle, ACKed.
    let mut raw = RawProxy::connect(other, "raw-proxy").await;
    let (roots, nonce) = raw.next_bundle().await;
    assert_eq!(roots, 1);
    raw.ack(nonce).await;
    wait_subscribed(other, "raw-proxy").await;

    // Rotated through the replica that does not hold the Lease: pending on both, pushed by both.
    let rotated = other
        .ctl(&["ca", "rotate", "-o", "json"], None)
        .await
        .success();
    let rotated: Value = serde_json::from_str(&rotated.stdout).unwrap();
    assert_eq!(root_states(&rotated), ["ACTIVE", "PENDING"]);
    let new = fingerprints(&rotated)[1].clone();
    let started = Instant::now();
    let pending = wait_states(holder, ["ACTIVE", "PENDING"], DEADLINE).await;
    assert_eq!(fingerprints(&pending), [old.clone(), new.clone()]);
    // A second rotation on the holder is refused: the rotation is in progress.
    let refused = holder.ctl(&["ca", "rotate"], None).await;
    assert_eq!(refused.code(), Some(1), "{}", refused.stderr);
    assert!(refused.stderr.contains("is PENDING"), "{}", refused.stderr);
    wait_roots(&server, 2).await;
    wait_roots(&client, 2).await;
    let (roots, nonce) = raw.next_bundle().await;
    assert_eq!(
        roots, 2,
        "the pending root is pushed to the other replica's proxies"
    );

    // Not ACKed: the other replica reports it is waiting for one proxy, and the holder counts it.
    eventually(DEADLINE, "the other replica's report", || async {
        let reports = kube.config_map(NAMESPACE, "shoal-ca-propagation");
        let waiting = (reports.as_ref())
            .and_then(|r| r["data"].as_object())
            .into_iter()
            .flat_map(|data| data.values())
            .filter_map(|r| serde_json::from_str::<Value>(r.as_str()?).ok())
            .find(|r| r["propagated"] == false);
        match waiting {
            Some(r) if r["fingerprint"] == new.as_str() && r["waiting"] == 1 => Ok(()),
            _ => Err(reports),
        }
    })
    .await;
    eventually(
        DEADLINE,
        "the holder waits for the other replica",
        || async {
            let waiting = holder.metric("shoal_cp_ca_pending_replicas", &[]).await;
            if waiting == 1.0 { Ok(()) } else { Err(waiting) }
        },
    )
    .await;
    // It stays pending well past the settling period (15 s from when the holder saw the rotation), whatever
    // the holder's own proxies say.
    while started.elapsed() < HELD {
        assert_eq!(
            holder.ca_states().await,
            ["ACTIVE", "PENDING"],
            "activated although a proxy of the other replica has not ACKed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        holder.metric("shoal_cp_ca_pending_replicas", &[]).await,
        1.0
    );

    // ACKed: activated, and both replicas sign with the new root.
    raw.ack(nonce).await;
    let acked = Instant::now();
    let activated = wait_states(holder, ["ACTIVE", "RETIRING"], DEADLINE).await;
    // The other replica reports within 2 s, the holder reads the reports every 2 s and decides every 1 s.
    let took = acked.elapsed();
    eprintln!("activation {took:?} after the last ACK");
    assert!(took < Duration::from_secs(10), "activation took {took:?}");
    assert_eq!(fingerprints(&activated), [new.clone(), old.clone()]);
    holder
        .wait_for_log(Duration::from_secs(5), "the activation", |l| {
            l.contains("and so have those of every other live replica")
        })
        .await;
    assert_eq!(
        holder
            .metric("shoal_cp_ca_activations_total", &[("reason", "propagated")])
            .await,
        1.0
    );
    let followed = wait_states(other, ["ACTIVE", "RETIRING"], DEADLINE).await;
    assert_eq!(fingerprints(&followed), fingerprints(&activated));
    let new_root = activated["roots"][0]["certificatePem"].as_str().unwrap();
    let old_root = activated["roots"][1]["certificatePem"].as_str().unwrap();
    for cp in [&a, &b] {
        let chain = certify(cp).await;
        assert!(chains_to(&chain, new_root), "signed by the new root");
        assert!(!chains_to(&chain, old_root));
    }
    // The proxies still talk (both roots trusted meanwhile).
    wait_web(&client).await;

    // A replica started on an empty store takes the CA from the Secret.
    let dir_c = TempDir::new("ca-c").unwrap();
    let c = control_plane(&kube, &dir_c, &SETTINGS).await;
    let status_c = c.ca_status().await;
    assert_eq!(root_states(&status_c), ["ACTIVE", "RETIRING"]);
    assert_eq!(fingerprints(&status_c), fingerprints(&activated));
    assert!(chains_to(&certify(&c).await, new_root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_replica_installs_root_seeds_the_secret_when_it_moves_to_kubernetes_mode() {
    let dir = TempDir::new("ca-upgrade").unwrap();
    let data = dir.path().join("data");
    let mut alone = ControlPlaneBuilder::new().data_dir(&data).start().await;
    let root = fingerprints(&alone.ca_status().await);
    alone.stop(Duration::from_secs(10)).await.unwrap();

    let kube = FakeKube::start(TOKEN).await;
    let upgraded = control_plane_builder(&kube, dir.path())
        .data_dir(&data)
        .start()
        .await;
    assert_eq!(fingerprints(&upgraded.ca_status().await), root);
    assert!(kube.secret(NAMESPACE, "shoal-ca-state").is_some());
    upgraded
        .wait_for_log(Duration::from_secs(1), "the seeding", |l| {
            l.contains("CA created and stored") && l.contains("kept on upgrade")
        })
        .await;
    // Another replica on an empty store: the same root.
    let fresh = TempDir::new("ca-upgrade-b").unwrap();
    let second = control_plane(&kube, &fresh, &[]).await;
    assert_eq!(fingerprints(&second.ca_status().await), root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_the_secret_and_stops_naming_it_when_it_never_comes() {
    let kube = FakeKube::start(TOKEN).await;
    let dir = TempDir::new("ca-unavailable").unwrap();
    let builder = |timeout: &str| {
        control_plane_builder(&kube, dir.path()).env("SHOAL_CP_CA_STATE_TIMEOUT", timeout)
    };

    // The API server answers 503 for Secrets: no CA of its own, start-up stops naming the Secret.
    kube.fail("secrets", true);
    let error = match builder("2s").try_start().await {
        Ok(_) => panic!("started without the CA's Secret"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains(
            "the Secret shoal-system/shoal-ca-state could not be read or created for 2 s"
        ) && error.contains("503"),
        "{error}"
    );
    assert!(kube.secret(NAMESPACE, "shoal-ca-state").is_none());

    // Back before the deadline (after at least one retried request: the client's own retries of a 503, or the
    // CA's): start-up goes on and creates it.
    let tried = kube.named_requests("secrets");
    let starting = tokio::spawn(builder("30s").try_start());
    eventually(DEADLINE, "a retried read of the Secret", || async {
        let now = kube.named_requests("secrets");
        if now >= tried + 2 { Ok(()) } else { Err(now) }
    })
    .await;
    kube.fail("secrets", false);
    let cp = starting
        .await
        .unwrap()
        .expect("started once the Secret was served");
    assert_eq!(root_states(&cp.ca_status().await), ["ACTIVE"]);
    assert!(kube.secret(NAMESPACE, "shoal-ca-state").is_some());
}
