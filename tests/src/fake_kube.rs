//! A fake Kubernetes API server speaking the real list/watch protocol, over HTTP/1.1 on 127.0.0.1 (plain, or
//! TLS with a test CA's certificate), for the control plane's Kubernetes source (`tests/tests/kube_discovery.rs`,
//! `kube_policy.rs`, `kube_gateway.rs`, `kube_ha.rs`), and for the Kubernetes mode of the control-plane
//! benchmark (`cp-bench kubernetes`, bench/cp/kube).
//!
//! It serves cluster-wide lists and watches of every kind in [`KINDS`]: Services (`/api/v1/services`), Pods
//! (`/api/v1/pods`), EndpointSlices (`/apis/discovery.k8s.io/v1/endpointslices`), Shoal's eight custom resources
//! (`/apis/shoal.io/v1alpha1/<plural>`) and the Gateway API's `HTTPRoute` and `GRPCRoute`; a kind is added by
//! one line there.
//!
//! - a list answers every object with the current `metadata.resourceVersion` (one counter for all kinds, as
//!   etcd's revision is); `metadata.generation` counts spec changes; `?limit=N` pages it as the API server does
//!   (`metadata.continue` names the next page; kube-rs asks for 500 objects at a time), each page listing the
//!   objects after the previous page's last one as they are now, under the first page's `resourceVersion` (a
//!   change in between is also in the watch from that version);
//! - `?watch=1&resourceVersion=N` answers a chunked stream of JSON watch events (`ADDED`, `MODIFIED`,
//!   `DELETED`): first every event of the kind after `N`, then each new one as it happens;
//!   `allowWatchBookmarks=true` lets [`FakeKube::bookmark`] send `BOOKMARK`s;
//! - a watch from a version older than the kept history ([`FakeKube::compact`]) gets one `ERROR` event with
//!   a `410 Gone` Status and ends, as the real API server answers;
//! - `PATCH .../namespaces/<ns>/<plural>/<name>/status` (JSON merge patch) changes only the status, sends
//!   `MODIFIED`, and is recorded ([`FakeKube::status_patches`]);
//! - Leases (`coordination.k8s.io/v1`), Secrets and ConfigMaps: get, create, update, with `409 Conflict` for a
//!   stale `resourceVersion` or an existing name, and JSON merge patches ([`FakeKube::lease`],
//!   [`FakeKube::secret`], [`FakeKube::config_map`], [`FakeKube::conflicts`]; [`FakeKube::fail`] makes them
//!   answer 503);
//! - every request must carry `Authorization: Bearer <token>` (401 otherwise);
//! - TokenReviews are answered by [`crate::fake_kube_tokenreview`] ([`FakeKube::token_reviews`]).
//!
//! And what a test needs to provoke: [`FakeKube::drop_watches`] cuts every watch connection without a
//! final chunk (a broken connection), [`FakeKube::end_watches`] ends them cleanly (a watch timeout),
//! [`FakeKube::expire_watches`] ends them with `410 Gone`,
//! [`FakeKube::pause_lists`] holds list requests until [`FakeKube::resume_lists`], [`FakeKube::uninstall`]
//! answers a kind 404 as for a CRD not installed (until [`FakeKube::install`]); and what it needs to
//! check: the lists and watches each kind received ([`FakeKube::requests`]), an object as it is now
//! ([`FakeKube::get`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::fake_kube_tokenreview::{self as token_review, TokenReviews};
use named::{named_path, named_resource};

#[path = "fake_kube_named.rs"]
mod named;

