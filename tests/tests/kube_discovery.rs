//! Discovery from Kubernetes: the real control plane (`SHOAL_CP_KUBERNETES=true`) against the fake API server
//! (`shoal_tests::fake_kube`), a real proxy fed by its discovery, real backends behind the EndpointSlices.
//! What the proxy does (where requests go) and shows (`/config`) is what is checked.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_tests::backend::text_response;
use shoal_tests::control_plane::{ControlPlane, ControlPlaneBuilder, MeshClient};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::control_plane_builder;
use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;
use shoal_tests::wait::eventually;
use shoal_tests::{HttpBackend, Proxy};

const DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-service-account-token";

/// A Service named `name` in `default` with one port, 80, whose target is the named port `http`.
fn service(name: &str, cluster_ip: &str) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
        ]}
    })
}

/// An EndpointSlice of `service` whose endpoints serve its `http` port on 127.0.0.1:`port` (each of its pods
/// resolves the named port to that number).
fn slice(name: &str, service: &str, port: u16, endpoints: &[Value]) -> Value {
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

/// An endpoint of pod `pod` on 127.0.0.1 with its conditions.
fn endpoint(pod: &str, ready: bool) -> Value {
    json!({
        "addresses": ["127.0.0.1"],
        "conditions": {"ready": ready, "serving": ready, "terminating": false},
        "zone": "zone-a",
        "targetRef": {"kind": "Pod", "namespace": "default", "name": pod}
    })
}

/// A pod running as `service_account`, with Shoal's sidecar when `meshed`.
fn pod(name: &str, service_account: &str, meshed: bool) -> Value {
    let init = if meshed {
        json!([{"name": "shoal-init", "image": "shoal"}, {"name": "shoal-proxy", "image": "shoal"}])
    } else {
        json!([])
    };
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"serviceAccountName": service_account, "initContainers": init,
                 "containers": [{"name": "app", "image": "app"}]}
    })
}

struct Mesh {
    kube: FakeKube,
    cp: ControlPlane,
    proxy: Proxy,
    client: MeshClient,
    _dir: TempDir,
}

/// The control plane watching `kube` (after its first sync), and a proxy fed by it.
async fn mesh(kube: FakeKube) -> Mesh {
    mesh_with(kube, None).await
}

/// [`mesh`], verifying the API server with the CA `ca_pem` when given.
async fn mesh_with(kube: FakeKube, ca_pem: Option<&str>) -> Mesh {
    let dir = TempDir::new("kube").unwrap();
    let mut cp = control_plane_builder(&kube, dir.path());
    if let Some(pem) = ca_pem {
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, pem).unwrap();
        cp = cp.env("SHOAL_CP_KUBERNETES_CA_FILE", ca_file.display());
    }
    let cp = cp.start().await;
    cp.wait_for_log(DEADLINE, "the first sync", |l| {
        l.contains("kubernetes source synced")
    })
    .await;
    let proxy = cp.proxy_builder("kube-proxy").start().await;
    let client = MeshClient::new(proxy.outbound());
    Mesh {
        kube,
        cp,
        proxy,
        client,
        _dir: dir,
    }
}

/// Two backends answering `a` and `b`, in slices `web-a` and `web-b` of the Service `web`.
async fn two_backends(kube: &FakeKube, b_ready: bool) -> (HttpBackend, HttpBackend) {
    let a = HttpBackend::respond(|_| text_response(200, "a")).await;
    let b = HttpBackend::respond(|_| text_response(200, "b")).await;
    kube.apply(service("web", "10.96.0.10"));
    kube.apply(pod("web-a", "web", false));
    kube.apply(pod("web-b", "web", false));
    kube.apply(slice(
        "web-a",
        "web",
        a.addr().port(),
        &[endpoint("web-a", true)],
    ));
    kube.apply(slice(
        "web-b",
        "web",
        b.addr().port(),
        &[endpoint("web-b", b_ready)],
    ));
    (a, b)
}

