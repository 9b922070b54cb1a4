//! The on-disk format: one redb file, written in one durable transaction per store write.
//!
//! Tables:
//!
//! - `meta` (`&str` → `u64`): `format` (this layout's version), `revision` (the store-wide counter, written in
//!   the same transaction as the record it stamps, so it can never fall behind a stored version), and
//!   `compacted_through` (the newest pruned tombstone's version: the change feed starts after it).
//! - `resources` (`"<kind>/<namespace>/<name>"` → [`Record`]): every live resource and every tombstone. Names
//!   and namespaces are DNS labels, so `/` cannot be part of them.
//! - `identity` (`&str` → bytes): CA key material (`ca/state`) and join-token hashes (`token/<id>`), written
//!   and read by `crate::identity` through `Store::secret_*` (see `secrets.rs`).
//!
//! Records are prost-encoded `shoal.v1.Resource` messages (wrapped with the versions the store keeps). The wire
//! contract already only evolves compatibly (new fields get new numbers), so the file stays readable across
//! releases without a migration of our own, and the domain model can be refactored freely; the price is a
//! conversion on open.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal_proto::v1;

use super::error::{Error, Result};
use crate::model::{Resource, ResourceKey};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");

/// CA private keys and certificates, join-token hashes (`crate::identity`). Kept apart from
/// `resources` so that listing, watching and discovery can never expose a secret, and so these records can
/// have their own format. (This is also why the data file is created readable by its owner only.)
pub(crate) const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");

const FORMAT: &str = "format";
const REVISION: &str = "revision";
const COMPACTED_THROUGH: &str = "compacted_through";
/// Version of this layout; a file with a higher one was written by a newer build and is refused.
const FORMAT_VERSION: u64 = 1;

/// One stored resource: live (`deleted_version` 0) or a tombstone.
#[derive(Clone, PartialEq, Message)]
pub(super) struct Record {
    /// The resource; for a tombstone, as it was just before deletion.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<v1::Resource>,
    /// The revision that created it (after its last deletion, if any).
    #[prost(uint64, tag = "2")]
    pub created_version: u64,
    /// The revision that deleted it; 0 while it exists.
    #[prost(uint64, tag = "3")]
    pub deleted_version: u64,
}

/// A record as loaded on open.
pub(super) struct LoadedRecord {
    pub resource: Arc<Resource>,
    pub created_version: u64,
    pub deleted_version: u64,
}

/// Everything read on open.
pub(super) struct Loaded {
    pub revision: u64,
    pub compacted_through: u64,
    pub records: Vec<LoadedRecord>,
}

/// One store write: a record to put, the revision it brings, and tombstones to prune with it.
pub(super) struct Write<'a> {
    pub key: &'a ResourceKey,
    pub record: Record,
    pub revision: u64,
    pub prune: &'a [ResourceKey],
    pub compacted_through: u64,
}

/// The key a resource is stored under.
pub(super) fn record_key(key: &ResourceKey) -> String {
    format!("{}/{}/{}", key.kind, key.namespace, key.name)
}

