//! The chart's RBAC against what the control plane really asks the API server: the real control plane in
//! Kubernetes mode runs against the fake API server (discovery, a Shoal `Route` and an `HTTPRoute` whose status
//! it writes, a proxy certified with a projected token through TokenReview, the HA Lease, join tokens in their
//! shared Secret), the fake records
//! every request, and each one must be allowed by the `ClusterRole` or the release namespace's `Role` that
//! `helm template` renders from charts/shoal/templates/rbac.yaml. A call the chart forgot is a control plane
//! that fails on a real cluster with 403s (issue 15: "least-privilege RBAC").

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use shoal_tests::fake_kube::FakeKube;
use shoal_tests::kube_mesh::{KubeMesh, TOKEN, backend_service, shoal};
use shoal_tests::process::TempDir;
use shoal_tests::wait::eventually;

/// The release namespace of the rendering, and the control plane's own (`SHOAL_CP_NAMESPACE`'s default).
const NAMESPACE: &str = "shoal-system";
const DEADLINE: Duration = Duration::from_secs(20);

/// One RBAC rule: `(apiGroups, resources, verbs, resourceNames)`.
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

/// The rules of the `ClusterRole` and of the `Role` that `helm template` renders with the default values.
fn chart_rules() -> (Vec<Rule>, Vec<Rule>) {
    let (_, docs) = shoal_tests::helm::template(&["--show-only", "templates/rbac.yaml"]);
    let rules_of = |kind: &str| -> Vec<Rule> {
        let strings = |v: &Value| -> Vec<String> {
            (v.as_array().into_iter().flatten())
                .map(|s| s.as_str().unwrap().to_owned())
                .collect()
        };
        let doc = (docs.iter())
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("rbac.yaml renders no {kind}"));
        (doc["rules"].as_array().into_iter().flatten())
            .map(|r| Rule {
                groups: strings(&r["apiGroups"]),
                resources: strings(&r["resources"]),
                verbs: strings(&r["verbs"]),
                names: strings(&r["resourceNames"]),
            })
            .collect()
    };
    (rules_of("ClusterRole"), rules_of("Role"))
}

/// What RBAC sees of a request: API group, resource (with `/subresource`), namespace, name and verb.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Attributes {
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    verb: String,
}

/// The attributes of `method` `uri` as the API server's request-info resolver reads them.
fn attributes(method: &Method, uri: &str) -> Attributes {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let watching = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let (group, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        (String::new(), rest)
    } else {
        let rest = path
            .strip_prefix("/apis/")
            .unwrap_or_else(|| panic!("{uri}"));
        let mut parts = rest.splitn(3, '/');
        let (group, _version) = (parts.next().unwrap(), parts.next().unwrap());
        (group.to_owned(), parts.next().unwrap_or_default())
    };
    let mut parts: Vec<&str> = rest.split('/').collect();
    let namespace = if parts.first() == Some(&"namespaces") && parts.len() > 2 {
        let ns = parts[1].to_owned();
        parts.drain(..2);
        Some(ns)
    } else {
        None
    };
    let (resource, name, sub) = (parts[0], parts.get(1), parts.get(2));
    let verb = match (method.clone(), name.is_some()) {
        (Method::GET, _) if watching => "watch",
        (Method::GET, true) => "get",
        (Method::GET, false) => "list",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        (other, _) => panic!("unexpected method {other} {uri}"),
    };
    Attributes {
        group,
        resource: match sub {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        },
        namespace,
        name: name.map(|n| (*n).to_owned()),
        verb: verb.to_owned(),
    }
}

