//! A route rule's filters in the state description (Gateway API's `HTTPRoute` filters): header
//! edits on the request and on the response, and a redirect the calling proxy answers itself.
//! The stage that applies them is `outbound::http::filter`.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use shoal_proto::filters::{MAX_HEADER_EDITS, REDIRECT_STATUSES, protected_header};

use super::model::{Match, PathMatch};

/// A header and its value, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderValueSpec {
    pub(crate) name: String,
    pub(crate) value: String,
}

/// `request_header_modifier` / `response_header_modifier` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HeaderModifierSpec {
    pub(crate) set: Vec<HeaderValueSpec>,
    pub(crate) add: Vec<HeaderValueSpec>,
    pub(crate) remove: Vec<String>,
}

/// Header edits, checked: remove, then set, then add.
#[derive(Debug, Serialize)]
pub(crate) struct HeaderEdits {
    /// What `/config` shows: the edits as written.
    #[serde(flatten)]
    spec: HeaderModifierSpec,
    #[serde(skip)]
    set: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip)]
    add: Vec<(HeaderName, HeaderValue)>,
    #[serde(skip)]
    remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Applies the edits to a message's headers.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

impl HeaderModifierSpec {
    /// Checks the edits (the control plane's checks); errors name the field under `at`.
    pub(crate) fn resolve(&self, at: &str) -> Result<HeaderEdits, String> {
        let total = self.set.len() + self.add.len() + self.remove.len();
        if total == 0 {
            return Err(format!("{at}: edits nothing (set, add or remove)"));
        }
        if total > MAX_HEADER_EDITS {
            return Err(format!(
                "{at}: {total} edits; at most {MAX_HEADER_EDITS} are allowed"
            ));
        }
        let mut seen = Vec::with_capacity(total);
        let mut name = |name: &str, field: String| -> Result<HeaderName, String> {
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{field}: `{name}` is not a header name"))?;
            if let Some(reason) = protected_header(parsed.as_str()) {
                return Err(format!("{field}: `{name}` {reason}"));
            }
            if seen.contains(&parsed) {
                return Err(format!("{field}: `{name}` is edited twice"));
            }
            seen.push(parsed.clone());
            Ok(parsed)
        };
        let value = |value: &str, field: String| {
            HeaderValue::from_str(value)
                .ok()
                .filter(|_| {
                    value
                        .bytes()
                        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
                })
                .ok_or_else(|| format!("{field}: {value:?} is not a header value"))
        };
        let mut pairs = |list: &[HeaderValueSpec], key: &str| {
            let mut out = Vec::with_capacity(list.len());
            for (i, h) in list.iter().enumerate() {
                let n = name(&h.name, format!("{at}.{key}[{i}].name"))?;
                out.push((n, value(&h.value, format!("{at}.{key}[{i}].value"))?));
            }
            Ok::<_, String>(out)
        };
        let set = pairs(&self.set, "set")?;
        let add = pairs(&self.add, "add")?;
        let mut remove = Vec::with_capacity(self.remove.len());
        for (i, n) in self.remove.iter().enumerate() {
            remove.push(name(n, format!("{at}.remove[{i}]"))?);
        }
        Ok(HeaderEdits {
            spec: self.clone(),
            set,
            add,
            remove,
        })
    }
}

/// How a redirect rewrites the path: one of the two.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PathModifierSpec {
    /// Replace the whole path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replace_full_path: Option<String>,
    /// Replace the path prefix the rule matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) replace_prefix_match: Option<String>,
}

/// `request_redirect` as written (and as `/config` shows it, with the status filled in).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RedirectSpec {
    /// `http` or `https`; absent keeps the request's.
    pub(crate) scheme: Option<String>,
    /// Absent keeps the request's host.
    pub(crate) hostname: Option<String>,
    /// Absent keeps the request's port (or the scheme's default when `scheme` is set).
    pub(crate) port: Option<u16>,
    /// Absent keeps the request's path.
    pub(crate) path: Option<PathModifierSpec>,
    /// 301, 302, 303, 307 or 308; absent means 302.
    pub(crate) status_code: Option<u16>,
}

