use super::*;

fn config(force: BreakerOverride) -> BreakerConfig {
    BreakerConfig {
        failure_ratio_threshold: Some(0.5),
        min_requests: 4,
        window: Duration::from_secs(10),
        open_duration: Duration::from_secs(5),
        half_open_max_requests: 1,
        force,
    }
}

fn at(b: &Breaker, secs: f64) -> Instant {
    b.epoch + Duration::from_secs_f64(secs)
}

#[test]
fn opens_at_the_failure_ratio_then_probes_then_closes() {
    let b = Breaker::new(config(BreakerOverride::None), "test");
    // Under min_requests nothing opens, whatever the ratio.
    for _ in 0..3 {
        assert_eq!(b.admit(at(&b, 0.1), b.config.force), Admission::Counted);
        b.record(Admission::Counted, true, at(&b, 0.1));
    }
    assert_eq!(b.state_name(b.config.force), "closed");
    b.record(Admission::Counted, false, at(&b, 0.2));
    assert_eq!(
        b.state_name(b.config.force),
        "closed",
        "3 of 4 failed, but the last succeeded"
    );
    b.record(Admission::Counted, true, at(&b, 0.3));
    assert_eq!(b.state_name(b.config.force), "open", "4 of 5 failed");
    assert_eq!(b.admit(at(&b, 1.0), b.config.force), Admission::Refused);
    assert_eq!(
        b.admit(at(&b, 5.4), b.config.force),
        Admission::Probe,
        "half-open after 5 s"
    );
    assert_eq!(
        b.admit(at(&b, 5.4), b.config.force),
        Admission::Refused,
        "one probe at a time"
    );
    b.record(Admission::Probe, false, at(&b, 5.5));
    assert_eq!(b.state_name(b.config.force), "closed");
    assert_eq!(b.admit(at(&b, 5.6), b.config.force), Admission::Counted);
}

#[test]
fn a_failed_probe_opens_it_again() {
    let b = Breaker::new(config(BreakerOverride::None), "test");
    for _ in 0..4 {
        b.record(Admission::Counted, true, at(&b, 0.1));
    }
    assert_eq!(b.state_name(b.config.force), "open");
    assert_eq!(b.admit(at(&b, 6.0), b.config.force), Admission::Probe);
    b.record(Admission::Probe, true, at(&b, 6.1));
    assert_eq!(b.state_name(b.config.force), "open");
    assert_eq!(
        b.admit(at(&b, 8.0), b.config.force),
        Admission::Refused,
        "open for another 5 s"
    );
    assert_eq!(b.admit(at(&b, 11.2), b.config.force), Admission::Probe);
}

#[test]
fn old_failures_leave_the_window() {
    let b = Breaker::new(config(BreakerOverride::None), "test");
    for _ in 0..3 {
        b.record(Admission::Counted, true, at(&b, 0.5));
    }
    // 11 s later those are gone: one more failure is 1 of 1, under min_requests.
    b.record(Admission::Counted, true, at(&b, 11.5));
    assert_eq!(b.state_name(b.config.force), "closed");
}

#[test]
fn overrides_win() {
    let b = Breaker::new(config(BreakerOverride::ForceOpen), "test");
    assert_eq!(b.admit(at(&b, 0.0), b.config.force), Admission::Refused);
    assert_eq!(b.state_name(b.config.force), "forced_open");
    let b = Breaker::new(config(BreakerOverride::ForceClosed), "test");
    for _ in 0..10 {
        assert_eq!(b.admit(at(&b, 0.0), b.config.force), Admission::Uncounted);
        b.record(Admission::Uncounted, true, at(&b, 0.0));
    }
    assert_eq!(b.state_name(b.config.force), "forced_closed");
}
