//! When a rotation's pending root starts signing: as soon as every proxy connected to discovery and
//! subscribed to the trust bundle has ACKed a bundle version that contains it, or at the latest at the
//! propagation timeout (`SHOAL_CP_CA_PROPAGATION_TIMEOUT`, or the rotation's own `--activate-after`). With
//! several control-plane replicas (Kubernetes mode), the proxies connected to the other live replicas must have
//! it too, as they report it ([`replicas`](super::replicas)).
//!
//! Until then the old root signs, so no proxy is handed a peer certificate from a root it has not received.
//! With no proxy connected there is nothing to wait for. The upkeep task (`bundle::upkeep`) asks once per
//! tick, only while a root is pending; the discovery side answers with [`Registry::acks`], which holds its
//! locks for a copy and one lookup per proxy.
//!
//! [`Registry::acks`]: crate::discovery::registry::Registry::acks

use std::sync::Arc;

use shoal_proto::v1::{ResourceType, discovery_resource::Payload};

use super::ca::PendingRoot;
use super::replicas::{Replicas, Verdict};
use super::{Identity, metrics};
use crate::discovery::Hub;
use crate::discovery::catalog::key;
use crate::discovery::registry::KeyAck;

/// After a restart that resumed a pending rotation, seconds during which "every connected proxy has
/// ACKed" does not count: proxies are still reconnecting (their backoff is at most 10 s, jittered up to
/// 15 s), and the few already back say little about the rest. The timeout still applies.
pub const RECONNECT_GRACE_SECONDS: u64 = 15;

/// Proxies named at most in the timeout warning (the rest are counted).
const NAMED_AT_MOST: usize = 20;

/// What to do about a pending root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep waiting: `waiting` connected proxies have not ACKed the bundle with the new root (or it is not
    /// in the catalog yet).
    Wait {
        /// Connected, subscribed proxies without it.
        waiting: usize,
    },
    /// Every connected proxy subscribed to the bundle has ACKed it (`proxies` of them; 0: none connected).
    Propagated {
        /// How many proxies ACKed.
        proxies: usize,
    },
    /// The propagation timeout passed first; these connected proxies had not ACKed.
    TimedOut {
        /// `proxy-id (address)` of each.
        missing: Vec<String>,
    },
}

/// Where the connected proxies stand on the trust bundle containing `pending`'s root: `None` while the
/// catalog does not carry such a bundle yet (it is published just after the rotation is installed).
pub fn observe(hub: &Hub, trust_domain: &str, pending: &PendingRoot) -> Option<Vec<KeyAck>> {
    let k = key(ResourceType::TrustBundle, trust_domain);
    let entry = hub.entry(&k)?;
    match &entry.payload()? {
        Payload::TrustBundle(b) if b.roots_pem.contains(&pending.root_pem) => {
            Some(hub.registry.acks(&k, entry.version))
        }
        _ => None,
    }
}

/// Decides at `now` (Unix seconds) from [`observe`]'s answer. A complete set of ACKs counts only from
/// `counts_from` on (see [`RECONNECT_GRACE_SECONDS`]; 0 when the rotation started in this process).
pub fn decide(
    pending: &PendingRoot,
    now: u64,
    acks: Option<&[KeyAck]>,
    counts_from: u64,
) -> Decision {
    let missing: Vec<&KeyAck> = acks
        .unwrap_or_default()
        .iter()
        .filter(|k| !k.acked)
        .collect();
    if let Some(acks) = acks
        && missing.is_empty()
        && now >= counts_from
    {
        return Decision::Propagated {
            proxies: acks.len(),
        };
    }
    if now >= pending.activate_by {
        return Decision::TimedOut {
            missing: missing
                .iter()
                .map(|k| format!("{} ({})", k.proxy_id, k.address))
                .collect(),
        };
    }
    Decision::Wait {
        waiting: missing.len(),
    }
}

/// This replica's own view of the pending root, if any: the root, the ACKs of the proxies connected here (as
/// [`observe`] answers) and what [`decide`] makes of them. `started`: when the caller began, Unix seconds (a
/// rotation older than that resumed after a restart: the reconnect grace applies).
pub fn local(
    identity: &Identity,
    hub: &Hub,
    started: u64,
) -> Option<(PendingRoot, Option<Vec<KeyAck>>, Decision)> {
    let pending = identity.ca.pending()?;
    let now = identity.clock.unix_seconds();
    let counts_from = if pending.since < started {
        started + RECONNECT_GRACE_SECONDS
    } else {
        0
    };
    let acks = observe(hub, identity.ca.trust_domain().as_str(), &pending);
    let decision = decide(&pending, now, acks.as_deref(), counts_from);
    Some((pending, acks, decision))
}

