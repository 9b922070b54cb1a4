//! A real proxy against a hand-driven discovery server (a tonic `Discovery` service the test
//! answers message by message): one push carries an endpoint update and a route the proxy cannot
//! compile. The endpoint update applies (traffic reaches the new endpoint), the route alone is
//! NACKed by key with an error naming it and its field, and the last good route keeps routing.
//! The control plane's own validation refuses such a route at `apply`, so only a hand-driven
//! server can push one; `mesh_nack.rs` has a NACK through the real control plane, of what only
//! the proxy can judge (a trust bundle that does not verify its own certificate).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::v1::{
    self, ResourceType, discovery_request::Request as Req, discovery_resource::Payload,
};
use shoal_tests::backend::text_response;
use shoal_tests::control_plane::MeshClient;
use shoal_tests::{HttpBackend, ProxyBuilder};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(10);

type Outbound = mpsc::Sender<Result<v1::DiscoveryResponse, Status>>;

/// Hands every request of the (one) stream to the test, and lets it send responses.
#[derive(Clone)]
struct HandDriven {
    requests: mpsc::UnboundedSender<v1::DiscoveryRequest>,
    responses: Arc<Mutex<Option<Outbound>>>,
}

#[tonic::async_trait]
impl v1::discovery_server::Discovery for HandDriven {
    type StreamStream = ReceiverStream<Result<v1::DiscoveryResponse, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<v1::DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let _ = requests.send(message);
            }
        });
        let (tx, rx) = mpsc::channel(4);
        *self.responses.lock().unwrap() = Some(tx);
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Server {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<v1::DiscoveryRequest>,
    responses: Arc<Mutex<Option<Outbound>>>,
}

impl Server {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::unbounded_channel();
        let service = HandDriven {
            requests: tx,
            responses: Arc::default(),
        };
        let responses = service.responses.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(v1::discovery_server::DiscoveryServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Self {
            addr,
            requests,
            responses,
        }
    }

    /// The next request of the stream that `pick` accepts (others are skipped).
    async fn next<T>(&mut self, what: &str, pick: impl Fn(Req) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.requests.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} from the proxy within {WAIT:?}"))
                .expect("the server is running");
            if let Some(found) = message.request.and_then(&pick) {
                return found;
            }
        }
    }

    async fn push(&self, nonce: &str, resources: Vec<v1::DiscoveryResource>) {
        let tx = self
            .responses
            .lock()
            .unwrap()
            .clone()
            .expect("a stream is open");
        let response = v1::DiscoveryResponse {
            version: String::new(),
            nonce: nonce.into(),
            resources,
            removed: Vec::new(),
        };
        tx.send(Ok(response)).await.expect("the stream is open");
    }
}

fn resource(t: ResourceType, version: &str, payload: Payload) -> v1::DiscoveryResource {
    v1::DiscoveryResource {
        key: Some(key(t)),
        version: version.into(),
        payload: Some(payload),
    }
}

fn key(t: ResourceType) -> v1::ResourceKey {
    v1::ResourceKey {
        r#type: t as i32,
        name: "web.default".into(),
    }
}

fn endpoints(addr: SocketAddr) -> Payload {
    Payload::Endpoints(v1::Endpoints {
        service: "web.default".into(),
        endpoints: vec![v1::Endpoint {
            address: addr.ip().to_string(),
            port: addr.port().into(),
            ready: true,
            ..Default::default()
        }],
    })
}

