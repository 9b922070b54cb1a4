use super::*;

fn ep(port: u16, weight: u32, ready: bool) -> Endpoint {
    Endpoint {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        weight,
        ready,
        identity: None,
    }
}

/// Sends `n` requests with 8 in flight at a time, in simulated time (tokio's clock, paused): a
/// closed loop where each answer comes `latency(port)` after its request and is followed by the
/// next request. Counts the requests per port.
async fn run(
    b: &Balancer,
    n: usize,
    latency: impl Fn(u16) -> Duration,
) -> std::collections::HashMap<u16, usize> {
    let mut counts = std::collections::HashMap::new();
    let mut in_flight: Vec<(Instant, Picked)> = Vec::new();
    let mut issued = 0;
    while issued < n || !in_flight.is_empty() {
        while in_flight.len() < 8 && issued < n {
            let p = b.pick().unwrap();
            *counts.entry(p.addr.port()).or_insert(0) += 1;
            in_flight.push((Instant::now() + latency(p.addr.port()), p));
            issued += 1;
        }
        let next = (0..in_flight.len())
            .min_by_key(|&i| in_flight[i].0)
            .unwrap();
        let (at, done) = in_flight.swap_remove(next);
        tokio::time::advance(at.saturating_duration_since(Instant::now())).await;
        done.observe(latency(done.addr.port()), Instant::now());
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn equal_endpoints_share_the_load_and_not_ready_ones_get_none() {
    let b = Balancer::p2c(&[ep(1, 1, true), ep(2, 1, false), ep(3, 1, true)]);
    let counts = run(&b, 10_000, |_| Duration::from_millis(1)).await;
    assert!(!counts.contains_key(&2), "not-ready endpoint picked");
    for port in [1, 3] {
        let n = counts[&port];
        assert!((4_000..6_000).contains(&n), "port {port} got {n} of 10,000");
    }
}

#[tokio::test(start_paused = true)]
async fn a_ten_times_slower_endpoint_gets_well_under_its_share() {
    let b = Balancer::p2c(&[
        ep(1, 1, true),
        ep(2, 1, true),
        ep(3, 1, true),
        ep(4, 1, true),
    ]);
    let counts = run(&b, 10_000, |port| {
        Duration::from_millis(if port == 4 { 50 } else { 5 })
    })
    .await;
    let slow = counts.get(&4).copied().unwrap_or(0);
    // Round robin would send it 2,500 (1/4). P2C only picks it when both draws are it... never,
    // or when its peer is costlier: a few percent at most once its estimate is learnt.
    assert!(
        slow < 500,
        "the slow endpoint got {slow} of 10,000: {counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_steer_new_ones_away() {
    let b = Balancer::p2c(&[ep(1, 1, true), ep(2, 1, true)]);
    // Endpoint 1 holds 20 requests that have not answered; endpoint 2 none.
    b.ready[0].load().in_flight.fetch_add(20, Ordering::Relaxed);
    let counts = run(&b, 1_000, |_| Duration::from_millis(1)).await;
    assert!(counts.get(&1).copied().unwrap_or(0) < 50, "{counts:?}");
}

#[test]
fn weights_shape_the_split() {
    let b = Balancer::p2c(&[ep(1, 1, true), ep(2, 9, true)]);
    // Requests held in flight so the load, not the latency alone, decides.
    let mut held = Vec::new();
    for _ in 0..1_000 {
        held.push(b.pick().unwrap());
    }
    let heavy = held.iter().filter(|p| p.addr.port() == 2).count();
    assert!(
        (800..980).contains(&heavy),
        "the weight-9 endpoint got {heavy} of 1,000"
    );
}

#[test]
fn no_ready_endpoint_picks_none() {
    assert!(Balancer::p2c(&[ep(1, 1, false)]).pick().is_none());
    assert!(Balancer::p2c(&[]).pick().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_new_snapshot_keeps_what_was_learnt_for_endpoints_that_stay() {
    let old = Balancer::p2c(&[ep(1, 1, true), ep(2, 1, true)]);
    run(&old, 1_000, |port| {
        Duration::from_millis(if port == 2 { 80 } else { 2 })
    })
    .await;
    let in_flight = old.pick().unwrap();
    // The update drops endpoint 1, keeps 2 and adds 3.
    let new = Balancer::p2c(&[ep(2, 1, true), ep(3, 1, true)]);
    new.inherit(&old);
    let estimates: std::collections::HashMap<u16, Option<Duration>> = new
        .estimates()
        .into_iter()
        .map(|(a, e)| (a.port(), e))
        .collect();
    assert!(
        estimates[&2].is_some_and(|e| e >= Duration::from_millis(40)),
        "{estimates:?}"
    );
    // A new endpoint starts from its peers' mean (here the one that stayed), not from scratch.
    let (kept, fresh) = (estimates[&2].unwrap(), estimates[&3].unwrap());
    assert!(
        fresh.abs_diff(kept) < Duration::from_millis(1),
        "{estimates:?}"
    );
    // A request in flight across the update is still counted, and ends on the new snapshot.
    let load = new
        .ready
        .iter()
        .find(|r| r.addr.port() == in_flight.addr.port())
        .map(|r| r.load().clone());
    if let Some(load) = load {
        assert_eq!(load.in_flight.load(Ordering::Relaxed), 1);
        drop(in_flight);
        assert_eq!(load.in_flight.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn the_estimate_rises_at_once_follows_faster_answers_and_decays_when_idle() {
    // A load whose clock started two decay constants ago.
    let load = Load {
        epoch: Instant::now() - 2 * DECAY,
        ..Load::new()
    };
    load.observe(Duration::from_millis(200), Instant::now());
    assert!(load.rtt() > Duration::from_millis(199), "{:?}", load.rtt());
    // A fast answer right after barely moves it (little time has passed)...
    load.observe(Duration::from_millis(1), Instant::now());
    assert!(load.rtt() > Duration::from_millis(150), "{:?}", load.rtt());
    // ...and with two decay constants since the last answer, it has fallen most of the way,
    // answer or not: an endpoint left alone is tried again.
    load.updated_ns.store(0, Ordering::Relaxed);
    assert!(load.rtt() < Duration::from_millis(30), "{:?}", load.rtt());
    load.observe(Duration::from_millis(1), Instant::now());
    assert!(load.rtt() < Duration::from_millis(30), "{:?}", load.rtt());
}

#[test]
fn round_robin_takes_turns_by_weight() {
    let b = Balancer::new(
        &[ep(1, 1, true), ep(2, 3, true)],
        Algorithm::RoundRobin,
        None,
        "test",
    );
    let mut seen = std::collections::HashMap::new();
    for _ in 0..400 {
        *seen.entry(b.pick().unwrap().addr.port()).or_insert(0) += 1;
    }
    assert_eq!((seen[&1], seen[&2]), (100, 300));
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let b = Balancer::new(
        &[ep(1, 1, true), ep(2, 1, true)],
        Algorithm::LeastRequest,
        None,
        "test",
    );
    // Hold requests on whichever endpoint is picked first; the next picks go to the other.
    let first = b.pick().unwrap();
    let held: Vec<_> = (0..5).map(|_| b.pick().unwrap()).collect();
    let other = held.iter().filter(|p| p.addr != first.addr).count();
    assert!(other >= 3, "{other} of 5 went to the idle endpoint");
}

#[test]
fn a_retry_avoids_the_endpoint_that_failed() {
    for algorithm in [
        Algorithm::P2cEwma,
        Algorithm::RoundRobin,
        Algorithm::LeastRequest,
    ] {
        let b = Balancer::new(
            &[ep(1, 1, true), ep(2, 1, true), ep(3, 1, true)],
            algorithm,
            None,
            "test",
        );
        let avoid = b.pick().unwrap().addr;
        for _ in 0..50 {
            assert_ne!(
                b.pick_avoiding(Some(avoid)).unwrap().addr,
                avoid,
                "{algorithm:?}"
            );
        }
    }
    // Alone, the endpoint is still picked.
    let b = Balancer::p2c(&[ep(1, 1, true)]);
    let only = b.pick().unwrap().addr;
    assert_eq!(b.pick_avoiding(Some(only)).unwrap().addr, only);
}
