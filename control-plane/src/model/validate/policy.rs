//! Checks for backend policies, authorization, rate limits, fault injection and mirroring.

use super::Checker;
use crate::model::{AuthorizationPolicy, AuthorizationRule};
use crate::model::{
    BackendPolicy, FaultInjection, HashKey, HealthCheck, HealthProbe, IdentityMatch,
    LoadBalancingAlgorithm, Mirror, RateLimit, RateLimitScope, RateLimitSide, dns_label, host_name,
    http_token, spiffe_id,
};

/// Most rules in one authorization policy; proxies evaluate them on every request.
pub const MAX_AUTHORIZATION_RULES: usize = 1024;

/// Largest `outlier_detection.success_rate.stdev_factor`: beyond it nothing is ever ejected.
pub const MAX_STDEV_FACTOR: f64 = 10.0;
/// The most response headers a mirror compares (each costs its calling proxy a lookup per mirrored
/// response).
pub const MAX_COMPARE_HEADERS: usize = 32;

impl Checker<'_> {
    pub(super) fn backend_policy(&mut self, policy: &BackendPolicy) {
        if let Some(lb) = &policy.load_balancer {
            self.duration("spec.load_balancer.slow_start_ms", lb.slow_start);
            let ring = lb.algorithm == Some(LoadBalancingAlgorithm::RingHash);
            match (&lb.hash_key, ring) {
                (None, true) => {
                    let reason = "required with algorithm RING_HASH: what to hash";
                    self.error("spec.load_balancer.hash_key", reason);
                }
                (Some(_), false) => {
                    let reason =
                        "only used with algorithm RING_HASH; set the algorithm or remove it";
                    self.error("spec.load_balancer.hash_key", reason);
                }
                (Some(key), true) => self.hash_key(key),
                (None, false) => {}
            }
        }
        if let Some(limits) = &policy.limits {
            let field = "spec.limits";
            self.positive(&format!("{field}.max_connections"), limits.max_connections);
            let pending = limits.max_pending_requests;
            self.positive(&format!("{field}.max_pending_requests"), pending);
            let concurrent = limits.max_concurrent_requests;
            self.positive(&format!("{field}.max_concurrent_requests"), concurrent);
            let per_connection = limits.max_requests_per_connection;
            self.positive(
                &format!("{field}.max_requests_per_connection"),
                per_connection,
            );
            self.duration(
                &format!("{field}.connect_timeout_ms"),
                limits.connect_timeout,
            );
            let retries = limits.max_concurrent_retries;
            self.positive(&format!("{field}.max_concurrent_retries"), retries);
        }
        if let Some(outlier) = &policy.outlier_detection {
            let field = "spec.outlier_detection";
            self.positive(&format!("{field}.consecutive_5xx"), outlier.consecutive_5xx);
            if outlier.consecutive_5xx.is_none() && outlier.success_rate.is_none() {
                let reason = "ejects nothing: set consecutive_5xx, success_rate or both";
                self.error(field, reason);
            }
            self.duration(&format!("{field}.interval_ms"), outlier.interval);
            if outlier.interval.is_some() && outlier.success_rate.is_none() {
                let reason = "only used with success_rate (how often success rates are evaluated); set success_rate or remove it";
                self.error(format!("{field}.interval_ms"), reason);
            }
            if let Some(rate) = &outlier.success_rate {
                let field = format!("{field}.success_rate");
                self.positive(&format!("{field}.minimum_hosts"), rate.minimum_hosts);
                self.positive(&format!("{field}.request_volume"), rate.request_volume);
                if let Some(factor) = rate.stdev_factor
                    && !(factor > 0.0 && factor <= MAX_STDEV_FACTOR)
                {
                    let reason = format!("{factor} is not in (0, {MAX_STDEV_FACTOR}]");
                    self.error(format!("{field}.stdev_factor"), reason);
                }
            }
            let base = outlier.base_ejection_time;
            self.duration(&format!("{field}.base_ejection_time_ms"), base);
            if let Some(percent) = outlier.max_ejection_percent {
                let percent_field = format!("{field}.max_ejection_percent");
                if percent == 0.0 {
                    self.error(percent_field, "must be positive when set");
                } else {
                    self.percent(&percent_field, percent);
                }
            }
        }
        if let Some(check) = &policy.health_check {
            self.health_check(check);
        }
        if let Some(breaker) = &policy.circuit_breaker {
            let field = "spec.circuit_breaker";
            if let Some(ratio) = breaker.failure_ratio_threshold {
                self.ratio(&format!("{field}.failure_ratio_threshold"), ratio);
            }
            self.positive(&format!("{field}.min_requests"), breaker.min_requests);
            self.duration(&format!("{field}.window_ms"), breaker.window);
            self.duration(&format!("{field}.open_duration_ms"), breaker.open_duration);
            let probes = breaker.half_open_max_requests;
            self.positive(&format!("{field}.half_open_max_requests"), probes);
        }
    }

    fn health_check(&mut self, check: &HealthCheck) {
        let field = "spec.health_check";
        match &check.probe {
            HealthProbe::Http {
                path,
                expected_statuses,
            } => {
                if !path.starts_with('/')
                    || http::uri::PathAndQuery::try_from(path.as_str()).is_err()
                {
                    let reason = format!("{path:?} is not a request path starting with /");
                    self.error(format!("{field}.http.path"), reason);
                }
                if let Some((start, end)) = *expected_statuses
                    && !((100..=599).contains(&start) && (start..=599).contains(&end))
                {
                    let reason = format!("{start}-{end} is not a range of statuses within 100-599");
                    self.error(format!("{field}.http.expected_statuses"), reason);
                }
            }
            HealthProbe::Grpc { .. } => {}
        }
        self.duration(&format!("{field}.interval_ms"), check.interval);
        self.duration(&format!("{field}.timeout_ms"), check.timeout);
        self.positive(
            &format!("{field}.healthy_threshold"),
            check.healthy_threshold,
        );
        self.positive(
            &format!("{field}.unhealthy_threshold"),
            check.unhealthy_threshold,
        );
    }

    fn hash_key(&mut self, key: &HashKey) {
        let field = "spec.load_balancer.hash_key";
        let (case, value) = match key {
            HashKey::SourceIp => return,
            HashKey::Header(name) => ("header", name),
            HashKey::Cookie(name) => ("cookie", name),
            HashKey::QueryParameter(name) => ("query_parameter", name),
        };
        if let Err(reason) = http_token(value) {
            self.error(format!("{field}.{case}"), format!("{value:?} {reason}"));
        }
    }

    pub(super) fn authorization(&mut self, policy: &AuthorizationPolicy) {
        if policy.rules.len() > MAX_AUTHORIZATION_RULES {
            let n = policy.rules.len();
            let reason = format!("{n} rules; at most {MAX_AUTHORIZATION_RULES} are allowed");
            self.error("spec.rules", reason);
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            self.authorization_rule(&format!("spec.rules[{i}]"), rule);
        }
    }

    fn authorization_rule(&mut self, field: &str, rule: &AuthorizationRule) {
        if !rule.name.is_empty()
            && let Err(reason) = dns_label(&rule.name)
        {
            self.error(format!("{field}.name"), format!("{:?} {reason}", rule.name));
        }
        for (i, from) in rule.from.iter().enumerate() {
            let (case, value, checked) = match from {
                IdentityMatch::Exact(id) => ("exact", id, spiffe_id(id)),
                IdentityMatch::Namespace(ns) => ("namespace", ns, dns_label(ns)),
                IdentityMatch::TrustDomain(domain) => ("trust_domain", domain, host_name(domain)),
            };
            if let Err(reason) = checked {
                self.error(
                    format!("{field}.from[{i}].{case}"),
                    format!("{value:?} {reason}"),
                );
            }
        }
        for (i, port) in rule.to_ports.iter().enumerate() {
            self.port(&format!("{field}.to_ports[{i}]"), *port);
        }
        for (i, prefix) in rule.path_prefixes.iter().enumerate() {
            if !prefix.starts_with('/') {
                let reason = format!("{prefix:?} must start with `/`");
                self.error(format!("{field}.path_prefixes[{i}]"), reason);
            }
        }
        for (i, method) in rule.methods.iter().enumerate() {
            if let Err(reason) = http_token(method) {
                self.error(
                    format!("{field}.methods[{i}]"),
                    format!("{method:?} {reason}"),
                );
            }
        }
    }

    pub(super) fn rate_limit(&mut self, limit: &RateLimit) {
        if limit.burst == Some(0) {
            self.error("spec.burst", "must be positive when set");
        }
        for (i, entry) in limit.matches.iter().enumerate() {
            self.route_match(&format!("spec.matches[{i}]"), entry);
        }
        let outbound = limit.side == RateLimitSide::Outbound;
        if outbound && limit.scope == RateLimitScope::PerClient {
            let reason = "an outbound limit is kept by each calling proxy for its own requests: the caller is always the same; use `global`";
            self.error("spec.scope", reason);
        }
        if outbound && !limit.overrides.is_empty() {
            let reason = "overrides give callers their own rate at the service's proxies: inbound limits only";
            self.error("spec.overrides", reason);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, o) in limit.overrides.iter().enumerate() {
            let field = format!("spec.overrides[{i}]");
            if let Err(reason) = spiffe_id(&o.identity) {
                let id = &o.identity;
                self.error(format!("{field}.identity"), format!("{id:?} {reason}"));
            } else if !seen.insert(o.identity.as_str()) {
                let reason = format!("{:?} has two overrides", o.identity);
                self.error(format!("{field}.identity"), reason);
            }
            if o.burst == Some(0) {
                self.error(format!("{field}.burst"), "must be positive when set");
            }
        }
    }

    pub(super) fn fault_injection(&mut self, fault: &FaultInjection) {
        if fault.delay.is_none() && fault.abort.is_none() {
            self.error("spec", "injects nothing: set `delay`, `abort` or both");
        }
        if let Some(delay) = &fault.delay {
            self.percent("spec.delay.percent", delay.percent);
            self.required_duration("spec.delay.duration_ms", delay.duration);
        }
        if let Some(abort) = &fault.abort {
            self.percent("spec.abort.percent", abort.percent);
            if abort.http_status.is_none() && abort.grpc_status.is_none() {
                self.error("spec.abort", "set `http_status`, `grpc_status` or both");
            }
            if let Some(status) = abort.http_status
                && !(200..=599).contains(&status)
            {
                let reason = format!("{status} is not an HTTP status in 200–599");
                self.error("spec.abort.http_status", reason);
            }
            if let Some(code) = abort.grpc_status
                && !(1..=16).contains(&code)
            {
                let reason = format!("{code} is not a gRPC status in 1–16 (0, OK, is no abort)");
                self.error("spec.abort.grpc_status", reason);
            }
        }
        for (i, entry) in fault.matches.iter().enumerate() {
            self.route_match(&format!("spec.matches[{i}]"), entry);
        }
    }

    pub(super) fn mirror(&mut self, mirror: &Mirror) {
        if mirror.mirror == mirror.target {
            let reason = format!("{} mirrors to itself; name another service", mirror.target);
            self.error("spec.mirror_service", reason);
        } else {
            let port = mirror.port.map(|p| ("spec.mirror_port", p));
            self.known_service("spec.mirror_service", &mirror.mirror, port);
        }
        if mirror.port == Some(0) {
            self.port("spec.mirror_port", 0);
        }
        self.percent("spec.percent", mirror.percent);
        if mirror.compare_headers.len() > MAX_COMPARE_HEADERS {
            let reason = format!(
                "{} names; at most {MAX_COMPARE_HEADERS}",
                mirror.compare_headers.len()
            );
            self.error("spec.compare_headers", reason);
        }
        for (i, name) in mirror.compare_headers.iter().enumerate() {
            let field = format!("spec.compare_headers[{i}]");
            if let Err(reason) = http_token(name) {
                self.error(field, format!("header name {name:?} {reason}"));
            } else if name.bytes().any(|b| b.is_ascii_uppercase()) {
                self.error(field, format!("header name {name:?} must be lower-case"));
            } else if mirror.compare_headers[..i].contains(name) {
                self.error(field, format!("{name:?} is listed twice"));
            }
        }
    }
}
