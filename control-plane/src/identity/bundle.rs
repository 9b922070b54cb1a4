//! The trust bundle in discovery, and the upkeep that keeps it honest: every root change (rotation,
//! activation, retirement) becomes a new `TrustBundle` resource named after the trust domain, pushed to
//! subscribed proxies like any other resource change; a pending root starts signing once proxies have it
//! ([`propagation`](super::propagation)); retiring roots leave it at their `retire_at`.

use std::time::Duration;

use shoal_proto::v1::{self, discovery_resource::Payload};
use tokio::sync::watch;

use super::replicas::Replicas;
use super::{Identity, metrics, propagation};
use crate::discovery::Hub;
use crate::discovery::catalog::{Contribution, key};

/// The discovery catalog source the trust bundle is published under.
pub const SOURCE: &str = "identity/trust-bundle";
/// How often the upkeep task checks for a pending root to activate and due retirements (cheap: in-memory
/// comparisons, and one look at the connected proxies while a root is pending).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired join-token records are pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// Publishes the CA's trust bundle into `hub` now and on every change, until `closing` turns true.
pub async fn publish(
    identity: Identity,
    hub: std::sync::Arc<Hub>,
    mut closing: watch::Receiver<bool>,
) {
    let mut roots = identity.ca.bundle();
    let trust_domain = identity.ca.trust_domain().to_string();
    loop {
        let current = roots.borrow_and_update().clone();
        metrics::roots(current.len());
        metrics::phase(identity.ca.phase());
        let bundle = v1::TrustBundle {
            trust_domain: trust_domain.clone(),
            roots_pem: current,
        };
        let entry = (
            key(v1::ResourceType::TrustBundle, trust_domain.clone()),
            Contribution::Whole(Payload::TrustBundle(bundle)),
        );
        hub.set_source(SOURCE, vec![entry]);
        tokio::select! {
            changed = roots.changed() => if changed.is_err() { return },
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}

/// Activates a pending root once the proxies connected to `hub` have it (and, with `replicas`, those of every
/// other live replica; or at the propagation timeout),
/// retires roots when due (checking every `interval`) and prunes expired join tokens, until `closing` turns
/// true.
pub async fn upkeep(
    identity: Identity,
    hub: std::sync::Arc<Hub>,
    interval: Duration,
    leader: watch::Receiver<bool>,
    replicas: Option<std::sync::Arc<Replicas>>,
    mut closing: watch::Receiver<bool>,
) {
    let started = identity.clock.unix_seconds();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        // Another replica holds the Lease and runs the rotation (sources::kubernetes::lease).
        if !*leader.borrow() {
            continue;
        }
        propagation::advance(&identity, &hub, started, replicas.as_deref()).await;
        let now = identity.clock.unix_seconds();
        if identity.ca.next_retirement().is_some_and(|at| at <= now) {
            let ca = identity.ca.clone();
            match tokio::task::spawn_blocking(move || ca.retire_due()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot retire the old CA root; retrying"),
                Err(error) => tracing::warn!(%error, "CA retirement task failed; retrying"),
            }
        }
        if last_prune.elapsed() >= PRUNE_INTERVAL {
            last_prune = tokio::time::Instant::now();
            let tokens = identity.join_tokens.clone();
            match tokio::task::spawn_blocking(move || tokens.prune_expired()).await {
                Ok(Ok(pruned)) if pruned > 0 => {
                    tracing::info!(pruned, "expired join tokens removed")
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot prune expired join tokens"),
                _ => {}
            }
        }
    }
}
