//! Endpoint sources end to end: the control plane in-process on port 0 with `SHOAL_CP_ENDPOINTS_FILE`, and a
//! raw tonic Discovery client playing the proxy.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use shoal_control_plane::server::{Config, ControlPlane, Settings};
use shoal_proto::v1::{
    self, ResourceType, discovery_request::Request as Req, discovery_resource::Payload,
};
use tokio::sync::{mpsc, oneshot};
use tonic::codegen::tokio_stream::Stream;

const WEB: &str = "\
services:
  - service: web.default
    endpoints:
      - {address: 10.0.0.1, port: 8080, weight: 3, zone: a}
  - service: db.default
    endpoints:
      - {address: 10.0.0.9, port: 5432}
dns:
  - {service: local.external, host: localhost, port: 9000}
";

struct Outgoing(mpsc::Receiver<v1::DiscoveryRequest>);
impl Stream for Outgoing {
    type Item = v1::DiscoveryRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A running control plane; stops when dropped.
struct Running {
    discovery: String,
    file: PathBuf,
    _stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path, file: &Path) -> Config {
    let settings = Settings::from_map([
        ("SHOAL_CP_ADMIN_ADDR", "127.0.0.1:0".to_string()),
        ("SHOAL_CP_DISCOVERY_ADDR", "127.0.0.1:0".to_string()),
        ("SHOAL_CP_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("SHOAL_CP_DATA_DIR", dir.join("data").display().to_string()),
        ("SHOAL_CP_ENDPOINTS_FILE", file.display().to_string()),
        // These tests' proxies are plain h2c gRPC clients.
        ("SHOAL_CP_DISCOVERY_PLAINTEXT", "true".to_string()),
    ])
    .unwrap();
    Config::from_settings(&settings).unwrap()
}

async fn start(content: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, content).unwrap();
    let cp = ControlPlane::bind(&config(dir.path(), &file))
        .await
        .unwrap();
    let discovery = format!("http://{}", cp.discovery_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(cp.serve(async {
        let _ = stopped.await;
    }));
    Running {
        discovery,
        file,
        _stop: stop,
        _dir: dir,
    }
}

struct Proxy {
    tx: mpsc::Sender<v1::DiscoveryRequest>,
    rx: tonic::Streaming<v1::DiscoveryResponse>,
}

impl Proxy {
    /// Connects, says Hello and subscribes to `service`'s endpoints.
    async fn subscribe(addr: &str, id: &str, service: &str) -> Proxy {
        let channel = tonic::transport::Endpoint::from_shared(addr.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = v1::discovery_client::DiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let hello = v1::Hello {
            proxy_id: id.into(),
            ..Default::default()
        };
        tx.send(v1::DiscoveryRequest {
            request: Some(Req::Hello(hello)),
        })
        .await
        .unwrap();
        let rx = client.stream(Outgoing(rx)).await.unwrap().into_inner();
        let proxy = Proxy { tx, rx };
        let key = v1::ResourceKey {
            r#type: ResourceType::Endpoints as i32,
            name: service.into(),
        };
        proxy
            .send(Req::Subscribe(v1::Subscribe {
                resources: vec![key],
            }))
            .await;
        proxy
    }

    async fn send(&self, r: Req) {
        let request = v1::DiscoveryRequest { request: Some(r) };
        self.tx.send(request).await.unwrap();
    }

    /// The next push within `wait` (ACKed), as the endpoints it carries (`None`: removed); `Err` on timeout.
    async fn next(&mut self, wait: Duration) -> Result<Option<Vec<v1::Endpoint>>, ()> {
        let r = match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(r) => r.unwrap().expect("stream ended"),
            Err(_) => return Err(()),
        };
        self.send(Req::Ack(v1::Ack {
            nonce: r.nonce.clone(),
        }))
        .await;
        Ok(
            match r.resources.into_iter().next().and_then(|r| r.payload) {
                Some(Payload::Endpoints(eps)) => Some(eps.endpoints),
                _ => None,
            },
        )
    }

    /// Reads pushes until the endpoints are `want` (`ip:port`, sorted); fails after `wait`.
    async fn until(&mut self, want: &[&str], wait: Duration) -> Vec<v1::Endpoint> {
        let deadline = Instant::now() + wait;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(push) = self.next(left).await else {
                panic!("endpoints never became {want:?} within {wait:?}; last push: {last:?}")
            };
            let endpoints = push.unwrap_or_default();
            if addresses(&endpoints) == want {
                return endpoints;
            }
            last = Some(endpoints);
        }
    }
}

fn addresses(endpoints: &[v1::Endpoint]) -> Vec<String> {
    let mut out: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{}:{}", e.address, e.port))
        .collect();
    out.sort();
    out
}

const SOON: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_endpoints_are_served_edits_pushed_and_invalid_edits_ignored() {
    let cp = start(WEB).await;
    let mut p1 = Proxy::subscribe(&cp.discovery, "p1", "web.default").await;
    let web = p1.until(&["10.0.0.1:8080"], SOON).await;
    assert_eq!(
        (web[0].weight, web[0].zone.as_str(), web[0].ready),
        (3, "a", true)
    );

    // An edit reaches the subscribed proxy within about two seconds (the file is polled every second).
    let edited = WEB.replace(
        "      - {address: 10.0.0.1, port: 8080, weight: 3, zone: a}\n",
        "      - {address: 10.0.0.1, port: 8080, weight: 3, zone: a}\n      - {address: 10.0.0.2, port: 8080}\n",
    );
    std::fs::write(&cp.file, &edited).unwrap();
    let written = Instant::now();
    p1.until(&["10.0.0.1:8080", "10.0.0.2:8080"], SOON).await;
    let took = written.elapsed();
    assert!(took < Duration::from_millis(2500), "the edit took {took:?}");

    // An invalid edit is not pushed, and a proxy connecting afterwards gets the last good content.
    std::fs::write(&cp.file, edited.replace("port: 5432", "prot: 5432")).unwrap();
    assert!(
        p1.next(Duration::from_millis(2500)).await.is_err(),
        "an invalid file was pushed"
    );
    let mut p2 = Proxy::subscribe(&cp.discovery, "p2", "web.default").await;
    p2.until(&["10.0.0.1:8080", "10.0.0.2:8080"], SOON).await;

    // A service removed from the file loses its endpoints.
    let without_web =
        "services:\n  - {service: db.default, endpoints: [{address: 10.0.0.9, port: 5432}]}\n";
    std::fs::write(&cp.file, without_web).unwrap();
    assert_eq!(p1.next(SOON).await, Ok(None), "web.default was not removed");
    assert_eq!(p2.next(SOON).await, Ok(None), "web.default was not removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_entry_for_localhost_yields_the_loopback_address() {
    let cp = start(WEB).await;
    let mut p = Proxy::subscribe(&cp.discovery, "p-dns", "local.external").await;
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let endpoints = p.next(left).await.expect("localhost never resolved");
        let endpoints = endpoints.unwrap_or_default();
        if addresses(&endpoints).contains(&"127.0.0.1:9000".to_string()) {
            // Outside the mesh: no identity, so the proxy connects in plain text.
            assert!(endpoints.iter().all(|e| e.identity.is_empty() && e.ready));
            break;
        }
    }
}

#[tokio::test]
async fn an_invalid_endpoints_file_stops_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, WEB.replace("port: 5432", "port: -1")).unwrap();
    let error = match ControlPlane::bind(&config(dir.path(), &file)).await {
        Ok(_) => panic!("started with an invalid endpoints file"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("SHOAL_CP_ENDPOINTS_FILE"), "{error}");
    assert!(error.contains("services[1].endpoints[0].port"), "{error}");
    assert!(error.contains("line 7"), "{error}");
}
