use super::*;
use crate::retry::{DEFAULT_RETRY_ON, RetryPolicy};

fn policy(retry_on: &[RetryOn], codes: &[u16]) -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        per_try_timeout: None,
        retry_on: retry_on.to_vec(),
        retryable_status_codes: codes.to_vec(),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        budget_ratio: 0.2,
        budget_min_retries_per_second: 10,
        retry_non_idempotent: false,
    }
}

fn answered(status: u16, headers: &[(&str, &str)]) -> Exchange {
    let mut resp = Response::builder().status(status);
    for (k, v) in headers {
        resp = resp.header(*k, *v);
    }
    Exchange {
        result: Ok(resp.body(ResponseBody::local("")).unwrap()),
        metrics: None,
        upstream: None,
        retried: Vec::new(),
    }
}

fn failed(e: ProxyError) -> Exchange {
    Exchange::failed(e)
}

#[test]
fn the_default_conditions() {
    let p = policy(&DEFAULT_RETRY_ON, &[]);
    assert!(retryable(&p, &answered(503, &[]), false, false));
    assert!(!retryable(&p, &answered(502, &[]), false, false));
    assert!(!retryable(&p, &answered(500, &[]), false, false));
    assert!(!retryable(&p, &answered(200, &[]), false, false));
    let refused = ProxyError::new(Reason::UpstreamConnectRefused, "x");
    assert!(retryable(&p, &failed(refused), false, false));
    let reset = ProxyError::new(Reason::UpstreamReset, "x");
    assert!(
        !retryable(&p, &failed(reset), false, false),
        "a reset may have been processed"
    );
    let refused_stream = ProxyError::new(Reason::UpstreamReset, "x").unprocessed();
    assert!(retryable(&p, &failed(refused_stream), false, false));
    assert!(
        !retryable(&p, &answered(200, &[]), true, false),
        "per-try timeout not listed"
    );
}

#[test]
fn status_conditions_and_listed_codes() {
    let p = policy(&[RetryOn::GatewayError], &[409]);
    for code in [502, 503, 504, 409] {
        assert!(retryable(&p, &answered(code, &[]), false, false), "{code}");
    }
    assert!(!retryable(&p, &answered(500, &[]), false, false));
    let p = policy(&[RetryOn::ServerError], &[]);
    assert!(retryable(&p, &answered(500, &[]), false, false));
    // A proxy-made 502 (a reset) is a gateway error too.
    let p = policy(&[RetryOn::GatewayError], &[]);
    let reset = ProxyError::new(Reason::UpstreamReset, "x");
    assert!(retryable(&p, &failed(reset), false, false));
    // What no attempt can change is never retried.
    let p = policy(&[RetryOn::ServerError, RetryOn::GatewayError], &[]);
    for kind in [
        Reason::NoEndpoints,
        Reason::MalformedRequest,
        Reason::ForwardingLoop,
    ] {
        assert!(
            !retryable(&p, &failed(ProxyError::new(kind, "x")), false, false),
            "{kind}"
        );
    }
}

#[test]
fn grpc_status_in_a_trailers_only_head() {
    let p = policy(&[RetryOn::GrpcUnavailable], &[]);
    assert!(retryable(
        &p,
        &answered(200, &[("grpc-status", "14")]),
        false,
        false
    ));
    assert!(!retryable(
        &p,
        &answered(200, &[("grpc-status", "8")]),
        false,
        false
    ));
    let p = policy(&[RetryOn::GrpcResourceExhausted], &[]);
    assert!(retryable(
        &p,
        &answered(200, &[("grpc-status", "8")]),
        false,
        false
    ));
}

