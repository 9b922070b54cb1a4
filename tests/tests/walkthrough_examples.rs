//! The manifests of docs/kubernetes-walkthrough.md (`docs/examples/walkthrough/`) are what the walkthrough says:
//! the Kubernetes ones pass `kubernetes-validate --strict` for the chart's oldest Kubernetes as written and once
//! injected (`shoalctl inject`, the webhook's mutation), each injected pod getting its projected token; the
//! traffic shift of step 5, as the Shoal `Route` custom resource (`route.yaml`, which also passes the CRD's
//! schema) and as the Gateway API `HTTPRoute` (`httproute.yaml`), is accepted by the real control plane in
//! Kubernetes mode (over the fake API server) and splits a real proxy's calls between web.yaml's Services.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};
use shoal_tests::HttpBackend;
use shoal_tests::admission::kubernetes_validate;
use shoal_tests::backend::text_response;
use shoal_tests::control_plane::shoalctl;
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{self, KubeMesh, TOKEN};
use shoal_tests::pki::TestCa;
use shoal_tests::process::TempDir;

const OLDEST_KUBERNETES: &str = "1.28.0";

fn example(name: &str) -> PathBuf {
    shoal_tests::proxy::workspace_root()
        .join("docs/examples/walkthrough")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthroughs_manifests_are_valid_and_injectable() {
    let manifests = ["namespace.yaml", "web.yaml", "client.yaml"].map(example);
    let paths: Vec<&std::path::Path> = manifests.iter().map(PathBuf::as_path).collect();
    kubernetes_validate(&paths, OLDEST_KUBERNETES).unwrap();

    let dir = TempDir::new("walkthrough").unwrap();
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, TestCa::new("mesh").root_pem()).unwrap();
    for name in ["web.yaml", "client.yaml"] {
        let text = std::fs::read_to_string(example(name)).unwrap();
        let out = shoalctl(
            "http://127.0.0.1:1",
            &[
                "inject",
                "-f",
                "-",
                "--trust-anchors",
                &anchors.display().to_string(),
            ],
            Some(&text),
        )
        .await
        .unwrap()
        .success();
        let injected = dir.path().join(format!("injected-{name}"));
        std::fs::write(&injected, &out.stdout).unwrap();
        kubernetes_validate(&[&injected], OLDEST_KUBERNETES).unwrap();
        // Every Deployment's pods certify themselves with a token projected for the chart's audience.
        let deployments = out.stdout.matches("kind: Deployment").count();
        assert!(deployments >= 1, "{name}: {}", out.stdout);
        assert_eq!(
            out.stdout.matches("audience: shoal").count(),
            deployments,
            "{name}: {}",
            out.stdout
        );
    }
}

/// `route.yaml` passes the `Route` CRD's OpenAPI schema (charts/shoal/crds), as the API server checks it at
/// `kubectl apply` (scripts/check-crd-examples.py, with jsonschema).
#[test]
fn the_walkthroughs_route_passes_its_crd_schema() {
    let root = shoal_tests::proxy::workspace_root();
    let out = std::process::Command::new("python3")
        .arg(root.join("scripts/check-crd-examples.py"))
        .arg(root.join("charts/shoal/crds"))
        .arg(root.join("docs/shoalctl.md"))
        .arg(example("route.yaml"))
        .output()
        .expect("python3 runs scripts/check-crd-examples.py (needs PyYAML and jsonschema)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: Route manifest") && stdout.contains("walkthrough/route.yaml passes"),
        "{stdout}"
    );
}

/// The YAML documents of a walkthrough file, as the API server receives them.
fn documents(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(example(name)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

/// The Services of web.yaml, as the API server holds them (a cluster IP assigned), each with an EndpointSlice
/// whose one endpoint is a backend answering what the Service's pods answer (`-text=v1`, `-text=v2`).
async fn web_services(kube: &FakeKube) -> Vec<HttpBackend> {
    let mut backends = Vec::new();
    let services = documents("web.yaml").into_iter();
    for (i, mut service) in services.filter(|d| d["kind"] == "Service").enumerate() {
        let name = service["metadata"]["name"].as_str().unwrap().to_owned();
        let answer = if name == "web" { "v1" } else { "v2" };
        let backend = HttpBackend::respond(move |_| text_response(200, answer)).await;
        let ip = format!("10.96.100.{}", 10 + i);
        service["spec"]["clusterIP"] = json!(ip);
        service["spec"]["clusterIPs"] = json!([ip]);
        kube.apply(service);
        let mut slice = kube_mesh::slice(&name, backend.addr().port());
        slice["metadata"]["namespace"] = json!("demo");
        kube.apply(slice);
        backends.push(backend);
    }
    assert_eq!(
        backends.len(),
        2,
        "web.yaml has the Services web and web-v2"
    );
    backends
}

/// 100 calls to `web.demo`, as step 5's loop makes them, until both versions answered: v1 most.
async fn wait_split(mesh: &mut KubeMesh) {
    let spread = mesh
        .wait_spread("web.demo", 100, |s| {
            s.len() == 2 && s.contains_key("v1") && s.contains_key("v2")
        })
        .await;
    assert!(spread["v1"] > spread["v2"], "a 90/10 split: {spread:?}");
}

/// Step 5: `route.yaml` (a Shoal `Route` custom resource) and, instead, `httproute.yaml` (a Gateway API
/// `HTTPRoute`) are accepted by the real control plane in Kubernetes mode and split `web.demo` between the
/// Services of web.yaml, nothing else applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthroughs_traffic_shift_is_accepted_and_splits() {
    let kube = FakeKube::start(TOKEN).await;
    let _backends = web_services(&kube).await;
    let mut mesh = KubeMesh::start(kube).await;
    mesh.wait_all("web.demo", "v1").await;

    let [route] = documents("route.yaml").try_into().unwrap();
    assert_eq!(route["apiVersion"], "shoal.io/v1alpha1");
    mesh.kube.apply(route);
    // `kubectl get routes.shoal.io -n demo`'s Accepted column.
    let condition = mesh
        .wait_condition_in("demo", "Route", "web", "True", 1)
        .await;
    assert_eq!(condition["reason"], "Accepted", "{condition}");
    wait_split(&mut mesh).await;

    // The alternative: the Route deleted (it would take precedence), the HTTPRoute applied.
    mesh.kube.delete("Route", "demo", "web");
    mesh.wait_all("web.demo", "v1").await;
    let [http_route] = documents("httproute.yaml").try_into().unwrap();
    mesh.kube.apply(http_route);
    let condition = kube_mesh::wait_parent(&mesh.kube, "demo", "web", "True", 1).await;
    assert_eq!(condition["reason"], "Accepted", "{condition}");
    wait_split(&mut mesh).await;
}
