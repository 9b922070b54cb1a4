//! The `identity` table: CA key material and join-token hashes, kept apart from resources so that listing,
//! watching and discovery can never expose them. Same durability as resource writes: a write returns once
//! its transaction is committed (fsynced).

use std::sync::PoisonError;

use redb::{ReadableDatabase, ReadableTable};

use super::disk::IDENTITY;
use super::{Error, Store};

/// What [`Store::secret_update`] does with the record after looking at it.
#[derive(Debug)]
pub enum SecretWrite {
    /// Leave it as it is (nothing is committed).
    Keep,
    /// Store these bytes under the key.
    Put(Vec<u8>),
    /// Remove the record.
    Remove,
}

impl Store {
    /// One record of the identity table.
    pub fn secret_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let db = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        let path = &self.inner.path;
        let txn = db.begin_read().map_err(|e| storage(path, "reading", e))?;
        let table = txn
            .open_table(IDENTITY)
            .map_err(|e| storage(path, "reading", e))?;
        let value = table.get(key).map_err(|e| storage(path, "reading", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Every record of the identity table whose key starts with `prefix`, in key order.
    pub fn secret_list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let db = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        let path = &self.inner.path;
        let txn = db.begin_read().map_err(|e| storage(path, "reading", e))?;
        let table = txn
            .open_table(IDENTITY)
            .map_err(|e| storage(path, "reading", e))?;
        let mut out = Vec::new();
        for entry in table
            .range(prefix..)
            .map_err(|e| storage(path, "reading", e))?
        {
            let (key, value) = entry.map_err(|e| storage(path, "reading", e))?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Reads the record under `key`, lets `decide` choose what to write, and commits that in the same
    /// transaction (so two callers consuming a single-use token cannot both succeed). Blocks for the fsync:
    /// call it from a blocking thread. `decide`'s error aborts without writing.
    pub fn secret_update<T, E: From<Error>>(
        &self,
        key: &str,
        decide: impl FnOnce(Option<&[u8]>) -> Result<(SecretWrite, T), E>,
    ) -> Result<T, E> {
        let db = self.inner.db.lock().unwrap_or_else(PoisonError::into_inner);
        let path = &self.inner.path;
        let txn = db
            .begin_write()
            .map_err(|e| storage(path, "starting a write", e))?;
        let result = {
            let mut table = txn
                .open_table(IDENTITY)
                .map_err(|e| storage(path, "writing", e))?;
            let current = table.get(key).map_err(|e| storage(path, "reading", e))?;
            let current = current.map(|v| v.value().to_vec());
            let (write, result) = decide(current.as_deref())?;
            match write {
                SecretWrite::Keep => return Ok(result),
                SecretWrite::Put(bytes) => {
                    table
                        .insert(key, bytes.as_slice())
                        .map_err(|e| storage(path, "writing", e))?;
                }
                SecretWrite::Remove => {
                    table.remove(key).map_err(|e| storage(path, "writing", e))?;
                }
            }
            result
        };
        // Durability::Immediate (redb's default): commit returns once the data is fsynced.
        txn.commit().map_err(|e| storage(path, "committing", e))?;
        Ok(result)
    }

    /// Stores `bytes` under `key`, durably.
    pub fn secret_put(&self, key: &str, bytes: Vec<u8>) -> Result<(), Error> {
        self.secret_update(key, |_| Ok::<_, Error>((SecretWrite::Put(bytes), ())))
    }
}

fn storage(path: &std::path::Path, context: &'static str, error: impl Into<redb::Error>) -> Error {
    Error::Storage {
        path: path.to_owned(),
        context,
        source: Box::new(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_survive_reopen_and_update_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store.secret_put("token/a", b"one".to_vec()).unwrap();
            store.secret_put("token/b", b"two".to_vec()).unwrap();
            store.secret_put("ca/state", b"ca".to_vec()).unwrap();
            let refused: Result<(), Error> =
                store.secret_update("token/a", |_| Err(Error::Locked { path: "x".into() }));
            assert!(refused.is_err());
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.secret_get("token/a").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        let tokens = store.secret_list("token/").unwrap();
        assert_eq!(tokens.len(), 2, "{tokens:?}");
        store
            .secret_update("token/a", |old| {
                assert_eq!(old, Some(&b"one"[..]));
                Ok::<_, Error>((SecretWrite::Remove, ()))
            })
            .unwrap();
        assert_eq!(store.secret_get("token/a").unwrap(), None);
        // Resources never see the identity table.
        assert!(store.list(None, None).resources.is_empty());
    }
}