/// The kinds the fake serves: collection path, `kind`, `apiVersion`. A kind is named by `kind` alone where that
/// is unique, else as `group/Kind` (`shoal.io/Service`; plain `Service` is the core one).
const KINDS: [(&str, &str, &str); 13] = [
    ("/api/v1/services", "Service", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    ("/apis/shoal.io/v1alpha1/services", "Service", SHOAL),
    (
        "/apis/shoal.io/v1alpha1/endpointregistrations",
        "EndpointRegistration",
        SHOAL,
    ),
    ("/apis/shoal.io/v1alpha1/routes", "Route", SHOAL),
    (
        "/apis/shoal.io/v1alpha1/backendpolicies",
        "BackendPolicy",
        SHOAL,
    ),
    (
        "/apis/shoal.io/v1alpha1/authorizationpolicies",
        "AuthorizationPolicy",
        SHOAL,
    ),
    ("/apis/shoal.io/v1alpha1/ratelimits", "RateLimit", SHOAL),
    (
        "/apis/shoal.io/v1alpha1/faultinjections",
        "FaultInjection",
        SHOAL,
    ),
    ("/apis/shoal.io/v1alpha1/mirrors", "Mirror", SHOAL),
    (
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "HTTPRoute",
        GATEWAY,
    ),
    (
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        "GRPCRoute",
        GATEWAY,
    ),
];

/// The `apiVersion` of Shoal's custom resources.
pub const SHOAL: &str = "shoal.io/v1alpha1";
/// The `apiVersion` of the Gateway API kinds served.
pub const GATEWAY: &str = "gateway.networking.k8s.io/v1";

/// The collection path of a kind named `Kind` or `group/Kind` (see [`KINDS`]).
fn kind_path(name: &str) -> &'static str {
    let (group, kind) = match name.split_once('/') {
        Some((group, kind)) => (Some(group), kind),
        None => (None, name),
    };
    KINDS
        .iter()
        .find(|(_, k, api_version)| {
            *k == kind && group.is_none_or(|g| api_version.starts_with(&format!("{g}/")))
        })
        .unwrap_or_else(|| panic!("the fake does not serve {name}"))
        .0
}

/// A watch stream's next chunk, or `Err`: cut the connection.
type Chunk = Result<Bytes, std::io::Error>;
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// What a kind received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// Lists started (first pages; including any held by [`FakeKube::pause_lists`]).
    pub lists: usize,
    /// Further pages of a paged list (`continue`) received.
    pub pages: usize,
    /// The `resourceVersion` of each watch request, in order.
    pub watches: Vec<String>,
}

