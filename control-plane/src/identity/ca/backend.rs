//! Where the CA record lives: the seam between the CA's steps and their storage.
//!
//! - **Standalone** ([`StoreBackend`]): the store's identity table (`ca/state`), one process, written (fsynced)
//!   before a change is used; the steps' mutex is the only concurrency control needed.
//! - **Kubernetes mode** (`sources::kubernetes::ca_state`): the Secret `shoal-ca-state` shared by every
//!   control-plane replica, written with optimistic concurrency: a write carries the `resourceVersion` the step
//!   read, and a `409 Conflict` ([`WriteError::Conflict`]) makes the step re-read the record, install it and
//!   evaluate again (so a second concurrent `rotate` is refused as a rotation in progress). Every replica follows
//!   the Secret ([`follow`]) and installs a changed record ([`Ca::refresh`](super::Ca::refresh)).
//!
//! Backends are synchronous: the CA's steps run on blocking threads (`spawn_blocking`), never on async worker
//! threads.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{Ca, CaError, record};
use crate::store::Store;

/// The stored record and the version it was read at (the Secret's `resourceVersion`; empty for the store).
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    /// The prost-encoded CA record. Holds private keys: never logged.
    pub bytes: Vec<u8>,
    /// The version to write against.
    pub version: String,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field(
                "bytes",
                &format_args!("[{} bytes, secret]", self.bytes.len()),
            )
            .field("version", &self.version)
            .finish()
    }
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Someone else wrote first (or created it first): re-read and evaluate again.
    #[error("the CA record was changed by another writer")]
    Conflict,
    /// The write failed.
    #[error(transparent)]
    Failed(#[from] CaError),
}

/// Where the CA record is kept. Methods block: call them from a blocking thread.
pub trait RecordBackend: Send + Sync {
    /// Where, for messages: "the store's identity table (ca/state)", "the Secret shoal-system/shoal-ca-state".
    fn describe(&self) -> String;

    /// The record, if there is one.
    fn read(&self) -> Result<Option<Stored>, CaError>;

    /// Writes `bytes` if the record is still at `expected` (`None`: creates it, so there must be none); returns
    /// the new version.
    fn write(&self, expected: Option<&str>, bytes: Vec<u8>) -> Result<String, WriteError>;

    /// Whether several processes share this record, so the CA must re-read it on start-up failures (the
    /// [`START_DEADLINE`]) and follow it.
    fn shared(&self) -> bool {
        false
    }

    /// How long start-up keeps trying a shared record: [`START_DEADLINE`].
    fn start_deadline(&self) -> Duration {
        START_DEADLINE
    }
}

/// How long start-up keeps trying to read or create a shared record before it gives up, naming it.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How often a replica re-reads the shared record.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(2);

/// The standalone home of the CA record: the store's identity table.
#[derive(Debug, Clone)]
pub struct StoreBackend {
    store: Store,
}

impl StoreBackend {
    /// The record in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl RecordBackend for StoreBackend {
    fn describe(&self) -> String {
        format!("the store's identity table ({})", record::KEY)
    }

    fn read(&self) -> Result<Option<Stored>, CaError> {
        Ok(self.store.secret_get(record::KEY)?.map(|bytes| Stored {
            bytes,
            version: String::new(),
        }))
    }

    fn write(&self, _expected: Option<&str>, bytes: Vec<u8>) -> Result<String, WriteError> {
        // One process, its steps serialized by the CA's mutex: nothing to compare against.
        self.store
            .secret_put(record::KEY, bytes)
            .map_err(|e| WriteError::Failed(e.into()))?;
        Ok(String::new())
    }
}

/// The CA record an existing install kept in its store (`ca/state`), if any: what seeds a shared record that
/// does not exist yet, so an upgrade to several replicas keeps its root.
pub(crate) fn local_record(store: &Store) -> Result<Option<Vec<u8>>, CaError> {
    Ok(store.secret_get(record::KEY)?)
}

/// Re-reads the shared record every `interval` and installs it when another replica changed it, until
/// `closing` turns true. A failed read is logged (once per run of failures) and retried.
pub async fn follow(ca: Arc<Ca>, interval: Duration, mut closing: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        let refreshing = ca.clone();
        match tokio::task::spawn_blocking(move || refreshing.refresh()).await {
            Ok(Ok(_)) => {
                if failing {
                    tracing::info!(record = %ca.backend.describe(), "the shared CA record is readable again");
                }
                failing = false;
            }
            Ok(Err(error)) => {
                if !failing {
                    tracing::warn!(%error, record = %ca.backend.describe(), "cannot read the shared CA record; signing with the one installed, retrying");
                }
                failing = true;
            }
            Err(error) => tracing::warn!(%error, "CA refresh task failed; retrying"),
        }
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
