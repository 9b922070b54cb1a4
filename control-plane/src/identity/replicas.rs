//! Propagation across control-plane replicas (Kubernetes mode): a pending root may start signing only once the
//! proxies connected to *every* live replica have it, not only the holder's own.
//!
//! While a root is pending each replica reports its own view ([`Report`]: the pending root's fingerprint,
//! whether its connected proxies have all ACKed it, how many have not, and a counter that changes with every
//! report) under its own key of the ConfigMap `shoal-ca-propagation`, every 2 s
//! (`sources::kubernetes::ca_propagation`). The Lease holder reads them into [`Replicas`] and judges
//! ([`Replicas::verdict`]):
//!
//! - a replica is **live** while its report keeps changing within [`LIVENESS`] (the Lease's duration), as this
//!   process's own clock sees it (never the reporter's timestamps, so clock skew does not matter); a report that
//!   stopped changing is a replica that is gone;
//! - for [`LIVENESS`] after the holder first sees a root pending it waits (**settling**): every live replica
//!   has then had several chances to see the rotation in the shared Secret and report on it;
//! - then the root is propagated when every live replica reports "propagated" for that fingerprint, and the
//!   reports were read within [`READ_WITHIN`] (a holder that cannot read them does not take the silence for
//!   replicas that are gone).
//!
//! The propagation timeout still applies; its warning names the replicas still missing.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a report that stopped changing still counts as a live replica's, and how long the holder waits
/// after first seeing a pending root before judging: the Lease's duration.
pub const LIVENESS: Duration = Duration::from_secs(15);

/// The holder judges only on reports read within this long: a holder that cannot read them must not take the
/// silence for replicas that are gone (three report periods).
pub const READ_WITHIN: Duration = Duration::from_secs(6);

/// One replica's view of a pending root, as stored in the ConfigMap (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The pending root's fingerprint (SHA-256 of its DER, lowercase hex).
    pub fingerprint: String,
    /// Every proxy connected to this replica has ACKed the trust bundle with it (and the reconnect grace
    /// after a restart is over).
    pub propagated: bool,
    /// Connected proxies that have not ACKed it yet.
    pub waiting: usize,
    /// Counts the reports of this process: a report that stops changing is a replica that stopped.
    pub seq: u64,
}

/// What the holder concludes about the other replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every live replica reports the root propagated (`replicas` of them, the holder not counted).
    Ready {
        /// Live replicas that reported.
        replicas: usize,
    },
    /// Not yet.
    Wait {
        /// The holder has seen this root pending for less than [`LIVENESS`].
        settling: bool,
        /// The holder has not read the reports within [`READ_WITHIN`].
        unread: bool,
        /// Each live replica that has not reported the root propagated, with why: `name (waiting for N
        /// proxies)` or `name (has not reported this root)`.
        missing: Vec<String>,
    },
}

/// A report as last read, and when this process first saw it in that form.
#[derive(Debug)]
struct Seen {
    raw: String,
    since: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    seen: BTreeMap<String, Seen>,
    /// The pending root being judged and when this process first judged it.
    pending: Option<(String, Instant)>,
    /// When the reports were last read.
    read_at: Option<Instant>,
}

/// The other replicas' reports, as the holder reads them.
#[derive(Debug)]
pub struct Replicas {
    own: String,
    inner: Mutex<Inner>,
}

