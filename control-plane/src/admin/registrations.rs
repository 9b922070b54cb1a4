//! Endpoint registration leases (Consul/etcd style): a registration with a ttl is deleted from the store when
//! no `Heartbeat` (and no write) renewed it within the ttl.
//!
//! The store is the truth; this module only keeps, in memory, when each registration was last renewed. It
//! follows the store's change feed, so registrations written by any path (the admin API, another source, a
//! previous process) are tracked. Renewal times are not persisted: after a restart every registration gets
//! a full ttl from start-up to send its next heartbeat, rather than expiring at once because the control
//! plane was down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::metrics;
use crate::model::{ResourceKey, ResourceKind, Spec};
use crate::store::{Change, Error, Store, StoredResource};

/// How often leases are checked; a registration outlives its ttl by at most this much.
pub(super) const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// When each registration was last renewed.
#[derive(Default)]
pub(super) struct Registrations {
    leases: Mutex<HashMap<ResourceKey, Lease>>,
}

struct Lease {
    /// The version the lease belongs to: expiry deletes only this version, never a newer write.
    version: u64,
    ttl: Option<Duration>,
    renewed: Instant,
}

impl Registrations {
    /// Tracks a registration that was written: a new version restarts its ttl. Other kinds are ignored.
    pub(super) fn track(&self, stored: &StoredResource) {
        let Spec::EndpointRegistration(registration) = &stored.resource.spec else {
            return;
        };
        let mut leases = self.leases();
        let current = leases.get(&stored.key()).map(|lease| lease.version);
        if current.is_none_or(|version| version < stored.version()) {
            let lease = Lease {
                version: stored.version(),
                ttl: registration.ttl,
                renewed: Instant::now(),
            };
            leases.insert(stored.key(), lease);
        }
    }

    /// Renews the lease of a registration that exists in the store; returns its ttl (`None`: never expires).
    pub(super) fn renew(&self, stored: &StoredResource) -> Option<Duration> {
        self.track(stored);
        let mut leases = self.leases();
        let lease = leases.get_mut(&stored.key())?;
        lease.renewed = Instant::now();
        lease.ttl
    }

    /// Stops tracking a deleted registration.
    pub(super) fn forget(&self, key: &ResourceKey) {
        self.leases().remove(key);
    }

    fn len(&self) -> usize {
        self.leases().len()
    }

    /// Leases whose ttl passed without renewal, with the version to delete.
    fn expired(&self, now: Instant) -> Vec<(ResourceKey, u64, Duration)> {
        let leases = self.leases();
        let expired = leases.iter().filter_map(|(key, lease)| {
            let ttl = lease.ttl?;
            let late = now.saturating_duration_since(lease.renewed) > ttl;
            late.then(|| (key.clone(), lease.version, ttl))
        });
        expired.collect()
    }

    /// Tracks every registration in the store and drops leases of registrations that are gone; returns the
    /// revision the listing reflects.
    fn resync(&self, store: &Store) -> u64 {
        let listing = store.list(Some(ResourceKind::EndpointRegistration), None);
        let present: Vec<ResourceKey> = listing.resources.iter().map(|s| s.key()).collect();
        self.leases().retain(|key, _| present.contains(key));
        listing
            .resources
            .iter()
            .for_each(|stored| self.track(stored));
        listing.revision
    }

    /// Applies the registrations written or deleted after `revision`; returns the new revision.
    fn follow(&self, store: &Store, revision: u64) -> u64 {
        let changes = match store.changes_since(revision) {
            Ok(changes) => changes,
            // Fell behind the kept history (or the store is not the one we saw): start over from a listing.
            Err(_) => return self.resync(store),
        };
        for change in &changes.changes {
            match change {
                Change::Put(stored) => self.track(stored),
                Change::Deleted(tombstone)
                    if tombstone.resource.kind() == ResourceKind::EndpointRegistration =>
                {
                    let key = tombstone.resource.key();
                    let mut leases = self.leases();
                    // Only if no newer write (re-registration) was tracked meanwhile.
                    if leases
                        .get(&key)
                        .is_some_and(|l| l.version < tombstone.deleted_version)
                    {
                        leases.remove(&key);
                    }
                }
                Change::Deleted(_) => {}
            }
        }
        changes.revision
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<ResourceKey, Lease>> {
        // Never held across an await, and every update leaves the map consistent.
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Deletes expired registrations every `every` until `closing` turns true (or its sender is dropped).
pub(super) async fn expire(
    store: Store,
    registrations: Arc<Registrations>,
    mut closing: watch::Receiver<bool>,
    every: Duration,
) {
    let mut revision = registrations.resync(&store);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|closing| *closing) => return,
        }
        revision = registrations.follow(&store, revision);
        for (key, version, ttl) in registrations.expired(Instant::now()) {
            expire_one(&store, &registrations, key, version, ttl).await;
        }
        metrics::registrations_active(registrations.len());
    }
}

async fn expire_one(
    store: &Store,
    registrations: &Registrations,
    key: ResourceKey,
    version: u64,
    ttl: Duration,
) {
    let deleting = key.clone();
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || store.delete(&deleting, Some(version))).await;
    let kind = ResourceKind::EndpointRegistration;
    match result {
        Ok(Ok(tombstone)) => {
            registrations.forget(&key);
            metrics::store_write(kind, "expire", "ok");
            metrics::registration_expired();
            let ttl_seconds = ttl.as_secs();
            let deleted_version = tombstone.deleted_version;
            tracing::info!(registration = %key, ttl_seconds, deleted_version, "endpoint registration expired: no heartbeat within its ttl");
        }
        // Re-registered meanwhile: the new version has its own lease, which `follow` picks up.
        Ok(Err(Error::Conflict { .. })) => metrics::store_write(kind, "expire", "conflict"),
        Ok(Err(Error::NotFound { .. })) => registrations.forget(&key),
        Ok(Err(error)) => {
            metrics::store_write(kind, "expire", "error");
            tracing::warn!(registration = %key, %error, "cannot delete an expired endpoint registration; retrying");
        }
        Err(error) => {
            tracing::warn!(registration = %key, %error, "expiry of an endpoint registration did not finish; retrying");
        }
    }
}
