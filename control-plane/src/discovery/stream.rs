//! One proxy's discovery stream: `Hello`, on-demand subscriptions, incremental pushes, ACK/NACK.
//!
//! What the stream sends is decided when it can send, not when something changes: the hub drops
//! changed keys into the stream's [`Mailbox`] (a set, so a key that changes ten times is one
//! entry), and a response is built from the catalog's *current* versions only when the proxy has
//! room for it:
//! at most [`MAX_UNACKED`] responses awaiting ACK and one queued for tonic. A proxy that is slow
//! to read or ACK gets the latest version of each changed key once, not every intermediate one, and
//! what the control plane holds for it stays bounded (one queued response, two unACKed) however
//! fast things change. Under churn, changes are also released to the stream at most once per push
//! interval (leading edge: a change after a quiet period goes out at once).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use shoal_proto::v1::{self, discovery_request::Request as Req};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::catalog::{Catalog, Key, KeySet, REMOVED, Version, parse_version};
use super::hub::Hub;
use super::registry::{ProxyEntry, Sync as KeyStates};
use super::response::Response;

/// How long a new stream may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses awaiting ACK at most; further changes wait, coalesced, until the proxy ACKs.
const MAX_UNACKED: usize = 2;
/// How long an unACKed response holds its slot: a proxy that stops ACKing still gets updates, at
/// this pace.
const ACK_PATIENCE: Duration = Duration::from_secs(5);
/// Unanswered responses remembered at most (for late ACKs); older ones are forgotten.
const MAX_PENDING: usize = 16;
/// Encoded resource bytes per response: more keys go in the next response (one larger resource
/// goes alone). Keeps tonic's per-stream encode buffer at its initial size (see `response`), so a
/// large first answer does not leave every stream holding a buffer of its size.
pub(super) const RESPONSE_BYTES: usize = 7 * 1024;
/// Sets with more spare room than this are freed once empty (first answers fill them).
const SPARE_KEYS: usize = 32;

/// The response stream handed to tonic.
pub struct Outbox(mpsc::Receiver<Result<Response, Status>>);

impl Stream for Outbox {
    type Item = Result<Response, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// A stream's sending half and the [`Outbox`] tonic reads: one response queued at most.
pub(super) fn outbox() -> (mpsc::Sender<Result<Response, Status>>, Outbox) {
    let (tx, rx) = mpsc::channel(1);
    (tx, Outbox(rx))
}

/// Where the hub drops the keys that changed among a stream's subscriptions; the stream sends
/// from it directly (see [`next_response`]).
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    changed: Mutex<KeyQueue>,
    notify: Notify,
}

impl Mailbox {
    /// Records that `k` changed and wakes the stream.
    pub(super) fn post(&self, k: &Key) {
        if lock(&self.changed).push(k) {
            self.notify.notify_one();
        }
    }
}

/// Keys in the order they first changed since they were last sent, each once. Sent oldest first,
/// so a key that keeps changing cannot starve the others when a response cannot carry them all.
#[derive(Debug, Default)]
struct KeyQueue {
    order: VecDeque<Key>,
    queued: KeySet,
}