impl Replicas {
    /// The tracker of the replica named `own` (its key in the ConfigMap; its own report is not judged: the
    /// holder judges its own proxies directly).
    pub fn new(own: impl Into<String>) -> Self {
        Self {
            own: own.into(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// This replica's key.
    pub fn own(&self) -> &str {
        &self.own
    }

    /// Takes in the ConfigMap's data as read at `now`: key → report (JSON).
    pub fn observe(&self, data: &BTreeMap<String, String>, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.read_at = Some(now);
        inner.seen.retain(|key, _| data.contains_key(key));
        for (key, raw) in data {
            match inner.seen.get_mut(key) {
                Some(seen) if seen.raw == *raw => {}
                Some(seen) => {
                    seen.raw = raw.clone();
                    seen.since = now;
                }
                None => {
                    inner.seen.insert(
                        key.clone(),
                        Seen {
                            raw: raw.clone(),
                            since: now,
                        },
                    );
                }
            }
        }
    }

    /// Whether the other live replicas have the root `fingerprint` propagated, at `now`.
    pub fn verdict(&self, fingerprint: &str, now: Instant) -> Verdict {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let first_seen = match &inner.pending {
            Some((pending, since)) if pending == fingerprint => *since,
            _ => {
                inner.pending = Some((fingerprint.to_owned(), now));
                now
            }
        };
        let mut missing = Vec::new();
        let mut ready = 0;
        for (key, seen) in &inner.seen {
            if *key == self.own || now.saturating_duration_since(seen.since) >= LIVENESS {
                continue;
            }
            match serde_json::from_str::<Report>(&seen.raw) {
                Ok(report) if report.fingerprint == fingerprint && report.propagated => ready += 1,
                Ok(report) if report.fingerprint == fingerprint => {
                    missing.push(format!("{key} (waiting for {} proxies)", report.waiting))
                }
                _ => missing.push(format!("{key} (has not reported this root)")),
            }
        }
        let settling = now.saturating_duration_since(first_seen) < LIVENESS;
        let unread = inner
            .read_at
            .is_none_or(|at| now.saturating_duration_since(at) >= READ_WITHIN);
        if settling || unread || !missing.is_empty() {
            Verdict::Wait {
                settling,
                unread,
                missing,
            }
        } else {
            Verdict::Ready { replicas: ready }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(fingerprint: &str, propagated: bool, waiting: usize, seq: u64) -> String {
        serde_json::to_string(&Report {
            fingerprint: fingerprint.into(),
            propagated,
            waiting,
            seq,
        })
        .unwrap()
    }

    fn data(entries: &[(&str, String)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn waits_one_liveness_period_then_for_every_live_replica() {
        let replicas = Replicas::new("a");
        let t0 = Instant::now();
        replicas.observe(&data(&[("b", report("new", true, 0, 1))]), t0);
        // Settling: even with every report propagated, not before LIVENESS.
        assert_eq!(
            replicas.verdict("new", t0),
            Verdict::Wait {
                settling: true,
                unread: false,
                missing: vec![]
            }
        );
        // c appears, waiting for proxies; b keeps reporting.
        let t1 = t0 + 10 * S;
        replicas.observe(
            &data(&[
                ("b", report("new", true, 0, 5)),
                ("c", report("new", false, 2, 1)),
            ]),
            t1,
        );
        let t2 = t0 + LIVENESS;
        replicas.observe(
            &data(&[
                ("b", report("new", true, 0, 6)),
                ("c", report("new", false, 2, 2)),
            ]),
            t2,
        );
        assert_eq!(
            replicas.verdict("new", t2),
            Verdict::Wait {
                settling: false,
                unread: false,
                missing: vec!["c (waiting for 2 proxies)".into()]
            }
        );
        let t3 = t2 + 2 * S;
        replicas.observe(
            &data(&[
                ("b", report("new", true, 0, 7)),
                ("c", report("new", true, 0, 3)),
            ]),
            t3,
        );
        assert_eq!(replicas.verdict("new", t3), Verdict::Ready { replicas: 2 });
    }

    #[test]
    fn a_report_that_stops_changing_is_a_gone_replica_and_its_own_is_ignored() {
        let replicas = Replicas::new("a");
        let t0 = Instant::now();
        let stale = report("old-root", false, 3, 9);
        let own = report("new", false, 7, 1);
        replicas.observe(&data(&[("dead", stale.clone()), ("a", own.clone())]), t0);
        assert!(matches!(
            replicas.verdict("new", t0 + 5 * S),
            Verdict::Wait { missing, .. } if missing == vec!["dead (has not reported this root)".to_owned()]
        ));
        // The same bytes for LIVENESS: gone.
        let later = t0 + LIVENESS + 5 * S;
        replicas.observe(&data(&[("dead", stale), ("a", own)]), later);
        assert_eq!(
            replicas.verdict("new", later),
            Verdict::Ready { replicas: 0 }
        );
    }

    #[test]
    fn reports_the_holder_could_not_read_lately_hold_activation() {
        let replicas = Replicas::new("a");
        let t0 = Instant::now();
        replicas.observe(&data(&[("b", report("new", true, 0, 1))]), t0);
        replicas.verdict("new", t0);
        // Past settling, the last read READ_WITHIN ago (the ConfigMap unreadable since): b's report looks stale,
        // but that is the holder's blindness, not b gone.
        let t1 = t0 + LIVENESS + READ_WITHIN;
        assert_eq!(
            replicas.verdict("new", t1),
            Verdict::Wait {
                settling: false,
                unread: true,
                missing: vec![]
            }
        );
        replicas.observe(&data(&[("b", report("new", true, 0, 2))]), t1);
        assert_eq!(replicas.verdict("new", t1), Verdict::Ready { replicas: 1 });
    }

    #[test]
    fn a_live_replica_reporting_another_root_holds_activation() {
        let replicas = Replicas::new("a");
        let t0 = Instant::now();
        replicas.verdict("new", t0);
        let t1 = t0 + LIVENESS;
        // b has not seen the rotation in the Secret yet: it reports the previous root, still changing.
        replicas.observe(&data(&[("b", report("previous", true, 0, 4))]), t1);
        assert_eq!(
            replicas.verdict("new", t1),
            Verdict::Wait {
                settling: false,
                unread: false,
                missing: vec!["b (has not reported this root)".into()]
            }
        );
        // A report removed from the ConfigMap is forgotten.
        replicas.observe(&BTreeMap::new(), t1 + S);
        assert_eq!(
            replicas.verdict("new", t1 + S),
            Verdict::Ready { replicas: 0 }
        );
        // A new pending root settles again.
        assert!(matches!(
            replicas.verdict("newer", t1 + S),
            Verdict::Wait { settling: true, .. }
        ));
    }
}