impl Mesh {
    /// `n` requests to `web`: how many each answer got (a failure counts under its error).
    async fn spread(&mut self, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let answer = match self.client.body("web").await {
                Ok(body) => body,
                Err(e) => format!("failed: {e}"),
            };
            *seen.entry(answer).or_default() += 1;
        }
        seen
    }

    /// The endpoints of `service` (in `default`) in the proxy's `/config`.
    async fn endpoints(&self, service: &str) -> Vec<Value> {
        let config = self.proxy.config().await;
        let services = config["state"]["services"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (services.iter())
            .find(|s| s["name"] == service && s["namespace"] == "default")
            .and_then(|s| s["endpoints"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until the proxy holds exactly the endpoints on `ports` (ready or not). The proxy must have
    /// subscribed to `service` (a request to it does).
    async fn wait_ports(&self, service: &str, ports: &[u16]) {
        let mut want: Vec<u16> = ports.to_vec();
        want.sort();
        eventually(
            DEADLINE,
            &format!("the endpoints of {service} on ports {want:?}"),
            || async {
                let endpoints = self.endpoints(service).await;
                let mut got: Vec<u16> = (endpoints.iter())
                    .filter_map(|e| e["addr"].as_str()?.rsplit(':').next()?.parse().ok())
                    .collect();
                got.sort();
                if got == want { Ok(()) } else { Err(endpoints) }
            },
        )
        .await
    }

    /// Waits until the proxy holds the endpoint of `service` on `port`, ready.
    async fn wait_ready(&self, service: &str, port: u16) {
        let suffix = format!(":{port}");
        eventually(
            DEADLINE,
            &format!("{service}'s endpoint on {port}, ready"),
            || async {
                let endpoints = self.endpoints(service).await;
                let ready = (endpoints.iter()).any(|e| {
                    e["ready"] == true && e["addr"].as_str().is_some_and(|a| a.ends_with(&suffix))
                });
                if ready { Ok(()) } else { Err(endpoints) }
            },
        )
        .await
    }

    /// Waits until a request to `web` is answered (by any endpoint: with several ready, which one the
    /// balancer picks is its business).
    async fn wait_served(&mut self) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let answer = self.client.body("web").await;
            if answer.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "web not served within {DEADLINE:?}: {answer:?}"
            );
            tokio::time::sleep(shoal_tests::wait::POLL_INTERVAL).await;
        }
    }

    /// Waits until a request to `web` is answered `body`.
    async fn wait_answer(&mut self, body: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let answer = self.client.body("web").await;
            if answer.as_deref().ok() == Some(body) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no answer {body:?} within {DEADLINE:?}; last: {answer:?}; proxy endpoints: {:?}",
                self.endpoints("web").await
            );
            tokio::time::sleep(shoal_tests::wait::POLL_INTERVAL).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_appear_not_ready_ones_get_no_traffic_and_scaled_down_ones_leave() {
    let kube = FakeKube::start(TOKEN).await;
    let (a, b) = two_backends(&kube, false).await;
    let mut mesh = mesh(kube).await;
    mesh.wait_answer("a").await;
    mesh.wait_ports("web", &[a.addr().port(), b.addr().port()])
        .await;

    // `b` is known (its connections may finish) but not ready: it gets no request.
    let spread = mesh.spread(30).await;
    assert_eq!(spread, BTreeMap::from([("a".to_owned(), 30)]), "{spread:?}");
    assert_eq!(b.count(), 0);
    let endpoints = mesh.endpoints("web").await;
    let b_port = format!(":{}", b.addr().port());
    let b_entry = endpoints
        .iter()
        .find(|e| e["addr"].as_str().unwrap().ends_with(&b_port))
        .unwrap();
    assert_eq!(b_entry["ready"], false, "{endpoints:?}");

    // `b` turns ready and `a` not: all traffic moves to `b`.
    mesh.kube.apply(slice(
        "web-b",
        "web",
        b.addr().port(),
        &[endpoint("web-b", true)],
    ));
    mesh.kube.apply(slice(
        "web-a",
        "web",
        a.addr().port(),
        &[endpoint("web-a", false)],
    ));
    mesh.wait_answer("b").await;
    let spread = mesh.spread(20).await;
    assert_eq!(spread, BTreeMap::from([("b".to_owned(), 20)]), "{spread:?}");

    // `a` is ready again and `b` is scaled down: gone from the proxy, no more traffic.
    mesh.kube.apply(slice(
        "web-a",
        "web",
        a.addr().port(),
        &[endpoint("web-a", true)],
    ));
    mesh.kube.delete("EndpointSlice", "default", "web-b");
    mesh.wait_ports("web", &[a.addr().port()]).await;
    let before = b.count();
    let spread = mesh.spread(20).await;
    assert_eq!(spread, BTreeMap::from([("a".to_owned(), 20)]), "{spread:?}");
    assert_eq!(b.count(), before);
    // The control plane only ever listed once per kind: everything came through the watches.
    assert_eq!(mesh.kube.requests("EndpointSlice").lists, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_come_from_the_pods_service_accounts() {
    let kube = FakeKube::start(TOKEN).await;
    let a = HttpBackend::respond(|_| text_response(200, "a")).await;
    let b = HttpBackend::respond(|_| text_response(200, "b")).await;
    kube.apply(service("api", "10.96.0.11"));
    kube.apply(pod("api-1", "api-sa", true));
    kube.apply(pod("api-2", "api-sa", false));
    kube.apply(slice(
        "api-a",
        "api",
        a.addr().port(),
        &[endpoint("api-1", true)],
    ));
    kube.apply(slice(
        "api-b",
        "api",
        b.addr().port(),
        &[endpoint("api-2", true)],
    ));
    let mut mesh = mesh(kube).await;
    // The first request subscribes the proxy to `api` (it has no certificate itself, so it calls the
    // endpoints in plain text whatever their identity).
    let _ = mesh.client.get("api", "/").await;
    mesh.wait_ports("api", &[a.addr().port(), b.addr().port()])
        .await;
    let identity_of = |endpoints: &[Value], port: u16| {
        let suffix = format!(":{port}");
        let e = endpoints
            .iter()
            .find(|e| e["addr"].as_str().unwrap().ends_with(&suffix))
            .unwrap();
        e["identity"].clone()
    };
    let endpoints = mesh.endpoints("api").await;
    // The meshed pod's endpoint carries its service account's SPIFFE id; the other is outside the mesh.
    assert_eq!(
        identity_of(&endpoints, a.addr().port()),
        "spiffe://cluster.local/ns/default/sa/api-sa",
        "{endpoints:?}"
    );
    assert_eq!(
        identity_of(&endpoints, b.addr().port()),
        Value::Null,
        "{endpoints:?}"
    );

    // The pod's service account changes (a new pod under the same name): the identity follows.
    mesh.kube.apply(pod("api-1", "api-v2", true));
    eventually(DEADLINE, "the new service account's identity", || async {
        let endpoints = mesh.endpoints("api").await;
        let identity = identity_of(&endpoints, a.addr().port());
        if identity == "spiffe://cluster.local/ns/default/sa/api-v2" {
            Ok(())
        } else {
            Err(endpoints)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_in_pages_is_read_whole() {
    // More pods than kube-rs asks for in one page (500): the list comes in three pages, and the pod
    // that gives `api` its identity sorts last, on the third.
    let kube = FakeKube::start(TOKEN).await;
    let a = HttpBackend::respond(|_| text_response(200, "a")).await;
    kube.apply(service("api", "10.96.0.11"));
    for i in 0..1200 {
        kube.apply(pod(&format!("filler-{i:04}"), "filler", true));
    }
    kube.apply(pod("zz-api-1", "api-sa", true));
    kube.apply(slice(
        "api-a",
        "api",
        a.addr().port(),
        &[endpoint("zz-api-1", true)],
    ));
    let mut mesh = mesh(kube).await;
    let pods = mesh.kube.requests("Pod");
    assert_eq!((pods.lists, pods.pages), (1, 2), "{pods:?}");
    let _ = mesh.client.get("api", "/").await;
    mesh.wait_ports("api", &[a.addr().port()]).await;
    let endpoints = mesh.endpoints("api").await;
    assert_eq!(
        endpoints[0]["identity"], "spiffe://cluster.local/ns/default/sa/api-sa",
        "{endpoints:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_resumes_from_its_version_without_losing_endpoints() {
    let kube = FakeKube::start(TOKEN).await;
    let (a, b) = two_backends(&kube, false).await;
    let mut mesh = mesh(kube).await;
    mesh.wait_answer("a").await;
    // The slices' watch sees one more event (b turns ready), then only other kinds change: its last
    // version is that event's, older than the API server's.
    let slices_version = (mesh.kube).apply(slice(
        "web-b",
        "web",
        b.addr().port(),
        &[endpoint("web-b", true)],
    ));
    mesh.wait_ready("web", b.addr().port()).await;
    mesh.kube.apply(pod("unrelated", "other", false));
    assert!(mesh.kube.version() > slices_version);
    eventually(DEADLINE, "three open watches", || async {
        let open: Vec<usize> = ["Service", "Pod", "EndpointSlice"]
            .map(|k| mesh.kube.open_watches(k))
            .into();
        if open == [1, 1, 1] { Ok(()) } else { Err(open) }
    })
    .await;

    mesh.kube.drop_watches();
    // Nothing is lost while the watches are away and when they come back.
    let spread = mesh.spread(20).await;
    assert!(spread.keys().all(|k| k == "a" || k == "b"), "{spread:?}");
    let slices = eventually(DEADLINE, "the slices' watch to come back", || async {
        let requests = mesh.kube.requests("EndpointSlice");
        if requests.watches.len() >= 2 {
            Ok(requests)
        } else {
            Err(requests)
        }
    })
    .await;
    // It resumed from the last version it saw (the last slice's), without listing again.
    assert_eq!(slices.lists, 1, "{slices:?}");
    assert_eq!(slices.watches[1], slices_version.to_string(), "{slices:?}");
    mesh.wait_ports("web", &[a.addr().port(), b.addr().port()])
        .await;

    // Changes after the break arrive through the resumed watch.
    let c = HttpBackend::respond(|_| text_response(200, "c")).await;
    mesh.kube.apply(pod("web-c", "web", false));
    mesh.kube.apply(slice(
        "web-c",
        "web",
        c.addr().port(),
        &[endpoint("web-c", true)],
    ));
    mesh.wait_ready("web", c.addr().port()).await;
    assert_eq!(mesh.kube.requests("EndpointSlice").lists, 1);
    let spread = mesh.spread(30).await;
    assert!(
        spread.keys().all(|k| ["a", "b", "c"].contains(&k.as_str())),
        "{spread:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_relists_and_keeps_serving_the_last_endpoints_meanwhile() {
    let kube = FakeKube::start(TOKEN).await;
    let (a, b) = two_backends(&kube, true).await;
    let mut mesh = mesh(kube).await;
    mesh.wait_served().await;
    mesh.wait_ports("web", &[a.addr().port(), b.addr().port()])
        .await;

    // The watches get 410 Gone, and the relist they start is held by the API server.
    mesh.kube.pause_lists();
    mesh.kube.expire_watches();
    eventually(DEADLINE, "the slices' relist to be waiting", || async {
        let requests = mesh.kube.requests("EndpointSlice");
        if requests.lists >= 2 {
            Ok(())
        } else {
            Err(requests)
        }
    })
    .await;
    // Meanwhile `b` is scaled down; nobody watches to hear it.
    mesh.kube.delete("EndpointSlice", "default", "web-b");
    // Until the list completes, the control plane keeps the last known endpoints: every request is
    // served, and the proxy still holds both endpoints, ready (which of them the balancer picks is its
    // business).
    let spread = mesh.spread(30).await;
    assert!(spread.keys().all(|k| k == "a" || k == "b"), "{spread:?}");
    let endpoints = mesh.endpoints("web").await;
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert!(
        endpoints.iter().all(|e| e["ready"] == true),
        "{endpoints:?}"
    );
    assert!(
        mesh.kube.requests("EndpointSlice").lists >= 2,
        "the relist is still held"
    );

    // The list completes: only the difference applies, `b` leaves.
    mesh.kube.resume_lists();
    mesh.wait_ports("web", &[a.addr().port()]).await;
    let spread = mesh.spread(20).await;
    assert_eq!(spread, BTreeMap::from([("a".to_owned(), 20)]), "{spread:?}");
    let lists = mesh
        .cp
        .metric(
            "shoal_cp_kubernetes_lists_total",
            &[("kind", "endpointslices")],
        )
        .await;
    assert_eq!(lists, 2.0, "the first list and the relist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookmark_moves_the_resume_point_so_no_relist_is_needed() {
    let kube = FakeKube::start(TOKEN).await;
    let (a, b) = two_backends(&kube, true).await;
    let mut mesh = mesh(kube).await;
    mesh.wait_served().await;
    mesh.wait_ports("web", &[a.addr().port(), b.addr().port()])
        .await;
    eventually(DEADLINE, "three open watches", || async {
        let open: Vec<usize> = ["Service", "Pod", "EndpointSlice"]
            .map(|k| mesh.kube.open_watches(k))
            .into();
        if open == [1, 1, 1] { Ok(()) } else { Err(open) }
    })
    .await;
    // Other objects change: the slices' watch sees none of it, its last version falls behind.
    mesh.kube.apply(pod("unrelated", "other", false));
    mesh.kube.apply(service("unrelated", "10.96.0.99"));
    let current = mesh.kube.version();

    // A bookmark carries the current version; then history before it is compacted and the watches end
    // (their timeout). Resuming from the bookmark needs no relist; from the last event it would get 410.
    mesh.kube.bookmark();
    mesh.kube.compact();
    mesh.kube.end_watches();
    let slices = eventually(DEADLINE, "the slices' watch to come back", || async {
        let requests = mesh.kube.requests("EndpointSlice");
        if requests.watches.len() >= 2 {
            Ok(requests)
        } else {
            Err(requests)
        }
    })
    .await;
    assert_eq!(slices.watches[1], current.to_string(), "{slices:?}");
    assert_eq!(slices.lists, 1, "{slices:?}");
    // Still serving, and still following changes.
    mesh.kube.delete("EndpointSlice", "default", "web-b");
    mesh.wait_ports("web", &[a.addr().port()]).await;
    assert_eq!(mesh.kube.requests("EndpointSlice").lists, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_cannot_work_stop_start_up_naming_them() {
    let dir = TempDir::new("kube-refusals").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let missing = dir.path().join("missing");
    let (token, missing) = (token.display().to_string(), missing.display().to_string());
    let cases: [(&[(&str, &str)], &str); 4] = [
        // A Kubernetes setting without the switch would do nothing.
        (
            &[("SHOAL_CP_KUBERNETES_TOKEN_FILE", &token)],
            "SHOAL_CP_KUBERNETES_TOKEN_FILE",
        ),
        // Outside a pod there is no API server to default to.
        (
            &[("SHOAL_CP_KUBERNETES", "true")],
            "SHOAL_CP_KUBERNETES_API_URL",
        ),
        (
            &[
                ("SHOAL_CP_KUBERNETES", "true"),
                ("SHOAL_CP_KUBERNETES_API_URL", "http://127.0.0.1:1"),
                ("SHOAL_CP_KUBERNETES_TOKEN_FILE", &missing),
            ],
            "SHOAL_CP_KUBERNETES_TOKEN_FILE",
        ),
        (
            &[
                ("SHOAL_CP_KUBERNETES", "true"),
                ("SHOAL_CP_KUBERNETES_API_URL", "https://127.0.0.1:1"),
                ("SHOAL_CP_KUBERNETES_TOKEN_FILE", &token),
                ("SHOAL_CP_KUBERNETES_CA_FILE", &missing),
            ],
            "SHOAL_CP_KUBERNETES_CA_FILE",
        ),
    ];
    for (settings, named) in cases {
        let mut builder = ControlPlaneBuilder::new();
        for (k, v) in settings {
            builder = builder.env(k, v);
        }
        let error = match builder.try_start().await {
            Ok(_) => panic!("started with {settings:?}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(named), "{settings:?}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_is_verified_with_the_ca_file_over_tls() {
    let cluster_ca = TestCa::new("cluster");
    let leaf = cluster_ca.issue_for_ip("127.0.0.1".parse().unwrap());
    let kube = FakeKube::start_tls(TOKEN, &leaf).await;
    let (a, _b) = two_backends(&kube, false).await;
    let mut mesh = mesh_with(kube, Some(cluster_ca.root_pem())).await;
    mesh.wait_answer("a").await;
    mesh.wait_ready("web", a.addr().port()).await;

    // Another CA: the API server is not trusted. The CA's Secret cannot be read, so the control plane does not
    // start (it never makes a CA of its own while the shared one may exist), and says so; nothing got through.
    let other = TestCa::new("someone else");
    let kube = FakeKube::start_tls(TOKEN, &leaf).await;
    two_backends(&kube, true).await;
    let dir = TempDir::new("kube-untrusted").unwrap();
    let (token_file, ca_file) = (dir.path().join("token"), dir.path().join("ca.crt"));
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::write(&ca_file, other.root_pem()).unwrap();
    let started = ControlPlaneBuilder::new()
        .env("SHOAL_CP_KUBERNETES", "true")
        .env("SHOAL_CP_KUBERNETES_API_URL", kube.url())
        .env("SHOAL_CP_KUBERNETES_TOKEN_FILE", token_file.display())
        .env("SHOAL_CP_KUBERNETES_CA_FILE", ca_file.display())
        .env("SHOAL_CP_CA_STATE_TIMEOUT", "2s")
        .try_start()
        .await;
    let error = match started {
        Ok(_) => panic!("started although the API server is not trusted"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains(
            "the Secret shoal-system/shoal-ca-state could not be read or created for 2 s"
        ),
        "{error}"
    );
    assert!(kube.secret("shoal-system", "shoal-ca-state").is_none());
    assert_eq!(
        kube.requests("Service").lists,
        0,
        "no request got through TLS"
    );
}