/// A redirect, checked.
#[derive(Debug, Serialize)]
pub(crate) struct Redirect {
    #[serde(flatten)]
    spec: RedirectSpec,
    #[serde(skip)]
    status: StatusCode,
}

impl RedirectSpec {
    /// Checks the redirect (the control plane's checks) against the rule's `matches`; errors
    /// name the field under `at`.
    pub(crate) fn resolve(&self, at: &str, matches: &[Match]) -> Result<Redirect, String> {
        if let Some(scheme) = &self.scheme
            && scheme != "http"
            && scheme != "https"
        {
            return Err(format!("{at}.scheme: `{scheme}` is not `http` or `https`"));
        }
        if let Some(host) = &self.hostname {
            let label = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            if host.len() > 253 || !host.split('.').all(label) {
                return Err(format!("{at}.hostname: `{host}` is not a host name"));
            }
        }
        if self.port == Some(0) {
            return Err(format!("{at}.port: 0 is not a port (1–65535)"));
        }
        match self
            .path
            .as_ref()
            .map(|p| (&p.replace_full_path, &p.replace_prefix_match))
        {
            None => {}
            Some((Some(_), Some(_)) | (None, None)) => {
                return Err(format!(
                    "{at}.path: set one of replace_full_path or replace_prefix_match"
                ));
            }
            Some((Some(p), None)) => {
                path(p, &format!("{at}.path.replace_full_path"))?;
            }
            Some((None, Some(p))) => {
                let field = format!("{at}.path.replace_prefix_match");
                path(p, &field)?;
                let prefixes = !matches.is_empty()
                    && (matches.iter()).all(|m| matches!(m.path, Some(PathMatch::Prefix(_))));
                if !prefixes {
                    return Err(format!(
                        "{field}: needs every match of the rule to be a path prefix"
                    ));
                }
            }
        }
        let code = self.status_code.unwrap_or(302);
        if !REDIRECT_STATUSES.contains(&code) {
            return Err(format!(
                "{at}.status_code: {code} is not a redirect status: 301, 302, 303, 307 or 308"
            ));
        }
        let status = StatusCode::from_u16(code).map_err(|e| format!("{at}.status_code: {e}"))?;
        let mut spec = self.clone();
        spec.status_code = Some(code);
        Ok(Redirect { spec, status })
    }
}

fn path(p: &str, field: &str) -> Result<(), String> {
    if !p.starts_with('/')
        || p.contains(['?', '#'])
        || !p.bytes().all(|b| (b'!'..=b'~').contains(&b))
    {
        return Err(format!(
            "{field}: `{p}` must start with `/`, be visible ASCII and hold no `?` or `#`"
        ));
    }
    Ok(())
}

