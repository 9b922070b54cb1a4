use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::backend::Algorithm;
use crate::balance::OutlierConfig;
use crate::state::Endpoint;

const KEYS: usize = 10_000;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// Where each of `KEYS` keys lands on the ring of `endpoints` (port, weight): key → port.
fn placement(endpoints: &[(u16, u32)]) -> Vec<u16> {
    let weighted: Vec<_> = endpoints.iter().map(|&(p, w)| (addr(p), w)).collect();
    let ring = Ring::new(&weighted);
    (0..KEYS)
        .map(|k| {
            let i = ring
                .walk(hash(format!("user-{k}").as_bytes()))
                .next()
                .unwrap();
            weighted[i].0.port()
        })
        .collect()
}

fn shares(placed: &[u16]) -> HashMap<u16, f64> {
    let mut counts = HashMap::new();
    for &p in placed {
        *counts.entry(p).or_insert(0.0) += 1.0 / placed.len() as f64;
    }
    counts
}

#[test]
fn the_same_key_lands_on_the_same_endpoint_and_keys_spread_evenly() {
    let endpoints = [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)];
    let placed = placement(&endpoints);
    assert_eq!(placed, placement(&endpoints), "same ring, same places");
    // The endpoints' order does not matter either.
    let reversed: Vec<_> = endpoints.iter().rev().copied().collect();
    assert_eq!(placed, placement(&reversed));
    for (port, share) in shares(&placed) {
        assert!((0.14..0.26).contains(&share), "port {port}: {share}");
    }
}

#[test]
fn adding_an_endpoint_moves_about_one_in_n_plus_one_keys_all_to_it() {
    for n in [3u16, 4, 9] {
        let before: Vec<_> = (1..=n).map(|p| (p, 1)).collect();
        let mut after = before.clone();
        after.push((n + 1, 1));
        let (before, after) = (placement(&before), placement(&after));
        let moved: Vec<_> = (0..KEYS).filter(|&k| before[k] != after[k]).collect();
        let fraction = moved.len() as f64 / KEYS as f64;
        let ideal = 1.0 / f64::from(n + 1);
        assert!(
            (ideal * 0.7..ideal * 1.3).contains(&fraction),
            "{n} → {}: {fraction} moved, ideally {ideal}",
            n + 1
        );
        assert!(
            moved.iter().all(|&k| after[k] == n + 1),
            "a key moved between old endpoints"
        );
    }
}

