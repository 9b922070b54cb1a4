//! Consistent hashing (`ring_hash`): a request property — a header, a cookie, a query parameter or
//! the client's address — picks the endpoint, so requests with the same key keep landing on the
//! same endpoint (session affinity, cache locality) and an endpoint joining or leaving moves only
//! the keys it takes or had.
//!
//! A ring rather than Maglev: on a ring an endpoint owns the arcs before its points, and a new
//! endpoint's points only split arcs, so the keys that move are exactly those the new endpoint
//! takes (≈ 1/(N+1) of them), all to it, and an endpoint leaving hands only its own keys to the next
//! points. Maglev's O(1) table spreads keys more evenly but reshuffles a few percent beyond that
//! on every change, and a lookup here is one binary search over a few thousand points (tens of
//! nanoseconds, BENCHMARKS.md). Walking on from a point also gives the next choice for free: an
//! ejected endpoint, or the one a retry avoids, passes its keys to the next endpoint on the ring —
//! the same one for every request with that key — and gets them back when it returns.
//!
//! The ring is built with the state snapshot (a discovery update or a state-file reload), never on
//! the request path. Each endpoint gets [`POINTS_PER_WEIGHT`] points per unit of its weight (the
//! weights divided by their greatest common divisor first); a ring that would exceed
//! [`MAX_POINTS`] is scaled down, each endpoint keeping at least one point.

use std::net::SocketAddr;

use http::HeaderName;
use serde::Serialize;

use super::{Balancer, Picked};

/// Points on the ring per unit of weight (ketama's 160): enough that each endpoint's share is
/// within a few percent of its weight's.
const POINTS_PER_WEIGHT: u64 = 160;
/// The most points of one ring (16 kB × 12 bytes): a hundred endpoints of equal weight fit
/// unscaled, so adding one leaves every other endpoint's points in place.
const MAX_POINTS: u64 = 16_000;

/// What a request is hashed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    /// The first value of this request header.
    Header(HeaderName),
    /// The value of this cookie (`Cookie` headers).
    Cookie(String),
    /// The value of this query parameter, as sent (not percent-decoded).
    QueryParameter(String),
    /// The client's IP address (the downstream connection's peer).
    SourceIp,
}

impl HashKey {
    /// The hash of `req`'s key, or `None` when the request does not carry it (no such header,
    /// cookie or parameter, or an empty value): such a request is balanced by the default
    /// algorithm.
    pub(crate) fn hash<B>(&self, req: &http::Request<B>, client: SocketAddr) -> Option<u64> {
        let value: &[u8] = match self {
            HashKey::Header(name) => req.headers().get(name)?.as_bytes(),
            HashKey::Cookie(name) => cookie(req.headers(), name)?,
            HashKey::QueryParameter(name) => query_parameter(req.uri().query()?, name)?,
            HashKey::SourceIp => return Some(Self::source(client)),
        };
        (!value.is_empty()).then(|| hash(value))
    }

    /// The hash of a client's address (opaque TCP has no other key).
    pub(crate) fn source(client: SocketAddr) -> u64 {
        match client.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => hash(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash(&ip.octets()),
        }
    }
}

/// `/config`: as written in a `BackendPolicy` (`{"header": "x-user"}`, `{"source_ip": true}`).
impl Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = ser.serialize_map(Some(1))?;
        match self {
            HashKey::Header(name) => map.serialize_entry("header", name.as_str())?,
            HashKey::Cookie(name) => map.serialize_entry("cookie", name)?,
            HashKey::QueryParameter(name) => map.serialize_entry("query_parameter", name)?,
            HashKey::SourceIp => map.serialize_entry("source_ip", &true)?,
        }
        map.end()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (`a=1; b=2`), the first if set
/// twice.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

/// The value of parameter `name` in `query` (`a=1&b=2`), the first if given twice.
fn query_parameter<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}