impl Redirect {
    /// The status the redirect answers with.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Location` for `req`, which matched a rule with these `matches`: the request's URL with
    /// the redirect's parts replaced; a scheme's default port is left out, the query kept.
    pub(crate) fn location<B>(&self, req: &Request<B>, matches: &[Match]) -> String {
        let uri = req.uri();
        let scheme = (self.spec.scheme.as_deref())
            .or(uri.scheme_str())
            .unwrap_or("http");
        let authority = crate::http::headers::authority_of(req).unwrap_or_default();
        let (req_host, req_port) = split_host_port(authority);
        let host = self.spec.hostname.as_deref().unwrap_or(req_host);
        // An explicit port; else the request's, unless the scheme changes (then its default).
        let port = self
            .spec
            .port
            .or_else(|| self.spec.scheme.is_none().then_some(req_port).flatten());
        let default = if scheme == "https" { 443 } else { 80 };
        let path = uri.path();
        let modifier = self.spec.path.as_ref();
        let new_path = match modifier.map(|p| (&p.replace_full_path, &p.replace_prefix_match)) {
            None | Some((None, None)) => path.to_string(),
            Some((Some(p), _)) => p.clone(),
            Some((None, Some(new))) => {
                // The prefix of the match that selected the rule (every match is a prefix).
                let matched = matches.iter().find_map(|m| match &m.path {
                    Some(pm @ PathMatch::Prefix(p)) if pm.matches(path) => Some(p.len()),
                    _ => None,
                });
                let rest = &path[matched.unwrap_or(0)..];
                let joined = format!("{}{rest}", new.trim_end_matches('/'));
                if joined.is_empty() {
                    "/".to_string()
                } else {
                    joined
                }
            }
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port.filter(|&p| p != default) {
            location.push(':');
            location.push_str(&port.to_string());
        }
        location.push_str(&new_path);
        if let Some(query) = uri.query() {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

/// `host[:port]` (IPv6 hosts in brackets) → host and port.
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
            (host, port.parse().ok())
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(yaml: &str) -> Redirect {
        let spec: RedirectSpec = serde_yaml_ng::from_str(yaml).unwrap();
        let prefix = Match {
            path: Some(PathMatch::Prefix("/old".into())),
            ..Match::default()
        };
        spec.resolve("r", &[prefix]).unwrap()
    }

    fn location(r: &Redirect, uri: &str, host: &str) -> String {
        let req = Request::get(uri).header("host", host).body(()).unwrap();
        let prefix = Match {
            path: Some(PathMatch::Prefix("/old".into())),
            ..Match::default()
        };
        r.location(&req, &[prefix])
    }

    #[test]
    fn a_location_replaces_only_what_the_redirect_names() {
        let r = redirect("{}");
        assert_eq!(location(&r, "/a?x=1", "web:8080"), "http://web:8080/a?x=1");
        let r = redirect("{scheme: https}");
        assert_eq!(location(&r, "/a", "web:8080"), "https://web/a");
        let r = redirect("{scheme: https, port: 8443, hostname: example.com}");
        assert_eq!(location(&r, "/a", "web"), "https://example.com:8443/a");
        let r = redirect("{path: {replace_full_path: /new}}");
        assert_eq!(location(&r, "/old/x?q", "web:80"), "http://web/new?q");
        let r = redirect("{path: {replace_prefix_match: /new}}");
        assert_eq!(location(&r, "/old/x", "web"), "http://web/new/x");
        assert_eq!(location(&r, "/old", "web"), "http://web/new");
        let r = redirect("{path: {replace_prefix_match: /}}");
        assert_eq!(location(&r, "/old/x", "web"), "http://web/x");
        assert_eq!(location(&r, "/old", "web"), "http://web/");
    }

    #[test]
    fn bad_filters_are_refused_naming_the_field() {
        let bad = |yaml: &str| {
            let spec: RedirectSpec = serde_yaml_ng::from_str(yaml).unwrap();
            spec.resolve("r", &[]).unwrap_err()
        };
        assert!(bad("{status_code: 200}").starts_with("r.status_code: 200"));
        assert!(bad("{scheme: ftp}").starts_with("r.scheme"));
        assert!(
            bad("{path: {replace_prefix_match: /x}}").starts_with("r.path.replace_prefix_match")
        );
        let edits = |yaml: &str| {
            let spec: HeaderModifierSpec = serde_yaml_ng::from_str(yaml).unwrap();
            spec.resolve("h").map(|_| ()).unwrap_err()
        };
        assert!(edits("{remove: [connection]}").starts_with("h.remove[0]"));
        assert!(edits("{set: [{name: shoal-orig-proto, value: x}]}").starts_with("h.set[0].name"));
        assert!(edits("{add: [{name: x-a, value: \"a\\nb\"}]}").starts_with("h.add[0].value"));
        assert!(edits("{set: [{name: x-a, value: a}], remove: [X-A]}").starts_with("h.remove[0]"));
    }
}
