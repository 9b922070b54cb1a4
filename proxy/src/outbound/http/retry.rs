//! The retry stage: a route rule's retry policy (`crate::retry`). Each attempt re-enters the
//! balancer, which avoids the endpoint the previous attempt failed on; attempts are spaced by
//! exponential backoff with full jitter (or the upstream's `Retry-After` / gRPC pushback), never
//! start when the request's deadline would pass first, and only while the rule's budget allows and
//! the backend policy's `limits.max_concurrent_retries` is not reached, so retries cannot multiply
//! load during an outage.
//!
//! What is retried: the policy's conditions (connect failure, refused stream, reset, 5xx, gateway
//! errors, listed statuses, gRPC UNAVAILABLE / RESOURCE_EXHAUSTED, the per-try timeout), for
//! idempotent methods (and gRPC calls on gRPC conditions) unless the rule opts in to the others;
//! never an upgrade; a request body only while it fits the replay buffer (`http::replay`).
//!
//! A rule without a policy costs one branch.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::time::Instant;

use super::split::Backend;
use crate::errors::{ProxyError, Reason};
use crate::http::body::{RequestBody, ResponseBody};
use crate::http::headers::copy_head;
use crate::http::replay::Replay;
use crate::http::stack::{Exchange, FailedAttempt, Req, Service, stage};
use crate::retry::{Retry as Policy, RetryOn};

/// Upstream: which attempt a retry is (2 for the first retry); absent on a first attempt, which
/// saves every request a header insert.
static ATTEMPT: HeaderName = HeaderName::from_static("shoal-attempt");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The longest `Retry-After` the proxy waits for; a longer one ends the retries.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

stage! {
    /// The stage.
    pub(super) Retry, RetryLayer
}

impl<'c, S> Service<Req<'c, Backend>> for Retry<S>
where
    S: Service<Req<'c, Backend>> + Sync,
{
    async fn call(&self, req: Req<'c, Backend>) -> Exchange {
        let Some(policy) = req.target.retry.clone() else {
            return self.0.call(req).await;
        };
        policy.budget.deposit(Instant::now());
        if req.upgrade || !may_retry(&req.http, req.grpc, &policy) {
            return self.0.call(req).await;
        }
        // Boxed: only rules with a policy pay for the retry loop's state.
        let mut retried = Vec::new();
        let mut exchange = Box::pin(attempts(&self.0, req, policy, &mut retried)).await;
        exchange.retried = retried;
        exchange
    }
}

/// Whether the request's method allows a retry under `policy`: idempotent methods (RFC 9110
/// §9.2.2), gRPC calls when the policy names a gRPC condition, anything when the rule opts in.
fn may_retry(req: &Request<RequestBody>, grpc: bool, policy: &Policy) -> bool {
    let p = &policy.policy;
    p.retry_non_idempotent
        || matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        )
        || (grpc
            && (p.retries_on(RetryOn::GrpcUnavailable)
                || p.retries_on(RetryOn::GrpcResourceExhausted)))
}

