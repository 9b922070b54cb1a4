use super::*;

fn at(b: &Budget, secs: f64) -> Instant {
    b.epoch() + Duration::from_secs_f64(secs)
}

#[test]
fn retries_are_a_share_of_requests() {
    let b = Budget::new(0.2, 0);
    for _ in 0..100 {
        b.deposit(at(&b, 0.5));
    }
    let allowed = (0..100).filter(|_| b.withdraw(at(&b, 0.6))).count();
    assert_eq!(allowed, 20);
    assert_eq!(b.available(at(&b, 0.7)), 0);
}

#[test]
fn the_minimum_allows_retries_without_traffic() {
    let b = Budget::new(0.2, 3);
    let allowed = (0..100).filter(|_| b.withdraw(at(&b, 0.1))).count();
    assert_eq!(allowed, 30, "3 per second over the 10 s window");
}

#[test]
fn old_requests_and_retries_leave_the_window() {
    let b = Budget::new(0.5, 0);
    for _ in 0..10 {
        b.deposit(at(&b, 1.0));
    }
    assert_eq!(b.available(at(&b, 5.0)), 5);
    assert!(b.withdraw(at(&b, 5.0)));
    assert_eq!(b.available(at(&b, 5.0)), 4);
    // Ten seconds on, the deposits have left the window; the retry (at 5 s) has not.
    assert_eq!(b.available(at(&b, 11.5)), 0);
    for _ in 0..4 {
        b.deposit(at(&b, 12.0));
    }
    assert_eq!(b.available(at(&b, 12.0)), 1);
    // Now the retry has left too.
    assert_eq!(b.available(at(&b, 16.0)), 2);
}

#[test]
fn backoff_grows_within_its_bounds() {
    let policy = RetryPolicy {
        attempts: 5,
        per_try_timeout: None,
        retry_on: DEFAULT_RETRY_ON.to_vec(),
        retryable_status_codes: vec![],
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        budget_ratio: DEFAULT_BUDGET_RATIO,
        budget_min_retries_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
        retry_non_idempotent: false,
    };
    for n in 1..8 {
        let window = Duration::from_millis((10u64 << (n - 1)).min(50));
        for _ in 0..50 {
            assert!(policy.backoff(n) <= window, "retry {n}");
        }
    }
}
