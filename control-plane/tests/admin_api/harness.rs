//! Starts the admin service on port 0 and builds requests; shared by every admin test.

use std::sync::Arc;
use std::time::Duration;

use shoal_control_plane::admin::{AdminService, EmptyStatus};
use shoal_control_plane::store::{Store, StoreOptions};
use shoal_proto::v1::admin_client::AdminClient;
use shoal_proto::v1::{self, ResourceKind, resource::Spec};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server, server::TcpIncoming};
use tonic::{Code, Status};

pub struct Harness {
    pub client: AdminClient<Channel>,
    /// The service being served (a clone: `close()` reaches the served one).
    pub admin: AdminService,
    _dir: tempfile::TempDir,
}

pub async fn start() -> Harness {
    start_with(StoreOptions::default()).await
}

pub async fn start_with(options: StoreOptions) -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_with(dir.path().join("store.redb"), options).expect("store opens");
    let admin = AdminService::new(store, Arc::new(EmptyStatus));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = Server::builder()
        .add_service(admin.clone().into_server())
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    let channel = Endpoint::from_shared(format!("http://{addr}")).expect("url");
    let channel = channel
        .connect()
        .await
        .expect("connects to a bound listener");
    let client = AdminClient::new(channel);
    Harness {
        client,
        admin,
        _dir: dir,
    }
}

pub fn resource(name: &str, spec: Spec) -> v1::Resource {
    let kind = match &spec {
        Spec::Service(_) => ResourceKind::Service,
        Spec::EndpointRegistration(_) => ResourceKind::EndpointRegistration,
        Spec::Route(_) => ResourceKind::Route,
        _ => ResourceKind::Unspecified,
    };
    v1::Resource {
        kind: kind.into(),
        metadata: Some(v1::Metadata {
            name: name.to_owned(),
            ..Default::default()
        }),
        spec: Some(spec),
    }
}

pub fn service(name: &str, port: u32) -> v1::Resource {
    let ports = vec![v1::ServicePort {
        port,
        ..Default::default()
    }];
    let spec = v1::Service {
        ports,
        ..Default::default()
    };
    resource(name, Spec::Service(spec))
}

pub fn route_to(name: &str, backend: &str) -> v1::Resource {
    let backends = vec![v1::WeightedBackend {
        service: backend.to_owned(),
        port: 0,
        weight: 1,
    }];
    let rule = v1::RouteRule {
        backends,
        ..Default::default()
    };
    let route = v1::Route {
        parent_service: name.to_owned(),
        rules: vec![rule],
    };
    resource(name, Spec::Route(route))
}

pub fn registration(name: &str, ttl_seconds: u64) -> v1::Resource {
    let spec = v1::EndpointRegistration {
        service: "backend".to_owned(),
        address: "10.0.0.7".to_owned(),
        port: 8080,
        ttl_seconds,
        ..Default::default()
    };
    resource(name, Spec::EndpointRegistration(spec))
}

pub fn version(resource: Option<&v1::Resource>) -> u64 {
    resource
        .and_then(|r| r.metadata.as_ref())
        .map_or(0, |m| m.resource_version)
}

pub fn get(kind: ResourceKind, name: &str) -> v1::GetRequest {
    v1::GetRequest {
        kind: kind.into(),
        namespace: String::new(),
        name: name.to_owned(),
    }
}

pub fn assert_status(status: &Status, code: Code, mentions: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    for text in mentions {
        assert!(
            status.message().contains(text),
            "{text:?} not in {:?}",
            status.message()
        );
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
