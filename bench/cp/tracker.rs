//! Who has ACKed what: the simulated proxies report every marker they ACK, and the phases wait for
//! the last subscriber of a key to ACK a marker they wrote.
//!
//! A marker is a number the benchmark writes into a resource (see `seed`) and reads back from the
//! payload a proxy received, so "the response carrying change X" is recognised without knowing the
//! control plane's content-hash versions. Markers only grow, so a proxy that ACKs marker 7 has also
//! applied 5 and 6 (they were coalesced into the same, or an earlier, response).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A discovery key: resource type and name.
pub type Key = (i32, String);

/// A change the benchmark made and is waiting to see ACKed everywhere.
struct Pending {
    marker: u64,
    sent: Instant,
    remaining: usize,
    last_ack: Instant,
}

/// A change every subscriber ACKed.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// From sending the Admin write to the last subscriber's ACK.
    pub latency: Duration,
}

#[derive(Default)]
struct Probe {
    subscribers: usize,
    pending: Vec<Pending>,
    done: Vec<Done>,
}

/// Every tracked key, fixed when the subscription plan is made.
#[derive(Default)]
pub struct Tracker {
    probes: HashMap<Key, Mutex<Probe>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tracker {
    /// Tracks `key`, to which `subscribers` proxies subscribe.
    pub fn track(&mut self, key: Key, subscribers: usize) {
        self.probes.insert(
            key,
            Mutex::new(Probe {
                subscribers,
                ..Probe::default()
            }),
        );
    }

    /// Whether `key` is tracked (proxies skip the others).
    pub fn tracks(&self, key: &Key) -> bool {
        self.probes.contains_key(key)
    }

    /// Registers a change about to be written (call before sending the write, so no ACK is missed).
    pub fn expect(&self, key: &Key, marker: u64, sent: Instant) {
        if let Some(p) = self.probes.get(key) {
            let mut p = lock(p);
            let remaining = p.subscribers;
            p.pending.push(Pending {
                marker,
                sent,
                remaining,
                last_ack: sent,
            });
        }
    }

    /// A proxy ACKed a response that moved `key` from marker `old` to `new`.
    pub fn acked(&self, key: &Key, old: u64, new: u64, at: Instant) {
        if new <= old {
            return;
        }
        let Some(p) = self.probes.get(key) else {
            return;
        };
        let mut p = lock(p);
        let mut finished = Vec::new();
        p.pending.retain_mut(|c| {
            if c.marker <= old || c.marker > new {
                return true;
            }
            c.remaining = c.remaining.saturating_sub(1);
            c.last_ack = c.last_ack.max(at);
            if c.remaining == 0 {
                finished.push(Done {
                    latency: c.last_ack.duration_since(c.sent),
                });
                return false;
            }
            true
        });
        p.done.extend(finished);
    }

    /// Takes the changes of `key` every subscriber has ACKed.
    pub fn take_done(&self, key: &Key) -> Vec<Done> {
        self.probes
            .get(key)
            .map(|p| std::mem::take(&mut lock(p).done))
            .unwrap_or_default()
    }

    /// Takes every key's finished changes, and counts the changes still waiting.
    pub fn drain(&self) -> (Vec<Done>, usize) {
        let mut done = Vec::new();
        let mut waiting = 0;
        for p in self.probes.values() {
            let mut p = lock(p);
            done.append(&mut p.done);
            waiting += p.pending.len();
        }
        (done, waiting)
    }

    /// Forgets changes still waiting (after a phase gave up on them).
    pub fn clear_pending(&self) {
        for p in self.probes.values() {
            lock(p).pending.clear();
        }
    }
}
