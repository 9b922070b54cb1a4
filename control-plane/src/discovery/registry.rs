//! Connected proxies and where each stands on each resource it subscribes to (Admin `Status`).
//!
//! A proxy's [`ProxyEntry`] holds the *only* per-key state of its stream: the stream task reads and
//! updates it (what was sent, what was ACKed) and `Status` reports it. One map per proxy, with
//! shared key names and numeric versions, is what keeps a subscribed key at a few dozen bytes.
//!
//! When a stream ends, its proxy stays in `Status` as disconnected (its last status, and when it was
//! last seen) for the registry's grace period (`SHOAL_CP_DISCONNECTED_PROXY_GRACE`), so an operator
//! sees a proxy that went away rather than nothing; a proxy that reconnects with the same id replaces
//! it at once. Only connected proxies count for decisions ([`Registry::acks`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::v1::{self, SyncState};

use crate::server::PeerInfo;

use super::catalog::{Key, KeyMap, NONE, Version, wire_key, wire_version};
use super::peer::{MismatchLog, StreamIdentity};

/// The default of [`Registry::with_grace`]: how long a disconnected proxy stays in `Status`.
pub const DEFAULT_DISCONNECTED_GRACE: Duration = Duration::from_secs(5 * 60);

/// The most disconnected proxies kept at once (the oldest go first): a mass restart of many uniquely
/// named proxies within the grace period must not grow the registry without bound. Each costs what it
/// cost while connected (its compact per-key map), no more.
const MAX_DISCONNECTED: usize = 10_000;

/// Every connected proxy, and those disconnected within the grace period.
#[derive(Debug)]
pub struct Registry {
    next: AtomicU64,
    proxies: Mutex<HashMap<u64, Arc<ProxyEntry>>>,
    /// Proxies whose stream ended, oldest first, until `grace` has passed.
    disconnected: Mutex<std::collections::VecDeque<Disconnected>>,
    grace: Duration,
    mismatches: MismatchLog,
}

/// A proxy whose stream ended, kept for `Status` until `until`.
#[derive(Debug)]
struct Disconnected {
    until: Instant,
    /// When its stream ended (Unix seconds).
    at_unix: u64,
    /// Its entry as the stream left it (nothing updates it any more); kept rather than a `ProxyStatus`
    /// snapshot, whose per-resource strings would take several times the memory.
    entry: Arc<ProxyEntry>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_grace(DEFAULT_DISCONNECTED_GRACE)
    }
}

/// One connected proxy (one discovery stream).
#[derive(Debug)]
pub struct ProxyEntry {
    /// The proxy's `Hello`, without its `held` list (that is in `sync`).
    hello: v1::Hello,
    address: String,
    /// How its stream connected and the identity it proved.
    identity: StreamIdentity,
    since_unix: u64,
    sync: Mutex<Sync>,
}

/// The per-key state of one proxy.
#[derive(Debug, Default)]
pub(super) struct Sync {
    /// Every subscribed key: what was last sent and what the proxy ACKed.
    pub(super) keys: KeyMap<KeySync>,
    /// Keys whose current version the proxy rejected: the version and the error (rare, so kept
    /// apart from `keys`).
    nacked: KeyMap<(Version, String)>,
    last_nack: Option<String>,
}

/// One subscribed key.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct KeySync {
    /// The version last sent ([`NONE`]: nothing sent yet; `REMOVED`: sent as removed).
    pub(super) sent: Version,
    /// The version last ACKed (or held at connect time).
    acked: Version,
}

impl Sync {
    fn state(&self, k: &Key, s: &KeySync) -> SyncState {
        match self.nacked.get(k) {
            Some((v, _)) if *v == s.sent => SyncState::Nacked,
            _ if s.acked != NONE && s.acked == s.sent => SyncState::Synced,
            _ => SyncState::Stale,
        }
    }

