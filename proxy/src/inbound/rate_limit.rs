//! Local rate limiting at the inbound proxy (`RateLimit`, or `rate_limits` in the state file): a
//! token bucket refilled at `requests_per_unit` per unit and holding up to `burst` tokens, one for
//! all callers (`global`) or one per caller (`per_client`: per mesh identity, or per source IP for a
//! caller without one). A request finding its bucket empty is answered 429 `rate-limited` with
//! `Retry-After` (a gRPC call gets RESOURCE_EXHAUSTED), never reaching the app.
//!
//! A limit may count only some requests (`matches`, a route rule's conditions: per route), and
//! give some callers a rate of their own (`overrides`, by SPIFFE id: their own bucket). With
//! `side: outbound` the *calling* proxies keep the bucket, each for its own requests to the
//! service (`outbound::http::rate_limit`), instead of the service's proxies.
//!
//! Each proxy enforces its own buckets, so N instances admit up to N times the limit. The buckets
//! outlive state snapshots while the limit's settings stay ([`Limiter::inherit`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::errors::{ProxyError, Reason};
use crate::state::Match;
use crate::state::spec::{MatchSpec, build_match};
use crate::sync::lock;

/// The most per-client buckets kept; beyond it, full (idle) buckets are dropped first.
const MAX_CLIENTS: usize = 10_000;

/// Who shares a bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Scope {
    /// One bucket for every caller.
    #[default]
    Global,
    /// One bucket per caller identity (or source IP).
    PerClient,
}

/// A rate limit as written (the state file; discovery converts into it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitSpec {
    /// The protected service (`name` or `name.namespace`): this proxy's own.
    pub(crate) service: String,
    /// Sustained rate: requests per `unit`; 0 disables the limit (as on the wire).
    pub(crate) requests_per_unit: u64,
    #[serde(default)]
    pub(crate) unit: Unit,
    /// Requests allowed in a burst; default `requests_per_unit`.
    #[serde(default)]
    pub(crate) burst: Option<u64>,
    #[serde(default)]
    pub(crate) scope: Scope,
    /// Which requests count (a route rule's matches); empty: every request.
    #[serde(default)]
    pub(crate) matches: Vec<MatchSpec>,
    /// Callers with a rate of their own (inbound limits only).
    #[serde(default)]
    pub(crate) overrides: Vec<OverrideSpec>,
    #[serde(default)]
    pub(crate) side: Side,
}

/// A caller's own rate, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverrideSpec {
    /// The caller's SPIFFE id.
    pub(crate) identity: String,
    /// Its rate per the limit's unit; 0: not limited.
    pub(crate) requests_per_unit: u64,
    /// Its bucket size; default its `requests_per_unit`.
    #[serde(default)]
    pub(crate) burst: Option<u64>,
}

/// Which proxies enforce a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Side {
    /// The service's own proxies.
    #[default]
    Inbound,
    /// Each calling proxy, for its own requests to the service.
    Outbound,
}

/// A caller's own rate, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Override {
    pub(crate) identity: String,
    pub(crate) requests_per_unit: u64,
    pub(crate) burst: u64,
}

/// The time unit of a rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Unit {
    #[default]
    Second,
    Minute,
    Hour,
}

impl Unit {
    fn duration(self) -> Duration {
        match self {
            Unit::Second => Duration::from_secs(1),
            Unit::Minute => Duration::from_secs(60),
            Unit::Hour => Duration::from_secs(3600),
        }
    }
}

/// A checked rate limit (what `/config` shows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RateLimit {
    pub(crate) service: String,
    pub(crate) requests_per_unit: u64,
    pub(crate) unit: Unit,
    pub(crate) burst: u64,
    pub(crate) scope: Scope,
    pub(crate) side: Side,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) overrides: Vec<Override>,
}