/// A stable 64-bit hash (FNV-1a, then murmur3's finaliser to spread FNV's weak low bits): every
/// proxy, of any build, puts a key at the same place on a ring of the same endpoints, so clients
/// behind different proxies share the affinity.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The ring: points sorted by hash, each owned by a ready endpoint (its index in the balancer).
#[derive(Debug, Default)]
pub(crate) struct Ring {
    hashes: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    /// The ring of `endpoints` (address and weight), in the balancer's order. An endpoint's
    /// points depend on its address alone, never on its position or its peers (unless the ring
    /// must be scaled down), which is what keeps remapping minimal.
    pub(crate) fn new(endpoints: &[(SocketAddr, u32)]) -> Self {
        let divisor = endpoints
            .iter()
            .map(|&(_, w)| u64::from(w.max(1)))
            .fold(0, gcd)
            .max(1);
        let units_sum: u64 = endpoints
            .iter()
            .map(|&(_, w)| u64::from(w.max(1)) / divisor)
            .sum();
        // Scaled down only past the cap: below it an endpoint's points never depend on its peers.
        let scale = |units: u64| {
            if units_sum.saturating_mul(POINTS_PER_WEIGHT) <= MAX_POINTS {
                units * POINTS_PER_WEIGHT
            } else {
                (units * MAX_POINTS / units_sum).max(1)
            }
        };
        let points = |w: u32| scale(u64::from(w.max(1)) / divisor);
        let mut ring: Vec<(u64, u32)> = Vec::new();
        for (i, &(addr, w)) in endpoints.iter().enumerate() {
            let mut seed = [0u8; 26];
            let ip = match addr.ip().to_canonical() {
                std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(ip) => ip.octets(),
            };
            seed[..16].copy_from_slice(&ip);
            seed[16..18].copy_from_slice(&addr.port().to_be_bytes());
            for replica in 0..points(w) {
                seed[18..].copy_from_slice(&replica.to_be_bytes());
                ring.push((hash(&seed), i as u32));
            }
        }
        // Ties (vanishingly rare) broken by owner index so the order is the same everywhere.
        ring.sort_unstable();
        Self {
            hashes: ring.iter().map(|p| p.0).collect(),
            owners: ring.iter().map(|p| p.1).collect(),
        }
    }

    /// The endpoints in ring order from `key`'s point: the owner of the first point at or after
    /// it, then the owners of the points after, each once, wrapping round.
    pub(crate) fn walk(&self, key: u64) -> Walk<'_> {
        Walk {
            ring: self,
            start: self.hashes.partition_point(|&h| h < key),
            step: 0,
            first: None,
            seen: Vec::new(),
        }
    }

    /// Points on the ring.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }
}

/// [`Ring::walk`]'s iterator. The first endpoint costs no allocation (the usual request stops
/// there); the ones after are remembered to be yielded once.
pub(crate) struct Walk<'r> {
    ring: &'r Ring,
    start: usize,
    step: usize,
    first: Option<u32>,
    seen: Vec<u32>,
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let n = self.ring.owners.len();
        while self.step < n {
            let owner = self.ring.owners[(self.start + self.step) % n];
            self.step += 1;
            match self.first {
                None => self.first = Some(owner),
                Some(first) if first == owner || self.seen.contains(&owner) => continue,
                Some(_) => self.seen.push(owner),
            }
            return Some(owner as usize);
        }
        None
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Balancer {
    /// The endpoint for a request whose key hashes to `key` — the first on the ring from the
    /// key's point that is in balancing (outlier detection) and not `avoid` (a retry's previous
    /// endpoint) — or, without a key or a ring, [`Balancer::pick_avoiding`]'s. When every
    /// endpoint on the walk is out, the key's own endpoint all the same (as for the other
    /// algorithms, at least one endpoint always gets the request).
    pub(crate) fn pick_hashed(
        &self,
        key: Option<u64>,
        avoid: Option<SocketAddr>,
    ) -> Option<Picked> {
        let (Some(ring), Some(key)) = (&self.ring, key) else {
            return self.pick_avoiding(avoid);
        };
        let mut fallback = None;
        for i in ring.walk(key) {
            if Some(self.ready[i].addr) == avoid {
                continue;
            }
            fallback.get_or_insert(i);
            if !self.filters() {
                return Some(self.picked(i, false));
            }
            if let Some((i, probe)) = self.usable(i) {
                return Some(self.picked(i, probe));
            }
        }
        // Everything on the walk is out (or avoided, with one endpoint): the first that is not
        // avoided, else the key's own.
        let i = fallback.or_else(|| ring.walk(key).next())?;
        Some(self.picked(i, false))
    }
}

#[cfg(test)]
mod tests;
