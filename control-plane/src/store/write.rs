//! The write path: check preconditions and validate against the index, commit to disk, then update the index
//! and wake subscribers, all while holding the writer lock so writes apply one at a time in version order.

use std::sync::{Arc, PoisonError};

use super::disk::{self, Record};
use super::{Error, Result, Store, StoredResource, Tombstone};
use crate::model::validate::{self, Catalog, Invalid};
use crate::model::{Resource, ResourceKey};

/// The validation a write passes: [`validate::validate`], but for tests that write what an older control
/// plane accepted.
type Check = fn(&Resource, &dyn Catalog) -> std::result::Result<(), Invalid>;

/// What a write does when the resource exists or not.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode {
    /// Create, or overwrite whatever version exists.
    Upsert,
    /// Create; fail if it exists.
    Create,
    /// Overwrite the given version; fail if it is missing or at another version.
    Replace(u64),
}

impl Store {
    /// Writes `resource`; returns it as stored and whether it was left unchanged (an `Upsert` of the
    /// content already stored writes nothing: no new version, nothing in the feed, nothing pushed).
    pub(super) fn write(&self, resource: Resource, mode: Mode) -> Result<(StoredResource, bool)> {
        self.write_checked(resource, mode, validate::validate)
    }

    /// Creates `resource` without any validation, as a control plane from before a cross-resource check did
    /// (two services claiming one host), so a test can hold what no check lets in today.
    #[cfg(test)]
    pub(crate) fn create_unchecked(&self, resource: Resource) -> Result<StoredResource> {
        self.write_checked(resource, Mode::Create, |_, _| Ok(()))
            .map(|(stored, _)| stored)
    }

    fn write_checked(
        &self,
        mut resource: Resource,
        mode: Mode,
        check: Check,
    ) -> Result<(StoredResource, bool)> {
        let db = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        let key = resource.key();
        let stored = {
            let index = self.index();
            let current = index.get(&key);
            match (mode, current) {
                (Mode::Create, Some(current)) => {
                    let version = current.version();
                    return Err(Error::AlreadyExists { key, version });
                }
                (Mode::Replace(_), None) => return Err(Error::NotFound { key }),
                (Mode::Replace(expected), Some(current)) => {
                    check_expected(&key, current.version(), Some(expected))?;
                }
                (Mode::Upsert | Mode::Create, _) => {}
            }
            check(&resource, &*index)?;
            if let Some(service) = resource.spec.policy_target()
                && let Some(existing) = index.policy_for(key.kind, service)
                && *existing != key
            {
                let service = service.clone();
                let existing = Box::new(existing.clone());
                return Err(Error::TargetTaken {
                    key,
                    service,
                    existing,
                });
            }
            if let (Mode::Upsert, Some(current)) = (mode, current) {
                resource.metadata.resource_version = current.version();
                if *current.resource == resource {
                    return Ok((current.clone(), true));
                }
            }
            let version = index.revision + 1;
            resource.metadata.resource_version = version;
            StoredResource {
                created_version: current.map_or(version, |c| c.created_version),
                resource: Arc::new(resource),
            }
        };
        let record = Record {
            resource: Some((&*stored.resource).into()),
            created_version: stored.created_version,
            deleted_version: 0,
        };
        let version = stored.version();
        let write = disk::Write {
            key: &key,
            record,
            revision: version,
            prune: &[],
            compacted_through: 0,
        };
        disk::commit(&db, &self.inner.path, write)?;
        let mut index = self
            .inner
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        index.put(stored.clone());
        drop(index);
        self.inner.revision.send_replace(version);
        drop(db);
        Ok((stored, false))
    }

    pub(super) fn remove(&self, key: &ResourceKey, expected: Option<u64>) -> Result<Tombstone> {
        let db = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        let (tombstone, prune, compacted_through) = {
            let index = self.index();
            let current = index
                .get(key)
                .ok_or_else(|| Error::NotFound { key: key.clone() })?;
            check_expected(key, current.version(), expected)?;
            let tombstone = Tombstone {
                resource: current.resource.clone(),
                deleted_version: index.revision + 1,
            };
            let (prune, through) = index.prunable(self.inner.options.tombstone_retention);
            (tombstone, prune, through)
        };
        let record = Record {
            resource: Some((&*tombstone.resource).into()),
            created_version: 0,
            deleted_version: tombstone.deleted_version,
        };
        let write = disk::Write {
            key,
            record,
            revision: tombstone.deleted_version,
            prune: &prune,
            compacted_through,
        };
        disk::commit(&db, &self.inner.path, write)?;
        let mut index = self
            .inner
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        index.delete(tombstone.clone());
        index.prune(&prune, compacted_through);
        drop(index);
        self.inner.revision.send_replace(tombstone.deleted_version);
        drop(db);
        Ok(tombstone)
    }
}

fn check_expected(key: &ResourceKey, actual: u64, expected: Option<u64>) -> Result<()> {
    match expected {
        Some(expected) if expected != actual => Err(Error::Conflict {
            key: key.clone(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}
