//! Connected proxies and where each stands on each resource it subscribes to (Admin `Status`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shoal_proto::v1::{self, SyncState};

use super::catalog::{Key, wire_key};

/// Every connected proxy.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    proxies: Mutex<HashMap<u64, Arc<ProxyEntry>>>,
}

/// One connected proxy (one discovery stream).
#[derive(Debug)]
pub struct ProxyEntry {
    hello: v1::Hello,
    address: String,
    since_unix: u64,
    sync: Mutex<Sync>,
}

#[derive(Debug, Default)]
struct Sync {
    keys: BTreeMap<Key, KeySync>,
    last_nack: Option<String>,
}

#[derive(Debug, Default)]
struct KeySync {
    /// The version last sent ("" when the resource does not exist).
    current: String,
    acked: Option<String>,
    /// The version the proxy rejected, with its error.
    nacked: Option<(String, String)>,
}

impl KeySync {
    fn state(&self) -> SyncState {
        match (&self.nacked, &self.acked) {
            (Some((v, _)), _) if *v == self.current => SyncState::Nacked,
            (_, Some(a)) if *a == self.current => SyncState::Synced,
            _ => SyncState::Stale,
        }
    }
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
        let mut proxies = self
            .registry
            .proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        proxies.remove(&self.id);
        metrics::gauge!("shoal_cp_connected_proxies").set(proxies.len() as f64);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Records a newly connected proxy.
    pub fn register(&self, hello: v1::Hello, address: String) -> Registration<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let since_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = Arc::new(ProxyEntry {
            hello,
            address,
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

    /// Connected proxies.
    pub fn len(&self) -> usize {
        lock(&self.proxies).len()
    }

    /// Whether no proxy is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Status of every connected proxy matching the filters (empty filter: all).
    pub fn statuses(&self, namespace: &str, proxy_id: &str) -> Vec<v1::ProxyStatus> {
        let proxies: Vec<Arc<ProxyEntry>> = lock(&self.proxies).values().cloned().collect();
        let mut out: Vec<v1::ProxyStatus> = proxies
            .iter()
            .filter(|p| proxy_id.is_empty() || p.hello.proxy_id == proxy_id)
            .filter(|p| {
                namespace.is_empty()
                    || p.hello
                        .workload
                        .as_ref()
                        .is_some_and(|w| w.namespace == namespace)
            })
            .map(|p| p.status())
            .collect();
        out.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        out
    }
}

impl ProxyEntry {
    /// The proxy's id from its `Hello`.
    pub fn proxy_id(&self) -> &str {
        &self.hello.proxy_id
    }

    /// Records versions sent for keys.
    pub fn sent(&self, versions: &[(Key, String)]) {
        let mut sync = lock(&self.sync);
        for (k, v) in versions {
            sync.keys.entry(k.clone()).or_default().current = v.clone();
        }
    }

    /// Records versions the proxy holds already (from `Hello`): they count as acknowledged.
    pub fn held(&self, versions: &[(Key, String)]) {
        let mut sync = lock(&self.sync);
        for (k, v) in versions {
            let s = sync.keys.entry(k.clone()).or_default();
            s.current = v.clone();
            s.acked = Some(v.clone());
        }
    }

    /// Records an ACK of the given versions.
    pub fn acked(&self, versions: &[(Key, String)]) {
        let mut sync = lock(&self.sync);
        for (k, v) in versions {
            if let Some(s) = sync.keys.get_mut(k) {
                s.acked = Some(v.clone());
                s.nacked = None;
            }
        }
        if sync.keys.values().all(|s| s.nacked.is_none()) {
            sync.last_nack = None;
        }
    }

    /// Records a NACK of the given versions.
    pub fn nacked(&self, versions: &[(Key, String)], error: &str) {
        let mut sync = lock(&self.sync);
        for (k, v) in versions {
            if let Some(s) = sync.keys.get_mut(k) {
                s.nacked = Some((v.clone(), error.to_string()));
            }
        }
        sync.last_nack = Some(error.to_string());
    }

    /// Forgets unsubscribed keys.
    pub fn forget(&self, keys: &[Key]) {
        let mut sync = lock(&self.sync);
        for k in keys {
            sync.keys.remove(k);
        }
    }

    fn status(&self) -> v1::ProxyStatus {
        let sync = lock(&self.sync);
        let resources: Vec<v1::ResourceSyncStatus> = sync
            .keys
            .iter()
            .map(|(k, s)| v1::ResourceSyncStatus {
                key: Some(wire_key(k)),
                current_version: s.current.clone(),
                acked_version: s.acked.clone().unwrap_or_default(),
                state: s.state() as i32,
                last_nack_error: s
                    .nacked
                    .as_ref()
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
        }
    }
}