/// Sends the request until an attempt succeeds, fails in a way the policy does not retry, or a
/// limit (attempts, budget, deadline, body) stops it; returns the last attempt's exchange, and
/// the attempts it retried in `retried`.
async fn attempts<'c, S>(
    inner: &S,
    req: Req<'c, Backend>,
    policy: Arc<Policy>,
    retried: &mut Vec<FailedAttempt>,
) -> Exchange
where
    S: Service<Req<'c, Backend>> + Sync,
{
    let p = &policy.policy;
    let Req {
        conn,
        http,
        start,
        upgrade,
        deadline,
        grpc,
        target,
    } = req;
    let (parts, body) = http.into_parts();
    let head = Request::from_parts(parts, ());
    // A request without a body (most) needs no replay buffer: every attempt is empty.
    let replay = (!body.is_end_stream()).then(|| Replay::new(body));
    // The caller's own deadline counts too: no attempt starts that cannot end before it.
    let grpc_deadline = head
        .headers()
        .get(&GRPC_TIMEOUT)
        .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        .map(|t| start + t);
    let deadline = [deadline, grpc_deadline].into_iter().flatten().min();
    let mut avoid = None;
    let mut n = 1;
    // The backend policy's `max_concurrent_retries`: held from the retry's decision until its
    // exchange ends (the next decision, or the return).
    let mut _retry_slot = None;
    loop {
        let body = match &replay {
            None => RequestBody::Empty,
            Some(r) => match r.attempt() {
                Some(body) => RequestBody::Replay(body),
                None => unreachable!("checked replayable before every retry"),
            },
        };
        let mut attempt = copy_head(&head).map(|()| body);
        if n > 1 {
            attempt
                .headers_mut()
                .insert(ATTEMPT.clone(), attempt_value(n));
        }
        let now = Instant::now();
        if let (Some(d), true) = (grpc_deadline, n > 1) {
            // The upstream learns how long is left, not how long the caller first allowed.
            let left = d.saturating_duration_since(now);
            attempt
                .headers_mut()
                .insert(GRPC_TIMEOUT.clone(), grpc_timeout_value(left));
        }
        let per_try = p
            .per_try_timeout
            .map(|t| deadline.map_or(t, |d| t.min(d.saturating_duration_since(now))));
        let call = inner.call(Req {
            conn,
            http: attempt,
            start,
            upgrade,
            deadline,
            grpc,
            target: Backend {
                service: target.service.clone(),
                metrics: target.metrics.clone(),
                timeout: target.timeout,
                faulty: None,
                retry: None,
                avoid,
            },
        });
        let (exchange, timed_out) = match per_try {
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(e) => (e, false),
                Err(_) => (per_try_timed_out(&target, limit, n, p.attempts), true),
            },
            None => (call.await, false),
        };
        if !retryable(p, &exchange, timed_out, grpc) {
            if n > 1 && exchange.result.is_ok() && !exchange.answer_status().is_server_error() {
                policy.metrics.recovered.increment(1);
            }
            return exchange;
        }
        if n >= p.attempts {
            return exchange;
        }
        if replay.as_ref().is_some_and(|r| !r.replayable()) {
            policy.metrics.body_too_large.increment(1);
            return exchange;
        }
        let Some(wait) = wait_before_retry(p, n, &exchange) else {
            return exchange;
        };
        let now = Instant::now();
        if deadline.is_some_and(|d| now + wait >= d) {
            policy.metrics.deadline.increment(1);
            return exchange;
        }
        // Released before asking for the next one: this retry's exchange is over.
        _retry_slot = None;
        let Ok(slot) = target.service.backend.retry_slot() else {
            policy.metrics.concurrent_retries.increment(1);
            return exchange;
        };
        if !policy.budget.withdraw(now) {
            policy.metrics.budget_exhausted.increment(1);
            return exchange;
        }
        _retry_slot = Some(slot);
        avoid = exchange.upstream;
        retried.push(FailedAttempt::of(&exchange));
        // The failed attempt's response is dropped here (its connection with it, if its body was
        // still coming) before the wait.
        drop(exchange);
        policy.metrics.retries.increment(1);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        n += 1;
    }
}

/// The `shoal-attempt` value of attempt `n` (static for every allowed count: no allocation).
fn attempt_value(n: u32) -> HeaderValue {
    const VALUES: [&str; 10] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    VALUES
        .get(n as usize - 1)
        .map_or_else(|| HeaderValue::from(n), |v| HeaderValue::from_static(v))
}

/// The error of an attempt cut by its per-try timeout.
fn per_try_timed_out(target: &Backend, limit: Duration, n: u32, of: u32) -> Exchange {
    Exchange::failed(ProxyError::new(
        Reason::ResponseTimeout,
        format!(
            "no response head from service {} within the retry policy's per_try_timeout ({limit:?}; attempt {n} of {of})",
            target.service.qualified_name()
        ),
    ))
}

/// Whether the attempt failed in a way the policy retries (`grpc`: the request is a gRPC call).
fn retryable(
    p: &crate::retry::RetryPolicy,
    exchange: &Exchange,
    timed_out: bool,
    grpc: bool,
) -> bool {
    if timed_out {
        return p.retries_on(RetryOn::PerTryTimeout);
    }
    match &exchange.result {
        // The HTTP conditions look at HTTP statuses — a Shoal proxy's gRPC answer at its reason's,
        // as when those answers were HTTP errors — and an app's gRPC status only at the gRPC ones.
        Ok(resp) => retryable_response(
            p,
            resp,
            exchange.relayed().map_or(resp.status(), Reason::status),
        ),
        Err(e) => retryable_error(p, e, grpc),
    }
}

