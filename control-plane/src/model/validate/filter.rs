//! Checks for a route rule's filters: request and response header edits, and the redirect.

use std::collections::HashSet;

use shoal_proto::filters::{MAX_HEADER_EDITS, REDIRECT_STATUSES, protected_header};

use super::Checker;
use crate::model::{
    HeaderModifier, PathMatch, PathModifier, RequestRedirect, RouteRule, host_name, http_token,
};

impl Checker<'_> {
    /// The filters of the rule at `field` (`spec.rules[i]`).
    pub(super) fn filters(&mut self, field: &str, rule: &RouteRule) {
        if let Some(edits) = &rule.request_headers {
            self.header_modifier(&format!("{field}.request_header_modifier"), edits);
        }
        if let Some(edits) = &rule.response_headers {
            self.header_modifier(&format!("{field}.response_header_modifier"), edits);
        }
        if let Some(redirect) = &rule.redirect {
            self.redirect(field, rule, redirect);
        }
    }

    fn header_modifier(&mut self, field: &str, edits: &HeaderModifier) {
        let total = edits.set.len() + edits.add.len() + edits.remove.len();
        if total == 0 {
            self.error(
                field,
                "edits nothing: set `set`, `add` or `remove`, or omit it",
            );
        }
        if total > MAX_HEADER_EDITS {
            let reason = format!("{total} edits; at most {MAX_HEADER_EDITS} are allowed");
            self.error(field, reason);
        }
        let mut seen = HashSet::new();
        let named = (edits
            .set
            .iter()
            .enumerate()
            .map(|(i, (n, _))| ("set", i, n)))
        .chain(
            edits
                .add
                .iter()
                .enumerate()
                .map(|(i, (n, _))| ("add", i, n)),
        )
        .chain(
            edits
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| ("remove", i, n)),
        );
        for (list, i, name) in named {
            let at = if list == "remove" {
                format!("{field}.remove[{i}]")
            } else {
                format!("{field}.{list}[{i}].name")
            };
            if let Err(reason) = http_token(name) {
                self.error(at, format!("header name {name:?} {reason}"));
            } else if let Some(reason) = protected_header(name) {
                self.error(at, format!("{name:?} {reason}"));
            } else if !seen.insert(name.to_ascii_lowercase()) {
                let reason = format!("{name:?} is edited twice; name each header once");
                self.error(at, reason);
            }
        }
        let values = (edits
            .set
            .iter()
            .enumerate()
            .map(|(i, (_, v))| ("set", i, v)))
        .chain(
            edits
                .add
                .iter()
                .enumerate()
                .map(|(i, (_, v))| ("add", i, v)),
        );
        for (list, i, value) in values {
            if !value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                let reason =
                    format!("{value:?} is not a header value: visible ASCII, spaces and tabs only");
                self.error(format!("{field}.{list}[{i}].value"), reason);
            }
        }
    }

    fn redirect(&mut self, rule_field: &str, rule: &RouteRule, redirect: &RequestRedirect) {
        let field = format!("{rule_field}.request_redirect");
        let answered = "the proxy answers the redirect itself, so nothing is sent";
        if !rule.backends.is_empty() {
            let reason = format!("a rule with a request_redirect has no backends: {answered}");
            self.error(format!("{rule_field}.backends"), reason);
        }
        if rule.retry.is_some() {
            let reason = format!("a rule with a request_redirect has no retry: {answered}");
            self.error(format!("{rule_field}.retry"), reason);
        }
        if rule.request_headers.is_some() {
            let reason =
                format!("a rule with a request_redirect has no request header edits: {answered}");
            self.error(format!("{rule_field}.request_header_modifier"), reason);
        }
        if let Some(scheme) = &redirect.scheme
            && scheme != "http"
            && scheme != "https"
        {
            let reason = format!("{scheme:?} is not `http` or `https`");
            self.error(format!("{field}.scheme"), reason);
        }
        if let Some(host) = &redirect.hostname
            && let Err(reason) = host_name(host)
        {
            self.error(format!("{field}.hostname"), format!("{host:?} {reason}"));
        }
        if let Some(port) = redirect.port {
            self.port(&format!("{field}.port"), port);
        }
        match &redirect.path {
            None => {}
            Some(PathModifier::ReplaceFullPath(path)) => {
                redirect_path(self, &format!("{field}.path.replace_full_path"), path);
            }
            Some(PathModifier::ReplacePrefixMatch(path)) => {
                let at = format!("{field}.path.replace_prefix_match");
                redirect_path(self, &at, path);
                let prefixes = !rule.matches.is_empty()
                    && (rule.matches.iter()).all(|m| matches!(m.path, Some(PathMatch::Prefix(_))));
                if !prefixes {
                    let reason = "needs every match of the rule to be a path prefix (the prefix it replaces)";
                    self.error(at, reason);
                }
            }
        }
        if let Some(status) = redirect.status_code
            && !REDIRECT_STATUSES.contains(&status)
        {
            let reason = format!("{status} is not a redirect status: 301, 302, 303, 307 or 308");
            self.error(format!("{field}.status_code"), reason);
        }
    }
}

/// A redirect's path: starts with `/`, no query, fragment or whitespace (the request's query is kept).
fn redirect_path(check: &mut Checker<'_>, field: &str, path: &str) {
    if !path.starts_with('/') {
        check.error(field, format!("{path:?} must start with `/`"));
    } else if path.contains(['?', '#']) || !path.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        let reason = format!(
            "{path:?} must be visible ASCII without `?` or `#` (the request's query string is kept)"
        );
        check.error(field, reason);
    }
}
