//! A mesh fed from the fake API server, for the tests of policy from Kubernetes (`tests/tests/kube_policy.rs`,
//! `kube_gateway.rs`, `kube_ha.rs`): the real control plane in Kubernetes mode, a real proxy, Services whose
//! EndpointSlices point at real backends, and the objects' status as the control plane wrote it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend::text_response;
use crate::control_plane::{ControlPlane, ControlPlaneBuilder, MeshClient};
use crate::fake_kube::FakeKube;
use crate::process::TempDir;
use crate::wait::eventually;
use crate::{HttpBackend, Proxy};

/// How long the tests wait for anything.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// The bearer token the fake accepts.
pub const TOKEN: &str = "test-service-account-token";

/// A Service `name` in `default` with port 80 (target: the named port `http`) and the cluster IP `ip`.
pub fn service(name: &str, ip: &str) -> Value {
    json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
        ]}
    })
}

/// The EndpointSlice of Service `service` with one ready endpoint, 127.0.0.1:`port`.
pub fn slice(service: &str, port: u16) -> Value {
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": service, "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true, "serving": true}}]
    })
}

/// The Service `web` (cluster IP 10.96.0.10), its meshed pod `web-0` (service account `web`, the proxy as a native
/// sidecar) and an EndpointSlice whose one endpoint, 127.0.0.1:`port`, is that pod: `web`'s endpoint gets the
/// SPIFFE id of service account `web` (the tests of Kubernetes identity).
pub fn publish_meshed_web(kube: &FakeKube, port: u16) {
    kube.apply(service("web", "10.96.0.10"));
    kube.apply(json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "web-0", "namespace": "default"},
        "spec": {"serviceAccountName": "web",
                 "initContainers": [{"name": "shoal-init", "image": "shoal"}, {"name": "shoal-proxy", "image": "shoal"}],
                 "containers": [{"name": "app", "image": "app"}]}
    }));
    kube.apply(json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": "web-0", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-0"}}]
    }));
}

/// The Service `name` (cluster IP `ip`) served by a backend answering `name`.
pub async fn backend_service(kube: &FakeKube, name: &str, ip: &str) -> HttpBackend {
    let body = name.to_owned();
    let backend = HttpBackend::respond(move |_| text_response(200, &body)).await;
    kube.apply(service(name, ip));
    kube.apply(slice(name, backend.addr().port()));
    backend
}

/// A Shoal custom resource of `kind` `default/name`.
pub fn shoal(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "shoal.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec
    })
}

/// The `Accepted` condition in `conditions`, if any.
pub fn accepted(conditions: &Value) -> Option<Value> {
    (conditions.as_array()?.iter())
        .find(|c| c["type"] == "Accepted")
        .cloned()
}

/// The control plane watching `kube`, a proxy fed by it, and a client of the proxy.
pub struct KubeMesh {
    /// The fake API server.
    pub kube: FakeKube,
    /// The control plane.
    pub cp: ControlPlane,
    /// The proxy.
    pub proxy: Proxy,
    /// A client of the proxy's outbound listener.
    pub client: MeshClient,
    _dir: TempDir,
}

/// A control plane in Kubernetes mode on `kube`, not started: its token to the API server in `dir`/token.
pub fn control_plane_builder(kube: &FakeKube, dir: &std::path::Path) -> ControlPlaneBuilder {
    let token_file = dir.join("token");
    std::fs::write(&token_file, kube.token()).unwrap();
    ControlPlaneBuilder::new()
        .env("SHOAL_CP_KUBERNETES", "true")
        .env("SHOAL_CP_KUBERNETES_API_URL", kube.url())
        .env("SHOAL_CP_KUBERNETES_TOKEN_FILE", token_file.display())
}

/// A proxy of `default/<service_account>` for `cp` certifying itself with the Kubernetes token in `file`, as
/// an injected sidecar does.
pub fn token_proxy(
    cp: &ControlPlane,
    id: &str,
    service_account: &str,
    file: &std::path::Path,
) -> crate::ProxyBuilder {
    cp.proxy_builder(id)
        .env("SHOAL_SERVICE_ACCOUNT", service_account)
        .env("SHOAL_IDENTITY_TOKEN_FILE", file.display())
        .env("SHOAL_IDENTITY_TOKEN_KIND", "kubernetes")
}

/// A control plane in Kubernetes mode on `kube`, started and synced.
pub async fn control_plane(kube: &FakeKube, dir: &TempDir, env: &[(&str, &str)]) -> ControlPlane {
    let mut cp = control_plane_builder(kube, dir.path());
    for (k, v) in env {
        cp = cp.env(k, v);
    }
    let cp = cp.start().await;
    cp.wait_for_log(DEADLINE, "the policies' first sync", |l| {
        l.contains("kubernetes policies synced")
    })
    .await;
    cp
}

