//! High availability: of several control-plane replicas, the one holding the Lease `shoal-control-plane`
//! (coordination.k8s.io/v1, in the control plane's namespace, `SHOAL_CP_NAMESPACE`) runs the CA-rotation state
//! machine (`identity::bundle::upkeep`: activating a rotated-in root once every live replica reports its proxies
//! have it, retiring the old one). Every replica serves discovery and signs with the CA they share
//! ([`ca_state`](super::ca_state)) (docs/kubernetes.md, "High availability").
//!
//! The election is client-go's: every [`RETRY`] a replica reads the Lease; the holder renews it (an update
//! carrying the `resourceVersion` it read, so two writers cannot both win: the API server answers the second
//! `409 Conflict`); another replica takes it over when its record has not changed for [`DURATION`] as this
//! replica observed it (its own clock, never the holder's timestamps, so clock skew does not matter). A holder
//! that cannot renew for [`DURATION`] steps down by itself, before anyone can take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// The Lease's name (the chart's Role grants exactly this one).
pub const LEASE_NAME: &str = "shoal-control-plane";
/// How long a Lease is valid without renewal.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the Lease is read, renewed or tried.
pub const RETRY: Duration = Duration::from_secs(2);

/// Starts the election for the replica `identity` in `namespace`; the receiver says whether this replica holds
/// the Lease now. Runs until `closing` turns true (the holder then gives the Lease up, so another replica takes
/// over at once rather than after [`DURATION`]).
pub fn elect(
    client: Client,
    namespace: &str,
    identity: String,
    mut closing: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let (leader, receiver) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, namespace);
    tokio::spawn(async move {
        let mut election = Election {
            api,
            identity,
            observed: None,
            renewed: None,
        };
        metrics::gauge!("shoal_cp_leader").set(0.0);
        loop {
            let holds = election.round().await;
            let held = *leader.borrow();
            if holds != held {
                if holds {
                    tracing::info!(identity = %election.identity, lease = LEASE_NAME, "lease acquired: this replica runs CA rotation");
                } else {
                    tracing::warn!(identity = %election.identity, lease = LEASE_NAME, "lease lost: another replica runs CA rotation");
                }
                metrics::gauge!("shoal_cp_leader").set(if holds { 1.0 } else { 0.0 });
                leader.send_replace(holds);
            }
            let stop = tokio::select! {
                _ = tokio::time::sleep(RETRY) => false,
                _ = async { let _ = closing.wait_for(|c| *c).await; } => true,
            };
            if stop {
                let held = *leader.borrow();
                if held {
                    election.release().await;
                    leader.send_replace(false);
                }
                return;
            }
        }
    });
    receiver
}

struct Election {
    api: Api<Lease>,
    identity: String,
    /// The Lease's `resourceVersion` last read, and when it was first seen.
    observed: Option<(String, Instant)>,
    /// When this replica last renewed successfully.
    renewed: Option<Instant>,
}

impl Election {
    /// One round: read, then renew, create or take over; whether this replica holds the Lease afterwards.
    async fn round(&mut self) -> bool {
        let now = Instant::now();
        let current = match self.api.get_opt(LEASE_NAME).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, lease = LEASE_NAME, "cannot read the lease");
                return self.still_valid(now);
            }
        };
        let Some(mut lease) = current else {
            let lease = self.record(Lease::default(), 0);
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.renewed = Some(now);
                    true
                }
                // Another replica created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => false,
                Err(error) => {
                    tracing::warn!(%error, lease = LEASE_NAME, "cannot create the lease");
                    false
                }
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(v, _)| v) != Some(&version) {
            self.observed = Some((version, now));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        let expired = holder.is_empty()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, since)| now.duration_since(*since) >= DURATION);
        if !mine && !expired {
            self.renewed = None;
            return false;
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire = if mine { spec.acquire_time } else { None };
        lease.spec = Some(LeaseSpec {
            acquire_time: acquire,
            ..Default::default()
        });
        let lease = self.record(lease, transitions);
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.renewed = Some(now);
                true
            }
            // Someone else wrote first: read again next round.
            Err(kube::Error::Api(e)) if e.code == 409 => mine && self.still_valid(now),
            Err(error) => {
                tracing::warn!(%error, lease = LEASE_NAME, "cannot renew or take the lease");
                mine && self.still_valid(now)
            }
        }
    }

    /// Whether this replica's last renewal is recent enough to keep acting as the holder.
    fn still_valid(&self, now: Instant) -> bool {
        self.renewed
            .is_some_and(|at| now.duration_since(at) < DURATION - RETRY)
    }

    /// `lease` held by this replica from now.
    fn record(&self, mut lease: Lease, transitions: i32) -> Lease {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let previous = lease.spec.take().unwrap_or_default();
        lease.metadata = ObjectMeta {
            name: Some(LEASE_NAME.to_owned()),
            ..lease.metadata
        };
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(DURATION.as_secs() as i32),
            acquire_time: Some(previous.acquire_time.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..previous
        });
        lease
    }

    /// Gives the Lease up (holder cleared), so another replica takes it at its next round.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        let _ = (self.api)
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await;
        tracing::info!(lease = LEASE_NAME, "lease released");
    }
}
