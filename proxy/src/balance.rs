//! Endpoint selection for a service: round robin, weighted where weights differ.
//!
//! The resilience issue adds P2C-EWMA, least-request and ring hash behind the same `pick`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::state::Endpoint;
use crate::tls::SpiffeId;

/// Chooses one ready endpoint per request.
#[derive(Debug, Default)]
pub struct Balancer {
    ready: Vec<SocketAddr>,
    /// The identity each ready endpoint's proxy must prove (same order as `ready`).
    identities: Vec<Option<SpiffeId>>,
    /// Cumulative weights when weights differ; empty means plain round robin.
    cumulative: Vec<u64>,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer over the ready endpoints of `endpoints`.
    pub fn new(endpoints: &[Endpoint]) -> Self {
        let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
        let weighted = ready.windows(2).any(|w| w[0].weight != w[1].weight);
        let cumulative = if weighted {
            ready
                .iter()
                .scan(0u64, |acc, e| {
                    *acc += u64::from(e.weight);
                    Some(*acc)
                })
                .collect()
        } else {
            Vec::new()
        };
        Self {
            ready: ready.iter().map(|e| e.addr).collect(),
            identities: ready.iter().map(|e| e.identity.clone()).collect(),
            cumulative,
            next: AtomicUsize::new(fastrand::usize(..ready.len().max(1))),
        }
    }

    /// The endpoint for the next request, or `None` when no endpoint is ready.
    pub fn pick(&self) -> Option<SocketAddr> {
        self.pick_index().map(|i| self.ready[i])
    }

    /// [`Self::pick`], with the identity the endpoint's proxy must prove (`None`: not meshed).
    pub fn pick_target(&self) -> Option<(SocketAddr, Option<&SpiffeId>)> {
        self.pick_index()
            .map(|i| (self.ready[i], self.identities[i].as_ref()))
    }

    fn pick_index(&self) -> Option<usize> {
        match self.ready.len() {
            0 => None,
            1 => Some(0),
            n if self.cumulative.is_empty() => Some(self.next.fetch_add(1, Ordering::Relaxed) % n),
            n => {
                let total = *self.cumulative.last()?;
                let r = fastrand::u64(..total);
                Some(self.cumulative.partition_point(|&c| c <= r).min(n - 1))
            }
        }
    }

    /// Number of ready endpoints.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16, weight: u32, ready: bool) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            ready,
            identity: None,
        }
    }

    #[test]
    fn round_robin_visits_every_ready_endpoint_evenly() {
        let b = Balancer::new(&[ep(1, 1, true), ep(2, 1, false), ep(3, 1, true)]);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..100 {
            *counts.entry(b.pick().unwrap().port()).or_insert(0) += 1;
        }
        assert_eq!(counts.get(&1), Some(&50));
        assert_eq!(counts.get(&3), Some(&50));
        assert!(!counts.contains_key(&2), "not-ready endpoint picked");
    }

    #[test]
    fn weights_shape_the_split() {
        let b = Balancer::new(&[ep(1, 1, true), ep(2, 9, true)]);
        let heavy = (0..10_000)
            .filter(|_| b.pick().unwrap().port() == 2)
            .count();
        assert!(
            (8_500..9_500).contains(&heavy),
            "heavy endpoint got {heavy}/10000"
        );
    }

    #[test]
    fn no_ready_endpoint_picks_none() {
        assert_eq!(Balancer::new(&[ep(1, 1, false)]).pick(), None);
        assert_eq!(Balancer::new(&[]).pick(), None);
    }
}