/// `status` is the response's HTTP status, for a Shoal proxy's gRPC answer (HTTP 200) its reason's
/// as it was when that answer was an HTTP error; a gRPC answer is retried on its gRPC status too.
fn retryable_response(
    p: &crate::retry::RetryPolicy,
    resp: &Response<ResponseBody>,
    status: StatusCode,
) -> bool {
    let code = status.as_u16();
    if p.retryable_status_codes.contains(&code)
        || (status.is_server_error() && p.retries_on(RetryOn::ServerError))
        || (matches!(code, 502..=504) && p.retries_on(RetryOn::GatewayError))
        || (status == StatusCode::SERVICE_UNAVAILABLE && p.retries_on(RetryOn::ServiceUnavailable))
    {
        return true;
    }
    // gRPC reports failures in trailers; a call that failed at once sends them as its head
    // (trailers-only), which is all that can be seen before the response goes to the client.
    match resp
        .headers()
        .get(&crate::http::stack::GRPC_STATUS)
        .map(|v| v.as_bytes())
    {
        Some(b"14") => p.retries_on(RetryOn::GrpcUnavailable),
        Some(b"8") => p.retries_on(RetryOn::GrpcResourceExhausted),
        _ => false,
    }
}

/// A gRPC call is answered UNAVAILABLE for a failure to reach the endpoint, so `grpc_unavailable`
/// retries those too (connect failures, a refused stream: never processed, safe to send again).
fn retryable_error(p: &crate::retry::RetryPolicy, e: &ProxyError, grpc: bool) -> bool {
    let on = |c| p.retries_on(c);
    let unavailable = grpc && on(RetryOn::GrpcUnavailable);
    let condition = match e.kind {
        Reason::UpstreamConnectRefused
        | Reason::UpstreamConnectTimeout
        | Reason::UpstreamConnectError
        | Reason::UpstreamTlsHandshake => on(RetryOn::ConnectFailure) || unavailable,
        Reason::UpstreamReset if e.unprocessed => {
            on(RetryOn::RefusedStream) || on(RetryOn::Reset) || unavailable
        }
        Reason::UpstreamReset => on(RetryOn::Reset),
        Reason::UpstreamMalformedResponse => false,
        // Nothing another attempt could change: the request, the configuration, the proxy.
        _ => return false,
    };
    let status = e.kind.status();
    condition
        || p.retryable_status_codes.contains(&status.as_u16())
        || (status.is_server_error() && on(RetryOn::ServerError))
        || (matches!(status.as_u16(), 502..=504) && on(RetryOn::GatewayError))
        || (status == StatusCode::SERVICE_UNAVAILABLE && on(RetryOn::ServiceUnavailable))
}

/// How long to wait before retry number `n`: the backoff, or longer when the upstream asked
/// (`Retry-After` in seconds, `grpc-retry-pushback-ms`); `None` when the upstream asked not to
/// retry (a negative or malformed pushback) or to wait longer than [`MAX_RETRY_AFTER`].
fn wait_before_retry(
    p: &crate::retry::RetryPolicy,
    n: u32,
    exchange: &Exchange,
) -> Option<Duration> {
    let backoff = p.backoff(n);
    let Ok(resp) = &exchange.result else {
        return Some(backoff);
    };
    let headers = resp.headers();
    if let Some(v) = headers.get(&GRPC_PUSHBACK) {
        // gRPC's A6: a pushback that is not a non-negative integer means "do not retry".
        let ms: u64 = std::str::from_utf8(v.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        return Some(Duration::from_millis(ms)).filter(|d| *d <= MAX_RETRY_AFTER);
    }
    match headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>())
    {
        Some(Ok(secs)) => {
            let asked = Duration::from_secs(secs);
            (asked <= MAX_RETRY_AFTER).then_some(asked.max(backoff))
        }
        // An HTTP date or a malformed value: the backoff.
        Some(Err(_)) | None => Some(backoff),
    }
}

/// A `grpc-timeout` value (an integer of at most 8 digits and a unit, gRPC's HTTP/2 protocol).
fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `left` as a `grpc-timeout` value, in the finest unit that fits 8 digits.
fn grpc_timeout_value(left: Duration) -> HeaderValue {
    let micros = left.as_micros();
    let text = if micros < 100_000_000 {
        format!("{micros}u")
    } else {
        format!("{}m", left.as_millis().min(99_999_999))
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("1m"))
}

#[cfg(test)]
mod tests;