/// Turns a database error into a store error naming the file and what the store was doing.
trait OrStorage<T> {
    fn or_storage(self, path: &Path, context: &'static str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> OrStorage<T> for std::result::Result<T, E> {
    fn or_storage(self, path: &Path, context: &'static str) -> Result<T> {
        self.map_err(|error| match error.into() {
            redb::Error::DatabaseAlreadyOpen => Error::Locked {
                path: path.to_owned(),
            },
            source => Error::Storage {
                path: path.to_owned(),
                context,
                source: Box::new(source),
            },
        })
    }
}

/// Opens (or creates) the data file, runs redb's integrity check and crash recovery, and reads every record.
pub(super) fn open(path: &Path) -> Result<(Database, Loaded)> {
    create_private(path).or_storage(path, "creating the data file")?;
    let db = Database::builder()
        // Turns a damaged file into an error instead of a panic; the file is small, the check is quick.
        .set_check_integrity_on_open(true)
        .create(path)
        .or_storage(path, "opening the data file")?;

    // Create the tables and stamp the format on first open, so reads below always find them.
    let txn = db.begin_write().or_storage(path, "initialising")?;
    let format = {
        let mut meta = txn.open_table(META).or_storage(path, "initialising")?;
        txn.open_table(RESOURCES).or_storage(path, "initialising")?;
        txn.open_table(IDENTITY).or_storage(path, "initialising")?;
        let stored = meta
            .get(FORMAT)
            .or_storage(path, "reading")?
            .map(|v| v.value());
        match stored {
            Some(format) => format,
            None => {
                meta.insert(FORMAT, FORMAT_VERSION)
                    .or_storage(path, "initialising")?;
                FORMAT_VERSION
            }
        }
    };
    txn.commit().or_storage(path, "initialising")?;
    if format > FORMAT_VERSION {
        return Err(Error::Corrupt {
            path: path.to_owned(),
            record: FORMAT.to_owned(),
            reason: format!(
                "store format {format} was written by a newer Shoal; this build reads up to {FORMAT_VERSION}"
            ),
        });
    }

    let txn = db.begin_read().or_storage(path, "reading")?;
    let meta = txn.open_table(META).or_storage(path, "reading")?;
    let read_u64 = |name: &str| -> Result<u64> {
        let value = meta.get(name).or_storage(path, "reading")?;
        Ok(value.map_or(0, |v| v.value()))
    };
    let (revision, compacted_through) = (read_u64(REVISION)?, read_u64(COMPACTED_THROUGH)?);
    let table = txn.open_table(RESOURCES).or_storage(path, "reading")?;
    let mut records = Vec::new();
    for entry in table.iter().or_storage(path, "reading")? {
        let (key, value) = entry.or_storage(path, "reading")?;
        let record = decode(key.value(), value.value()).map_err(|reason| Error::Corrupt {
            path: path.to_owned(),
            record: key.value().to_owned(),
            reason,
        })?;
        records.push(record);
    }
    let loaded = Loaded {
        revision,
        compacted_through,
        records,
    };
    Ok((db, loaded))
}

/// Commits one write durably: when this returns `Ok`, the record and the new revision are on disk.
pub(super) fn commit(db: &Database, path: &Path, write: Write<'_>) -> Result<()> {
    let txn = db.begin_write().or_storage(path, "starting a write")?;
    {
        let mut table = txn.open_table(RESOURCES).or_storage(path, "writing")?;
        let bytes = write.record.encode_to_vec();
        let key = record_key(write.key);
        table
            .insert(key.as_str(), bytes.as_slice())
            .or_storage(path, "writing")?;
        for pruned in write.prune {
            let key = record_key(pruned);
            table
                .remove(key.as_str())
                .or_storage(path, "pruning tombstones")?;
        }
        let mut meta = txn.open_table(META).or_storage(path, "writing")?;
        meta.insert(REVISION, write.revision)
            .or_storage(path, "writing")?;
        if !write.prune.is_empty() {
            let through = write.compacted_through;
            meta.insert(COMPACTED_THROUGH, through)
                .or_storage(path, "pruning tombstones")?;
        }
    }
    // Durability::Immediate (redb's default): commit returns once the data is fsynced.
    txn.commit().or_storage(path, "committing")
}

fn decode(key: &str, bytes: &[u8]) -> Result<LoadedRecord, String> {
    let record = Record::decode(bytes).map_err(|e| format!("undecodable: {e}"))?;
    let wire = record.resource.ok_or("no resource in the record")?;
    let resource = Resource::try_from(wire).map_err(|e| e.to_string())?;
    let expected = record_key(&resource.key());
    if expected != key {
        return Err(format!("holds {expected}"));
    }
    Ok(LoadedRecord {
        resource: Arc::new(resource),
        created_version: record.created_version,
        deleted_version: record.deleted_version,
    })
}

/// Creates the data file readable and writable by its owner only (it will hold CA keys); an existing file
/// keeps its permissions.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop)
}
