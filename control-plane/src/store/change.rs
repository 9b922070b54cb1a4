//! What the store hands out: stored resources, tombstones, and the change feed built from them.

use std::sync::Arc;

use crate::model::{Resource, ResourceKey};

/// A resource as stored: its `metadata.resource_version` is the revision of its last write. Cheap to clone.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// The resource, shared with the store's index.
    pub resource: Arc<Resource>,
    /// The revision that created it (after its last deletion, if any); equal to its version on creation.
    pub created_version: u64,
}

impl StoredResource {
    /// The revision of its last write.
    pub fn version(&self) -> u64 {
        self.resource.metadata.resource_version
    }

    /// Whether its last write created it (rather than overwrote it): the admin API's `created`, and `ADDED`
    /// rather than `MODIFIED` in a watch.
    pub fn created(&self) -> bool {
        self.created_version == self.version()
    }

    /// Its key.
    pub fn key(&self) -> ResourceKey {
        self.resource.key()
    }
}

/// A deleted resource, kept so the change feed can report the deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct Tombstone {
    /// The resource as it was just before deletion (its version is that of its last write).
    pub resource: Arc<Resource>,
    /// The revision of the deletion.
    pub deleted_version: u64,
}

/// One entry of the change feed: the latest state of one resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Created or modified: `created()` tells which, relative to the caller's version when
    /// `created_version` is above it.
    Put(StoredResource),
    /// Deleted.
    Deleted(Tombstone),
}

impl Change {
    /// The revision of the change.
    pub fn version(&self) -> u64 {
        match self {
            Self::Put(stored) => stored.version(),
            Self::Deleted(tombstone) => tombstone.deleted_version,
        }
    }

    /// The resource (for a deletion, as it was before).
    pub fn resource(&self) -> &Arc<Resource> {
        match self {
            Self::Put(stored) => &stored.resource,
            Self::Deleted(tombstone) => &tombstone.resource,
        }
    }
}

/// The answer to [`super::Store::changes_since`].
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    /// The store revision the changes bring the caller to; pass it to the next `changes_since`.
    pub revision: u64,
    /// The latest state of every resource written after the requested version, in version order. A resource
    /// written several times appears once, with its latest state: callers converge on the current state
    /// rather than replay history.
    pub changes: Vec<Change>,
}

/// The answer to [`super::Store::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    /// The store revision the listing reflects; follow changes from here with `changes_since`.
    pub revision: u64,
    /// The resources, sorted by kind, namespace, name.
    pub resources: Vec<StoredResource>,
}