    /// Subscribes to `k`; false when it was already subscribed.
    pub(super) fn subscribe(&mut self, k: Key) -> bool {
        let mut added = false;
        self.keys.entry(k).or_insert_with(|| {
            added = true;
            KeySync::default()
        });
        added
    }

    /// Records versions the proxy holds already (from `Hello`): they count as sent and ACKed.
    pub(super) fn held(&mut self, k: Key, v: Version) {
        self.keys.insert(k, KeySync { sent: v, acked: v });
    }

    /// Forgets an unsubscribed key.
    pub(super) fn forget(&mut self, k: &Key) {
        self.keys.remove(k);
        if !self.nacked.is_empty() {
            self.nacked.remove(k);
        }
    }

    /// Records an ACK of the given versions.
    pub(super) fn acked(&mut self, versions: &[(Key, Version)]) {
        for (k, v) in versions {
            if let Some(s) = self.keys.get_mut(k) {
                s.acked = *v;
            }
        }
        if !self.nacked.is_empty() {
            for (k, _) in versions {
                self.nacked.remove(k);
            }
        }
        if self.nacked.is_empty() {
            self.last_nack = None;
        }
    }

    /// Records a NACK that names the resources it rejected, each with its error (`rejections`): the
    /// proxy applied every other version of the response, so those count as ACKed.
    pub(super) fn rejected(&mut self, versions: &[(Key, Version)], rejections: &[(Key, String)]) {
        let error_of = |k: &Key| rejections.iter().find(|(r, _)| r == k).map(|(_, e)| e);
        let (refused, applied): (Vec<_>, Vec<_>) =
            (versions.iter().cloned()).partition(|(k, _)| error_of(k).is_some());
        self.acked(&applied);
        for (k, v) in refused {
            let Some(error) = error_of(&k) else { continue };
            if self.keys.contains_key(&k) {
                self.nacked.insert(k, (v, error.clone()));
            }
            self.last_nack = Some(error.clone());
        }
    }

    /// Records a NACK of the given versions, all of them (a proxy that rejects whole responses).
    pub(super) fn nacked(&mut self, versions: &[(Key, Version)], error: &str) {
        for (k, v) in versions {
            if self.keys.contains_key(k) {
                self.nacked.insert(k.clone(), (*v, error.to_string()));
            }
        }
        self.last_nack = Some(error.to_string());
    }
}

/// Where one connected proxy stands on one key ([`Registry::acks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAck {
    /// The proxy's id, from its `Hello`.
    pub proxy_id: String,
    /// The peer address of its stream.
    pub address: String,
    /// Whether it has ACKed the version asked about (or held it when it connected).
    pub acked: bool,
}

