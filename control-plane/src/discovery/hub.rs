//! The hub: follows the store, keeps the [`Catalog`] current, and tells the streams subscribed to
//! a key that it changed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use shoal_proto::authority::authorities;
use shoal_proto::v1::{self, discovery_resource::Payload};
use tokio::sync::broadcast;

use super::catalog::{Catalog, Contribution, Entry, Key, KeyMap, key};
use super::registry::Registry;
use super::stream::Mailbox;
use crate::model::{Resource, ResourceKind, ServiceRef, Spec};
use crate::store::{Change, Store};

/// Changed-key batches kept for [`Hub::changes`] observers.
const CHANGE_BACKLOG: usize = 1024;

/// The default of [`Hub::with_push_interval`].
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_millis(0);

/// Shared by the discovery service and the tasks that feed it.
#[derive(Debug)]
pub struct Hub {
    catalog: RwLock<Catalog>,
    changes: broadcast::Sender<Arc<Vec<Key>>>,
    /// Per key, the mailboxes of the streams subscribed to it: a change wakes only those streams
    /// (with 1,000 proxies each subscribed to a quarter of the services, a broadcast would wake
    /// four streams for every one with something to send).
    subscribers: Mutex<KeyMap<Vec<Arc<Mailbox>>>>,
    /// Shortest time between two change-driven pushes on one stream.
    push_interval: Duration,
    /// Connected proxies and their sync state.
    pub registry: Registry,
    /// Turns true when the control plane shuts down: every stream ends.
    closing: tokio::sync::watch::Sender<bool>,
}

impl crate::admin::StatusSource for Hub {
    fn proxies(&self) -> Vec<v1::ProxyStatus> {
        self.registry.statuses("", "")
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Self::with_push_interval(DEFAULT_PUSH_INTERVAL)
    }

    /// An empty hub whose streams push changes at most once per `push_interval` each (a change
    /// after a quieter period is pushed at once; see `stream`).
    pub fn with_push_interval(push_interval: Duration) -> Arc<Self> {
        Self::with_settings(push_interval, super::registry::DEFAULT_DISCONNECTED_GRACE)
    }