#[test]
fn removing_an_endpoint_moves_only_its_keys() {
    let before = placement(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
    let after = placement(&[(1, 1), (2, 1), (4, 1), (5, 1)]);
    for k in 0..KEYS {
        if before[k] != 3 {
            assert_eq!(
                before[k], after[k],
                "key {k} moved off a remaining endpoint"
            );
        }
    }
    let theirs = before.iter().filter(|&&p| p == 3).count();
    assert!(theirs > KEYS / 10, "{theirs}");
}

#[test]
fn weights_shift_the_share_proportionally() {
    let placed = shares(&placement(&[(1, 1), (2, 1), (3, 2)]));
    assert!((0.43..0.57).contains(&placed[&3]), "{placed:?}");
    for port in [1, 2] {
        assert!((0.19..0.31).contains(&placed[&port]), "{placed:?}");
    }
    // Weights with a common divisor are the same ring.
    assert_eq!(
        placement(&[(1, 10), (2, 10), (3, 20)]),
        placement(&[(1, 1), (2, 1), (3, 2)])
    );
    // Huge weights are scaled to the cap, keeping the proportions.
    let weighted: Vec<_> = [(1, 1000), (2, 3001)].map(|(p, w)| (addr(p), w)).to_vec();
    assert!(Ring::new(&weighted).len() <= MAX_POINTS as usize + 2);
    let placed = shares(&placement(&[(1, 1000), (2, 3001)]));
    assert!((0.68..0.82).contains(&placed[&2]), "{placed:?}");
}

#[test]
fn the_walk_yields_every_endpoint_once() {
    let weighted: Vec<_> = (1..=6).map(|p| (addr(p), 1)).collect();
    let ring = Ring::new(&weighted);
    let mut walk: Vec<_> = ring.walk(hash(b"k")).collect();
    walk.sort_unstable();
    assert_eq!(walk, [0, 1, 2, 3, 4, 5]);
    assert_eq!(Ring::new(&[]).walk(7).next(), None);
}

fn request(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut req = http::Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(()).unwrap()
}

#[test]
fn keys_come_from_a_header_a_cookie_a_query_parameter_or_the_client() {
    let client = SocketAddr::from(([192, 168, 0, 9], 40000));
    let header = HashKey::Header(HeaderName::from_static("x-user"));
    let cookie = HashKey::Cookie("session".into());
    let query = HashKey::QueryParameter("user".into());
    let req = request(
        "/a?x=1&user=alice&user=bob",
        &[
            ("x-user", "alice"),
            ("cookie", "theme=dark; session=alice"),
            ("cookie", "session=bob"),
        ],
    );
    let alice = Some(hash(b"alice"));
    assert_eq!(header.hash(&req, client), alice);
    assert_eq!(cookie.hash(&req, client), alice);
    assert_eq!(query.hash(&req, client), alice);
    let by_source = HashKey::SourceIp.hash(&req, client);
    assert_eq!(by_source, Some(hash(&[192, 168, 0, 9])));
    // Another port of the same client is the same key.
    let other_port = SocketAddr::from(([192, 168, 0, 9], 40001));
    assert_eq!(HashKey::SourceIp.hash(&req, other_port), by_source);

    // No key (or an empty one): no hash, the default algorithm picks.
    let bare = request(
        "/a?users=alice&user=",
        &[("cookie", "sessionx=alice; session")],
    );
    for key in [&header, &cookie, &query] {
        assert_eq!(key.hash(&bare, client), None, "{key:?}");
    }
    assert_eq!(query.hash(&request("/a", &[]), client), None);
}

fn ep(port: u16) -> Endpoint {
    Endpoint {
        addr: addr(port),
        weight: 1,
        ready: true,
        identity: None,
        zone: String::new(),
    }
}

fn ring_balancer(outlier: Option<OutlierConfig>) -> Balancer {
    let endpoints: Vec<_> = (1..=4).map(ep).collect();
    Balancer::new(&endpoints, Algorithm::RingHash, outlier)
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_passes_its_keys_to_the_next_and_gets_them_back() {
    let b = ring_balancer(Some(OutlierConfig {
        consecutive_failures: Some(1),
        base_ejection_time: Duration::from_secs(10),
        max_ejection_percent: 50.0,
        success_rate: None,
        service: "backend".into(),
    }));
    let keys: Vec<u64> = (0..400).map(|k| hash(format!("k{k}").as_bytes())).collect();
    let home: Vec<SocketAddr> = keys
        .iter()
        .map(|&k| b.pick_hashed(Some(k), None).unwrap().addr)
        .collect();
    let victim = home[0];
    let picked = b.pick_hashed(Some(keys[0]), None).unwrap();
    b.report(&picked, true);
    drop(picked);
    let during: Vec<SocketAddr> = keys
        .iter()
        .map(|&k| b.pick_hashed(Some(k), None).unwrap().addr)
        .collect();
    for (k, (&h, &d)) in home.iter().zip(&during).enumerate() {
        if h == victim {
            assert_ne!(d, victim, "key {k} still on the ejected endpoint");
        } else {
            assert_eq!(h, d, "key {k} moved though its endpoint is fine");
        }
    }
    // Each key of the ejected endpoint goes to one place, every time.
    let again: Vec<SocketAddr> = keys
        .iter()
        .map(|&k| b.pick_hashed(Some(k), None).unwrap().addr)
        .collect();
    assert_eq!(during, again);

    tokio::time::advance(Duration::from_secs(11)).await;
    let probe = b.pick_hashed(Some(keys[0]), None).unwrap();
    assert_eq!(
        probe.addr, victim,
        "the probe goes to the returning endpoint"
    );
    b.report(&probe, false);
    drop(probe);
    let after: Vec<SocketAddr> = keys
        .iter()
        .map(|&k| b.pick_hashed(Some(k), None).unwrap().addr)
        .collect();
    assert_eq!(after, home, "readmitted: its keys come back");
}

#[test]
fn a_retry_goes_to_the_next_endpoint_on_the_ring_and_no_key_falls_back() {
    let b = ring_balancer(None);
    let key = Some(hash(b"alice"));
    let home = b.pick_hashed(key, None).unwrap().addr;
    let retry = b.pick_hashed(key, Some(home)).unwrap().addr;
    assert_ne!(retry, home);
    assert_eq!(b.pick_hashed(key, Some(home)).unwrap().addr, retry);
    // Without a key, requests spread (P2C-EWMA).
    let spread: std::collections::HashSet<_> = (0..200)
        .map(|_| b.pick_hashed(None, None).unwrap().addr)
        .collect();
    assert!(spread.len() > 1, "{spread:?}");
    // One endpoint: a retry goes to it all the same.
    let one = Balancer::new(&[ep(1)], Algorithm::RingHash, None);
    assert_eq!(one.pick_hashed(key, Some(addr(1))).unwrap().addr, addr(1));
    let none = Balancer::new(&[], Algorithm::RingHash, None);
    assert!(none.pick_hashed(key, None).is_none());
}