/// A route of web.default whose one rule matches paths by `regex` (named `api`).
fn route(regex: &str) -> Payload {
    Payload::Route(v1::Route {
        parent_service: "web.default".into(),
        rules: vec![v1::RouteRule {
            name: "api".into(),
            matches: vec![v1::RouteMatch {
                path: Some(v1::PathMatch {
                    kind: Some(v1::path_match::Kind::Regex(regex.into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_route_is_nacked_alone_and_the_endpoint_update_in_its_push_applies() {
    let old = HttpBackend::respond(|_| text_response(200, "old")).await;
    let new = HttpBackend::respond(|_| text_response(200, "new")).await;
    let mut cp = Server::start().await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .env("SHOAL_DISCOVERY_ADDR", format!("http://{}", cp.addr))
        .env("SHOAL_PROXY_ID", "hand-driven")
        .start()
        .await;

    // The first request to `web` subscribes; the answer: service, one endpoint, a valid route.
    let mut client = MeshClient::new(proxy.outbound());
    let first = tokio::spawn(async move {
        let body = client.body("web").await;
        (client, body)
    });
    let wanted = cp
        .next("Subscribe", |r| match r {
            Req::Subscribe(s) if s.resources.contains(&key(ResourceType::Route)) => Some(s),
            _ => None,
        })
        .await;
    assert!(wanted.resources.contains(&key(ResourceType::Endpoints)));
    let service = Payload::Service(v1::Service {
        name: "web".into(),
        namespace: "default".into(),
        ports: vec![v1::ServicePort {
            port: 80,
            ..Default::default()
        }],
        ..Default::default()
    });
    cp.push(
        "1",
        vec![
            resource(ResourceType::Service, "s1", service),
            resource(ResourceType::Endpoints, "e1", endpoints(old.addr())),
            resource(ResourceType::Route, "r1", route("/api/.*")),
        ],
    )
    .await;
    let ack = cp
        .next("ACK of the first push", |r| match r {
            Req::Ack(a) => Some(a),
            Req::Nack(n) => panic!("first push NACKed: {n:?}"),
            _ => None,
        })
        .await;
    assert_eq!(ack.nonce, "1");
    let (mut client, body) = first.await.unwrap();
    assert_eq!(body.unwrap(), "old");

    // One push: the endpoint moves, and the route's regex does not compile.
    cp.push(
        "2",
        vec![
            resource(ResourceType::Endpoints, "e2", endpoints(new.addr())),
            resource(ResourceType::Route, "r2", route("/api/(.*")),
        ],
    )
    .await;
    let nack = cp
        .next("NACK of the second push", |r| match r {
            Req::Nack(n) => Some(n),
            Req::Ack(a) => panic!("the invalid route was ACKed: {a:?}"),
            _ => None,
        })
        .await;
    assert_eq!(nack.nonce, "2");
    assert_eq!(nack.rejected, [key(ResourceType::Route)]);
    assert_eq!(nack.rejections.len(), 1, "{nack:?}");
    assert_eq!(nack.rejections[0].key, Some(key(ResourceType::Route)));
    let error = &nack.rejections[0].error_message;
    assert!(
        error.starts_with(
            "route web.default: rules[0].matches[0].path_regex: invalid regular expression `/api/(.*`"
        ),
        "{error}"
    );
    assert_eq!(&nack.error_message, error);

    // The endpoint update applied (the push was answered, so at once); the held route still routes.
    assert_eq!(client.body("web").await.unwrap(), "new");
    let api = client.get("web", "/api/users").await.unwrap();
    assert_eq!(api.text(), "new");
    let config = proxy.config().await;
    assert!(
        config["sync"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("route web.default: rules[0]")),
        "{config}"
    );
    let route = &config["state"]["routes"];
    assert!(
        route.to_string().contains("\"api\""),
        "the last good route is still held: {config}"
    );
}

/// A response larger than gRPC's default 4 MiB (one large resource travels alone) is taken: the
/// control plane stores resources up to 15 MiB (`SHOAL_CP_ADMIN_MAX_REQUEST_BYTES`), and a proxy
/// that could not decode one would lose its stream on every reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_4_mib_is_applied() {
    let app = HttpBackend::respond(|_| text_response(200, "big")).await;
    let mut cp = Server::start().await;
    let proxy = ProxyBuilder::new()
        .outbound_explicit()
        .env("SHOAL_DISCOVERY_ADDR", format!("http://{}", cp.addr))
        .env("SHOAL_PROXY_ID", "hand-driven-big")
        .start()
        .await;
    let mut client = MeshClient::new(proxy.outbound());
    let first = tokio::spawn(async move { client.body("web").await });
    cp.next("Subscribe", |r| match r {
        Req::Subscribe(s) if s.resources.contains(&key(ResourceType::Service)) => Some(s),
        _ => None,
    })
    .await;
    // 6 MiB of hosts: 6 MiB in one resource, as large as one the control plane may store.
    let hosts: Vec<String> = (0..400_000).map(|i| format!("h{i:06}.example")).collect();
    let service = Payload::Service(v1::Service {
        name: "web".into(),
        namespace: "default".into(),
        ports: vec![v1::ServicePort {
            port: 80,
            ..Default::default()
        }],
        hosts,
        ..Default::default()
    });
    cp.push(
        "big",
        vec![
            resource(ResourceType::Service, "s1", service),
            resource(ResourceType::Endpoints, "e1", endpoints(app.addr())),
        ],
    )
    .await;
    let ack = cp
        .next("ACK of the large push", |r| match r {
            Req::Ack(a) => Some(a),
            Req::Nack(n) => panic!("the large push was NACKed: {n:?}"),
            _ => None,
        })
        .await;
    assert_eq!(ack.nonce, "big");
    assert_eq!(first.await.unwrap().unwrap(), "big");
    let mut client = MeshClient::new(proxy.outbound());
    assert_eq!(client.body("h399999.example").await.unwrap(), "big");
}
