//! The in-memory index: every record of the data file, kept in step with it, so reads never touch the disk.

use std::collections::BTreeMap;

use super::change::{Change, StoredResource, Tombstone};
use super::disk::Loaded;
use super::error::{Error, Result};
use crate::model::validate::Catalog;
use crate::model::{ResourceKey, ResourceKind, Service, ServiceRef, Spec};

/// A key's latest state.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    Live(StoredResource),
    Deleted(Tombstone),
}

impl Entry {
    fn version(&self) -> u64 {
        match self {
            Self::Live(stored) => stored.version(),
            Self::Deleted(tombstone) => tombstone.deleted_version,
        }
    }
}

/// Live resources and tombstones, by key and by version.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// The store-wide counter: the version of the latest write.
    pub revision: u64,
    /// Tombstones up to this version were pruned; the change feed starts after it.
    pub compacted_through: u64,
    entries: BTreeMap<ResourceKey, Entry>,
    /// Each key under the version of its latest write: the change feed is a range of this map.
    by_version: BTreeMap<u64, ResourceKey>,
    /// Tombstones under their deletion version, oldest first, for pruning.
    tombstones: BTreeMap<u64, ResourceKey>,
}

impl Index {
    /// Builds the index from the records read on open.
    pub fn load(loaded: Loaded) -> Self {
        let mut index = Self {
            revision: loaded.revision,
            compacted_through: loaded.compacted_through,
            ..Self::default()
        };
        for record in loaded.records {
            let entry = if record.deleted_version == 0 {
                Entry::Live(StoredResource {
                    resource: record.resource,
                    created_version: record.created_version,
                })
            } else {
                Entry::Deleted(Tombstone {
                    resource: record.resource,
                    deleted_version: record.deleted_version,
                })
            };
            // The counter is written with every record, but never trust one number alone.
            index.revision = index.revision.max(entry.version());
            let key = entry_key(&entry);
            index.insert(key, entry);
        }
        index
    }

    /// A live resource.
    pub fn get(&self, key: &ResourceKey) -> Option<&StoredResource> {
        match self.entries.get(key)? {
            Entry::Live(stored) => Some(stored),
            Entry::Deleted(_) => None,
        }
    }

    /// Live resources of `kind` (every kind if `None`) in `namespace` (every namespace if `None`), in key order.
    pub fn list(&self, kind: Option<ResourceKind>, namespace: Option<&str>) -> Vec<StoredResource> {
        let kinds = kind
            .as_ref()
            .map_or(&ResourceKind::ALL[..], std::slice::from_ref);
        let mut found = Vec::new();
        for &kind in kinds {
            let start = ResourceKey::new(kind, namespace.unwrap_or_default(), "");
            let in_scope = |key: &ResourceKey| {
                key.kind == kind && namespace.is_none_or(|ns| key.namespace == ns)
            };
            let entries = self
                .entries
                .range(start..)
                .take_while(|(key, _)| in_scope(key));
            found.extend(entries.filter_map(|(_, entry)| match entry {
                Entry::Live(stored) => Some(stored.clone()),
                Entry::Deleted(_) => None,
            }));
        }
        found
    }

    /// The policy of `kind` that applies to `service`, if one exists.
    pub fn policy_for(&self, kind: ResourceKind, service: &ServiceRef) -> Option<&ResourceKey> {
        let start = ResourceKey::new(kind, "", "");
        let of_kind = self
            .entries
            .range(start..)
            .take_while(|(key, _)| key.kind == kind);
        of_kind
            .filter_map(|(key, entry)| match entry {
                Entry::Live(stored) => Some((key, stored)),
                Entry::Deleted(_) => None,
            })
            .find(|(_, stored)| stored.resource.spec.policy_target() == Some(service))
            .map(|(key, _)| key)
    }

    /// The latest state of every key written after `version`, in version order.
    pub fn changes_since(&self, version: u64) -> Result<Vec<Change>> {
        if version > self.revision {
            let revision = self.revision;
            return Err(Error::Ahead {
                requested: version,
                revision,
            });
        }
        if version < self.compacted_through {
            let compacted_through = self.compacted_through;
            return Err(Error::Compacted {
                requested: version,
                compacted_through,
            });
        }
        let keys = self.by_version.range(version + 1..).map(|(_, key)| key);
        let entries = keys.filter_map(|key| self.entries.get(key));
        Ok(entries
            .map(|entry| match entry {
                Entry::Live(stored) => Change::Put(stored.clone()),
                Entry::Deleted(tombstone) => Change::Deleted(tombstone.clone()),
            })
            .collect())
    }

    /// The tombstones to prune so that at most `retention` remain after one more is added, and the
    /// `compacted_through` that results.
    pub fn prunable(&self, retention: usize) -> (Vec<ResourceKey>, u64) {
        let excess = (self.tombstones.len() + 1).saturating_sub(retention);
        let oldest = self.tombstones.iter().take(excess);
        let (versions, pruned): (Vec<u64>, Vec<_>) =
            oldest.map(|(&v, key)| (v, key.clone())).unzip();
        let through = versions.last().copied().unwrap_or_default();
        (pruned, through.max(self.compacted_through))
    }

    /// Records a committed write.
    pub fn put(&mut self, stored: StoredResource) {
        self.revision = stored.version();
        self.insert(stored.key(), Entry::Live(stored));
    }

    /// Records a committed deletion.
    pub fn delete(&mut self, tombstone: Tombstone) {
        self.revision = tombstone.deleted_version;
        self.insert(tombstone.resource.key(), Entry::Deleted(tombstone));
    }

    /// Forgets pruned tombstones (committed together with a write).
    pub fn prune(&mut self, keys: &[ResourceKey], compacted_through: u64) {
        for key in keys {
            if let Some(entry @ Entry::Deleted(_)) = self.entries.remove(key) {
                self.by_version.remove(&entry.version());
                self.tombstones.remove(&entry.version());
            }
        }
        self.compacted_through = compacted_through;
    }

    fn insert(&mut self, key: ResourceKey, entry: Entry) {
        let version = entry.version();
        if let Entry::Deleted(_) = entry {
            self.tombstones.insert(version, key.clone());
        }
        if let Some(old) = self.entries.insert(key.clone(), entry) {
            self.by_version.remove(&old.version());
            self.tombstones.remove(&old.version());
        }
        self.by_version.insert(version, key);
    }
}

fn entry_key(entry: &Entry) -> ResourceKey {
    match entry {
        Entry::Live(stored) => stored.key(),
        Entry::Deleted(tombstone) => tombstone.resource.key(),
    }
}

/// Validation sees the services the store holds.
impl Catalog for Index {
    fn service(&self, service: &ServiceRef) -> Option<&Service> {
        let key = ResourceKey::new(ResourceKind::Service, &service.namespace, &service.name);
        match &self.get(&key)?.resource.spec {
            Spec::Service(found) => Some(found),
            _ => None,
        }
    }

    fn services(&self) -> Box<dyn Iterator<Item = &Service> + '_> {
        let start = ResourceKey::new(ResourceKind::Service, "", "");
        let entries =
            (self.entries.range(start..)).take_while(|(key, _)| key.kind == ResourceKind::Service);
        Box::new(entries.filter_map(|(_, entry)| match entry {
            Entry::Live(stored) => match &stored.resource.spec {
                Spec::Service(service) => Some(service),
                _ => None,
            },
            Entry::Deleted(_) => None,
        }))
    }
}
