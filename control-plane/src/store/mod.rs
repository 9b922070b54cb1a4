//! The durable store for standalone mode: validated resources in one redb file, with a store-wide revision
//! counter, optimistic concurrency and a change feed.
//!
//! - **Durability.** A write is one redb transaction committed with `Durability::Immediate` (fsync) before the
//!   call returns, so an acknowledged write survives `kill -9` (and power loss, on a disk that honours fsync);
//!   redb's copy-on-write commit makes every write all-or-nothing, and crash recovery runs on open.
//! - **Versions.** One counter for the whole store, persisted in the same transaction as each record: every
//!   write (create, replace, delete) gets the next value, so versions are unique, ordered across resources and
//!   monotonic across restarts.
//! - **Deletes** leave a tombstone (the resource as it was, plus the deletion's version) so that
//!   [`Store::changes_since`] reports them. Only the newest [`StoreOptions::tombstone_retention`] tombstones are
//!   kept; asking for changes from before a pruned one fails with [`Error::Compacted`] (list again instead).
//! - **Reads** come from an in-memory index updated after each commit: cheap, never blocked by the disk.
//!   **Writes** block for the fsync (about a millisecond to tens of them): call them from blocking threads
//!   (`tokio::task::spawn_blocking`), not directly on an async worker. Locks are never held across `.await`;
//!   the store has no async code at all.
//! - **Push.** [`Store::subscribe`] hands out a `watch` of the revision; a subscriber wakes up, calls
//!   `changes_since(last_seen)`, and can never miss a change, however slow it is.

mod change;
mod disk;
mod error;
#[cfg(test)]
mod feed_tests;
mod index;
mod secrets;
#[cfg(test)]
mod tests;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use redb::Database;
use tokio::sync::watch;

pub use change::{Change, Changes, Listing, StoredResource, Tombstone};
pub use error::{Error, Result};
pub use secrets::SecretWrite;

use crate::model::{Resource, ResourceKey, ResourceKind};
use index::Index;
use write::Mode;

/// Tuning of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How many tombstones (deleted resources) to keep for the change feed. Watchers further behind than this
    /// many deletions must list again. Default: 10,000.
    pub tombstone_retention: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            tombstone_retention: 10_000,
        }
    }
}

/// What [`Store::apply_outcome`] did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The resource as stored.
    pub stored: StoredResource,
    /// It was identical to the stored resource, which was left as it was (same version, nothing pushed).
    pub unchanged: bool,
}

/// The durable resource store. Clone it freely: clones share one database and index.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: StoreOptions,
    /// Held for the whole of a write (check, commit, index update) so that writes apply one at a time in
    /// revision order. Only writers take it, on blocking threads.
    db: Mutex<Database>,
    /// Read by everyone, written only by the writer holding `db`, briefly, after its commit.
    index: RwLock<Index>,
    revision: watch::Sender<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let revision = self.revision();
        let path = &self.inner.path;
        f.debug_struct("Store")
            .field("path", path)
            .field("revision", &revision)
            .finish()
    }
}

impl Store {
    /// Opens the store in the data file at `path`, creating it if needed (its directory must exist).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Opens the store with explicit options.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let (db, loaded) = disk::open(&path)?;
        let index = Index::load(loaded);
        tracing::info!(path = %path.display(), revision = index.revision, "store opened");
        let (revision, _) = watch::channel(index.revision);
        let inner = Inner {
            path,
            options,
            db: Mutex::new(db),
            index: RwLock::new(index),
            revision,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The data file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Creates `resource`, or overwrites it. With `expected_version`, only if it exists at that version
    /// ([`Error::NotFound`], [`Error::Conflict`] otherwise). Validates first; returns the stored resource with
    /// its new version once it is on disk.
    pub fn apply(
        &self,
        resource: Resource,
        expected_version: Option<u64>,
    ) -> Result<StoredResource> {
        self.apply_outcome(resource, expected_version)
            .map(|a| a.stored)
    }

    /// [`Self::apply`], telling whether the resource was left unchanged: without `expected_version`, a
    /// resource identical to the stored one (spec, name and labels) is not written again, as `kubectl apply`
    /// does: it keeps its version, and nothing reaches the change feed, so nothing is pushed to proxies.
    pub fn apply_outcome(
        &self,
        resource: Resource,
        expected_version: Option<u64>,
    ) -> Result<Applied> {
        let mode = expected_version.map_or(Mode::Upsert, Mode::Replace);
        let (stored, unchanged) = self.write(resource, mode)?;
        Ok(Applied { stored, unchanged })
    }

    /// Creates `resource`; fails with [`Error::AlreadyExists`] if it exists.
    pub fn create(&self, resource: Resource) -> Result<StoredResource> {
        self.write(resource, Mode::Create).map(|(stored, _)| stored)
    }

    /// Deletes a resource, with `expected_version` only if it is at that version. Returns its tombstone (the
    /// resource as it was, and the version of the deletion) once the deletion is on disk.
    pub fn delete(&self, key: &ResourceKey, expected_version: Option<u64>) -> Result<Tombstone> {
        self.remove(key, expected_version)
    }

    /// A resource, if it exists.
    pub fn get(&self, key: &ResourceKey) -> Option<StoredResource> {
        self.index().get(key).cloned()
    }

    /// Resources of `kind` (every kind if `None`) in `namespace` (every namespace if `None`), sorted by kind,
    /// namespace and name, with the revision they reflect.
    pub fn list(&self, kind: Option<ResourceKind>, namespace: Option<&str>) -> Listing {
        let index = self.index();
        Listing {
            revision: index.revision,
            resources: index.list(kind, namespace),
        }
    }

    /// The store's revision: the version of its latest write (0 for a new store).
    pub fn revision(&self) -> u64 {
        self.index().revision
    }

    /// The latest state of every resource written (or deleted) after `version`, in version order, and the
    /// revision this brings the caller to. Fails with [`Error::Compacted`] when tombstones from after `version`
    /// were pruned, and with [`Error::Ahead`] for a version the store never reached.
    pub fn changes_since(&self, version: u64) -> Result<Changes> {
        let index = self.index();
        let changes = index.changes_since(version)?;
        Ok(Changes {
            revision: index.revision,
            changes,
        })
    }

    /// A receiver of the store's revision, updated after every write; wait on `changed()`, then call
    /// [`Self::changes_since`] with the last revision seen.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }

    /// Reads the index. A poisoned lock is still consistent: the index is only changed after a successful
    /// commit, by code that does not panic halfway.
    fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.inner
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
