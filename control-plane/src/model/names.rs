//! Names: DNS labels for resources and namespaces, qualified service names (`<service>.<namespace>`).

use std::fmt;

/// The namespace used when a resource or a service reference does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest DNS label (RFC 1123), the limit for names and namespaces.
pub const MAX_LABEL_LEN: usize = 63;

/// Longest host name (RFC 1123).
pub const MAX_HOST_LEN: usize = 253;

/// A reference to a service by its qualified name `<service>.<namespace>`, as policies and routes name their
/// targets and backends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    /// The service's name (a DNS label).
    pub name: String,
    /// The service's namespace (a DNS label).
    pub namespace: String,
}

impl ServiceRef {
    /// A reference to `name` in `namespace`.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    /// Parses `<service>.<namespace>`, or a bare `<service>` when `default_namespace` is given (the admin API
    /// lets a spec name services of its own namespace without qualifying them). Both parts must be DNS labels.
    pub fn parse(text: &str, default_namespace: Option<&str>) -> Result<Self, String> {
        if text.is_empty() {
            return Err("required: a service name `<service>.<namespace>`".to_owned());
        }
        let (name, namespace) = match (text.split_once('.'), default_namespace) {
            (Some(parts), _) => parts,
            (None, Some(namespace)) => (text, namespace),
            (None, None) => {
                return Err(format!(
                    "{text:?} is not a qualified service name; expected `<service>.<namespace>`"
                ));
            }
        };
        dns_label(name).map_err(|reason| format!("service name {name:?} {reason}"))?;
        dns_label(namespace).map_err(|reason| format!("namespace {namespace:?} {reason}"))?;
        Ok(Self::new(name, namespace))
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// Checks an RFC 1123 DNS label: 1–63 lowercase letters, digits and `-`, starting and ending with a letter or
/// digit. The error completes a sentence starting with the label (`"Foo" must be ...`).
pub fn dns_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err(
            "is empty; expected a DNS label (lowercase letters, digits and `-`)".to_owned(),
        );
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_LABEL_LEN} are allowed",
            label.len()
        ));
    }
    let valid_chars = label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_chars || label.starts_with('-') || label.ends_with('-') {
        return Err(
            "must be lowercase letters, digits and `-`, starting and ending with a letter or digit"
                .to_owned(),
        );
    }
    Ok(())
}

/// Checks a host name (`backend`, `backend.default.svc.cluster.local`): dot-separated DNS labels, at most 253
/// characters, lowercase.
pub fn host_name(host: &str) -> Result<(), String> {
    if host.len() > MAX_HOST_LEN {
        return Err(format!(
            "is {} characters long; at most {MAX_HOST_LEN} are allowed",
            host.len()
        ));
    }
    host.split('.').try_for_each(dns_label)
}

/// Checks a workload SPIFFE id, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`: the only form
/// proxies accept (an endpoint's identity, an authorization rule's `exact`), so any other is refused here rather
/// than NACKed by every proxy it is pushed to.
pub fn spiffe_id(id: &str) -> Result<(), String> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err("must start with `spiffe://`".to_owned());
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    host_name(domain).map_err(|reason| format!("trust domain {domain:?} {reason}"))?;
    let workload = || "must be a workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`";
    let ["ns", namespace, "sa", account] = path.split('/').collect::<Vec<_>>()[..] else {
        return Err(workload().to_owned());
    };
    dns_label(namespace).map_err(|reason| format!("namespace {namespace:?} {reason}"))?;
    dns_label(account).map_err(|reason| format!("service account {account:?} {reason}"))
}

/// Checks an HTTP token (header names and methods, RFC 9110 `tchar`).
pub fn http_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("is empty".to_owned());
    }
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if token.bytes().all(tchar) {
        Ok(())
    } else {
        Err("contains characters not allowed in an HTTP token".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qualified_and_bare_names() {
        assert_eq!(
            ServiceRef::parse("backend.shop", None),
            Ok(ServiceRef::new("backend", "shop"))
        );
        assert_eq!(
            ServiceRef::parse("backend", Some("shop")),
            Ok(ServiceRef::new("backend", "shop"))
        );
        assert!(ServiceRef::parse("backend", None).is_err());
        assert!(ServiceRef::parse("", Some("shop")).is_err());
        assert!(ServiceRef::parse("a.b.c", None).is_err(), "too many dots");
        assert!(ServiceRef::parse("Backend.shop", None).is_err());
        assert_eq!(ServiceRef::new("a", "b").to_string(), "a.b");
    }

    #[test]
    fn checks_labels_hosts_and_ids() {
        assert!(dns_label("a-1").is_ok());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(host_name("backend.default.svc.cluster.local").is_ok());
        assert!(host_name("backend..local").is_err());
        assert!(spiffe_id("spiffe://cluster.local/ns/a/sa/b").is_ok());
        assert!(spiffe_id("spiffe://cluster.local").is_err());
        // Proxies only take workload identities.
        assert!(spiffe_id("spiffe://cluster.local/workload/b").is_err());
        assert!(spiffe_id("spiffe://cluster.local/ns/A/sa/b").is_err());
        assert!(spiffe_id("https://x/y").is_err());
        assert!(http_token("x-request-id").is_ok());
        assert!(http_token("bad header").is_err());
    }
}