impl RateLimitSpec {
    /// Checks the limit; errors name the field under `at`. `None`: a limit of 0, disabled.
    pub(crate) fn resolve(&self, at: &str) -> Result<Option<RateLimit>, String> {
        if self.burst == Some(0) {
            return Err(format!("{at}.burst: must be positive when set"));
        }
        let service = if self.service.contains('.') {
            self.service.clone()
        } else {
            format!("{}.default", self.service)
        };
        if self.side == Side::Outbound && self.scope == Scope::PerClient {
            return Err(format!(
                "{at}.scope: an outbound limit is kept by each caller for its own requests: global only"
            ));
        }
        if self.side == Side::Outbound && !self.overrides.is_empty() {
            return Err(format!("{at}.overrides: inbound limits only"));
        }
        let mut overrides: Vec<Override> = Vec::with_capacity(self.overrides.len());
        for (i, o) in self.overrides.iter().enumerate() {
            if crate::tls::SpiffeId::parse(&o.identity).is_err() {
                return Err(format!(
                    "{at}.overrides[{i}].identity: `{}` is not a SPIFFE id",
                    o.identity
                ));
            }
            if overrides.iter().any(|p| p.identity == o.identity) {
                return Err(format!(
                    "{at}.overrides[{i}].identity: `{}` has two overrides",
                    o.identity
                ));
            }
            if o.burst == Some(0) {
                return Err(format!(
                    "{at}.overrides[{i}].burst: must be positive when set"
                ));
            }
            overrides.push(Override {
                identity: o.identity.clone(),
                requests_per_unit: o.requests_per_unit,
                burst: o.burst.unwrap_or(o.requests_per_unit),
            });
        }
        if self.requests_per_unit == 0 {
            return Ok(None);
        }
        Ok(Some(RateLimit {
            service,
            requests_per_unit: self.requests_per_unit,
            unit: self.unit,
            burst: self.burst.unwrap_or(self.requests_per_unit),
            scope: self.scope,
            side: self.side,
            overrides,
        }))
    }

    /// The limit's compiled `matches`; errors name the field under `at`.
    pub(crate) fn matches(&self, at: &str) -> Result<Vec<Match>, String> {
        (self.matches.iter().enumerate())
            .map(|(i, m)| build_match(m.clone(), &format!("{at}.matches[{i}]")))
            .collect()
    }
}

/// The answer to a request over a limit (either side): 429 `rate-limited` with `Retry-After`, or
/// RESOURCE_EXHAUSTED for a gRPC call (the reason's gRPC status, `http::respond`).
pub(crate) fn refusal(message: String, wait: Duration) -> ProxyError {
    let mut err = ProxyError::new(Reason::RateLimited, message);
    err.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
    err
}

