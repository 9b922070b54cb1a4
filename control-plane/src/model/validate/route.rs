//! Checks for routes: matches, weighted backends, timeouts and retries.

use std::collections::HashSet;
use std::time::Duration;

use super::{Checker, MAX_ATTEMPTS, MAX_WEIGHT};
use crate::model::{
    HeaderMatch, PathMatch, RetryPolicy, Route, RouteMatch, RouteRule, ValueMatch, dns_label,
    http_token,
};

/// Most rules in one route; proxies evaluate them in order on every request.
pub const MAX_RULES: usize = 256;

/// The proxy's retry backoff defaults (see `RetryPolicy` in discovery.proto), to compare base and max.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);

impl Checker<'_> {
    pub(super) fn route(&mut self, route: &Route) {
        // A proxy only holds a route once it holds its parent service: a route of no service would be
        // stored and never served, like a route to a missing backend.
        self.known_service("spec.parent_service", &route.parent, None);
        if route.rules.is_empty() {
            self.error("spec.rules", "at least one rule is required");
        }
        if route.rules.len() > MAX_RULES {
            let n = route.rules.len();
            self.error(
                "spec.rules",
                format!("{n} rules; at most {MAX_RULES} are allowed"),
            );
        }
        let mut names = HashSet::new();
        for (i, rule) in route.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            if !rule.name.is_empty() {
                if let Err(reason) = dns_label(&rule.name) {
                    self.error(format!("{field}.name"), format!("{:?} {reason}", rule.name));
                } else if !names.insert(rule.name.as_str()) {
                    let reason = format!("name {:?} is used by two rules", rule.name);
                    self.error(format!("{field}.name"), reason);
                }
            }
            self.rule(&field, rule);
        }
    }

    fn rule(&mut self, field: &str, rule: &RouteRule) {
        for (i, entry) in rule.matches.iter().enumerate() {
            self.route_match(&format!("{field}.matches[{i}]"), entry);
        }
        let mut total = 0u64;
        for (i, backend) in rule.backends.iter().enumerate() {
            let backend_field = format!("{field}.backends[{i}]");
            let port_field = format!("{backend_field}.port");
            let port = backend.port.map(|p| (port_field.as_str(), p));
            self.known_service(&format!("{backend_field}.service"), &backend.service, port);
            if backend.port == Some(0) {
                self.port(&port_field, 0);
            }
            if backend.weight > MAX_WEIGHT {
                let reason = format!("{} is more than the maximum, {MAX_WEIGHT}", backend.weight);
                self.error(format!("{backend_field}.weight"), reason);
            }
            total += u64::from(backend.weight);
        }
        if !rule.backends.is_empty() && total == 0 {
            self.error(format!("{field}.backends"), "weights sum to 0");
        }
        self.duration(&format!("{field}.timeout_ms"), rule.timeout);
        if let Some(retry) = &rule.retry {
            self.retry(&format!("{field}.retry"), retry, rule.timeout);
        }
        self.filters(field, rule);
    }

    pub(super) fn route_match(&mut self, field: &str, entry: &RouteMatch) {
        if entry.is_empty() {
            let reason =
                "empty match (no path, headers or method); omit `matches` to match every request";
            self.error(field, reason);
        }
        match &entry.path {
            None => {}
            Some(PathMatch::Exact(path)) => {
                path_literal(self, &format!("{field}.path.exact"), path)
            }
            Some(PathMatch::Prefix(path)) => {
                path_literal(self, &format!("{field}.path.prefix"), path);
            }
            Some(PathMatch::Regex(pattern)) => self.regex(&format!("{field}.path.regex"), pattern),
        }
        for (i, header) in entry.headers.iter().enumerate() {
            self.header_match(&format!("{field}.headers[{i}]"), header);
        }
        if let Some(method) = &entry.method
            && let Err(reason) = http_token(method)
        {
            self.error(format!("{field}.method"), format!("{method:?} {reason}"));
        }
    }

    fn header_match(&mut self, field: &str, header: &HeaderMatch) {
        if let Err(reason) = http_token(&header.name) {
            let name = &header.name;
            self.error(
                format!("{field}.name"),
                format!("header name {name:?} {reason}"),
            );
        }
        match &header.value {
            ValueMatch::Exact(value) => {
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    let reason = "contains control characters, which a header value cannot hold";
                    self.error(format!("{field}.exact"), reason);
                }
            }
            ValueMatch::Regex(pattern) => self.regex(&format!("{field}.regex"), pattern),
        }
    }

    fn retry(&mut self, field: &str, retry: &RetryPolicy, timeout: Option<Duration>) {
        if let Some(attempts) = retry.attempts
            && !(1..=MAX_ATTEMPTS).contains(&attempts)
        {
            let reason = format!("{attempts} is not a number of attempts in 1–{MAX_ATTEMPTS}");
            self.error(format!("{field}.attempts"), reason);
        }
        let per_try_field = format!("{field}.per_try_timeout_ms");
        self.duration(&per_try_field, retry.per_try_timeout);
        if let (Some(per_try), Some(timeout)) = (retry.per_try_timeout, timeout)
            && per_try > timeout
        {
            let (per_try, timeout) = (per_try.as_millis(), timeout.as_millis());
            let reason = format!("{per_try} ms is longer than the rule's timeout_ms, {timeout} ms");
            self.error(per_try_field, reason);
        }
        for (i, code) in retry.retryable_status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                let reason = format!("{code} is not an HTTP status code (100–599)");
                self.error(format!("{field}.retryable_status_codes[{i}]"), reason);
            }
        }
        let base_field = format!("{field}.backoff_base_ms");
        self.duration(&base_field, retry.backoff_base);
        self.duration(&format!("{field}.backoff_max_ms"), retry.backoff_max);
        let base = retry.backoff_base.unwrap_or(DEFAULT_BACKOFF_BASE);
        let max = retry.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX);
        if base > max {
            let (base, max) = (base.as_millis(), max.as_millis());
            let reason = format!("{base} ms is more than the backoff maximum, {max} ms");
            self.error(base_field, reason);
        }
        if let Some(ratio) = retry.budget_ratio {
            self.ratio(&format!("{field}.budget_ratio"), ratio);
        }
        let min_field = format!("{field}.budget_min_retries_per_second");
        self.positive(&min_field, retry.budget_min_retries_per_second);
    }
}

/// An exact path or prefix: starts with `/`, no query or fragment (matching ignores the query string).
fn path_literal(check: &mut Checker<'_>, field: &str, path: &str) {
    if !path.starts_with('/') {
        check.error(field, format!("{path:?} must start with `/`"));
    } else if path.contains(['?', '#']) || path.chars().any(char::is_whitespace) {
        let reason = format!(
            "{path:?} must not contain `?`, `#` or whitespace (paths are matched without the query)"
        );
        check.error(field, reason);
    }
}