fn allows(rule: &Rule, a: &Attributes) -> bool {
    let has = |list: &[String], item: &str| list.iter().any(|x| x == item || x == "*");
    has(&rule.groups, &a.group)
        && has(&rule.resources, &a.resource)
        && has(&rule.verbs, &a.verb)
        && (rule.names.is_empty() || a.name.as_ref().is_some_and(|n| rule.names.contains(n)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_the_control_plane_makes_is_allowed_by_the_charts_rbac() {
    let (cluster_rules, namespace_rules) = chart_rules();
    let mesh = KubeMesh::start(FakeKube::start(TOKEN).await).await;
    let kube = &mesh.kube;
    let _web = backend_service(kube, "web", "10.96.0.10").await;
    let _canary = backend_service(kube, "web-canary", "10.96.0.11").await;

    // A Shoal Route and an HTTPRoute for the same Service: both get a status (the HTTPRoute `Conflicted`).
    kube.apply(shoal(
        "Route",
        "web",
        json!({"parent_service": "web", "rules": [{"backends": [{"service": "web", "weight": 1}]}]}),
    ));
    mesh.wait_condition("Route", "web", "True", 1).await;
    kube.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": null}],
                 "rules": [{"backendRefs": [{"name": "web-canary", "port": 80}]}]}
    }));
    eventually(DEADLINE, "the HTTPRoute's status.parents", || async {
        let route = kube.get("HTTPRoute", "default", "web");
        match route.as_ref().map(|r| r["status"]["parents"].clone()) {
            Some(Value::Array(parents)) if !parents.is_empty() => Ok(()),
            other => Err(other),
        }
    })
    .await;

    // A proxy certified with a projected token: a TokenReview.
    kube.token_reviews()
        .register("web-token", "default", "web", "web-0", &["shoal"]);
    let dir = TempDir::new("kube-rbac").unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "web-token").unwrap();
    let proxy = mesh
        .cp
        .proxy_builder("web-0.default")
        .env("SHOAL_SERVICE_ACCOUNT", "web")
        .env("SHOAL_IDENTITY_TOKEN_FILE", token_file.display())
        .env("SHOAL_IDENTITY_TOKEN_KIND", "kubernetes")
        .start()
        .await;
    assert!(proxy.config().await["identity"]["spiffe_id"].is_string());

    // Join tokens, in their shared Secret: the first created (a create), the second added (a get and an update).
    mesh.cp.join_token("web", None).await;
    mesh.cp.join_token("web", None).await;

    // The Lease: created, then renewed (an update) at least once.
    eventually(DEADLINE, "the Lease created and renewed", || async {
        let calls = kube.calls();
        let renewed = (calls.iter()).any(|(m, uri)| *m == Method::PUT && uri.contains("/leases/"));
        if kube.lease(NAMESPACE, "shoal-control-plane").is_some() && renewed {
            Ok(())
        } else {
            Err(calls.len())
        }
    })
    .await;

    let calls: std::collections::BTreeSet<Attributes> = (kube.calls().iter())
        .map(|(method, uri)| attributes(method, uri))
        .collect();
    let denied: Vec<&Attributes> = (calls.iter())
        .filter(|a| {
            let cluster = cluster_rules.iter().any(|r| allows(r, a));
            let namespaced = a.namespace.as_deref() == Some(NAMESPACE)
                && namespace_rules.iter().any(|r| allows(r, a));
            !(cluster || namespaced)
        })
        .collect();
    assert!(
        denied.is_empty(),
        "calls the chart's RBAC does not allow: {denied:#?}"
    );
    // The test saw each kind of call the rules are for.
    let saw = |group: &str, resource: &str, verb: &str| {
        assert!(
            (calls.iter()).any(|a| a.group == group && a.resource == resource && a.verb == verb),
            "no {verb} of {group}/{resource} in {calls:#?}"
        );
    };
    for (group, resource) in [
        ("", "services"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        ("shoal.io", "routes"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("gateway.networking.k8s.io", "grpcroutes"),
    ] {
        saw(group, resource, "list");
        saw(group, resource, "watch");
    }
    saw("shoal.io", "routes/status", "patch");
    saw("gateway.networking.k8s.io", "httproutes/status", "patch");
    saw("authentication.k8s.io", "tokenreviews", "create");
    saw("coordination.k8s.io", "leases", "update");
    saw("", "secrets", "update");
}
