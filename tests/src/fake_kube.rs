//! A fake Kubernetes API server speaking the real list/watch protocol, over HTTP/1.1 on 127.0.0.1 (plain, or
//! TLS with a test CA's certificate), for the control plane's Kubernetes source (`tests/tests/kube_discovery.rs`).
//!
//! It serves cluster-wide lists and watches of Services (`/api/v1/services`), Pods (`/api/v1/pods`) and
//! EndpointSlices (`/apis/discovery.k8s.io/v1/endpointslices`):
//!
//! - a list answers every object with the current `metadata.resourceVersion` (one counter for all kinds, as
//!   etcd's revision is);
//! - `?watch=1&resourceVersion=N` answers a chunked stream of JSON watch events (`ADDED`, `MODIFIED`,
//!   `DELETED`): first every event of the kind after `N`, then each new one as it happens;
//!   `allowWatchBookmarks=true` lets [`FakeKube::bookmark`] send `BOOKMARK`s;
//! - a watch from a version older than the kept history ([`FakeKube::compact`]) gets one `ERROR` event with
//!   a `410 Gone` Status and ends, as the real API server answers;
//! - every request must carry `Authorization: Bearer <token>` (401 otherwise);
//! - TokenReviews are answered by [`crate::fake_kube_tokenreview`] ([`FakeKube::token_reviews`]).
//!
//! And what a test needs to provoke: [`FakeKube::drop_watches`] cuts every watch connection without a
//! final chunk (a broken connection), [`FakeKube::end_watches`] ends them cleanly (a watch timeout),
//! [`FakeKube::expire_watches`] ends them with `410 Gone`,
//! [`FakeKube::pause_lists`] holds list requests until [`FakeKube::resume_lists`]; and what it needs to
//! check: the lists and watches each kind received ([`FakeKube::requests`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
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

/// The kinds the fake serves: path, `kind`, `apiVersion`.
const KINDS: [(&str, &str, &str); 3] = [
    ("/api/v1/services", "Service", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
];

/// A watch stream's next chunk, or `Err`: cut the connection.
type Chunk = Result<Bytes, std::io::Error>;
type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// What a kind received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// List requests received (including any held by [`FakeKube::pause_lists`]).
    pub lists: usize,
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
}

struct State {
    version: u64,
    /// Watches from a version below this get `410 Gone` (history compacted).
    oldest: u64,
    kinds: BTreeMap<&'static str, Kind>,
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
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
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
    /// `resourceVersion`.
    pub fn apply(&self, mut object: Value) -> u64 {
        let path = path_of(&object);
        let key = key_of(&object);
        let mut state = self.state.lock().unwrap();
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let kind = state.kinds.get_mut(path).unwrap();
        let ty = if kind.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        kind.event(version, ty, object);
        version
    }

    /// Deletes the object of `kind` (`Service`, `Pod`, `EndpointSlice`) `namespace/name` (`DELETED`).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let path = KINDS
            .iter()
            .find(|(_, k, _)| *k == kind)
            .expect("a served kind")
            .0;
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

    /// Open watch connections of `kind` (`Service`, `Pod`, `EndpointSlice`).
    pub fn open_watches(&self, kind: &str) -> usize {
        let path = KINDS
            .iter()
            .find(|(_, k, _)| *k == kind)
            .expect("a served kind")
            .0;
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

    /// What `kind` (`Service`, `Pod`, `EndpointSlice`) received so far.
    pub fn requests(&self, kind: &str) -> Requests {
        let path = KINDS
            .iter()
            .find(|(_, k, _)| *k == kind)
            .expect("a served kind")
            .0;
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
    KINDS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .expect("a served kind")
        .0
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
        if req.uri().path() == token_review::PATH {
            let (code, body) = self.reviews.handle(req).await;
            return json_response(code, &body);
        }
        let path = req.uri().path();
        let Some((path, kind, api_version)) = KINDS.iter().find(|(p, ..)| *p == path).copied()
        else {
            return status(
                StatusCode::NOT_FOUND,
                "the fake serves services, pods and endpointslices only",
            );
        };
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
            self.list(path, kind, api_version).await
        }
    }

    async fn list(&self, path: &'static str, kind: &str, api_version: &str) -> Response<Body> {
        self.state
            .lock()
            .unwrap()
            .kinds
            .get_mut(path)
            .unwrap()
            .requests
            .lists += 1;
        let mut open = self.lists_open.clone();
        let _ = open.wait_for(|open| *open).await;
        let state = self.state.lock().unwrap();
        let items: Vec<&Value> = state.kinds[path].objects.values().collect();
        let list = json!({
            "kind": format!("{kind}List"), "apiVersion": api_version,
            "metadata": {"resourceVersion": state.version.to_string()},
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

fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": code.canonical_reason(), "code": code.as_u16()
    });
    json_response(code, &body)
}
