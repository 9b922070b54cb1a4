//! docs/metrics.md cannot drift from the binaries: it lists exactly the metric families the proxy
//! and the control plane name in their code, and a real scrape of both — a mesh with traffic: a
//! joined proxy with a certificate, a 50/50 split whose canary is retried, passthrough and inbound
//! requests — shows only listed families, each with its listed type and labels.

use std::collections::BTreeSet;

use shoal_tests::HttpBackend;
use shoal_tests::backend::text_response;
use shoal_tests::client::{H1Client, http1_get};
use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, service_yaml};
use shoal_tests::metrics_doc::{
    Family, documented_families, exposed_families, names_in_code, text,
};
use shoal_tests::proxy::workspace_root;

fn labels(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn the_page_lists_every_family_the_code_names_and_no_other() {
    let root = workspace_root();
    let mut code = names_in_code(&root.join("proxy/src"));
    code.extend(names_in_code(&root.join("control-plane/src")));
    assert!(
        code.contains("shoal_requests_total") && code.contains("shoal_cp_pushes_total"),
        "the scan of the sources found too little: {code:?}"
    );
    let doc: BTreeSet<String> = documented_families(&text()).into_keys().collect();
    let missing: Vec<_> = code.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&code).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/metrics.md is out of date: not listed {missing:?}; listed but not in the code {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_of_a_mesh_shows_only_listed_families_with_their_types_and_labels() {
    let v1 = HttpBackend::respond(|_| text_response(200, "v1")).await;
    // The canary fails every first attempt (a retry carries `shoal-attempt`), so the rule's
    // retry policy sends a retry.
    let v2 = HttpBackend::respond(|r| match r.header("shoal-attempt") {
        None => text_response(503, "busy"),
        Some(_) => text_response(200, "v2"),
    })
    .await;
    let cp = ControlPlaneBuilder::new().start().await;
    cp.apply(&format!(
        "{}---\n{}---\nkind: Route\nmetadata: {{name: web}}\nspec:\n  parent_service: web\n  rules:\n  \
         - backends: [{{service: web, weight: 50}}, {{service: web-v2, weight: 50}}]\n    \
         retry: {{attempts: 2, retry_on: [service_unavailable]}}\n",
        service_yaml("web", 80, &[v1.addr()]),
        service_yaml("web-v2", 80, &[v2.addr()])
    ))
    .await
    .success();
    let proxy = cp
        .joining_proxy("doc-proxy", "frontend", None)
        .await
        .inbound_explicit(v1.addr())
        .start()
        .await;

    let mut client = MeshClient::new(proxy.outbound());
    for _ in 0..40 {
        let body = client.body("web").await.unwrap();
        assert!(body == "v1" || body == "v2", "{body}");
    }
    assert!(v2.count() > 0, "the split sent nothing to web-v2");
    let retries = proxy
        .metric("shoal_retries_total", &[("service", "web.default")])
        .await;
    assert!(retries > 0.0, "no retry was sent");
    // Passthrough: an address the mesh does not know.
    let direct = http1_get(proxy.outbound(), &v1.addr().to_string(), "/")
        .await
        .unwrap();
    assert_eq!(direct.status, 200);
    let mut inbound = H1Client::connect(proxy.inbound()).await.unwrap();
    assert_eq!(inbound.get("app", "/").await.unwrap().status, 200);
    proxy
        .wait_metric(
            "shoal_requests_total",
            &[("direction", "inbound"), ("status_code", "200")],
            1.0,
        )
        .await;

    let documented = documented_families(&text());
    let mut seen = BTreeSet::new();
    for (source, exposition) in [
        ("shoal-proxy", proxy.metrics().await),
        ("shoal-control-plane", cp.metrics().await),
    ] {
        for (name, family) in exposed_families(&exposition) {
            let Some(listed) = documented.get(&name) else {
                panic!(
                    "{source} exports {name}, which docs/metrics.md does not list:\n{exposition}"
                );
            };
            assert_eq!(
                family.kind, listed.kind,
                "{source}'s {name}: type in the exposition vs docs/metrics.md"
            );
            // Every label a series carries is listed; every listed label was seen on some series
            // when the family's every kind of series was exercised here (the request families).
            assert!(
                family.labels.is_subset(&listed.labels),
                "{source}'s {name} has labels {:?}; docs/metrics.md lists {:?}",
                family.labels,
                listed.labels
            );
            seen.insert(name);
        }
    }
    let request_labels = labels(&[
        "direction",
        "service",
        "route",
        "backend",
        "tls",
        "status_code",
        "reason",
    ]);
    let proxy_families = exposed_families(&proxy.metrics().await);
    assert_eq!(
        proxy_families["shoal_requests_total"],
        Family {
            kind: "counter".into(),
            labels: request_labels
        }
    );
    // What this scrape must have exercised, so the checks above were not vacuous.
    for name in [
        "shoal_requests_total",
        "shoal_request_duration_seconds",
        "shoal_retries_total",
        "shoal_retries_recovered_total",
        "shoal_retries_skipped_total",
        "shoal_tcp_connections_opened_total",
        "shoal_protocol_detections_total",
        "shoal_discovery_connected",
        "shoal_identity_certificate_expiry_seconds",
        "shoal_cp_connected_proxies",
        "shoal_cp_pushes_total",
        "shoal_cp_push_ack_seconds",
        "shoal_cp_certificates_issued_total",
        "shoal_cp_admin_requests_total",
    ] {
        assert!(seen.contains(name), "the scrape had no {name}: {seen:?}");
    }
}
