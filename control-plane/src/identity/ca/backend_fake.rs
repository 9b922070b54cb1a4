//! An in-memory shared record for tests: a version counter and `409`-style conflicts, like the Secret the
//! replicas share in Kubernetes mode, and what a test provokes: a read that misses a record just created, a
//! backend that is down, another replica's write landing between a read and a write.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::{CaError, RecordBackend, Stored, WriteError};

/// Runs once at the start of a write.
pub(crate) type Hook = Box<dyn FnOnce() + Send>;

/// The record, shared by every "replica" holding an `Arc` of it.
#[derive(Default)]
pub(crate) struct SharedRecord {
    pub(crate) record: Mutex<Option<Stored>>,
    /// Versions written so far (the last one is the record's).
    pub(crate) versions: AtomicUsize,
    /// Writes refused with a conflict.
    pub(crate) conflicts: AtomicUsize,
    /// The next read answers "none" (a replica that read before another created it).
    pub(crate) hide_once: AtomicBool,
    /// Every call fails.
    pub(crate) down: AtomicBool,
    /// Runs once at the start of the next write, before its version check: another replica's change landing
    /// between this one's read and write.
    pub(crate) before_write: Mutex<Option<Hook>>,
}

impl RecordBackend for SharedRecord {
    fn describe(&self) -> String {
        "the test record".into()
    }

    fn shared(&self) -> bool {
        true
    }

    fn start_deadline(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn read(&self) -> Result<Option<Stored>, CaError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(CaError::Backend("connection refused".into()));
        }
        if self.hide_once.swap(false, Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self.record.lock().unwrap().clone())
    }

    fn write(&self, expected: Option<&str>, bytes: Vec<u8>) -> Result<String, WriteError> {
        let hook = self.before_write.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(WriteError::Failed(CaError::Backend(
                "connection refused".into(),
            )));
        }
        let mut record = self.record.lock().unwrap();
        if record.as_ref().map(|r| r.version.as_str()) != expected {
            self.conflicts.fetch_add(1, Ordering::SeqCst);
            return Err(WriteError::Conflict);
        }
        let version = (self.versions.fetch_add(1, Ordering::SeqCst) + 1).to_string();
        *record = Some(Stored {
            bytes,
            version: version.clone(),
        });
        Ok(version)
    }
}
