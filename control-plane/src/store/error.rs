//! Store errors: what a write or a read of the change feed can fail with, each naming the resource or file.

use std::path::PathBuf;

use crate::model::validate::Invalid;
use crate::model::{ResourceKey, ServiceRef};

/// What a store operation can fail with. The admin API maps them to gRPC codes: `Invalid` → `INVALID_ARGUMENT`,
/// `NotFound` → `NOT_FOUND`, `AlreadyExists` and `TargetTaken` → `ALREADY_EXISTS`, `Conflict` → `ABORTED`,
/// `Compacted` and `Ahead` → `OUT_OF_RANGE`, the rest → `INTERNAL` / `UNAVAILABLE`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource failed validation; nothing was written.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such resource (or it was deleted).
    #[error("{key} not found")]
    NotFound {
        /// The resource asked for.
        key: ResourceKey,
    },
    /// `create` of a resource that exists.
    #[error("{key} already exists (version {version}); apply it to overwrite it")]
    AlreadyExists {
        /// The existing resource.
        key: ResourceKey,
        /// Its version.
        version: u64,
    },
    /// Another policy of the same kind already applies to the same service.
    #[error(
        "{key}: {service} already has a {kind} policy, {existing}; a service has at most one, so edit or delete that one",
        kind = key.kind
    )]
    TargetTaken {
        /// The resource being written.
        key: ResourceKey,
        /// The service both apply to.
        service: ServiceRef,
        /// The policy that already applies to it (boxed to keep `Result`s small).
        existing: Box<ResourceKey>,
    },
    /// Optimistic concurrency: the resource changed since the caller read it.
    #[error(
        "{key} is at version {actual}, not the expected {expected}: it changed since it was read; read it again and retry"
    )]
    Conflict {
        /// The resource.
        key: ResourceKey,
        /// The version the caller expected.
        expected: u64,
        /// The version it has.
        actual: u64,
    },
    /// The change history no longer reaches back to the requested version (old tombstones were pruned).
    #[error(
        "changes since version {requested} are no longer kept (history starts after version {compacted_through}); list again and follow changes from the list's version"
    )]
    Compacted {
        /// The version asked for.
        requested: u64,
        /// Changes up to this version were pruned.
        compacted_through: u64,
    },
    /// A version the store never reached: the caller saw another store (or a wiped one).
    #[error(
        "version {requested} is ahead of the store's revision {revision}: the data file was replaced or wiped; list again"
    )]
    Ahead {
        /// The version asked for.
        requested: u64,
        /// The store's current revision.
        revision: u64,
    },
    /// The data file is locked by another process.
    #[error(
        "{}: the store is open in another process; is another control plane running with the same data file?",
        path.display()
    )]
    Locked {
        /// The data file.
        path: PathBuf,
    },
    /// The database failed; for a failed commit, nothing of that write is visible, and after an I/O error every
    /// further write fails until the process restarts (the database recovers on open).
    #[error("{}: {context}: {source}", path.display())]
    Storage {
        /// The data file.
        path: PathBuf,
        /// What the store was doing.
        context: &'static str,
        /// The database's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record cannot be read back (damaged, or from an incompatible build).
    #[error("{}: stored record {record:?} cannot be read: {reason}", path.display())]
    Corrupt {
        /// The data file.
        path: PathBuf,
        /// The record's key.
        record: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand for store results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