/// Removes the proxy from the registry when its stream ends.
#[derive(Debug)]
pub struct Registration<'a> {
    registry: &'a Registry,
    id: u64,
    /// The proxy's entry, updated as the stream progresses.
    pub entry: Arc<ProxyEntry>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        {
            let mut proxies = lock(&self.registry.proxies);
            proxies.remove(&self.id);
            metrics::gauge!("shoal_cp_connected_proxies").set(proxies.len() as f64);
        }
        self.registry.keep_disconnected(self.entry.clone());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// An empty registry that keeps a disconnected proxy in `Status` for `grace` (zero: not at all).
    pub fn with_grace(grace: Duration) -> Self {
        Self {
            next: AtomicU64::new(0),
            proxies: Mutex::default(),
            disconnected: Mutex::default(),
            grace,
            mismatches: MismatchLog::default(),
        }
    }

    /// Keeps `entry`'s last status, marked disconnected, for the grace period.
    fn keep_disconnected(&self, entry: Arc<ProxyEntry>) {
        if self.grace.is_zero() {
            return;
        }
        // Its successor (same id) connected before this stream noticed it had ended: it is not gone.
        let replaced =
            (lock(&self.proxies).values()).any(|p| p.hello.proxy_id == entry.hello.proxy_id);
        if replaced {
            return;
        }
        let until = Instant::now() + self.grace;
        let at_unix = unix_now();
        let mut gone = lock(&self.disconnected);
        prune(&mut gone);
        if gone.len() >= MAX_DISCONNECTED {
            gone.pop_front();
        }
        gone.push_back(Disconnected {
            until,
            at_unix,
            entry,
        });
    }

    /// Disconnected proxies still within the grace period.
    fn disconnected(&self) -> Vec<v1::ProxyStatus> {
        let gone: Vec<(u64, Arc<ProxyEntry>)> = {
            let mut gone = lock(&self.disconnected);
            prune(&mut gone);
            gone.iter().map(|d| (d.at_unix, d.entry.clone())).collect()
        };
        // Built outside the lock, like the connected proxies' statuses.
        (gone.into_iter())
            .map(|(at_unix, entry)| {
                let mut status = entry.status();
                status.disconnected = true;
                status.disconnected_at_unix_seconds = at_unix;
                status
            })
            .collect()
    }

    /// Records a newly connected proxy, nothing known about its connection but the address (its
    /// `Hello.held` is not kept: the stream records it with [`Sync::held`]).
    pub fn register(&self, hello: v1::Hello, address: String) -> Registration<'_> {
        self.register_as(hello, address, StreamIdentity::default())
    }

    /// Records a proxy connected through `peer`, with the identity its client certificate proved; a
    /// mismatch with its `Hello`'s workload is logged (once per proxy id and identity) and flagged in
    /// `Status`.
    pub fn register_peer(&self, hello: v1::Hello, peer: &PeerInfo) -> Registration<'_> {
        let identity = StreamIdentity::of(peer, hello.workload.as_ref());
        self.mismatches.warn_once(&hello, &identity);
        self.register_as(hello, peer.address(), identity)
    }

    fn register_as(
        &self,
        mut hello: v1::Hello,
        address: String,
        identity: StreamIdentity,
    ) -> Registration<'_> {
        hello.held = Vec::new();
        // The same proxy back: it is connected again, not also gone.
        lock(&self.disconnected).retain(|d| d.entry.hello.proxy_id != hello.proxy_id);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let since_unix = unix_now();
        let entry = Arc::new(ProxyEntry {
            hello,
            address,
            identity,
            since_unix,
            sync: Mutex::default(),
        });
        let mut proxies = lock(&self.proxies);
        proxies.insert(id, entry.clone());
        metrics::gauge!("shoal_cp_connected_proxies").set(proxies.len() as f64);
        Registration {
            registry: self,
            id,
            entry,
        }
    }

    /// Connected proxies (not those disconnected within the grace period).
    pub fn len(&self) -> usize {
        lock(&self.proxies).len()
    }

    /// Whether no proxy is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every connected proxy subscribed to `k`, and whether it has ACKed version `v` of it: for decisions
    /// that wait until proxies have something (a CA rotation waits for the new trust bundle). Holds the
    /// registry's lock only to copy its list, then each proxy's lock for one lookup, like `Status`.
    pub fn acks(&self, k: &Key, v: Version) -> Vec<KeyAck> {
        let proxies: Vec<Arc<ProxyEntry>> = lock(&self.proxies).values().cloned().collect();
        let mut out: Vec<KeyAck> = proxies
            .iter()
            .filter_map(|p| {
                let acked = lock(&p.sync).keys.get(k)?.acked == v;
                Some(KeyAck {
                    proxy_id: p.hello.proxy_id.clone(),
                    address: p.address.clone(),
                    acked,
                })
            })
            .collect();
        out.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        out
    }

    /// Status of every connected proxy, and every proxy disconnected within the grace period, matching
    /// the filters (empty filter: all).
    pub fn statuses(&self, namespace: &str, proxy_id: &str) -> Vec<v1::ProxyStatus> {
        let proxies: Vec<Arc<ProxyEntry>> = lock(&self.proxies).values().cloned().collect();
        let mut out: Vec<v1::ProxyStatus> = proxies.iter().map(|p| p.status()).collect();
        out.extend(self.disconnected());
        out.retain(|p| {
            (proxy_id.is_empty() || p.proxy_id == proxy_id)
                && (namespace.is_empty()
                    || p.workload
                        .as_ref()
                        .is_some_and(|w| w.namespace == namespace))
        });
        out.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        out
    }
}

