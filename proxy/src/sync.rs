//! Locking that survives poisoning.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the guard even if another thread panicked while holding it: the proxy's
/// mutexes guard plain state (tables, slots, counters) that stays usable, and a poisoned lock must
/// not take the data plane down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
