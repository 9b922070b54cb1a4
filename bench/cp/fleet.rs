//! The simulated proxies: each its own tonic channel (its own HTTP/2 connection, like a real
//! proxy), one discovery stream, the same subscriptions a real proxy makes for an outbound
//! destination (`SERVICE`, `ENDPOINTS` and `ROUTE` of the service; proxy/src/discovery/mod.rs),
//! every response applied (decoded, held versions updated) and ACKed at once with its nonce.
//!
//! After a broken stream a proxy reconnects like the real client (proxy/src/discovery/client.rs):
//! jittered exponential backoff from 100 ms to 10 s, `Hello` carrying every held resource and
//! its version, then a `Subscribe` for the keys it subscribes to but does not hold (resources that
//! do not exist, such as the routes of services without one). The server answers that `Subscribe`
//! after it has sent whatever changed among the held resources, on the same stream, so its answer
//! marks the end of the resync: the session counts as *synced* once every key of that `Subscribe`
//! is answered (at once if there is none).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use shoal_proto::v1::{self, ResourceType, discovery_request::Request as Req};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;

use crate::seed::ROUTE_MARKER_BASE;
use crate::tracker::{Key, Tracker};
use crate::wire;

/// The gRPC path of `shoal.v1.Discovery/Stream`.
const STREAM_PATH: &str = "/shoal.v1.Discovery/Stream";

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Counters shared by every simulated proxy.
#[derive(Default)]
pub struct Counters {
    /// Discovery responses received (and ACKed).
    pub responses: AtomicU64,
    /// Resources received (added or changed).
    pub resources: AtomicU64,
    /// Keys received as removed (or absent).
    pub removed: AtomicU64,
    /// Streams currently open.
    pub connected: AtomicUsize,
    /// Connection or stream failures.
    pub failures: AtomicU64,
    /// "Too many open files" errors (the descriptor limit is too low).
    pub emfile: AtomicU64,
    /// The latest connection or stream error, for messages.
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// The whole fleet.
pub struct Fleet {
    /// Shared counters.
    pub counters: Arc<Counters>,
    /// Per proxy: sessions that reached sync (1 after the first connection, 2 after one resync).
    pub synced: Arc<Vec<AtomicU64>>,
    /// Per proxy: when its latest session reached sync.
    sync_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>>,
    tasks: tokio::task::JoinSet<()>,
}

/// Which services proxy `p` subscribes to: service 0 (the one whose route the push phase
/// changes) and `m - 1` others spread evenly over the rest.
pub fn plan(p: usize, m: usize, services: usize) -> Vec<usize> {
    let mut out = vec![0];
    if services > 1 {
        out.extend((0..m.saturating_sub(1)).map(|k| (p * (m - 1) + k) % (services - 1) + 1));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The keys a real proxy subscribes to for one outbound service.
pub fn service_keys(qualified: &str) -> [Key; 3] {
    [
        ResourceType::Service,
        ResourceType::Endpoints,
        ResourceType::Route,
    ]
    .map(|t| (t as i32, qualified.to_owned()))
}

/// Where an `Endpoints` resource carries the benchmark's marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointMarker {
    /// The highest endpoint weight (registrations written through the Admin API, see `seed`).
    Weight,
    /// The highest endpoint port above `base` (EndpointSlices, whose endpoints all have weight 1;
    /// see `kube`).
    Port {
        /// The port of marker 0.
        base: u16,
    },
}

/// The marker a resource carries (see `seed`): the route's timeout, the highest endpoint weight
/// (or port).
fn marker(r: &wire::Resource, endpoint_marker: EndpointMarker) -> u64 {
    if let Some(route) = &r.route {
        return route
            .rules
            .first()
            .map_or(0, |rule| rule.timeout_ms.saturating_sub(ROUTE_MARKER_BASE));
    }
    r.endpoints.as_ref().map_or(0, |e| {
        let of = |e: &wire::Endpoint| match endpoint_marker {
            EndpointMarker::Weight => u64::from(e.weight),
            EndpointMarker::Port { base } => u64::from(e.port.saturating_sub(u32::from(base))),
        };
        e.endpoints.iter().map(of).max().unwrap_or(0)
    })
}

struct Outgoing(mpsc::Receiver<v1::DiscoveryRequest>);

impl Stream for Outgoing {
    type Item = v1::DiscoveryRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn request(r: Req) -> v1::DiscoveryRequest {
    v1::DiscoveryRequest { request: Some(r) }
}

/// One simulated proxy.
struct Proxy {
    index: usize,
    addr: SocketAddr,
    keys: Vec<Key>,
    endpoint_marker: EndpointMarker,
    /// Held resources: key → (version, marker).
    held: HashMap<Key, (String, u64)>,
    tracker: Arc<Tracker>,
    counters: Arc<Counters>,
    synced: Arc<Vec<AtomicU64>>,
    sync_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>>,
}

impl Fleet {
    /// Starts `n` proxies against `addr` on the runtime `on`, each subscribing to the services `plan`
    /// gives it and reading endpoint markers from `endpoint_marker`; at most `connect_concurrency`
    /// initial connections are opened at once.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        on: &tokio::runtime::Handle,
        n: usize,
        m: usize,
        services: usize,
        addr: SocketAddr,
        tracker: Arc<Tracker>,
        endpoint_marker: EndpointMarker,
        connect_concurrency: usize,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let synced: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let sync_at = Arc::new(std::sync::Mutex::new(vec![None; n]));
        let gate = Arc::new(tokio::sync::Semaphore::new(connect_concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..n {
            let keys = plan(index, m, services)
                .into_iter()
                .flat_map(|s| service_keys(&crate::seed::qualified(s)))
                .collect();
            let proxy = Proxy {
                index,
                addr,
                keys,
                endpoint_marker,
                held: HashMap::new(),
                tracker: tracker.clone(),
                counters: counters.clone(),
                synced: synced.clone(),
                sync_at: sync_at.clone(),
            };
            let gate = gate.clone();
            tasks.spawn_on(proxy.run(gate), on);
        }
        Self {
            counters,
            synced,
            sync_at,
            tasks,
        }
    }

    /// How many proxies have completed at least `sessions` synced sessions.
    pub fn synced_at_least(&self, sessions: u64) -> usize {
        self.synced
            .iter()
            .filter(|s| s.load(Ordering::Acquire) >= sessions)
            .count()
    }

    /// The latest time any proxy reached sync.
    pub fn last_sync(&self) -> Option<Instant> {
        self.sync_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .max()
            .copied()
    }

    /// Stops every proxy (their connections close).
    pub async fn stop(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Proxy {
    async fn run(mut self, gate: Arc<tokio::sync::Semaphore>) {
        let mut backoff = BACKOFF_MIN;
        let mut first = Some(gate);
        loop {
            let permit = match &first {
                Some(gate) => gate.clone().acquire_owned().await.ok(),
                None => None,
            };
            let result = self.session(&mut backoff, permit).await;
            first = None;
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = result {
                if e.contains("Too many open files") {
                    self.counters.emfile.fetch_add(1, Ordering::Relaxed);
                }
                *self
                    .counters
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
            // Jitter spreads reconnects, as in the real client.
            let wait = backoff.mul_f64(0.5 + fastrand::f64());
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection and stream, until it breaks.
    async fn session(
        &mut self,
        backoff: &mut Duration,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })?;
        // The generated client's call, with the light response type (see `wire`).
        let mut client = tonic::client::Grpc::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let held: Vec<v1::HeldResource> = self
            .held
            .iter()
            .map(|((t, name), (version, _))| v1::HeldResource {
                key: Some(v1::ResourceKey {
                    r#type: *t,
                    name: name.clone(),
                }),
                version: version.clone(),
            })
            .collect();
        let hello = v1::Hello {
            proxy_id: format!("bench-proxy-{:05}", self.index),
            workload: Some(v1::WorkloadIdentity {
                namespace: crate::seed::NAMESPACE.to_owned(),
                service_account: "bench".to_owned(),
                service_name: String::new(),
            }),
            node: "cp-bench".to_owned(),
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
            held,
        };
        let mut waiting: HashSet<Key> = self
            .keys
            .iter()
            .filter(|k| !self.held.contains_key(*k))
            .cloned()
            .collect();
        let closed = || "the discovery stream closed".to_string();
        tx.send(request(Req::Hello(hello)))
            .await
            .map_err(|_| closed())?;
        if !waiting.is_empty() {
            let resources = waiting
                .iter()
                .map(|(t, name)| v1::ResourceKey {
                    r#type: *t,
                    name: name.clone(),
                })
                .collect();
            tx.send(request(Req::Subscribe(v1::Subscribe { resources })))
                .await
                .map_err(|_| closed())?;
        }
        client
            .ready()
            .await
            .map_err(|e| format!("discovery channel not ready: {e}"))?;
        let codec = tonic_prost::ProstCodec::<v1::DiscoveryRequest, wire::Response>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(STREAM_PATH);
        let mut inbound = client
            .streaming(tonic::Request::new(Outgoing(rx)), path, codec)
            .await
            .map_err(|e| format!("discovery stream refused: {}", e.message()))?
            .into_inner();
        drop(permit);
        *backoff = BACKOFF_MIN;
        let counters = self.counters.clone();
        counters.connected.fetch_add(1, Ordering::AcqRel);
        let _connected = Guard(&counters.connected);
        if waiting.is_empty() {
            self.reached_sync();
        }
        loop {
            let response = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err("the control plane ended the stream".into()),
                Err(e) => return Err(format!("discovery stream failed: {}", e.message())),
            };
            let answered = self.apply(&response, &tx).await?;
            if !waiting.is_empty() {
                for k in answered {
                    waiting.remove(&k);
                }
                if waiting.is_empty() {
                    self.reached_sync();
                }
            }
        }
    }

    /// Applies one response, ACKs it, then reports the markers it moved; returns the keys it answered.
    async fn apply(
        &mut self,
        response: &wire::Response,
        tx: &mpsc::Sender<v1::DiscoveryRequest>,
    ) -> Result<Vec<Key>, String> {
        let mut moved = Vec::new();
        let mut answered = Vec::with_capacity(response.resources.len() + response.removed.len());
        for r in &response.resources {
            let Some(k) = &r.key else { continue };
            let key = (k.r#type, k.name.clone());
            let new = marker(r, self.endpoint_marker);
            let old = self
                .held
                .insert(key.clone(), (r.version.clone(), new))
                .map_or(0, |(_, m)| m);
            if new > old && self.tracker.tracks(&key) {
                moved.push((key.clone(), old, new));
            }
            answered.push(key);
        }
        for k in &response.removed {
            let key = (k.r#type, k.name.clone());
            self.held.remove(&key);
            answered.push(key);
        }
        let c = &self.counters;
        c.responses.fetch_add(1, Ordering::Relaxed);
        c.resources
            .fetch_add(response.resources.len() as u64, Ordering::Relaxed);
        c.removed
            .fetch_add(response.removed.len() as u64, Ordering::Relaxed);
        let ack = v1::Ack {
            nonce: response.nonce.clone(),
        };
        tx.send(request(Req::Ack(ack)))
            .await
            .map_err(|_| "the discovery stream closed".to_string())?;
        let now = Instant::now();
        for (key, old, new) in moved {
            self.tracker.acked(&key, old, new, now);
        }
        Ok(answered)
    }

    fn reached_sync(&self) {
        self.sync_at.lock().unwrap_or_else(|e| e.into_inner())[self.index] = Some(Instant::now());
        self.synced[self.index].fetch_add(1, Ordering::AcqRel);
    }
}

/// Decrements the open-stream count when a session ends.
struct Guard<'a>(&'a AtomicUsize);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