    /// [`Self::with_push_interval`], keeping a disconnected proxy in `Status` for `disconnected_grace`
    /// (see [`Registry::with_grace`]).
    pub fn with_settings(push_interval: Duration, disconnected_grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            catalog: RwLock::default(),
            changes: broadcast::channel(CHANGE_BACKLOG).0,
            subscribers: Mutex::default(),
            push_interval,
            registry: Registry::with_grace(disconnected_grace),
            closing: tokio::sync::watch::channel(false).0,
        })
    }

    /// Ends every discovery stream (proxies reconnect to the next control plane).
    pub fn shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Self::shutdown`] was called.
    pub async fn closed(&self) {
        let _ = self.closing.subscribe().wait_for(|c| *c).await;
    }

    /// The current entry for `k`.
    pub fn entry(&self, k: &Key) -> Option<Entry> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(k)
            .cloned()
    }

    /// Change notifications (batches of keys), for observers; streams use [`Self::watch`].
    pub fn changes(&self) -> broadcast::Receiver<Arc<Vec<Key>>> {
        self.changes.subscribe()
    }

    /// The catalog, for reading several entries at once.
    pub(super) fn catalog(&self) -> RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key of a wire key, sharing the catalog's copy of the name when it has one.
    pub(super) fn intern(&self, k: &v1::ResourceKey) -> Key {
        self.catalog().intern(Key {
            ty: k.r#type,
            name: k.name.as_str().into(),
        })
    }

    /// Shortest time between two change-driven pushes on one stream.
    pub(super) fn push_interval(&self) -> Duration {
        self.push_interval
    }

    /// Posts future changes of `keys` to `mailbox`.
    pub(super) fn watch(&self, keys: &[Key], mailbox: &Arc<Mailbox>) {
        if keys.is_empty() {
            return;
        }
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            subscribers
                .entry(k.clone())
                .or_default()
                .push(mailbox.clone());
        }
    }

    /// Stops posting changes of `keys` to `mailbox`.
    pub(super) fn unwatch(&self, keys: &[Key], mailbox: &Arc<Mailbox>) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            if let Some(list) = subscribers.get_mut(k) {
                if let Some(i) = list.iter().position(|m| Arc::ptr_eq(m, mailbox)) {
                    list.swap_remove(i);
                }
                if list.is_empty() {
                    subscribers.remove(k);
                }
            }
        }
    }

    /// Replaces what `source` contributes (endpoint sources use this) and notifies streams.
    pub fn set_source(&self, source: &str, contributions: Vec<(Key, Contribution)>) {
        let changed = self
            .catalog
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_source(source, contributions);
        self.publish(changed);
    }

    fn publish(&self, changed: Vec<Key>) {
        if !changed.is_empty() {
            metrics::counter!("shoal_cp_catalog_changes_total").increment(changed.len() as u64);
            {
                let subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
                for k in &changed {
                    for mailbox in subscribers.get(k).into_iter().flatten() {
                        mailbox.post(k);
                    }
                }
            }
            // No receivers is fine: no proxy is connected.
            let _ = self.changes.send(Arc::new(changed));
        }
    }

    /// Loads the store and follows its changes until the store's feed closes.
    pub async fn follow(self: Arc<Self>, store: Store) {
        let mut revisions = store.subscribe();
        let mut last = self.reload(&store);
        loop {
            match store.changes_since(last) {
                Ok(changes) => {
                    let mut changed = Vec::new();
                    {
                        let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
                        for change in &changes.changes {
                            changed.extend(apply(&mut catalog, change));
                        }
                    }
                    last = changes.revision;
                    self.publish(changed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discovery fell behind the store's change feed; reloading everything");
                    last = self.reload(&store);
                }
            }
            if revisions.changed().await.is_err() {
                return;
            }
        }
    }

    /// Rebuilds the store-derived part of the catalog from a full listing; returns its revision.
    pub(super) fn reload(&self, store: &Store) -> u64 {
        let listing = store.list(None, None);
        let mut changed = Vec::new();
        {
            let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
            let live: std::collections::HashSet<String> = listing
                .resources
                .iter()
                .map(|r| source_name(&r.resource))
                .collect();
            for stale in catalog
                .sources_with_prefix(super::catalog::STORE_PREFIX)
                .into_iter()
                .filter(|s| !live.contains(s))
            {
                changed.extend(catalog.set_source(&stale, Vec::new()));
            }
            for r in &listing.resources {
                changed.extend(
                    catalog.set_source(&source_name(&r.resource), contributions(&r.resource)),
                );
            }
        }
        self.publish(changed);
        listing.revision
    }
}

fn apply(catalog: &mut Catalog, change: &Change) -> Vec<Key> {
    match change {
        Change::Put(stored) => catalog.set_source(
            &source_name(&stored.resource),
            contributions(&stored.resource),
        ),
        Change::Deleted(t) => catalog.set_source(&source_name(&t.resource), Vec::new()),
    }
}

/// The catalog source name of a stored resource.
fn source_name(r: &Resource) -> String {
    let k = r.key();
    let prefix = super::catalog::STORE_PREFIX;
    format!("{prefix}{}/{}/{}", k.kind, k.namespace, k.name)
}

/// Logs one warning per stored service answering to a host (with the port) that a service before it, in key
/// order, already answers to: a store written before `apply` refused such services may hold them. Proxies
/// holding both NACK one; the control plane keeps serving and pushing both. Returns the warnings.
pub fn warn_conflicting_hosts(store: &Store) -> Vec<String> {
    let listing = store.list(Some(ResourceKind::Service), None);
    // One pass: each authority's first service, so a large store is not checked pair by pair.
    let mut claimed: HashMap<String, ServiceRef> = HashMap::new();
    let mut warnings = Vec::new();
    for stored in &listing.resources {
        let Spec::Service(service) = &stored.resource.spec else {
            continue;
        };
        let own = service.qualified();
        let mut taken: Vec<(String, ServiceRef)> = Vec::new();
        for port in service.ports.iter().map(|p| p.port) {
            let all = authorities(&service.name, &service.namespace, port, &service.hosts);
            for authority in all {
                match claimed.get(&authority) {
                    Some(owner) if *owner != own => {
                        if !taken.iter().any(|(_, o)| o == owner) {
                            taken.push((authority, owner.clone()));
                        }
                    }
                    Some(_) => {}
                    None => {
                        claimed.insert(authority, own.clone());
                    }
                }
            }
        }
        for (authority, owner) in taken {
            let warning = format!(
                "service {own} answers to {authority}, which service {owner} already answers to: a proxy \
                 holding both NACKs one; apply {own} without that host (or name) or delete one of them"
            );
            tracing::warn!(service = %own, %authority, other = %owner, "{warning}");
            warnings.push(warning);
        }
    }
    warnings
}

/// What a stored resource contributes to the catalog.
pub fn contributions(r: &Resource) -> Vec<(Key, Contribution)> {
    use v1::ResourceType as T;
    let whole = |ty: T, name: String, p: Payload| (key(ty, name), Contribution::Whole(p));
    match &r.spec {
        Spec::Service(s) => {
            let name = s.qualified().to_string();
            let mut out = vec![whole(T::Service, name.clone(), Payload::Service(s.into()))];
            for ip in &s.virtual_addresses {
                for p in &s.ports {
                    let address = SocketAddr::new(*ip, p.port).to_string();
                    let binding = v1::AddressBinding {
                        address: address.clone(),
                        service: name.clone(),
                        service_port: p.port.into(),
                    };
                    out.push(whole(T::Address, address, Payload::Address(binding)));
                }
            }
            out
        }
        Spec::EndpointRegistration(reg) => {
            let service = reg.service.to_string();
            let address = SocketAddr::new(reg.address, reg.port).to_string();
            let binding = v1::AddressBinding {
                address: address.clone(),
                service: service.clone(),
                service_port: reg.service_port.unwrap_or(reg.port).into(),
            };
            vec![
                (
                    key(T::Endpoints, service),
                    Contribution::Endpoint((&reg.endpoint()).into()),
                ),
                whole(T::Address, address, Payload::Address(binding)),
            ]
        }
        policy => {
            // Per-service policies: keyed by the service they apply to.
            let (ty, payload) = match policy {
                Spec::Route(x) => (T::Route, Payload::Route(x.into())),
                Spec::BackendPolicy(x) => (T::BackendPolicy, Payload::BackendPolicy(x.into())),
                Spec::AuthorizationPolicy(x) => (
                    T::AuthorizationPolicy,
                    Payload::AuthorizationPolicy(x.into()),
                ),
                Spec::RateLimit(x) => (T::RateLimit, Payload::RateLimit(x.into())),
                Spec::FaultInjection(x) => (T::FaultInjection, Payload::FaultInjection(x.into())),
                Spec::Mirror(x) => (T::Mirror, Payload::Mirror(x.into())),
                Spec::Service(_) | Spec::EndpointRegistration(_) => return Vec::new(),
            };
            match policy.policy_target() {
                Some(target) => vec![whole(ty, target.to_string(), payload)],
                None => Vec::new(),
            }
        }
    }
}