/// Activates the pending root, if any, when [`decide`] says so (on a blocking thread: the CA stores it
/// first); returns the decision. `started`: when this process's upkeep began, Unix seconds. With several
/// replicas (`replicas`: the others' reports, Kubernetes mode), the proxies connected to every live replica
/// must have it too ([`replicas`](super::replicas)).
pub async fn advance(
    identity: &Identity,
    hub: &Hub,
    started: u64,
    replicas: Option<&Replicas>,
) -> Option<Decision> {
    let Some((pending, acks, mut decision)) = local(identity, hub, started) else {
        metrics::pending_proxies(0);
        metrics::pending_replicas(0);
        return None;
    };
    let verdict = replicas.map(|r| r.verdict(&pending.fingerprint, std::time::Instant::now()));
    let (others, missing_replicas) = match &verdict {
        Some(Verdict::Ready { replicas }) => (Some(*replicas), Vec::new()),
        Some(Verdict::Wait {
            missing, unread, ..
        }) => {
            let mut named = missing.clone();
            if *unread {
                named.push(format!(
                    "(their reports were not read within {} s)",
                    super::replicas::READ_WITHIN.as_secs()
                ));
            }
            (None, named)
        }
        None => (None, Vec::new()),
    };
    let waiting_replicas = match &verdict {
        Some(Verdict::Wait { missing, .. }) => missing.len(),
        _ => 0,
    };
    metrics::pending_replicas(waiting_replicas);
    // This replica's proxies have it, another live replica's may not: wait for them, up to the timeout.
    if let (Decision::Propagated { .. }, Some(Verdict::Wait { .. })) = (&decision, &verdict) {
        decision = if identity.clock.unix_seconds() >= pending.activate_by {
            Decision::TimedOut {
                missing: Vec::new(),
            }
        } else {
            Decision::Wait { waiting: 0 }
        };
    }
    match &decision {
        Decision::Wait { waiting } => {
            metrics::pending_proxies(*waiting);
            return Some(decision);
        }
        Decision::Propagated { proxies } => match others {
            Some(replicas) => {
                tracing::info!(root = %pending.fingerprint, proxies, replicas, "every connected proxy has the trust bundle with the new CA root, and so have those of every other live replica; activating it")
            }
            None => {
                tracing::info!(root = %pending.fingerprint, proxies, "every connected proxy has the trust bundle with the new CA root; activating it")
            }
        },
        Decision::TimedOut { missing } => {
            let mut named = missing
                .iter()
                .take(NAMED_AT_MOST)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if missing.len() > NAMED_AT_MOST {
                named.push_str(&format!(" and {} more", missing.len() - NAMED_AT_MOST));
            }
            if acks.is_none() {
                named = "(the trust bundle with the new root was not published yet)".into();
            }
            let replicas = if missing_replicas.is_empty() {
                "(none)".to_owned()
            } else {
                missing_replicas.join(", ")
            };
            tracing::warn!(root = %pending.fingerprint, activate_by = pending.activate_by, unacked = missing.len(), proxies = %named, replicas = %replicas, "CA propagation timeout: activating the new root although these connected proxies have not acknowledged the trust bundle with it; until they receive it they reject peers holding certificates from the new root (check their discovery connection and `shoalctl status`)");
        }
    }
    let (ca, fingerprint) = (Arc::clone(&identity.ca), pending.fingerprint.clone());
    match tokio::task::spawn_blocking(move || ca.activate(&fingerprint)).await {
        Ok(Ok(true)) => {
            let reason = match decision {
                Decision::TimedOut { .. } => "timeout",
                _ => "propagated",
            };
            metrics::activated(reason);
            metrics::pending_proxies(0);
            metrics::pending_replicas(0);
        }
        Ok(Ok(false)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "cannot activate the new CA root; retrying"),
        Err(error) => tracing::warn!(%error, "CA activation task failed; retrying"),
    }
    Some(decision)
}
