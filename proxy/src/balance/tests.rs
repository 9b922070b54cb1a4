use super::*;

fn ep(port: u16, weight: u32, ready: bool) -> Endpoint {
    Endpoint {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        weight,
        ready,
        identity: None,
        zone: String::new(),
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

fn success_rate_config(max_ejection_percent: f64) -> OutlierConfig {
    OutlierConfig {
        consecutive_failures: None,
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent,
        success_rate: Some(SuccessRateConfig {
            interval: Duration::from_secs(3600),
            minimum_hosts: 5,
            request_volume: 10,
            stdev_factor: 0.5,
        }),
        service: "app.default".into(),
    }
}

/// Sends `n` requests round robin, failing those to the ports in `failing` every `every` turns.
fn exchange(b: &Balancer, n: usize, failing: &[(u16, usize)]) {
    for k in 0..n {
        let p = b.pick().unwrap();
        let fails = failing
            .iter()
            .any(|&(port, every)| p.addr.port() == port && k % every == 0);
        b.report(&p, fails);
    }
}

#[tokio::test]
async fn success_rate_ejects_the_worst_outliers_within_the_cap() {
    let endpoints: Vec<_> = (1..=5).map(|port| ep(port, 1, true)).collect();
    let b = Balancer::new(
        &endpoints,
        Algorithm::RoundRobin,
        Some(success_rate_config(20.0)),
    );
    b.start(None, "app.default", None);
    // 100 requests round robin, 20 each: port 1 gets requests 0, 5, 10, … and fails the even
    // ones (rate 0.5); port 2 gets 1, 6, 11, … and fails the multiples of 3 (7 of 20: 0.65).
    exchange(&b, 100, &[(1, 2), (2, 3)]);
    b.evaluation.get().unwrap().evaluate();
    let ejected: Vec<bool> = b
        .ready
        .iter()
        .map(|r| r.load().health.is_ejected())
        .collect();
    // 20 % of five: one — the worst (port 1 at 0.5 is below port 2's rate).
    assert_eq!(ejected, [true, false, false, false, false]);
    let rates: Vec<_> = b
        .ready
        .iter()
        .map(|r| r.load().health.success_rate())
        .collect();
    assert!(rates[2..].iter().all(|r| *r == Some(1.0)), "{rates:?}");
    // The next interval: the ejected endpoint takes no part; four left are below the minimum.
    exchange(&b, 100, &[(2, 3)]);
    b.evaluation.get().unwrap().evaluate();
    assert!(!b.ready[1].load().health.is_ejected());
    assert_eq!(b.ready[0].load().health.success_rate(), None);
}

#[tokio::test]
async fn the_evaluation_survives_an_update_with_the_same_settings() {
    let endpoints: Vec<_> = (1..=5).map(|port| ep(port, 1, true)).collect();
    let config = Some(success_rate_config(20.0));
    let old = Balancer::new(&endpoints, Algorithm::RoundRobin, config.clone());
    old.start(None, "app.default", None);
    exchange(&old, 100, &[(1, 2)]);
    let mut more = endpoints.clone();
    more.push(ep(6, 1, true));
    let new = Balancer::new(&more, Algorithm::RoundRobin, config);
    new.inherit(&old);
    new.start(None, "app.default", None);
    let evaluation = new.evaluation.get().unwrap();
    assert!(Arc::ptr_eq(evaluation, old.evaluation.get().unwrap()));
    // The counts of the old snapshot's requests are judged with the new snapshot's endpoints.
    evaluation.evaluate();
    assert!(new.ready[0].load().health.is_ejected());
    let changed = Balancer::new(
        &more,
        Algorithm::RoundRobin,
        Some(success_rate_config(50.0)),
    );
    changed.inherit(&new);
    changed.start(None, "app.default", None);
    assert!(!Arc::ptr_eq(changed.evaluation.get().unwrap(), evaluation));
}

#[test]
fn slow_start_is_a_load_penalty_for_p2c_and_least_request() {
    for algorithm in [Algorithm::P2cEwma, Algorithm::LeastRequest] {
        let b = Balancer::new(&[ep(1, 1, true), ep(2, 1, true)], algorithm, None)
            .with_slow_start(Some(Duration::from_secs(60)));
        let warming = b.ready[1].load();
        warming.warmup.begin(warming.now_ns());
        // Requests held in flight: the warming endpoint (a tenth of its weight) costs as much as
        // the warm one only with a tenth of its requests in flight.
        let held: Vec<_> = (0..110).map(|_| b.pick().unwrap()).collect();
        let to_warming = held.iter().filter(|p| p.addr.port() == 2).count();
        assert!(
            (8..=12).contains(&to_warming),
            "{algorithm:?}: {to_warming} of 110"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_readmitted_endpoint_warms_up_again() {
    let outlier = OutlierConfig {
        consecutive_failures: Some(1),
        base_ejection_time: Duration::from_secs(1),
        max_ejection_percent: 50.0,
        success_rate: None,
        service: "app.default".into(),
    };
    let window = Duration::from_secs(10);
    let b = Balancer::new(
        &[ep(1, 1, true), ep(2, 1, true)],
        Algorithm::RoundRobin,
        Some(outlier),
    )
    .with_slow_start(Some(window));
    let first = b.pick().unwrap();
    assert_eq!(first.addr.port(), 1);
    b.report(&first, true);
    let load = b.ready[0].load().clone();
    assert!(load.health.is_ejected());
    tokio::time::advance(Duration::from_secs(2)).await;
    // The ejection time passed: its probe succeeds and readmits it at a small share.
    let probe = (0..4)
        .map(|_| b.pick().unwrap())
        .find(|p| p.probe)
        .expect("a probe");
    b.report(&probe, false);
    assert!(!load.health.is_ejected());
    assert_eq!(load.warmup.share(load.now_ns(), window), 0.1);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(load.warmup.share(load.now_ns(), window), 0.5);
}

/// Health check settings for tests: one failure takes an endpoint out.
fn health_check_config() -> HealthCheckConfig {
    HealthCheckConfig {
        kind: ProbeKind::Grpc {
            service: String::new(),
        },
        interval: DEFAULT_HC_INTERVAL,
        timeout: DEFAULT_HC_TIMEOUT,
        healthy_threshold: 1,
        unhealthy_threshold: 1,
    }
}

#[test]
fn unhealthy_endpoints_leave_the_pick_set_but_one_is_always_kept() {
    for algorithm in [
        Algorithm::P2cEwma,
        Algorithm::RoundRobin,
        Algorithm::LeastRequest,
    ] {
        let b = Balancer::new(
            &[ep(1, 1, true), ep(2, 1, true), ep(3, 1, true)],
            algorithm,
            None,
        )
        .with_health_check(Some(health_check_config()));
        let config = health_check_config();
        b.ready[0].load().checked.record(false, &config);
        b.ready[1].load().checked.record(false, &config);
        for _ in 0..50 {
            assert_eq!(b.pick().unwrap().addr.port(), 3, "{algorithm:?}");
        }
        // All unhealthy: panic mode, balancing ignores health (P2C by cost: not necessarily all).
        b.ready[2].load().checked.record(false, &config);
        let ports: std::collections::HashSet<u16> =
            (0..100).map(|_| b.pick().unwrap().addr.port()).collect();
        assert!(ports.len() >= 2, "{algorithm:?}: {ports:?}");
        // Back after passing.
        b.ready[0].load().checked.record(true, &config);
        for _ in 0..50 {
            assert_eq!(b.pick().unwrap().addr.port(), 1, "{algorithm:?}");
        }
    }
}

#[test]
fn health_checks_carry_over_updates_that_keep_their_settings() {
    let new = || {
        Balancer::new(&[ep(1, 1, true), ep(2, 1, true)], Algorithm::P2cEwma, None)
            .with_health_check(Some(health_check_config()))
    };
    let old = new();
    old.ready[0]
        .load()
        .checked
        .record(false, &health_check_config());
    let next = new();
    next.inherit(&old);
    assert!(
        next.ready[0].load().checked.is_unhealthy(),
        "the verdict stays"
    );
    for _ in 0..20 {
        assert_eq!(next.pick().unwrap().addr.port(), 2);
    }
}
