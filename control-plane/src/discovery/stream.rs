//! One proxy's discovery stream: `Hello`, on-demand subscriptions, incremental pushes, ACK/NACK.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use shoal_proto::v1::{self, discovery_request::Request as Req};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::catalog::{Key, wire_key};
use super::hub::Hub;
use super::registry::ProxyEntry;

/// How long a new stream may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The response stream handed to tonic.
pub struct Outbox(pub(super) mpsc::Receiver<Result<v1::DiscoveryResponse, Status>>);

impl Stream for Outbox {
    type Item = Result<v1::DiscoveryResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// What this stream has told its proxy.
#[derive(Default)]
struct Session {
    subscribed: HashSet<Key>,
    /// Version last sent per key ("" = sent as removed).
    sent: HashMap<Key, String>,
    /// Responses awaiting ACK/NACK: nonce → (sent at, versions).
    pending: HashMap<String, (Instant, Vec<(Key, String)>)>,
    nonce: u64,
}

fn key_of(k: &v1::ResourceKey) -> Key {
    (k.r#type, k.name.clone())
}

/// Serves one stream until the proxy goes away.
pub(super) async fn run(
    hub: Arc<Hub>,
    address: String,
    mut inbound: Streaming<v1::DiscoveryRequest>,
    out: mpsc::Sender<Result<v1::DiscoveryResponse, Status>>,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(v1::DiscoveryRequest {
            request: Some(Req::Hello(h)),
        }))) => h,
        Ok(Ok(Some(_))) => {
            let _ = out
                .send(Err(Status::invalid_argument(
                    "the first message of a discovery stream must be Hello",
                )))
                .await;
            return;
        }
        _ => return,
    };
    let mut changes = hub.changes();
    let registration = hub.registry.register(hello.clone(), address.clone());
    let entry = registration.entry.clone();
    tracing::info!(proxy = %hello.proxy_id, %address, held = hello.held.len(), "proxy connected");
    let mut s = Session::default();
    let mut held = Vec::new();
    for h in &hello.held {
        if let Some(k) = &h.key {
            let k = key_of(k);
            s.subscribed.insert(k.clone());
            s.sent.insert(k.clone(), h.version.clone());
            held.push((k, h.version.clone()));
        }
    }
    entry.held(&held);
    let all: Vec<Key> = s.subscribed.iter().cloned().collect();
    if push(&hub, &entry, &mut s, &all, &out).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = hub.closed() => break,
            msg = inbound.message() => {
                let req = match msg {
                    Ok(Some(v1::DiscoveryRequest { request: Some(r) })) => r,
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                };
                if handle(&hub, &entry, &mut s, req, &out).await.is_err() {
                    break;
                }
            }
            batch = changes.recv() => {
                let Some(keys) = changed_keys(&s, batch, &mut changes) else {
                    break;
                };
                if !keys.is_empty() && push(&hub, &entry, &mut s, &keys, &out).await.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!(proxy = %entry.proxy_id(), %address, "proxy disconnected");
    drop(registration);
}

/// The subscribed keys among `first` and every batch already queued behind it (`None`: the hub
/// closed). Batches queue while this stream waits for a slow proxy to read; taking them all at once
/// sends one response with the latest versions instead of one response per batch, so a proxy that
/// falls behind under churn catches up instead of falling further behind.
fn changed_keys(
    s: &Session,
    first: Result<Arc<Vec<Key>>, broadcast::error::RecvError>,
    changes: &mut broadcast::Receiver<Arc<Vec<Key>>>,
) -> Option<Vec<Key>> {
    use broadcast::error::{RecvError, TryRecvError};
    let mut keys: HashSet<Key> = HashSet::new();
    let mut everything = false;
    let mut add = |batch: &[Key]| {
        keys.extend(batch.iter().filter(|k| s.subscribed.contains(*k)).cloned());
    };
    match first {
        Ok(batch) => add(&batch),
        // Fell behind: compare everything it subscribes to.
        Err(RecvError::Lagged(_)) => everything = true,
        Err(RecvError::Closed) => return None,
    }
    loop {
        match changes.try_recv() {
            Ok(batch) => add(&batch),
            Err(TryRecvError::Lagged(_)) => everything = true,
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    if everything {
        return Some(s.subscribed.iter().cloned().collect());
    }
    Some(keys.into_iter().collect())
}

async fn handle(
    hub: &Hub,
    entry: &ProxyEntry,
    s: &mut Session,
    req: Req,
    out: &mpsc::Sender<Result<v1::DiscoveryResponse, Status>>,
) -> Result<(), ()> {
    match req {
        Req::Hello(_) => {
            let _ = out
                .send(Err(Status::invalid_argument(
                    "Hello is only allowed as the first message",
                )))
                .await;
            return Err(());
        }
        Req::Subscribe(sub) => {
            let keys: Vec<Key> = sub
                .resources
                .iter()
                .map(key_of)
                .filter(|k| s.subscribed.insert(k.clone()))
                .collect();
            metrics::counter!("shoal_cp_subscriptions_total").increment(keys.len() as u64);
            return push(hub, entry, s, &keys, out).await;
        }
        Req::Unsubscribe(unsub) => {
            let keys: Vec<Key> = unsub.resources.iter().map(key_of).collect();
            for k in &keys {
                s.subscribed.remove(k);
                s.sent.remove(k);
            }
            entry.forget(&keys);
        }
        Req::Ack(ack) => {
            if let Some((at, versions)) = s.pending.remove(&ack.nonce) {
                metrics::histogram!("shoal_cp_push_ack_seconds").record(at.elapsed().as_secs_f64());
                entry.acked(&versions);
            }
        }
        Req::Nack(nack) => {
            if let Some((_, versions)) = s.pending.remove(&nack.nonce) {
                metrics::counter!("shoal_cp_nacks_total").increment(1);
                tracing::warn!(proxy = %entry.proxy_id(), error = %nack.error_message, "proxy rejected an update (NACK); it keeps its previous state");
                // Versions stay recorded as sent: they are not resent until they change.
                entry.nacked(&versions, &nack.error_message);
            }
        }
    }
    Ok(())
}

/// Sends what changed among `keys` relative to what this proxy was last sent.
async fn push(
    hub: &Hub,
    entry: &ProxyEntry,
    s: &mut Session,
    keys: &[Key],
    out: &mpsc::Sender<Result<v1::DiscoveryResponse, Status>>,
) -> Result<(), ()> {
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    let mut versions = Vec::new();
    for k in keys {
        let current = hub.entry(k);
        let version = current
            .as_ref()
            .map_or(String::new(), |e| e.version.clone());
        if s.sent.get(k) == Some(&version) {
            continue;
        }
        s.sent.insert(k.clone(), version.clone());
        match current {
            Some(e) => resources.push(v1::DiscoveryResource {
                key: Some(wire_key(k)),
                version: e.version,
                payload: Some(e.payload),
            }),
            None => removed.push(wire_key(k)),
        }
        versions.push((k.clone(), version));
    }
    if versions.is_empty() {
        return Ok(());
    }
    s.nonce += 1;
    let nonce = s.nonce.to_string();
    entry.sent(&versions);
    s.pending.insert(nonce.clone(), (Instant::now(), versions));
    metrics::counter!("shoal_cp_pushes_total").increment(1);
    let response = v1::DiscoveryResponse {
        version: String::new(),
        nonce,
        resources,
        removed,
    };
    out.send(Ok(response)).await.map_err(|_| ())
}
