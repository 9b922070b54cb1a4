//! Who a proxy's discovery stream proved to be: the transport (mutual TLS, TLS, plaintext), the SPIFFE id
//! of its client certificate, and whether that id names the workload the proxy registered as (`Hello`).
//!
//! A mismatch is flagged (Admin `Status`, and one warning per proxy and identity), not refused: the
//! client certificate is optional on this listener (`Certify`'s bootstrap call has none), so refusing a
//! proxy that proves the "wrong" identity would only push it to connect without one and claim the same
//! workload, while cutting a running proxy off from its configuration. What a workload may reach is
//! decided by the identity its certificate proves on mesh connections, never by its `Hello`.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use shoal_proto::v1::{self, DiscoveryTransport};

use crate::identity::spiffe::WorkloadId;
use crate::server::PeerInfo;

/// Mismatches remembered for warn-once; the set is cleared when it grows past this.
const WARNED_MAX: usize = 4096;

/// How one proxy's stream reached the control plane, and the identity it proved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamIdentity {
    /// The transport of the stream's connection.
    pub transport: DiscoveryTransport,
    /// The verified SPIFFE id of its client certificate; empty without one.
    pub verified: String,
    /// Whether `verified` names another namespace or service account than the proxy's `Hello`.
    pub mismatch: bool,
}

impl StreamIdentity {
    /// The identity of `peer`'s stream, checked against the `workload` its `Hello` names.
    pub fn of(peer: &PeerInfo, workload: Option<&v1::WorkloadIdentity>) -> Self {
        let verified = peer.identity.clone().unwrap_or_default();
        let mismatch = !verified.is_empty() && !names(&verified, workload);
        Self {
            transport: peer.transport(),
            verified,
            mismatch,
        }
    }
}

/// Whether SPIFFE id `id` names `workload` (namespace and service account: the trust domain is the
/// CA's, checked with the certificate chain).
fn names(id: &str, workload: Option<&v1::WorkloadIdentity>) -> bool {
    match (WorkloadId::from_spiffe_id(id), workload) {
        (Some(proven), Some(w)) => {
            proven.namespace == w.namespace && proven.service_account == w.service_account
        }
        _ => false,
    }
}

/// The mismatches already logged, so each (proxy id, identity) is logged once.
#[derive(Debug, Default)]
pub(super) struct MismatchLog {
    warned: Mutex<HashSet<(String, String)>>,
}

impl MismatchLog {
    /// Logs a warning about proxy `hello`'s mismatched identity unless it was logged already; true
    /// when it logged.
    pub(super) fn warn_once(&self, hello: &v1::Hello, identity: &StreamIdentity) -> bool {
        if !identity.mismatch {
            return false;
        }
        let first_time = {
            let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
            if warned.len() >= WARNED_MAX {
                warned.clear();
            }
            warned.insert((hello.proxy_id.clone(), identity.verified.clone()))
        };
        if first_time {
            let registered = hello.workload.as_ref().map_or_else(
                || "no workload".to_owned(),
                |w| format!("ns/{}/sa/{}", w.namespace, w.service_account),
            );
            tracing::warn!(
                proxy = %hello.proxy_id,
                registered,
                verified_identity = %identity.verified,
                "proxy registered as another workload than its client certificate proves; served, flagged MISMATCH in `shoalctl status`: check the proxy's SHOAL_NAMESPACE and SHOAL_SERVICE_ACCOUNT, and where its certificate came from"
            );
        }
        first_time
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn workload(namespace: &str, service_account: &str) -> Option<v1::WorkloadIdentity> {
        Some(v1::WorkloadIdentity {
            namespace: namespace.into(),
            service_account: service_account.into(),
            service_name: "web".into(),
        })
    }

    fn peer(tls: bool, client_certificate: bool, identity: Option<&str>) -> PeerInfo {
        PeerInfo {
            remote_addr: Some(SocketAddr::from(([10, 0, 0, 1], 40000))),
            tls,
            client_certificate,
            identity: identity.map(str::to_owned),
        }
    }

    const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";

    #[test]
    fn transport_and_identity_of_each_kind_of_stream() {
        let registered = workload("default", "frontend");
        let mtls = StreamIdentity::of(&peer(true, true, Some(FRONTEND)), registered.as_ref());
        assert_eq!(
            mtls,
            StreamIdentity {
                transport: DiscoveryTransport::Mtls,
                verified: FRONTEND.into(),
                mismatch: false,
            }
        );
        let tls = StreamIdentity::of(&peer(true, false, None), registered.as_ref());
        assert_eq!(
            (tls.transport, tls.verified.as_str(), tls.mismatch),
            (DiscoveryTransport::Tls, "", false)
        );
        let plaintext = StreamIdentity::of(&peer(false, false, None), registered.as_ref());
        assert_eq!(
            (
                plaintext.transport,
                plaintext.verified.as_str(),
                plaintext.mismatch
            ),
            (DiscoveryTransport::Plaintext, "", false)
        );
        // A verified certificate without a SPIFFE id proves no workload: nothing to compare.
        let no_id = StreamIdentity::of(&peer(true, true, None), registered.as_ref());
        assert_eq!(
            (no_id.transport, no_id.verified.as_str(), no_id.mismatch),
            (DiscoveryTransport::Mtls, "", false)
        );
    }

    #[test]
    fn another_namespace_or_service_account_is_a_mismatch() {
        let proven = peer(true, true, Some(FRONTEND));
        for (registered, mismatch) in [
            (workload("default", "frontend"), false),
            (workload("default", "backend"), true),
            (workload("shop", "frontend"), true),
            (None, true),
        ] {
            let identity = StreamIdentity::of(&proven, registered.as_ref());
            assert_eq!(identity.mismatch, mismatch, "{registered:?}");
        }
        // The trust domain is the CA's (the chain was verified): only namespace and account count.
        let other_domain = peer(
            true,
            true,
            Some("spiffe://mesh.example/ns/default/sa/frontend"),
        );
        let registered = workload("default", "frontend");
        assert!(!StreamIdentity::of(&other_domain, registered.as_ref()).mismatch);
    }

    #[test]
    fn a_mismatch_is_logged_once_per_proxy_and_identity() {
        let log = MismatchLog::default();
        let hello = |id: &str| v1::Hello {
            proxy_id: id.into(),
            workload: workload("default", "backend"),
            ..Default::default()
        };
        let proven = peer(true, true, Some(FRONTEND));
        let mismatch = StreamIdentity::of(&proven, hello("a").workload.as_ref());
        assert!(log.warn_once(&hello("a"), &mismatch));
        // The same proxy reconnecting with the same certificate: not again.
        assert!(!log.warn_once(&hello("a"), &mismatch));
        assert!(log.warn_once(&hello("b"), &mismatch));
        let matching = StreamIdentity::of(&proven, workload("default", "frontend").as_ref());
        assert!(!log.warn_once(&hello("c"), &matching));
    }
}
