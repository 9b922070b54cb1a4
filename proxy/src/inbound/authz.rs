//! Authorization at the inbound proxy: which callers may reach this service, decided per HTTP
//! request (identity, port, path prefix, method) or per opaque TCP connection (identity, port).
//!
//! Semantics (the control plane's `AuthorizationPolicy`): any matching `deny` rule denies; else
//! any matching `allow` rule allows; else the policy's default decides. A service without a
//! policy accepts every caller. Conditions on the caller's identity never match plain-text
//! callers; conditions on paths or methods never match opaque connections.

use std::sync::Arc;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::tls::SpiffeId;

/// What a rule (or the default) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the caller through.
    Allow,
    /// Refuse: `403` for HTTP, a closed connection for TCP.
    Deny,
}

/// A condition on the caller's SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMatch {
    /// Exactly this SPIFFE id.
    Exact(String),
    /// Any identity in this namespace of the local trust domain.
    Namespace(String),
    /// Any identity in this trust domain.
    TrustDomain(String),
}

/// The static file's (and discovery's) description of a policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicySpec {
    /// The protected service (`name` or `name.namespace`).
    pub(crate) service: String,
    /// What happens when no rule matches.
    pub(crate) default_action: Action,
    #[serde(default)]
    pub(crate) rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) action: Action,
    #[serde(default)]
    pub(crate) from: Vec<IdentityMatchSpec>,
    #[serde(default)]
    pub(crate) to_ports: Vec<u16>,
    #[serde(default)]
    pub(crate) path_prefixes: Vec<String>,
    #[serde(default)]
    pub(crate) methods: Vec<String>,
}

/// `{exact: ...}`, `{namespace: ...}` or `{trust_domain: ...}`: exactly one of them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityMatchSpec {
    pub(crate) exact: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) trust_domain: Option<String>,
}

impl IdentityMatchSpec {
    fn build(self, at: &str) -> Result<IdentityMatch, String> {
        match (self.exact, self.namespace, self.trust_domain) {
            (Some(id), None, None) => SpiffeId::parse(&id)
                .map(|_| IdentityMatch::Exact(id))
                .map_err(|e| format!("{at}.exact: {e}")),
            (None, Some(ns), None) => Ok(IdentityMatch::Namespace(ns)),
            (None, None, Some(td)) => Ok(IdentityMatch::TrustDomain(td)),
            _ => Err(format!(
                "{at}: give exactly one of exact, namespace, trust_domain"
            )),
        }
    }
}

/// One service's policy, ready to evaluate.
#[derive(Debug, Serialize)]
pub struct Policy {
    /// `name.namespace` of the protected service: the policy's name in responses, logs, metrics.
    pub service: String,
    /// What happens when no rule matches.
    pub default_action: Action,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// One rule; it matches when every set condition holds.
#[derive(Debug, Serialize)]
pub struct Rule {
    /// Its name (`rules[N]` when unnamed), for responses, logs and metrics.
    pub name: Arc<str>,
    /// What a match means.
    pub action: Action,
    /// The caller matches one of these (never a plain-text caller).
    pub from: Vec<IdentityMatch>,
    /// The destination port is one of these.
    pub to_ports: Vec<u16>,
    /// The path starts with one of these, on segment boundaries.
    pub path_prefixes: Vec<String>,
    /// The method is one of these.
    #[serde(serialize_with = "serialize_methods")]
    pub methods: Vec<Method>,
}

fn serialize_methods<S: serde::Serializer>(m: &[Method], ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_seq(m.iter().map(Method::as_str))
}

/// What is being authorized.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The caller's mesh identity (`None`: plain text).
    pub client: Option<&'a SpiffeId>,
    /// This proxy's trust domain (for namespace matches).
    pub local_trust_domain: Option<&'a str>,
    /// The destination (app) port.
    pub port: u16,
    /// HTTP method and path; `None` for an opaque connection.
    pub http: Option<(&'a Method, &'a str)>,
}

/// A decision and what made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or denied.
    pub action: Action,
    /// The rule that decided, or `default`.
    pub rule: Arc<str>,
}

impl Policy {
    /// Decides `call`.
    pub fn decide(&self, call: &Call<'_>) -> Decision {
        let first = |action: Action| {
            self.rules
                .iter()
                .find(|r| r.action == action && r.matches(call))
        };
        let rule = first(Action::Deny).or_else(|| first(Action::Allow));
        match rule {
            Some(r) => Decision {
                action: r.action,
                rule: r.name.clone(),
            },
            None => Decision {
                action: self.default_action,
                rule: Arc::from("default"),
            },
        }
    }
}

impl Rule {
    fn matches(&self, call: &Call<'_>) -> bool {
        let from = self.from.is_empty()
            || call.client.is_some_and(|id| {
                self.from.iter().any(|m| match m {
                    IdentityMatch::Exact(e) => id.as_str() == e,
                    IdentityMatch::Namespace(ns) => {
                        id.namespace() == ns
                            && call
                                .local_trust_domain
                                .is_none_or(|td| id.trust_domain() == td)
                    }
                    IdentityMatch::TrustDomain(td) => id.trust_domain() == td,
                })
            });
        let port = self.to_ports.is_empty() || self.to_ports.contains(&call.port);
        let http_conditions = !self.path_prefixes.is_empty() || !self.methods.is_empty();
        let http = match call.http {
            None => !http_conditions,
            Some((method, path)) => {
                (self.methods.is_empty() || self.methods.contains(method))
                    && (self.path_prefixes.is_empty()
                        || self.path_prefixes.iter().any(|p| prefix_matches(p, path)))
            }
        };
        from && port && http
    }
}

/// `/api` matches `/api` and `/api/x`, not `/apiary`; `/` matches everything.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    p.is_empty()
        || (path.starts_with(p) && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
}

/// Validates a policy description; errors name the field.
pub(crate) fn build(spec: PolicySpec, at: &str, default_namespace: &str) -> Result<Policy, String> {
    let service = if spec.service.contains('.') {
        spec.service.clone()
    } else {
        format!("{}.{default_namespace}", spec.service)
    };
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, r) in spec.rules.into_iter().enumerate() {
        let at = format!("{at}.rules[{i}]");
        let from = r
            .from
            .into_iter()
            .enumerate()
            .map(|(j, m)| m.build(&format!("{at}.from[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if r.to_ports.contains(&0) {
            return Err(format!("{at}.to_ports: ports are 1-65535"));
        }
        if let Some(p) = r.path_prefixes.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("{at}.path_prefixes: `{p}` must start with '/'"));
        }
        let methods = r
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("{at}.methods: `{m}` is not an HTTP method"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(Rule {
            name: Arc::from(r.name.unwrap_or_else(|| format!("rules[{i}]"))),
            action: r.action,
            from,
            to_ports: r.to_ports,
            path_prefixes: r.path_prefixes,
            methods,
        });
    }
    Ok(Policy {
        service,
        default_action: spec.default_action,
        rules,
    })
}

#[cfg(test)]
mod tests;