#[test]
fn a_proxys_grpc_answer_is_retried_on_its_reasons_status_and_its_grpc_status() {
    // The endpoint's inbound proxy answered a gRPC call itself: 200 on the wire, trailers-only.
    let relayed = |reason: Reason| {
        let mut e = answered(
            200,
            &[
                ("grpc-status", &reason.grpc_status().to_string()),
                ("shoal-proxy-error", reason.as_str()),
            ],
        );
        crate::http::stack::mark_trailers_only(e.result.as_mut().unwrap());
        assert_eq!(e.relayed(), Some(reason));
        e
    };
    // Retried as the 502 it stood for before, by the HTTP conditions...
    for on in [RetryOn::GatewayError, RetryOn::ServerError] {
        let p = policy(&[on], &[]);
        assert!(retryable(
            &p,
            &relayed(Reason::UpstreamConnectRefused),
            false,
            false
        ));
        assert!(!retryable(&p, &relayed(Reason::Unauthorized), false, false));
    }
    // ...and as the UNAVAILABLE it now is, by the gRPC one.
    let p = policy(&[RetryOn::GrpcUnavailable], &[]);
    assert!(retryable(
        &p,
        &relayed(Reason::UpstreamConnectRefused),
        false,
        false
    ));
    assert!(!retryable(&p, &relayed(Reason::Unauthorized), false, false));
    // This proxy's own failure to reach an endpoint is UNAVAILABLE to a gRPC call: retried by
    // the gRPC condition too, but only where a retry is safe (never processed).
    let refused = || failed(ProxyError::new(Reason::UpstreamConnectRefused, "x"));
    assert!(retryable(&p, &refused(), false, true));
    assert!(!retryable(&p, &refused(), false, false), "not a gRPC call");
    let reset = failed(ProxyError::new(Reason::UpstreamReset, "x"));
    assert!(
        !retryable(&p, &reset, false, true),
        "may have been processed"
    );
    let stream = failed(ProxyError::new(Reason::UpstreamReset, "x").unprocessed());
    assert!(retryable(&p, &stream, false, true));
    let overloaded = failed(ProxyError::new(Reason::BackendOverloaded, "x"));
    assert!(!retryable(&p, &overloaded, false, true), "never retried");
    // A gRPC app's own trailers-only answer is only its gRPC status.
    let p = policy(&[RetryOn::GatewayError], &[]);
    assert!(!retryable(
        &p,
        &answered(200, &[("grpc-status", "14")]),
        false,
        false
    ));
}

#[test]
fn waits_follow_backoff_retry_after_and_pushback() {
    let p = policy(&DEFAULT_RETRY_ON, &[]);
    let backoff = wait_before_retry(&p, 2, &answered(503, &[])).unwrap();
    assert!(backoff <= Duration::from_millis(20), "{backoff:?}");
    assert_eq!(
        wait_before_retry(&p, 1, &answered(503, &[("retry-after", "2")])),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        wait_before_retry(&p, 1, &answered(503, &[("retry-after", "60")])),
        None,
        "longer than the proxy waits"
    );
    assert_eq!(
        wait_before_retry(&p, 1, &answered(200, &[("grpc-retry-pushback-ms", "150")])),
        Some(Duration::from_millis(150))
    );
    assert_eq!(
        wait_before_retry(&p, 1, &answered(200, &[("grpc-retry-pushback-ms", "-1")])),
        None,
        "a negative pushback means do not retry"
    );
}

#[test]
fn grpc_timeouts_parse_and_print() {
    assert_eq!(
        parse_grpc_timeout(b"100m"),
        Some(Duration::from_millis(100))
    );
    assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
    assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_grpc_timeout(b"123456789m"), None, "9 digits");
    assert_eq!(parse_grpc_timeout(b"m"), None);
    assert_eq!(parse_grpc_timeout(b"10x"), None);
    assert_eq!(grpc_timeout_value(Duration::from_millis(1500)), "1500000u");
    assert_eq!(grpc_timeout_value(Duration::from_secs(1000)), "1000000m");
    let v = grpc_timeout_value(Duration::from_millis(250));
    assert_eq!(
        parse_grpc_timeout(v.as_bytes()),
        Some(Duration::from_millis(250))
    );
}

#[test]
fn an_apps_grpc_status_is_retried_by_the_grpc_conditions_only() {
    // The app's own trailers-only UNAVAILABLE: it stands for 503 (metrics, breakers, outlier
    // detection), but the HTTP conditions look at HTTP statuses, and this one is 200.
    let mut e = answered(200, &[("grpc-status", "14")]);
    crate::http::stack::mark_trailers_only(e.result.as_mut().unwrap());
    assert_eq!(e.answer_status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.relayed(), None);
    for on in [
        RetryOn::ServerError,
        RetryOn::GatewayError,
        RetryOn::ServiceUnavailable,
    ] {
        assert!(!retryable(&policy(&[on], &[]), &e, false, true), "{on:?}");
    }
    assert!(!retryable(&policy(&[], &[503]), &e, false, true));
    assert!(retryable(
        &policy(&[RetryOn::GrpcUnavailable], &[]),
        &e,
        false,
        true
    ));
}
