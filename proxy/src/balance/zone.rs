//! Zone-aware balancing: a proxy that knows its zone (`SHOAL_ZONE`) sends a backend's requests to
//! the endpoints of its own zone while enough of them are in balancing — at least
//! [`MIN_HEALTHY_PERCENT`] of the zone's endpoints (ready or not), and one — and fails over to
//! every endpoint of the backend otherwise. Cross-zone traffic costs latency and money; a zone
//! that lost most of its endpoints would be overloaded by its callers' full traffic.
//!
//! The preference is a second balancer over the zone's ready endpoints, sharing their loads with
//! the backend's balancer (what one learns, the other sees; outlier detection's ejections too).

use std::sync::Arc;

use super::Balancer;
use crate::state::Endpoint;

/// The share of a zone's endpoints that must be in balancing for the zone to be preferred
/// (Envoy's panic threshold default).
pub(crate) const MIN_HEALTHY_PERCENT: usize = 50;

/// The endpoints of this proxy's zone.
#[derive(Debug)]
pub(crate) struct Local {
    /// The zone.
    pub(crate) zone: Arc<str>,
    /// A balancer over its ready endpoints (loads shared with the backend's).
    pub(crate) balancer: Box<Balancer>,
    /// Its endpoints, ready or not.
    pub(crate) total: usize,
    /// Requests sent to all endpoints because the zone was not preferred
    /// (`shoal_zone_failovers_total`).
    pub(crate) failovers: metrics::Counter,
}

impl Local {
    /// The zone's part of `backend` (whose loads are settled), when preferring it can matter:
    /// some of the backend's ready endpoints are in `zone` and some are not.
    pub(crate) fn new(backend: &Balancer, zone: &Arc<str>, service: &str) -> Option<Self> {
        let total = backend.zones.iter().filter(|z| **z == **zone).count();
        let ready: Vec<Endpoint> = backend
            .ready
            .iter()
            .filter(|r| *r.zone == **zone)
            .map(|r| Endpoint {
                addr: r.addr,
                weight: r.weight as u32,
                ready: true,
                identity: r.identity.clone(),
                zone: zone.to_string(),
            })
            .collect();
        if ready.is_empty() || ready.len() == backend.ready.len() {
            return None;
        }
        let balancer = Balancer::new(&ready, backend.algorithm, backend.outlier.clone())
            .with_slow_start(backend.slow_start)
            .with_health_check(backend.health_check.clone());
        for (r, local) in (backend.ready.iter().filter(|r| *r.zone == **zone)).zip(&balancer.ready)
        {
            let _ = local.load.set(r.load().clone());
        }
        Some(Self {
            zone: zone.clone(),
            balancer: Box::new(balancer),
            total,
            failovers: metrics::counter!(
                crate::metrics::names::ZONE_FAILOVERS,
                "service" => service.to_string(),
                "zone" => zone.to_string(),
            ),
        })
    }

    /// Whether enough of the zone's endpoints are in balancing (not ejected) to prefer it.
    pub(crate) fn preferred(&self) -> bool {
        let healthy = (self.balancer.ready.iter())
            .filter(|r| !r.load().health.is_ejected() && !r.load().checked.is_unhealthy())
            .count();
        healthy > 0 && healthy * 100 >= self.total * MIN_HEALTHY_PERCENT
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::backend::Algorithm;

    fn ep(port: u16, zone: &str, ready: bool) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            ready,
            identity: None,
            zone: zone.into(),
        }
    }

    #[test]
    fn the_zone_is_preferred_while_half_its_endpoints_are_ready() {
        let zone: Arc<str> = "a".into();
        let endpoints = [ep(1, "a", true), ep(2, "a", false), ep(3, "b", true)];
        let b = Balancer::new(&endpoints, Algorithm::RoundRobin, None);
        b.start(Some(&zone), "app.default", None);
        let local = b.local.get().unwrap().as_ref().unwrap();
        assert_eq!((local.total, local.balancer.ready.len()), (2, 1));
        assert!(local.preferred(), "one of two is half");
        for _ in 0..10 {
            assert_eq!(b.pick().unwrap().addr.port(), 1);
        }
        // A retry avoiding the zone's only endpoint goes across.
        assert_eq!(
            b.pick_avoiding(Some(endpoints[0].addr))
                .unwrap()
                .addr
                .port(),
            3
        );

        let fewer = [
            ep(1, "a", true),
            ep(2, "a", false),
            ep(4, "a", false),
            ep(3, "b", true),
        ];
        let b = Balancer::new(&fewer, Algorithm::RoundRobin, None);
        b.start(Some(&zone), "app.default", None);
        let picked: Vec<u16> = (0..10).map(|_| b.pick().unwrap().addr.port()).collect();
        assert!(
            picked.contains(&3),
            "one of three: fail over to all: {picked:?}"
        );
    }

    #[test]
    fn no_preference_without_endpoints_on_both_sides() {
        let zone: Arc<str> = "a".into();
        for endpoints in [
            [ep(1, "a", true), ep(2, "a", true)],
            [ep(1, "b", true), ep(2, "", true)],
        ] {
            let b = Balancer::new(&endpoints, Algorithm::RoundRobin, None);
            b.start(Some(&zone), "app.default", None);
            assert!(b.local.get().unwrap().is_none());
        }
    }
}