/// Drops the disconnected proxies whose grace period has ended (they are in expiry order).
fn prune(gone: &mut std::collections::VecDeque<Disconnected>) {
    let now = Instant::now();
    while gone.front().is_some_and(|d| d.until <= now) {
        gone.pop_front();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ProxyEntry {
    /// The proxy's id from its `Hello`.
    pub fn proxy_id(&self) -> &str {
        &self.hello.proxy_id
    }

    /// The per-key state, for the stream task (uncontended except while `Status` reads it).
    pub(super) fn sync(&self) -> std::sync::MutexGuard<'_, Sync> {
        lock(&self.sync)
    }

    fn status(&self) -> v1::ProxyStatus {
        let sync = lock(&self.sync);
        let mut keys: Vec<(&Key, &KeySync)> =
            sync.keys.iter().filter(|(_, s)| s.sent != NONE).collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let resources: Vec<v1::ResourceSyncStatus> = keys
            .into_iter()
            .map(|(k, s)| v1::ResourceSyncStatus {
                key: Some(wire_key(k)),
                current_version: wire_version(s.sent),
                acked_version: wire_version(s.acked),
                state: sync.state(k, s) as i32,
                last_nack_error: sync
                    .nacked
                    .get(k)
                    .map(|(_, e)| e.clone())
                    .unwrap_or_default(),
            })
            .collect();
        let state = if resources
            .iter()
            .any(|r| r.state == SyncState::Nacked as i32)
        {
            SyncState::Nacked
        } else if resources.iter().any(|r| r.state == SyncState::Stale as i32) {
            SyncState::Stale
        } else {
            SyncState::Synced
        };
        v1::ProxyStatus {
            proxy_id: self.hello.proxy_id.clone(),
            workload: self.hello.workload.clone(),
            node: self.hello.node.clone(),
            proxy_version: self.hello.proxy_version.clone(),
            address: self.address.clone(),
            connected_since_unix_seconds: self.since_unix,
            state: state as i32,
            last_nack_error: if state == SyncState::Nacked {
                sync.last_nack.clone().unwrap_or_default()
            } else {
                String::new()
            },
            resources,
            transport: self.identity.transport as i32,
            verified_identity: self.identity.verified.clone(),
            identity_mismatch: self.identity.mismatch,
            disconnected: false,
            disconnected_at_unix_seconds: 0,
        }
    }
}

#[cfg(test)]
impl ProxyEntry {
    /// Test helper (for code that reads [`Registry::acks`]): the proxy is subscribed to `k`, was sent
    /// version `sent` and has ACKed `acked`.
    pub(crate) fn set_key_state(&self, k: Key, sent: Version, acked: Version) {
        self.sync().keys.insert(k, KeySync { sent, acked });
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::v1::ResourceType;

    use super::*;
    use crate::discovery::catalog::key;

    fn hello(id: &str) -> v1::Hello {
        v1::Hello {
            proxy_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn acks_lists_subscribed_proxies_and_whether_they_acked_a_version() {
        let registry = Registry::default();
        let bundle = key(ResourceType::TrustBundle, "cluster.local");
        let other = key(ResourceType::Service, "web.default");
        let (a, b, c, d) = (
            registry.register(hello("a"), "10.0.0.1:1".into()),
            registry.register(hello("b"), "10.0.0.2:1".into()),
            registry.register(hello("c"), "10.0.0.3:1".into()),
            registry.register(hello("d"), "10.0.0.4:1".into()),
        );
        // a: sent and ACKed v7. b: sent v7, still ACKing v5. c: held v7 when it connected. d: not subscribed.
        a.entry.sync().subscribe(bundle.clone());
        a.entry.sync().keys.get_mut(&bundle).unwrap().sent = 7;
        a.entry.sync().acked(&[(bundle.clone(), 7)]);
        b.entry.sync().held(bundle.clone(), 5);
        b.entry.sync().keys.get_mut(&bundle).unwrap().sent = 7;
        c.entry.sync().held(bundle.clone(), 7);
        d.entry.sync().subscribe(other.clone());

        let acks = registry.acks(&bundle, 7);
        let summary: Vec<(&str, bool)> = acks
            .iter()
            .map(|k| (k.proxy_id.as_str(), k.acked))
            .collect();
        assert_eq!(summary, [("a", true), ("b", false), ("c", true)]);
        assert_eq!(acks[1].address, "10.0.0.2:1");
        // A NACK of v7 leaves b unACKed; an ACK of a later version is not an ACK of v7.
        b.entry.sync().nacked(&[(bundle.clone(), 7)], "bad bundle");
        assert!(!registry.acks(&bundle, 7)[1].acked);
        a.entry.sync().acked(&[(bundle.clone(), 9)]);
        assert!(!registry.acks(&bundle, 7)[0].acked);

        // A disconnected proxy no longer counts.
        drop(b);
        let ids: Vec<String> = registry
            .acks(&bundle, 7)
            .into_iter()
            .map(|k| k.proxy_id)
            .collect();
        assert_eq!(ids, ["a", "c"]);
        drop((a, c, d));
        assert!(registry.acks(&bundle, 7).is_empty());
    }

    #[test]
    fn a_disconnected_proxy_stays_in_status_for_the_grace_period_then_leaves() {
        let registry = Registry::with_grace(Duration::from_millis(200));
        let k = key(ResourceType::Service, "web.default");
        let a = registry.register(hello("a"), "10.0.0.1:1".into());
        a.entry.set_key_state(k.clone(), 3, 3);
        let _b = registry.register(hello("b"), "10.0.0.2:1".into());
        drop(a);
        let gone_at = Instant::now();
        let rows: Vec<(String, bool)> = (registry.statuses("", "").into_iter())
            .map(|p| (p.proxy_id, p.disconnected))
            .collect();
        assert_eq!(rows, [("a".into(), true), ("b".into(), false)]);
        let a_status = &registry.statuses("", "a")[0];
        assert!(a_status.disconnected_at_unix_seconds >= a_status.connected_since_unix_seconds);
        assert_eq!(
            a_status.state(),
            SyncState::Synced,
            "its last sync state is kept"
        );
        assert_eq!(a_status.address, "10.0.0.1:1");
        // Only connected proxies count for decisions and the connected count.
        assert_eq!(registry.len(), 1);
        assert!(registry.acks(&k, 3).is_empty());

        // Once the grace period has passed, it is gone.
        while Instant::now() < gone_at + Duration::from_millis(250) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let ids: Vec<String> = (registry.statuses("", "").into_iter())
            .map(|p| p.proxy_id)
            .collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn a_reconnecting_proxy_replaces_its_disconnected_entry_and_zero_grace_keeps_none() {
        let registry = Registry::with_grace(Duration::from_secs(3600));
        drop(registry.register(hello("a"), "10.0.0.1:1".into()));
        assert!(registry.statuses("", "a")[0].disconnected);
        let _again = registry.register(hello("a"), "10.0.0.1:2".into());
        let rows: Vec<(String, bool)> = (registry.statuses("", "").into_iter())
            .map(|p| (p.address, p.disconnected))
            .collect();
        assert_eq!(rows, [("10.0.0.1:2".into(), false)]);

        let registry = Registry::with_grace(Duration::ZERO);
        drop(registry.register(hello("a"), "10.0.0.1:1".into()));
        assert!(registry.statuses("", "").is_empty());
    }

    #[test]
    fn a_per_resource_nack_marks_only_the_rejected_resources_and_acks_the_rest() {
        let registry = Registry::default();
        let p = registry.register(hello("p"), "10.0.0.1:1".into());
        let (endpoints, route) = (
            key(ResourceType::Endpoints, "web.default"),
            key(ResourceType::Route, "web.default"),
        );
        let error = "route web.default: rules[0].timeout: must be between 1ms and 24h";
        {
            let mut sync = p.entry.sync();
            for (k, v) in [(&endpoints, 3), (&route, 4)] {
                sync.subscribe(k.clone());
                sync.keys.get_mut(k).unwrap().sent = v;
            }
            sync.rejected(
                &[(endpoints.clone(), 3), (route.clone(), 4)],
                &[(route.clone(), error.to_owned())],
            );
        }
        let status = &registry.statuses("", "p")[0];
        let rows: Vec<(String, SyncState, &str)> = (status.resources.iter())
            .map(|r| {
                let k = r.key.clone().unwrap();
                (k.name, r.state(), r.last_nack_error.as_str())
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("web.default".into(), SyncState::Synced, ""),
                ("web.default".into(), SyncState::Nacked, error),
            ]
        );
        assert_eq!(
            status.resources[1].key.as_ref().unwrap().r#type,
            ResourceType::Route as i32
        );
        assert_eq!(status.state(), SyncState::Nacked);
        assert_eq!(status.last_nack_error, error);
        assert!(registry.acks(&endpoints, 3)[0].acked);
        assert!(!registry.acks(&route, 4)[0].acked);

        // The route's next version is ACKed: SYNCED, no NACK left.
        p.entry.sync().keys.get_mut(&route).unwrap().sent = 5;
        p.entry.sync().acked(&[(route.clone(), 5)]);
        let status = &registry.statuses("", "p")[0];
        assert_eq!(status.state(), SyncState::Synced);
        assert_eq!(status.last_nack_error, "");
    }

    #[test]
    fn status_reports_the_transport_and_the_verified_identity_of_each_stream() {
        let registry = Registry::default();
        let hello = |id: &str, service_account: &str| v1::Hello {
            proxy_id: id.into(),
            workload: Some(v1::WorkloadIdentity {
                namespace: "default".into(),
                service_account: service_account.into(),
                service_name: String::new(),
            }),
            ..Default::default()
        };
        let peer = |tls: bool, identity: Option<&str>| PeerInfo {
            remote_addr: Some(([10, 0, 0, 1], 40000).into()),
            tls,
            client_certificate: identity.is_some(),
            identity: identity.map(str::to_owned),
        };
        let frontend = "spiffe://cluster.local/ns/default/sa/frontend";
        let _streams = (
            registry.register_peer(hello("mtls", "frontend"), &peer(true, Some(frontend))),
            registry.register_peer(hello("impostor", "backend"), &peer(true, Some(frontend))),
            registry.register_peer(hello("tls", "frontend"), &peer(true, None)),
            registry.register_peer(hello("plain", "frontend"), &peer(false, None)),
            registry.register(hello("unknown", "frontend"), "10.0.0.2:1".into()),
        );
        let rows: Vec<(String, v1::DiscoveryTransport, String, bool)> = registry
            .statuses("", "")
            .into_iter()
            .map(|p| {
                let transport = p.transport();
                (
                    p.proxy_id,
                    transport,
                    p.verified_identity,
                    p.identity_mismatch,
                )
            })
            .collect();
        use v1::DiscoveryTransport as T;
        assert_eq!(
            rows,
            [
                ("impostor".into(), T::Mtls, frontend.into(), true),
                ("mtls".into(), T::Mtls, frontend.into(), false),
                ("plain".into(), T::Plaintext, String::new(), false),
                ("tls".into(), T::Tls, String::new(), false),
                ("unknown".into(), T::Unspecified, String::new(), false),
            ]
        );
        assert_eq!(registry.statuses("", "plain")[0].address, "10.0.0.1:40000");
    }
}
