//! The discovery protocol end to end over a real socket: a real store, the hub following it, the
//! tonic Discovery service on 127.0.0.1:0, and a raw tonic client playing the proxy.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use shoal_control_plane::discovery::{DiscoveryService, Hub};
use shoal_control_plane::model::Resource;
use shoal_control_plane::store::Store;
use shoal_proto::v1::{
    self, ResourceType, discovery_request::Request as Req, discovery_resource::Payload,
};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;

struct Outgoing(mpsc::Receiver<v1::DiscoveryRequest>);
impl Stream for Outgoing {
    type Item = v1::DiscoveryRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn service(name: &str, port: u32) -> Resource {
    v1::Resource {
        kind: v1::ResourceKind::Service as i32,
        metadata: Some(v1::Metadata {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(v1::resource::Spec::Service(v1::Service {
            ports: vec![v1::ServicePort {
                port,
                ..Default::default()
            }],
            virtual_addresses: vec!["10.96.0.10".into()],
            ..Default::default()
        })),
    }
    .try_into()
    .unwrap()
}

fn registration(name: &str, service: &str, ip: &str, port: u32) -> Resource {
    v1::Resource {
        kind: v1::ResourceKind::EndpointRegistration as i32,
        metadata: Some(v1::Metadata {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(v1::resource::Spec::EndpointRegistration(
            v1::EndpointRegistration {
                service: service.into(),
                address: ip.into(),
                port,
                ..Default::default()
            },
        )),
    }
    .try_into()
    .unwrap()
}

struct Harness {
    store: Store,
    hub: Arc<Hub>,
    addr: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start() -> Harness {
    start_with(Hub::new()).await
}

async fn start_with(hub: Arc<Hub>) -> Harness {
    let dir = std::env::temp_dir().join(format!(
        "shoal-disc-{}-{}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(dir.join("store.redb")).unwrap();
    tokio::spawn(hub.clone().follow(store.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let svc = DiscoveryService::new(hub.clone()).into_server();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(
                tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener),
            )
            .await
            .unwrap();
    });
    Harness {
        store,
        hub,
        addr,
        _dir: TempDir(dir),
    }
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

struct Proxy {
    tx: mpsc::Sender<v1::DiscoveryRequest>,
    rx: tonic::Streaming<v1::DiscoveryResponse>,
}

impl Proxy {
    async fn connect(addr: &str, id: &str, held: Vec<v1::HeldResource>) -> Proxy {
        let mut client = v1::discovery_client::DiscoveryClient::new(channel(addr).await);
        let (tx, rx) = mpsc::channel(16);
        let hello = v1::Hello {
            proxy_id: id.into(),
            held,
            ..Default::default()
        };
        tx.send(v1::DiscoveryRequest {
            request: Some(Req::Hello(hello)),
        })
        .await
        .unwrap();
        let rx = client.stream(Outgoing(rx)).await.unwrap().into_inner();
        Proxy { tx, rx }
    }

    async fn send(&self, r: Req) {
        self.tx
            .send(v1::DiscoveryRequest { request: Some(r) })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> v1::DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("no push within 5 s")
            .unwrap()
            .unwrap()
    }

    async fn expect_silence(&mut self) {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), self.rx.message())
                .await
                .is_err(),
            "unexpected push"
        );
    }
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn key(t: ResourceType, name: &str) -> v1::ResourceKey {
    v1::ResourceKey {
        r#type: t as i32,
        name: name.into(),
    }
}

fn sub(keys: Vec<v1::ResourceKey>) -> Req {
    Req::Subscribe(v1::Subscribe { resources: keys })
}

#[tokio::test]
async fn subscribe_push_ack_nack_and_resync() {
    let h = start().await;
    h.store.apply(service("web", 80), None).unwrap();
    let mut p = Proxy::connect(&h.addr, "p1", vec![]).await;

    // On-demand subscription: present resources are sent, absent ones listed as removed.
    p.send(sub(vec![
        key(ResourceType::Service, "web.default"),
        key(ResourceType::Endpoints, "web.default"),
    ]))
    .await;
    let r = p.next().await;
    assert_eq!(r.resources.len(), 1);
    assert!(matches!(r.resources[0].payload, Some(Payload::Service(_))));
    assert_eq!(r.removed, vec![key(ResourceType::Endpoints, "web.default")]);
    let service_version = r.resources[0].version.clone();
    p.send(Req::Ack(v1::Ack {
        nonce: r.nonce.clone(),
    }))
    .await;

    // A registration appears: pushed incrementally, only the changed key.
    h.store
        .apply(registration("web-1", "web.default", "10.0.0.1", 8080), None)
        .unwrap();
    let r = p.next().await;
    assert_eq!(r.resources.len(), 1, "{r:?}");
    let Some(Payload::Endpoints(eps)) = &r.resources[0].payload else {
        panic!("{r:?}")
    };
    assert_eq!(eps.endpoints.len(), 1);
    assert_eq!(eps.endpoints[0].address, "10.0.0.1");
    let endpoints_v1 = r.resources[0].version.clone();

    // NACK: shown in status, and not resent.
    p.send(Req::Nack(v1::Nack {
        nonce: r.nonce.clone(),
        error_message: "bad endpoints".into(),
        // A proxy older than per-resource NACKs: the whole response.
        rejected: vec![],
        rejections: vec![],
    }))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = h.hub.registry.statuses("", "p1");
        if status.len() == 1 && status[0].state == v1::SyncState::Nacked as i32 {
            assert_eq!(status[0].last_nack_error, "bad endpoints");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed NACKED: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.expect_silence().await;

    // A new change is sent; ACKing it makes the proxy SYNCED.
    h.store
        .apply(registration("web-2", "web.default", "10.0.0.2", 8080), None)
        .unwrap();
    let r = p.next().await;
    p.send(Req::Ack(v1::Ack {
        nonce: r.nonce.clone(),
    }))
    .await;
    let endpoints_v2 = r.resources[0].version.clone();
    assert_ne!(endpoints_v1, endpoints_v2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.hub.registry.statuses("", "p1")[0].state != v1::SyncState::Synced as i32 {
        assert!(tokio::time::Instant::now() < deadline, "never SYNCED");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Reconnect with held versions: nothing unchanged is resent; what changed meanwhile is.
    drop(p);
    h.store
        .apply(registration("web-3", "web.default", "10.0.0.3", 8080), None)
        .unwrap();
    let held = vec![
        v1::HeldResource {
            key: Some(key(ResourceType::Service, "web.default")),
            version: service_version,
        },
        v1::HeldResource {
            key: Some(key(ResourceType::Endpoints, "web.default")),
            version: endpoints_v2,
        },
    ];
    let mut p = Proxy::connect(&h.addr, "p1", held).await;
    let r = p.next().await;
    assert_eq!(
        r.resources.len(),
        1,
        "only the changed endpoints are resent: {r:?}"
    );
    let Some(Payload::Endpoints(eps)) = &r.resources[0].payload else {
        panic!()
    };
    assert_eq!(eps.endpoints.len(), 3);

    // Deletion is pushed as a removal.
    let key_web = shoal_control_plane::model::ResourceKey::new(
        shoal_control_plane::model::ResourceKind::Service,
        "default",
        "web",
    );
    h.store.delete(&key_web, None).unwrap();
    let r = p.next().await;
    assert_eq!(r.removed, vec![key(ResourceType::Service, "web.default")]);
}

#[tokio::test]
async fn address_bindings_for_transparent_mode() {
    let h = start().await;
    h.store.apply(service("db", 5432), None).unwrap();
    let mut p = Proxy::connect(&h.addr, "p2", vec![]).await;
    p.send(sub(vec![
        key(ResourceType::Address, "10.96.0.10:5432"),
        key(ResourceType::Address, "10.96.0.10:1"),
    ]))
    .await;
    let r = p.next().await;
    let Some(Payload::Address(b)) = &r.resources[0].payload else {
        panic!("{r:?}")
    };
    assert_eq!(b.service, "db.default");
    assert_eq!(b.service_port, 5432);
    assert_eq!(r.removed, vec![key(ResourceType::Address, "10.96.0.10:1")]);
}

#[tokio::test]
async fn first_message_must_be_hello() {
    let h = start().await;
    let mut client = v1::discovery_client::DiscoveryClient::new(channel(&h.addr).await);
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::DiscoveryRequest {
        request: Some(sub(vec![])),
    })
    .await
    .unwrap();
    let mut stream = client.stream(Outgoing(rx)).await.unwrap().into_inner();
    let err = stream.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("Hello"));
}

fn ack(r: &v1::DiscoveryResponse) -> Req {
    Req::Ack(v1::Ack {
        nonce: r.nonce.clone(),
    })
}

fn endpoint_count(r: &v1::DiscoveryResponse) -> usize {
    match &r.resources[..] {
        [
            v1::DiscoveryResource {
                payload: Some(Payload::Endpoints(eps)),
                ..
            },
        ] => eps.endpoints.len(),
        _ => panic!("expected one Endpoints resource: {r:?}"),
    }
}

/// A proxy that does not ACK holds at most two responses; changes meanwhile wait and go out as one
/// response with the latest version once it ACKs.
#[tokio::test]
async fn unacked_responses_hold_back_changes_which_then_go_out_coalesced() {
    let h = start().await;
    h.store.apply(service("web", 80), None).unwrap();
    let mut p = Proxy::connect(&h.addr, "p3", vec![]).await;
    p.send(sub(vec![key(ResourceType::Endpoints, "web.default")]))
        .await;
    let first = p.next().await; // removed: no endpoints yet (1 unACKed)
    assert_eq!(first.removed.len(), 1, "{first:?}");
    h.store
        .apply(registration("web-1", "web.default", "10.0.0.1", 8080), None)
        .unwrap();
    let second = p.next().await; // 2 unACKed: the window is full
    assert_eq!(endpoint_count(&second), 1);
    for (i, ip) in ["10.0.0.2", "10.0.0.3", "10.0.0.4"].iter().enumerate() {
        h.store
            .apply(
                registration(&format!("web-{}", i + 2), "web.default", ip, 8080),
                None,
            )
            .unwrap();
    }
    p.expect_silence().await;
    p.send(ack(&first)).await;
    let third = p.next().await;
    assert_eq!(
        endpoint_count(&third),
        4,
        "one response with the latest endpoints, not one per change"
    );
    p.send(ack(&second)).await;
    p.send(ack(&third)).await;
    p.expect_silence().await;
}

/// A large answer is split into bounded responses that together answer every key.
#[tokio::test]
async fn large_answers_are_split_into_bounded_responses() {
    let h = start().await;
    let names: Vec<String> = (0..40).map(|i| format!("svc-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        // Each on a port of its own: the helper gives every service the same virtual address.
        h.store.apply(service(n, 1000 + i as u32), None).unwrap();
        for j in 0..10 {
            let ip = format!("10.1.{}.{j}", names.iter().position(|x| x == n).unwrap());
            h.store
                .apply(
                    registration(&format!("{n}-{j}"), &format!("{n}.default"), &ip, 8080),
                    None,
                )
                .unwrap();
        }
    }
    let mut p = Proxy::connect(&h.addr, "p4", vec![]).await;
    let wanted: Vec<v1::ResourceKey> = names
        .iter()
        .flat_map(|n| {
            let q = format!("{n}.default");
            [
                key(ResourceType::Service, &q),
                key(ResourceType::Endpoints, &q),
                key(ResourceType::Route, &q),
            ]
        })
        .collect();
    p.send(sub(wanted.clone())).await;
    let mut answered = std::collections::HashSet::new();
    let mut responses = 0;
    while answered.len() < wanted.len() {
        let r = p.next().await;
        responses += 1;
        let size = prost::Message::encoded_len(&r);
        assert!(size < 16 * 1024, "response of {size} bytes");
        for k in r
            .resources
            .iter()
            .filter_map(|x| x.key.clone())
            .chain(r.removed.iter().cloned())
        {
            assert!(answered.insert((k.r#type, k.name)), "answered twice");
        }
        p.send(ack(&r)).await;
    }
    assert!(responses > 1, "{responses} response(s)");
    p.expect_silence().await;
}

/// With a push interval, a change after a quiet period goes out at once; changes within the
/// interval wait for its end and go out together.
#[tokio::test]
async fn push_interval_sends_the_first_change_at_once_and_batches_the_rest() {
    let interval = Duration::from_millis(600);
    let h = start_with(Hub::with_push_interval(interval)).await;
    h.store.apply(service("web", 80), None).unwrap();
    let mut p = Proxy::connect(&h.addr, "p5", vec![]).await;
    p.send(sub(vec![key(ResourceType::Endpoints, "web.default")]))
        .await;
    let r = p.next().await;
    p.send(ack(&r)).await;

    let started = tokio::time::Instant::now();
    h.store
        .apply(registration("web-1", "web.default", "10.0.0.1", 8080), None)
        .unwrap();
    let r = p.next().await;
    let first = started.elapsed();
    assert!(first < interval / 2, "the first change waited {first:?}");
    assert_eq!(endpoint_count(&r), 1);
    p.send(ack(&r)).await;
    h.store
        .apply(registration("web-2", "web.default", "10.0.0.2", 8080), None)
        .unwrap();
    h.store
        .apply(registration("web-3", "web.default", "10.0.0.3", 8080), None)
        .unwrap();
    let r = p.next().await;
    let second = started.elapsed();
    assert!(
        second >= interval - Duration::from_millis(50),
        "the second push came {second:?} after the first change"
    );
    assert_eq!(endpoint_count(&r), 3, "both changes in one push");
}

fn route(service: &str) -> Resource {
    v1::Resource {
        kind: v1::ResourceKind::Route as i32,
        metadata: Some(v1::Metadata {
            name: service.into(),
            ..Default::default()
        }),
        spec: Some(v1::resource::Spec::Route(v1::Route {
            parent_service: service.into(),
            rules: vec![v1::RouteRule {
                backends: vec![v1::WeightedBackend {
                    service: service.into(),
                    port: 0,
                    weight: 1,
                }],
                ..Default::default()
            }],
        })),
    }
    .try_into()
    .unwrap()
}

/// Polls the registry until `proxy_id`'s status satisfies `done`.
async fn wait_status(h: &Harness, proxy_id: &str, done: impl Fn(&v1::ProxyStatus) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = h.hub.registry.statuses("", proxy_id);
        if status.len() == 1 && done(&status[0]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never got there: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each resource's type and sync state, in the status's order.
fn states(status: &v1::ProxyStatus) -> Vec<(i32, v1::SyncState, String)> {
    (status.resources.iter())
        .map(|r| {
            let k = r.key.clone().unwrap_or_default();
            (k.r#type, r.state(), r.last_nack_error.clone())
        })
        .collect()
}

#[tokio::test]
async fn a_per_resource_nack_marks_only_that_resource_and_pushes_go_on() {
    let h = start().await;
    h.store.apply(service("web", 80), None).unwrap();
    (h.store)
        .apply(registration("web-1", "web.default", "10.0.0.1", 8080), None)
        .unwrap();
    h.store.apply(route("web"), None).unwrap();
    let mut p = Proxy::connect(&h.addr, "p1", vec![]).await;
    p.send(sub(vec![
        key(ResourceType::Service, "web.default"),
        key(ResourceType::Endpoints, "web.default"),
        key(ResourceType::Route, "web.default"),
    ]))
    .await;
    let r = p.next().await;
    assert_eq!(r.resources.len(), 3, "{r:?}");

    // The proxy applied the service and the endpoints, and rejected the route alone.
    let error = "route web.default: rules[0].timeout: must be between 1ms and 24h";
    let route_key = key(ResourceType::Route, "web.default");
    p.send(Req::Nack(v1::Nack {
        nonce: r.nonce.clone(),
        error_message: error.into(),
        rejected: vec![route_key.clone()],
        rejections: vec![v1::RejectedResource {
            key: Some(route_key),
            error_message: error.into(),
        }],
    }))
    .await;
    let (s, e, rt) = (
        ResourceType::Service as i32,
        ResourceType::Endpoints as i32,
        ResourceType::Route as i32,
    );
    use v1::SyncState::{Nacked, Synced};
    wait_status(&h, "p1", |status| {
        states(status)
            == [
                (s, Synced, String::new()),
                (e, Synced, String::new()),
                (rt, Nacked, error.to_owned()),
            ]
    })
    .await;
    let status = &h.hub.registry.statuses("", "p1")[0];
    assert_eq!(
        (status.state(), status.last_nack_error.as_str()),
        (Nacked, error)
    );
    // The rejected version is not resent.
    p.expect_silence().await;

    // Good resources keep flowing: an endpoint change is pushed and ACKed; the route stays NACKED.
    (h.store)
        .apply(registration("web-2", "web.default", "10.0.0.2", 8080), None)
        .unwrap();
    let r = p.next().await;
    assert_eq!(endpoint_count(&r), 2, "{r:?}");
    p.send(ack(&r)).await;
    wait_status(&h, "p1", |status| {
        let resources = &status.resources;
        resources.len() == 3
            && resources[1].acked_version == resources[1].current_version
            && resources[2].state() == Nacked
    })
    .await;
}