impl KeyQueue {
    /// Queues `k` unless it is queued already; true when it was not.
    fn push(&mut self, k: &Key) -> bool {
        let fresh = self.queued.insert(k.clone());
        if fresh {
            self.order.push_back(k.clone());
        }
        fresh
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Offers queued keys to `f`, oldest first, until it is full.
    fn drain_into(&mut self, f: &mut Filling, catalog: &Catalog, sync: &mut KeyStates) {
        while let Some(k) = self.order.pop_front() {
            if let Taken::Full = f.offer(catalog, sync, &k) {
                self.order.push_front(k);
                break;
            }
            self.queued.remove(&k);
        }
        if self.order.is_empty() && self.order.capacity() > SPARE_KEYS {
            *self = Self::default();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A response awaiting ACK or NACK.
struct Pending {
    nonce: u64,
    sent: Instant,
    versions: Vec<(Key, Version)>,
}

/// What this stream is about to tell its proxy.
struct Session {
    /// Keys of `Hello` and `Subscribe` not answered yet: sent as soon as the proxy has room, before
    /// changes and regardless of the push interval. Already unique (only newly subscribed keys are
    /// queued), so a plain queue: a first answer's keys are a transient allocation of every
    /// connecting stream, and memory per proxy is measured after the connects.
    answer: VecDeque<Key>,
    /// Whether the mailbox's changes may be sent now (the push interval allows it).
    changes_open: bool,
    /// When changes were last opened, and when they may be opened next.
    opened: Option<Instant>,
    open_at: Option<Instant>,
    /// Oldest first.
    pending: VecDeque<Pending>,
    nonce: u64,
    pushes: metrics::Counter,
    ack_seconds: metrics::Histogram,
}

impl Session {
    /// Unanswered responses younger than [`ACK_PATIENCE`] (they hold window slots).
    fn in_flight(&self, now: Instant) -> usize {
        self.pending
            .iter()
            .filter(|p| now.duration_since(p.sent) < ACK_PATIENCE)
            .count()
    }

    /// When the oldest slot-holding response stops holding its slot.
    fn slot_frees_at(&self) -> Instant {
        self.pending
            .iter()
            .map(|p| p.sent + ACK_PATIENCE)
            .find(|t| *t > Instant::now())
            .unwrap_or_else(Instant::now)
    }

    /// Whether there is something to send once the proxy has room.
    fn has_work(&self) -> bool {
        !self.answer.is_empty() || self.changes_open
    }
}

/// Serves one stream until the proxy goes away.
pub(super) async fn run(
    hub: Arc<Hub>,
    peer: crate::server::PeerInfo,
    mut inbound: Streaming<v1::DiscoveryRequest>,
    out: mpsc::Sender<Result<Response, Status>>,
) {
    let mut hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
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
    let held = std::mem::take(&mut hello.held);
    let address = peer.address();
    let registration = hub.registry.register_peer(hello, &peer);
    let entry = registration.entry.clone();
    // The verified client certificate's identity (TLS with a workload certificate), else `none`.
    let client_identity = peer.identity.as_deref().unwrap_or("none");
    tracing::info!(proxy = %entry.proxy_id(), %address, tls = peer.tls, client_identity, held = held.len(), "proxy connected");
    let mailbox = Arc::new(Mailbox::default());
    let mut s = Session {
        answer: VecDeque::new(),
        changes_open: false,
        opened: None,
        open_at: None,
        pending: VecDeque::new(),
        nonce: 0,
        pushes: metrics::counter!("shoal_cp_pushes_total"),
        ack_seconds: metrics::histogram!("shoal_cp_push_ack_seconds"),
    };
    let held: Vec<(Key, Version)> = held
        .iter()
        .filter_map(|h| Some((hub.intern(h.key.as_ref()?), parse_version(&h.version))))
        .collect();
    let mut keys = Vec::with_capacity(held.len());
    {
        let mut sync = entry.sync();
        for (k, v) in held {
            if sync.subscribe(k.clone()) {
                keys.push(k.clone());
            }
            sync.held(k, v);
        }
    }
    // Watched before the catalog is read: a change from now on reaches the mailbox.
    hub.watch(&keys, &mailbox);
    s.answer.extend(keys);
    let closed = hub.closed();
    tokio::pin!(closed);
    loop {
        let now = Instant::now();
        let window_open = s.in_flight(now) < MAX_UNACKED;
        tokio::select! {
            _ = &mut closed => break,
            msg = inbound.message() => {
                let req = match msg {
                    Ok(Some(v1::DiscoveryRequest { request: Some(r) })) => r,
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                };
                if handle(&hub, &entry, &mailbox, &mut s, req, &out).await.is_err() {
                    break;
                }
            }
            () = mailbox.notify.notified() => {
                // Leading edge: at once after a quiet interval, else when the interval is over.
                let (now, interval) = (Instant::now(), hub.push_interval());
                match s.opened {
                    _ if s.changes_open || s.open_at.is_some() => {}
                    Some(at) if now < at + interval => s.open_at = Some(at + interval),
                    _ => open_changes(&mut s, now),
                }
            }
            () = tokio::time::sleep_until(s.open_at.unwrap_or(now)), if s.open_at.is_some() => {
                open_changes(&mut s, Instant::now());
            }
            permit = out.reserve(), if window_open && s.has_work() => {
                let Ok(permit) = permit else { break };
                if let Some(response) = next_response(&hub, &entry, &mailbox, &mut s) {
                    permit.send(Ok(response));
                }
            }
            () = tokio::time::sleep_until(s.slot_frees_at()), if !window_open && s.has_work() => {}
        }
    }
    hub.unwatch(
        &entry.sync().keys.keys().cloned().collect::<Vec<_>>(),
        &mailbox,
    );
    tracing::info!(proxy = %entry.proxy_id(), %address, "proxy disconnected");
    drop(registration);
}

/// Lets the mailbox's changes go out (as soon as the proxy has room).
fn open_changes(s: &mut Session, now: Instant) {
    s.changes_open = true;
    s.opened = Some(now);
    s.open_at = None;
}

async fn handle(
    hub: &Hub,
    entry: &ProxyEntry,
    mailbox: &Arc<Mailbox>,
    s: &mut Session,
    req: Req,
    out: &mpsc::Sender<Result<Response, Status>>,
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
            let keys: Vec<Key> = {
                let wanted: Vec<Key> = sub.resources.iter().map(|k| hub.intern(k)).collect();
                let mut sync = entry.sync();
                wanted
                    .into_iter()
                    .filter(|k| sync.subscribe(k.clone()))
                    .collect()
            };
            metrics::counter!("shoal_cp_subscriptions_total").increment(keys.len() as u64);
            hub.watch(&keys, mailbox);
            s.answer.extend(keys);
        }
        Req::Unsubscribe(unsub) => {
            let keys: Vec<Key> = unsub.resources.iter().map(|k| hub.intern(k)).collect();
            {
                let mut sync = entry.sync();
                // A queued key that is no longer subscribed is skipped when its turn comes.
                for k in &keys {
                    sync.forget(k);
                }
            }
            hub.unwatch(&keys, mailbox);
        }
        Req::Ack(ack) => {
            if let Some(p) = take_pending(s, &ack.nonce) {
                s.ack_seconds.record(p.sent.elapsed().as_secs_f64());
                entry.sync().acked(&p.versions);
            }
        }
        Req::Nack(nack) => {
            if let Some(p) = take_pending(s, &nack.nonce) {
                metrics::counter!("shoal_cp_nacks_total").increment(1);
                // Versions stay recorded as sent: they are not resent until they change.
                if nack.rejections.is_empty() {
                    // A proxy older than per-resource NACKs: it rejected the whole response.
                    tracing::warn!(proxy = %entry.proxy_id(), error = %nack.error_message, "proxy rejected an update (NACK); it keeps its previous state");
                    entry.sync().nacked(&p.versions, &nack.error_message);
                } else {
                    let rejections: Vec<(Key, String)> = (nack.rejections.into_iter())
                        .filter_map(|r| {
                            let k = r.key?;
                            let key = Key {
                                ty: k.r#type,
                                name: k.name.into(),
                            };
                            Some((key, r.error_message))
                        })
                        .collect();
                    for (k, error) in &rejections {
                        tracing::warn!(proxy = %entry.proxy_id(), resource_type = k.ty, resource = %k.name, %error, "proxy rejected a resource (NACK); it keeps its previous version and applied the rest");
                    }
                    entry.sync().rejected(&p.versions, &rejections);
                }
            }
        }
    }
    Ok(())
}

fn take_pending(s: &mut Session, nonce: &str) -> Option<Pending> {
    let nonce: u64 = nonce.parse().ok()?;
    let i = s.pending.iter().position(|p| p.nonce == nonce)?;
    s.pending.remove(i)
}

/// One response being filled: what it carries and the versions it sends.
#[derive(Default)]
struct Filling {
    response: Response,
    versions: Vec<(Key, Version)>,
    bytes: usize,
}

impl Filling {
    /// Adds `k` if its current version differs from what the proxy was sent; false once the
    /// response is full (`k` is then left for the next one).
    fn offer(&mut self, catalog: &Catalog, sync: &mut KeyStates, k: &Key) -> Taken {
        if self.bytes >= RESPONSE_BYTES {
            return Taken::Full;
        }
        let Some(state) = sync.keys.get_mut(k) else {
            return Taken::Done; // unsubscribed meanwhile
        };
        let current = catalog.get(k);
        let version = current.map_or(REMOVED, |e| e.version);
        if state.sent == version {
            return Taken::Done;
        }
        state.sent = version;
        match current {
            Some(e) => {
                self.bytes += e.encoded.len();
                self.response.resources.push(e.encoded.clone());
            }
            None => {
                self.bytes += k.name.len() + 8;
                self.response.removed.push(k.clone());
            }
        }
        self.versions.push((k.clone(), version));
        Taken::Done
    }
}

enum Taken {
    Done,
    Full,
}

/// Builds the next response: unanswered `Hello`/`Subscribe` keys first, then (when open) the
/// mailbox's changed keys, each only if its current version differs from what the proxy was last
/// sent, up to [`RESPONSE_BYTES`]; the rest wait for the next response. `None` when nothing
/// differs.
fn next_response(
    hub: &Hub,
    entry: &ProxyEntry,
    mailbox: &Mailbox,
    s: &mut Session,
) -> Option<Response> {
    let mut f = Filling::default();
    {
        let catalog = hub.catalog();
        let mut sync = entry.sync();
        while let Some(k) = s.answer.pop_front() {
            if let Taken::Full = f.offer(&catalog, &mut sync, &k) {
                s.answer.push_front(k);
                break;
            }
        }
        if s.answer.is_empty() && s.answer.capacity() > SPARE_KEYS {
            s.answer = VecDeque::new();
        }
        if s.changes_open && f.bytes < RESPONSE_BYTES {
            let mut changed = lock(&mailbox.changed);
            changed.drain_into(&mut f, &catalog, &mut sync);
            // Closed until the next change: it reopens them (now, or after the push interval).
            s.changes_open = !changed.is_empty();
        }
    }
    if f.versions.is_empty() {
        return None;
    }
    s.nonce += 1;
    f.response.nonce = s.nonce;
    if s.pending.len() >= MAX_PENDING {
        s.pending.pop_front();
    }
    s.pending.push_back(Pending {
        nonce: s.nonce,
        sent: Instant::now(),
        versions: f.versions,
    });
    s.pushes.increment(1);
    Some(f.response)
}

#[cfg(test)]
mod tests {
    use shoal_proto::v1::ResourceType;

    use super::*;
    use crate::discovery::catalog::key;

    #[test]
    fn changed_keys_queue_once_in_first_change_order() {
        let mut q = KeyQueue::default();
        let (a, b) = (
            key(ResourceType::Endpoints, "a.default"),
            key(ResourceType::Endpoints, "b.default"),
        );
        assert!(q.push(&a));
        assert!(q.push(&b));
        // `a` changing again keeps its place: it cannot overtake `b`.
        assert!(!q.push(&a));
        assert_eq!(q.order, [a.clone(), b.clone()]);
        let catalog = Catalog::default();
        let mut states = KeyStates::default();
        states.subscribe(a.clone());
        states.subscribe(b.clone());
        let mut f = Filling::default();
        q.drain_into(&mut f, &catalog, &mut states);
        assert!(q.is_empty());
        // Neither exists: both are sent as removed, oldest first.
        assert_eq!(f.response.removed, [a, b]);
    }
}
