//! The mesh the benchmark builds through the Admin API: services, their endpoint registrations
//! (no TTL) and one route, with a marker in each resource that the simulated proxies can read back.
//!
//! Markers: a route's first rule's `timeout_ms` is `ROUTE_MARKER_BASE + generation`; an endpoint
//! registration's `weight` is 1 when seeded and `2 + change number` when the churn phase rewrites
//! it, so the highest weight in a service's `Endpoints` names the latest change it includes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_proto::v1::{self, admin_client::AdminClient, resource::Spec};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// Namespace of every benchmark resource.
pub const NAMESPACE: &str = "bench";

/// `timeout_ms` of generation 0 of the probed route (any value a route accepts).
pub const ROUTE_MARKER_BASE: u64 = 10_000;

/// Admin writes in flight while seeding.
const SEED_CONCURRENCY: usize = 32;

/// Name of service `i`: `svc-00042`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Qualified name of service `i`: `svc-00042.bench`.
pub fn qualified(i: usize) -> String {
    format!("{}.{NAMESPACE}", service_name(i))
}

/// An Admin API client on its own connection.
pub async fn admin(addr: std::net::SocketAddr) -> Result<AdminClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to the Admin API at {addr}"))?;
    Ok(AdminClient::new(channel))
}

fn resource(kind: v1::ResourceKind, name: String, spec: Spec) -> v1::Resource {
    v1::Resource {
        kind: kind as i32,
        metadata: Some(v1::Metadata {
            name,
            namespace: NAMESPACE.to_owned(),
            ..Default::default()
        }),
        spec: Some(spec),
    }
}

/// Service `i` with one HTTP port.
pub fn service(i: usize) -> v1::Resource {
    let spec = v1::Service {
        ports: vec![v1::ServicePort {
            name: "http".to_owned(),
            port: 8080,
            protocol: v1::Protocol::Http1 as i32,
            ..Default::default()
        }],
        hosts: vec![format!("{}.{NAMESPACE}.svc.cluster.local", service_name(i))],
        ..Default::default()
    };
    resource(
        v1::ResourceKind::Service,
        service_name(i),
        Spec::Service(spec),
    )
}

/// Registration `j` of service `i`: a unique address `10.x.y.z:8080`, no TTL.
pub fn registration(i: usize, j: usize, weight: u32) -> v1::Resource {
    let n = (i * 1000 + j) as u32;
    let address = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    let spec = v1::EndpointRegistration {
        service: qualified(i),
        address,
        port: 8080,
        weight,
        ..Default::default()
    };
    resource(
        v1::ResourceKind::EndpointRegistration,
        format!("{}-ep-{j:04}", service_name(i)),
        Spec::EndpointRegistration(spec),
    )
}

/// The route of service `i`, generation `generation` (its marker).
pub fn route(i: usize, generation: u64) -> v1::Resource {
    let spec = v1::Route {
        parent_service: qualified(i),
        rules: vec![v1::RouteRule {
            name: "bench".to_owned(),
            backends: vec![v1::WeightedBackend {
                service: qualified(i),
                port: 0,
                weight: 1,
            }],
            timeout_ms: ROUTE_MARKER_BASE + generation,
            ..Default::default()
        }],
    };
    resource(v1::ResourceKind::Route, service_name(i), Spec::Route(spec))
}

/// `Apply` one resource; the error names it.
pub async fn apply(client: &mut AdminClient<Channel>, r: v1::Resource) -> Result<()> {
    let name = r
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    client
        .apply(v1::ApplyRequest { resource: Some(r) })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "Admin Apply of {name} failed: {:?}: {}",
                s.code(),
                s.message()
            )
        })?;
    Ok(())
}

/// What seeding did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seeded {
    /// Admin writes made.
    pub writes: usize,
    /// Wall time.
    pub seconds: f64,
}

/// Creates `services` services with `per_service` registrations each and the route of service 0,
/// `SEED_CONCURRENCY` writes in flight.
pub async fn seed(
    client: &AdminClient<Channel>,
    services: usize,
    per_service: usize,
) -> Result<Seeded> {
    let started = Instant::now();
    // Registrations and routes name their service: services first.
    let services_first: Vec<v1::Resource> = (0..services).map(service).collect();
    let mut rest = vec![route(0, 0)];
    for i in 0..services {
        rest.extend((0..per_service).map(|j| registration(i, j, 1)));
    }
    let writes = services_first.len() + rest.len();
    apply_all(client, services_first).await?;
    apply_all(client, rest).await?;
    Ok(Seeded {
        writes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Applies every resource, `SEED_CONCURRENCY` in flight; stops at the first error.
async fn apply_all(client: &AdminClient<Channel>, all: Vec<v1::Resource>) -> Result<()> {
    let permits = Arc::new(Semaphore::new(SEED_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for r in all {
        let permit = permits.clone().acquire_owned().await?;
        let mut client = client.clone();
        tasks.spawn(async move {
            let result = apply(&mut client, r).await;
            drop(permit);
            result
        });
        // Surface the first error early instead of queueing thousands of writes behind it.
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Polls `check` every 20 ms until it returns true, at most `deadline`; the error says what was
/// awaited.
pub async fn wait_until(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if check() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