impl KubeMesh {
    /// The mesh on `kube`.
    pub async fn start(kube: FakeKube) -> Self {
        let dir = TempDir::new("kube-mesh").unwrap();
        let cp = control_plane(&kube, &dir, &[]).await;
        let proxy = cp.proxy_builder("kube-proxy").start().await;
        let client = MeshClient::new(proxy.outbound());
        Self {
            kube,
            cp,
            proxy,
            client,
            _dir: dir,
        }
    }

    /// `n` requests to `host`: how many each answer got (a failure counts under its error).
    pub async fn spread(&mut self, host: &str, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let answer = match self.client.body(host).await {
                Ok(body) => body,
                Err(e) => format!("failed: {e}"),
            };
            *seen.entry(answer).or_default() += 1;
        }
        seen
    }

    /// Waits until the answers to `n` requests to `host` satisfy `done`; returns them.
    pub async fn wait_spread(
        &mut self,
        host: &str,
        n: usize,
        done: impl Fn(&BTreeMap<String, usize>) -> bool,
    ) -> BTreeMap<String, usize> {
        let mut last = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while tokio::time::Instant::now() < deadline {
            last = self.spread(host, n).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("requests to {host} never got the expected answers: {last:?}");
    }

    /// Waits until 10 requests to `host` are all answered by `only`.
    pub async fn wait_all(&mut self, host: &str, only: &str) {
        self.wait_spread(host, 10, |s| s.len() == 1 && s.contains_key(only))
            .await;
    }

    /// Waits until the object's `Accepted` condition (Shoal custom resource in `default`: `status.conditions`)
    /// has `status` and `observedGeneration` `generation`; returns it.
    pub async fn wait_condition(
        &self,
        kind: &str,
        name: &str,
        status: &str,
        generation: u64,
    ) -> Value {
        self.wait_condition_in("default", kind, name, status, generation)
            .await
    }

    /// [`Self::wait_condition`] for an object in `namespace`.
    pub async fn wait_condition_in(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        status: &str,
        generation: u64,
    ) -> Value {
        eventually(
            DEADLINE,
            &format!("{kind} {namespace}/{name}: Accepted={status} at generation {generation}"),
            || async {
                let object = self.kube.get(kind, namespace, name);
                let status_field = object.as_ref().map(|o| o["status"].clone());
                let condition = status_field
                    .as_ref()
                    .and_then(|s| accepted(&s["conditions"]));
                match &condition {
                    Some(c)
                        if c["status"] == status
                            && c["observedGeneration"] == generation
                            && status_field.as_ref().unwrap()["observedGeneration"]
                                == generation =>
                    {
                        Ok(c.clone())
                    }
                    _ => Err(status_field),
                }
            },
        )
        .await
    }
}

/// Shoal's entry in the `status.parents` of the `kind` (`HTTPRoute`, `GRPCRoute`) `namespace/name`, once its
/// `Accepted` condition has `status` at `generation`.
pub async fn wait_route_parent(
    kube: &FakeKube,
    kind: &str,
    namespace: &str,
    name: &str,
    status: &str,
    generation: u64,
) -> Value {
    eventually(
        DEADLINE,
        &format!("{kind} {namespace}/{name}: Accepted={status} at generation {generation}"),
        || async {
            let object = kube.get(kind, namespace, name).unwrap();
            let parents = object["status"]["parents"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ours = parents
                .into_iter()
                .find(|p| p["controllerName"] == "shoal.io/mesh");
            match ours {
                Some(p)
                    if accepted(&p["conditions"]).is_some_and(|c| {
                        c["status"] == status && c["observedGeneration"] == generation
                    }) =>
                {
                    Ok(p)
                }
                _ => Err(object["status"].clone()),
            }
        },
    )
    .await
}

/// The `Accepted` condition of Shoal's entry in the `HTTPRoute` `namespace/name`'s `status.parents`, once it has
/// `status` at `generation` (the entry's `parentRef` names the Service `web`).
pub async fn wait_parent(
    kube: &FakeKube,
    namespace: &str,
    name: &str,
    status: &str,
    generation: u64,
) -> Value {
    let parent = wait_route_parent(kube, "HTTPRoute", namespace, name, status, generation).await;
    assert_eq!(parent["parentRef"]["name"], "web");
    accepted(&parent["conditions"]).expect("the Accepted condition")
}