#[derive(Default)]
struct Kind {
    objects: BTreeMap<(String, String), Value>,
    /// Every event: its version, type and object.
    history: Vec<(u64, &'static str, Value)>,
    /// Open watches, and whether each asked for bookmarks (`allowWatchBookmarks=true`).
    watchers: Vec<(mpsc::UnboundedSender<Chunk>, bool)>,
    requests: Requests,
    /// Status patches received: namespace, name, body.
    status_patches: Vec<(String, String, Value)>,
}

struct State {
    version: u64,
    /// Watches from a version below this get `410 Gone` (history compacted).
    oldest: u64,
    kinds: BTreeMap<&'static str, Kind>,
    /// Namespaced objects read and written one by one (Leases, Secrets, ConfigMaps): by resource (`leases`,
    /// `secrets`, `configmaps`), namespace and name.
    named: BTreeMap<(&'static str, String, String), Value>,
    /// Writes refused with 409 Conflict, by resource.
    conflicts: BTreeMap<&'static str, usize>,
    /// Resources whose requests are answered `503 Service Unavailable` (see [`FakeKube::fail`]).
    failing: Vec<&'static str>,
    /// Requests received, by resource (`leases`, `secrets`, `configmaps`).
    named_requests: BTreeMap<&'static str, usize>,
    /// Kinds whose CRD is not installed ([`FakeKube::uninstall`]): answered 404, by collection path.
    uninstalled: Vec<&'static str>,
    /// Every authenticated request: its method and path with the query (for the RBAC check, kube_rbac.rs).
    calls: Vec<(http::Method, String)>,
}

/// The fake API server; stops when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    token: String,
    state: Arc<Mutex<State>>,
    lists_open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    scheme: &'static str,
    reviews: Arc<TokenReviews>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKube {
    /// Starts an empty API server on a free port of 127.0.0.1 that accepts the bearer `token`, over plain
    /// HTTP.
    pub async fn start(token: &str) -> Self {
        Self::start_with(token, None).await
    }

    /// [`Self::start`] over HTTPS, presenting `leaf` (a certificate for 127.0.0.1).
    pub async fn start_tls(token: &str, leaf: &crate::pki::Leaf) -> Self {
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(leaf.chain_der(), leaf.key_der())
            .expect("the fake API server's certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_with(token, Some(acceptor)).await
    }

    async fn start_with(token: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(Mutex::new(State {
            version: 100,
            oldest: 0,
            kinds: KINDS
                .iter()
                .map(|(path, ..)| (*path, Kind::default()))
                .collect(),
            named: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            failing: Vec::new(),
            named_requests: BTreeMap::new(),
            uninstalled: Vec::new(),
            calls: Vec::new(),
        }));
        let lists_open = watch::channel(true).0;
        let reviews = Arc::new(TokenReviews::default());
        let server = Server {
            reviews: reviews.clone(),
            state: state.clone(),
            token: token.to_owned(),
            lists_open: lists_open.subscribe(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            // The connections belong to the accept task: dropping the fake aborts it and so ends
            // them too, so a client's kept-alive connection cannot go on talking to a stopped server.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                while connections.try_join_next().is_some() {}
                let server = server.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(tls) => {
                            // A client that does not trust the certificate fails here.
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            token: token.to_owned(),
            state,
            lists_open,
            task,
            scheme,
            reviews,
        }
    }

    /// The tokens its TokenReview endpoint accepts, and the reviews it answered.
    pub fn token_reviews(&self) -> &TokenReviews {
        &self.reviews
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS), for `SHOAL_CP_KUBERNETES_API_URL`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The bearer token it accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED` to the watches of its kind); returns its new
    /// `resourceVersion`. As the API server does for kinds with a status subresource, the object keeps the
    /// status it had (a test writes status only through [`Self::patch_status`]'s path), and
    /// `metadata.generation` counts the changes of everything but the status and metadata (1 when created).
    pub fn apply(&self, mut object: Value) -> u64 {
        let path = path_of(&object);
        let key = key_of(&object);
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let kind = state.kinds.get_mut(path).unwrap();
        let generation = match kind.objects.get(&key) {
            None => 1,
            Some(old) => {
                let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
                if let Some(status) = old.get("status") {
                    object["status"] = status.clone();
                }
                if content(old) == content(&object) {
                    generation
                } else {
                    generation + 1
                }
            }
        };
        object["metadata"]["generation"] = json!(generation);
        let ty = if kind.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        kind.event(version, ty, object);
        version
    }

    /// Deletes the object of `kind` (`Service`, `Pod`, `EndpointSlice`, `Route`, `shoal.io/Service`, ...)
    /// `namespace/name` (`DELETED`).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let path = kind_path(kind);
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let table = state.kinds.get_mut(path).unwrap();
        let mut object = (table.objects)
            .remove(&(namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} to delete"));
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        table.event(version, "DELETED", object);
    }

    /// The object of `kind` `namespace/name` as the API server holds it now (with its status).
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let path = kind_path(kind);
        let state = self.state.lock().unwrap();
        (state.kinds[path].objects)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The status patches `kind` received, in order: the object's namespace, name and the patch's body.
    pub fn status_patches(&self, kind: &str) -> Vec<(String, String, Value)> {
        let path = kind_path(kind);
        self.state.lock().unwrap().kinds[path]
            .status_patches
            .clone()
    }

    /// The Lease `namespace/name`, if one was created.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.named("leases", namespace, name)
    }

    /// Every authenticated request so far (TokenReviews included): method, and path with its query.
    pub fn calls(&self) -> Vec<(http::Method, String)> {
        self.state.lock().unwrap().calls.clone()
    }

    /// How many Lease writes (create or update) were refused with `409 Conflict`.
    pub fn lease_conflicts(&self) -> usize {
        self.conflicts("leases")
    }

    /// The Secret `namespace/name`, if one was created (`data` values base64, as the API carries them).
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Value> {
        self.named("secrets", namespace, name)
    }

    /// The ConfigMap `namespace/name`, if one was created.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Value> {
        self.named("configmaps", namespace, name)
    }

    /// How many writes of `resource` (`leases`, `secrets`, `configmaps`) were refused with `409 Conflict`.
    pub fn conflicts(&self, resource: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.conflicts.get(resource).copied().unwrap_or(0)
    }

    /// How many requests for `resource` (`leases`, `secrets`, `configmaps`) arrived, answered or failed.
    pub fn named_requests(&self, resource: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.named_requests.get(resource).copied().unwrap_or(0)
    }

    /// Answers every request for `resource` (`leases`, `secrets`, `configmaps`) `503 Service Unavailable`
    /// while `failing` (an API server that cannot serve it).
    pub fn fail(&self, resource: &str, failing: bool) {
        let resource = named_resource(resource).expect("leases, secrets or configmaps");
        let mut state = self.state.lock().unwrap();
        state.failing.retain(|r| *r != resource);
        if failing {
            state.failing.push(resource);
        }
    }

    fn named(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = named_resource(resource)?;
        let state = self.state.lock().unwrap();
        (state.named)
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Sends every open watch that asked for bookmarks a `BOOKMARK` at the current version.
    pub fn bookmark(&self) {
        let mut state = self.state.lock().unwrap();
        let version = state.version;
        for (path, kind) in state.kinds.iter_mut() {
            let (_, name, api_version) = KINDS.iter().find(|(p, ..)| p == path).unwrap();
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "kind": name, "apiVersion": api_version,
                "metadata": {"resourceVersion": version.to_string()}
            }});
            let mut line = serde_json::to_vec(&bookmark).unwrap();
            line.push(b'\n');
            let line = Bytes::from(line);
            // Only to the watches that asked, as the API server does.
            (kind.watchers)
                .retain(|(w, bookmarks)| !*bookmarks || w.send(Ok(line.clone())).is_ok());
        }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.state.lock().unwrap().version
    }

    /// Forgets the history before the current version: a watch from an older version gets `410 Gone`.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.oldest = state.version;
    }

    /// [`Self::compact`], and every open watch gets `410 Gone` and ends.
    pub fn expire_watches(&self) {
        self.compact();
        let mut state = self.state.lock().unwrap();
        for kind in state.kinds.values_mut() {
            kind.send(&gone());
            kind.watchers.clear();
        }
    }

    /// Cuts every open watch connection in the middle of its chunked body.
    pub fn drop_watches(&self) {
        let mut state = self.state.lock().unwrap();
        for kind in state.kinds.values_mut() {
            for (watcher, _) in kind.watchers.drain(..) {
                let _ = watcher.send(Err(std::io::Error::other("connection cut by the test")));
            }
        }
    }

    /// Ends every open watch cleanly (its last chunk sent), as the API server does when a watch's
    /// `timeoutSeconds` runs out.
    pub fn end_watches(&self) {
        let mut state = self.state.lock().unwrap();
        for kind in state.kinds.values_mut() {
            kind.watchers.clear();
        }
    }

    /// Open watch connections of `kind` (`Service`, `Pod`, `EndpointSlice`, ...).
    pub fn open_watches(&self, kind: &str) -> usize {
        let path = kind_path(kind);
        let mut state = self.state.lock().unwrap();
        let watchers = &mut state.kinds.get_mut(path).unwrap().watchers;
        watchers.retain(|(w, _)| !w.is_closed());
        watchers.len()
    }

    /// Holds every list request from now until [`Self::resume_lists`].
    pub fn pause_lists(&self) {
        self.lists_open.send_replace(false);
    }

    /// Answers the held list requests, and later ones at once.
    pub fn resume_lists(&self) {
        self.lists_open.send_replace(true);
    }

    /// Answers lists and watches of `kind` (a custom resource) `404 page not found`, as the API server does
    /// for a CRD that is not installed, until [`Self::install`]; they are still counted in [`Self::requests`].
    pub fn uninstall(&self, kind: &str) {
        self.state.lock().unwrap().uninstalled.push(kind_path(kind));
    }

    /// Serves `kind` again (its CRD installed).
    pub fn install(&self, kind: &str) {
        let path = kind_path(kind);
        self.state
            .lock()
            .unwrap()
            .uninstalled
            .retain(|p| *p != path);
    }

    /// What `kind` (`Service`, `Pod`, `EndpointSlice`, ...) received so far.
    pub fn requests(&self, kind: &str) -> Requests {
        let path = kind_path(kind);
        self.state.lock().unwrap().kinds[path].requests.clone()
    }
}

impl Kind {
    fn event(&mut self, version: u64, ty: &'static str, object: Value) {
        self.send(&json!({"type": ty, "object": object}));
        self.history.push((version, ty, object));
    }

    /// Sends one watch event to every open watch, one JSON document per line.
    fn send(&mut self, event: &Value) {
        let mut line = serde_json::to_vec(event).unwrap();
        line.push(b'\n');
        let line = Bytes::from(line);
        self.watchers
            .retain(|(w, _)| w.send(Ok(line.clone())).is_ok());
    }
}

fn gone() -> Value {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410
    }})
}

fn path_of(object: &Value) -> &'static str {
    let kind = object["kind"].as_str().expect("the object names its kind");
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    KINDS
        .iter()
        .find(|(_, k, v)| *k == kind && *v == api_version)
        .unwrap_or_else(|| panic!("the fake does not serve {api_version} {kind}"))
        .0
}

/// What `metadata.generation` counts: the object without its metadata and status.
fn content(object: &Value) -> Value {
    let mut content = object.clone();
    if let Some(map) = content.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    content
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch.as_object() {
        Some(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let map = target.as_object_mut().unwrap();
            for (name, value) in fields {
                if value.is_null() {
                    map.remove(name);
                } else {
                    merge(map.entry(name.clone()).or_insert(Value::Null), value);
                }
            }
        }
        None => *target = patch.clone(),
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let text = |v: &Value| v.as_str().expect("metadata.name and namespace").to_owned();
    (text(&meta["namespace"]), text(&meta["name"]))
}

#[derive(Clone)]
struct Server {
    reviews: Arc<TokenReviews>,
    state: Arc<Mutex<State>>,
    token: String,
    lists_open: watch::Receiver<bool>,
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let bearer = format!("Bearer {}", self.token);
        if req
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            != Some(bearer.as_bytes())
        {
            return status(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let call = (req.method().clone(), req.uri().to_string());
        self.state.lock().unwrap().calls.push(call);
        if req.uri().path() == token_review::PATH {
            let (code, body) = self.reviews.handle(req).await;
            return json_response(code, &body);
        }
        let path = req.uri().path().to_owned();
        let path = path.as_str();
        if let Some((resource, namespace, name)) = named_path(path) {
            return self.named(req, resource, namespace, name).await;
        }
        if let Some((collection, namespace, name)) = status_path(path) {
            if req.method() != http::Method::PATCH {
                return status(StatusCode::METHOD_NOT_ALLOWED, "status: PATCH only");
            }
            return self.patch_status(req, collection, namespace, name).await;
        }
        let Some((path, kind, api_version)) = KINDS.iter().find(|(p, ..)| *p == path).copied()
        else {
            return status(
                StatusCode::NOT_FOUND,
                "the fake serves the kinds of fake_kube::KINDS (cluster-wide), their status, and Leases",
            );
        };
        {
            let mut state = self.state.lock().unwrap();
            if state.uninstalled.contains(&path) {
                state.kinds.get_mut(path).unwrap().requests.lists += 1;
                // Plain text, not a Status: the API server's answer for a path it does not serve.
                let body = Full::new(Bytes::from_static(b"404 page not found\n"));
                return Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                    .body(body.map_err(|never| match never {}).boxed_unsync())
                    .unwrap();
            }
        }
        let query: BTreeMap<String, String> = (req.uri().query().unwrap_or_default().split('&'))
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let watching = query.get("watch").is_some_and(|w| w == "1" || w == "true");
        if watching {
            let from = query.get("resourceVersion").cloned().unwrap_or_default();
            let bookmarks = query
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true");
            self.watch(path, &from, bookmarks)
        } else {
            self.list(path, kind, api_version, &query).await
        }
    }

    /// `PATCH .../namespaces/{ns}/{plural}/{name}/status` with a JSON merge patch: only the patch's
    /// `status` is applied (as the status subresource does), a `MODIFIED` event goes out, and the patch is
    /// recorded for [`FakeKube::status_patches`].
    async fn patch_status(
        &self,
        req: Request<Incoming>,
        collection: &'static str,
        namespace: String,
        name: String,
    ) -> Response<Body> {
        let merge_patch = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/merge-patch+json");
        let Ok(body) = req.into_body().collect().await else {
            return status(StatusCode::BAD_REQUEST, "unreadable body");
        };
        let Ok(patch) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
            return status(StatusCode::BAD_REQUEST, "the body is not JSON");
        };
        if !merge_patch {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the fake takes merge patches only",
            );
        }
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        let kind = state.kinds.get_mut(collection).unwrap();
        let key = (namespace.clone(), name.clone());
        let Some(object) = kind.objects.get_mut(&key) else {
            return status(StatusCode::NOT_FOUND, "no such object");
        };
        if let Some(patch_status) = patch.get("status") {
            merge(&mut object["status"], patch_status);
        }
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let object = object.clone();
        kind.status_patches.push((namespace, name, patch));
        kind.event(version, "MODIFIED", object.clone());
        json_response(StatusCode::OK, &object)
    }

    async fn list(
        &self,
        path: &'static str,
        kind: &str,
        api_version: &str,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let token = query.get("continue").filter(|t| !t.is_empty());
        let after = match token.map(|t| continue_token::parse(t)) {
            Some(None) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "continue: not a token of this fake",
                );
            }
            Some(Some(after)) => Some(after),
            None => None,
        };
        {
            let mut state = self.state.lock().unwrap();
            let requests = &mut state.kinds.get_mut(path).unwrap().requests;
            match after {
                Some(_) => requests.pages += 1,
                None => requests.lists += 1,
            }
        }
        let mut open = self.lists_open.clone();
        let _ = open.wait_for(|open| *open).await;
        let limit = (query.get("limit").and_then(|l| l.parse::<usize>().ok()))
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let state = self.state.lock().unwrap();
        let objects = &state.kinds[path].objects;
        let (version, rest) = match &after {
            Some((version, key)) => (
                *version,
                objects.range::<(String, String), _>((Bound::Excluded(key), Bound::Unbounded)),
            ),
            None => (state.version, objects.range::<(String, String), _>(..)),
        };
        let mut page: Vec<(&(String, String), &Value)> =
            rest.take(limit.saturating_add(1)).collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let mut metadata = json!({"resourceVersion": version.to_string()});
        if more && let Some((last, _)) = page.last() {
            metadata["continue"] = json!(continue_token::of(version, last));
        }
        let items: Vec<&Value> = page.into_iter().map(|(_, object)| object).collect();
        let list = json!({
            "kind": format!("{kind}List"), "apiVersion": api_version,
            "metadata": metadata,
            "items": items,
        });
        json_response(StatusCode::OK, &list)
    }

    fn watch(&self, path: &'static str, from: &str, bookmarks: bool) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel::<Chunk>();
        let mut state = self.state.lock().unwrap();
        let oldest = state.oldest;
        let kind = state.kinds.get_mut(path).unwrap();
        kind.requests.watches.push(from.to_owned());
        let from: u64 = from.parse().unwrap_or(0);
        if from < oldest {
            let mut line = serde_json::to_vec(&gone()).unwrap();
            line.push(b'\n');
            let _ = tx.send(Ok(Bytes::from(line)));
        } else {
            for (version, ty, object) in &kind.history {
                if *version > from {
                    let mut line =
                        serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap();
                    line.push(b'\n');
                    let _ = tx.send(Ok(Bytes::from(line)));
                }
            }
            kind.watchers.push((tx, bookmarks));
        }
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk.map(Frame::data), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(StreamBody::new(chunks).boxed_unsync())
            .unwrap()
    }
}

/// `<group path>/namespaces/{ns}/{plural}/{name}/status` of a served kind: its collection path, namespace and
/// name.
fn status_path(path: &str) -> Option<(&'static str, String, String)> {
    let rest = path.strip_suffix("/status")?;
    let (group, rest) = rest.split_once("/namespaces/")?;
    let mut parts = rest.split('/');
    let (namespace, plural, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let collection = format!("{group}/{plural}");
    let found = KINDS.iter().find(|(p, ..)| *p == collection)?.0;
    Some((found, namespace.to_owned(), name.to_owned()))
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(value).unwrap()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

/// A Status's `reason` as the API server spells it (clients match on it: kube-rs's `get_opt` on `NotFound`).
fn reason(code: StatusCode) -> String {
    match code {
        StatusCode::NOT_FOUND => "NotFound".to_owned(),
        StatusCode::CONFLICT => "Conflict".to_owned(),
        other => other.canonical_reason().unwrap_or("").replace(' ', ""),
    }
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason(code), "code": code.as_u16()
    });
    json_response(code, &body)
}

/// A paged list's `continue` token: the first page's version and the last object listed, hex-encoded (the
/// client sends it back in a query string; the API server's tokens are opaque too).
mod continue_token {
    /// The token after `last`, for a list at `version`.
    pub(super) fn of(version: u64, (namespace, name): &(String, String)) -> String {
        let raw = format!("{version}/{namespace}/{name}");
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// The version and last object a token names; `None` for anything [`of`] did not make.
    pub(super) fn parse(token: &str) -> Option<(u64, (String, String))> {
        let bytes: Option<Vec<u8>> = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect();
        let raw = String::from_utf8(bytes?).ok()?;
        let mut parts = raw.splitn(3, '/');
        let version = parts.next()?.parse().ok()?;
        let (namespace, name) = (parts.next()?, parts.next()?);
        Some((version, (namespace.to_owned(), name.to_owned())))
    }
}