/// One bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A rate limit with its buckets.
#[derive(Debug, Serialize)]
pub(crate) struct Limiter {
    #[serde(flatten)]
    pub(crate) limit: RateLimit,
    /// The requests the limit counts; empty: every request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matches: Vec<Match>,
    #[serde(skip)]
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl Limiter {
    /// Full buckets for `limit`, counting the requests `matches` selects (empty: every request).
    pub(crate) fn new(limit: RateLimit, matches: Vec<Match>) -> Self {
        Self {
            limit,
            matches,
            buckets: Arc::default(),
        }
    }

    /// Takes over `previous`'s buckets when the limit is the same.
    pub(crate) fn inherit(&mut self, previous: &Limiter) {
        if previous.limit == self.limit {
            self.buckets = previous.buckets.clone();
        }
    }

    /// Whether the limit counts this request (its `matches`).
    pub(crate) fn counts<B>(&self, req: &http::Request<B>) -> bool {
        self.matches.is_empty()
            || (self.matches.iter())
                .any(|m| m.matches(req.method(), req.uri().path(), req.headers()))
    }

    /// Takes a token for a request from `client` (its identity or address, asked only for a
    /// per-client limit); `Err` with how long until a token is back when the bucket is empty.
    /// A bucket that exists is found without allocating.
    /// A caller with an override (by its proven `identity`) takes from its own bucket, keyed by
    /// that identity (which then never keys a per-client bucket of the limit's rate).
    pub(crate) fn admit<'k>(
        &self,
        identity: Option<&str>,
        client: impl FnOnce() -> Cow<'k, str>,
        now: Instant,
    ) -> Result<(), Duration> {
        let own = identity.and_then(|id| self.limit.overrides.iter().find(|o| o.identity == id));
        let (key, per_unit, burst) = match own {
            Some(o) if o.requests_per_unit == 0 => return Ok(()),
            Some(o) => (
                Cow::Borrowed(o.identity.as_str()),
                o.requests_per_unit,
                o.burst,
            ),
            None => {
                let key = match self.limit.scope {
                    Scope::Global => Cow::Borrowed(""),
                    Scope::PerClient => client(),
                };
                (key, self.limit.requests_per_unit, self.limit.burst)
            }
        };
        let key = key.as_ref();
        let capacity = burst as f64;
        let rate = per_unit as f64 / self.limit.unit.duration().as_secs_f64();
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(key) {
            if buckets.len() >= MAX_CLIENTS {
                // Full buckets are those of callers that have been quiet: forgetting them loses
                // nothing.
                buckets.retain(|_, b| {
                    b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < capacity
                });
            }
            buckets.insert(
                key.to_string(),
                Bucket {
                    tokens: capacity,
                    at: now,
                },
            );
        }
        let Some(bucket) = buckets.get_mut(key) else {
            unreachable!("inserted above");
        };
        let refilled = (bucket.tokens
            + now.saturating_duration_since(bucket.at).as_secs_f64() * rate)
            .min(capacity);
        bucket.at = now;
        if refilled >= 1.0 {
            bucket.tokens = refilled - 1.0;
            Ok(())
        } else {
            bucket.tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u64, burst: u64, scope: Scope) -> Limiter {
        Limiter::new(
            RateLimit {
                service: "app.default".into(),
                requests_per_unit: per_second,
                unit: Unit::Second,
                burst,
                scope,
                side: Side::Inbound,
                overrides: Vec::new(),
            },
            Vec::new(),
        )
    }

    #[test]
    fn an_override_has_its_own_bucket_and_rate() {
        let mut l = limiter(1, 1, Scope::Global);
        let batch = "spiffe://cluster.local/ns/shop/sa/batch";
        l.limit.overrides = vec![Override {
            identity: batch.into(),
            requests_per_unit: 3,
            burst: 3,
        }];
        let t0 = Instant::now();
        let admitted = |id: Option<&str>| {
            (0..10)
                .filter(|_| l.admit(id, || "".into(), t0).is_ok())
                .count()
        };
        assert_eq!(admitted(Some(batch)), 3);
        assert_eq!(admitted(Some("spiffe://cluster.local/ns/shop/sa/web")), 1);
        assert_eq!(admitted(None), 0, "the global bucket is spent");
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = limiter(10, 5, Scope::Global);
        let t0 = Instant::now();
        let admitted = (0..20)
            .filter(|_| l.admit(None, || "a".into(), t0).is_ok())
            .count();
        assert_eq!(admitted, 5, "the burst");
        let wait = l.admit(None, || "a".into(), t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // One second later, ten more tokens (capped at the burst of five).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            (0..20)
                .filter(|_| l.admit(None, || "b".into(), t1).is_ok())
                .count(),
            5
        );
        // 100 ms later, one.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(
            (0..20)
                .filter(|_| l.admit(None, || "c".into(), t2).is_ok())
                .count(),
            1
        );
    }

    #[test]
    fn per_client_buckets_are_separate() {
        let l = limiter(1, 2, Scope::PerClient);
        let t0 = Instant::now();
        assert_eq!(
            (0..5)
                .filter(|_| l.admit(None, || "a".into(), t0).is_ok())
                .count(),
            2
        );
        assert_eq!(
            (0..5)
                .filter(|_| l.admit(None, || "b".into(), t0).is_ok())
                .count(),
            2
        );
    }

    #[test]
    fn per_minute_rates() {
        let l = Limiter::new(
            RateLimit {
                service: "app.default".into(),
                requests_per_unit: 60,
                unit: Unit::Minute,
                burst: 1,
                scope: Scope::Global,
                side: Side::Inbound,
                overrides: Vec::new(),
            },
            Vec::new(),
        );
        let t0 = Instant::now();
        assert!(l.admit(None, || "".into(), t0).is_ok());
        let wait = l.admit(None, || "".into(), t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            l.admit(None, || "".into(), t0 + Duration::from_secs(1))
                .is_ok()
        );
    }
}
