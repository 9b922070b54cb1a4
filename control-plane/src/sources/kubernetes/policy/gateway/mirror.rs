//! A Service's Shoal `Mirror` from the `RequestMirror` filters of the Gateway API routes attached to it.
//!
//! A Shoal mirror is per service: the calling proxy copies a share of every request to the service, whichever
//! rule it matched or none (docs/resilience.md, "Mirroring"). The filters translate only when that is exactly
//! what they ask for:
//!
//! - every rule attached to the Service (of every route, both kinds) has the same `RequestMirror` (the same
//!   `backendRef` and share), except rules answered with a redirect, whose requests the proxy never copies (a
//!   redirect rule with a `RequestMirror` is refused);
//! - some rule matches every request (no `matches`, or a match of any path with no other condition), so no
//!   request outside the rules is copied either;
//! - no Shoal `Mirror` is served for the Service: it takes precedence (reason `Conflicted`, as a Shoal `Route`
//!   over the routes);
//! - the `Mirror` built passes `model::validate` (the shadow a known Service, the port one of its ports).
//!
//! Otherwise every route with a `RequestMirror` for that Service is refused for it, the message naming the
//! filter and why; routes without one are served as they are.

use std::collections::BTreeMap;

use super::super::{ObjId, WATCHED};
use super::{Translated, resource};
use crate::model::validate;
use crate::model::{Mirror, PathMatch, ResourceKey, RouteRule, ServiceRef, Spec};

/// Why the filters cannot be served: the condition's reason and message.
pub(super) type Refusal = (&'static str, String);

/// The Shoal mirror of `service` from the `routes` attached to it (in order): `None` when no rule mirrors.
/// `shoal_mirrors`: the services with a served Shoal `Mirror`.
pub(super) fn of_service(
    service: &ServiceRef,
    routes: &[(&ObjId, &Translated)],
    shoal_mirrors: &BTreeMap<ServiceRef, ResourceKey>,
    catalog: &dyn validate::Catalog,
) -> Result<Option<Mirror>, Refusal> {
    let rules = || {
        routes.iter().flat_map(|(id, t)| {
            (t.rules.iter().zip(&t.mirrors).enumerate())
                .map(move |(i, (rule, m))| (*id, i, rule, m.as_ref()))
        })
    };
    let Some((first_id, _, _, Some(first))) = rules().find(|(.., m)| m.is_some()) else {
        return Ok(None);
    };
    let first_at = at(first_id, &first.field);
    let unsupported = |message: String| ("UnsupportedValue", message);
    if let Some(key) = shoal_mirrors.get(service) {
        return Err((
            "Conflicted",
            format!(
                "{first_at}: the Shoal {key} mirrors service {service}, and takes precedence over \
                 RequestMirror filters"
            ),
        ));
    }
    for (id, i, rule, mirror) in rules() {
        match (rule.redirect.is_some(), mirror) {
            (true, None) => {}
            (true, Some(m)) => {
                return Err(unsupported(format!(
                    "{}: the rule is answered with a redirect by the calling proxy, which copies none of \
                     those requests",
                    at(id, &m.field)
                )));
            }
            (false, Some(m)) if m.same_as(first) => {}
            (false, Some(m)) => {
                return Err(unsupported(format!(
                    "{}: differs from {first_at}: shoal-proxy mirrors per service, so every rule attached to \
                     service {service} must mirror to the same backendRef and share",
                    at(id, &m.field)
                )));
            }
            (false, None) => {
                return Err(unsupported(format!(
                    "{first_at}: shoal-proxy mirrors every request to service {service}, and {} has no \
                     RequestMirror: give every rule attached to the service the same one",
                    at(id, &format!("spec.rules[{i}]"))
                )));
            }
        }
    }
    if !rules().any(|(_, _, rule, _)| catch_all(rule)) {
        return Err(unsupported(format!(
            "{first_at}: shoal-proxy mirrors every request to service {service}, also those no rule matches: \
             add a rule without matches (with the same RequestMirror) so that none falls outside the rules"
        )));
    }
    let mirror = Mirror {
        target: service.clone(),
        mirror: first.service.clone(),
        port: first.port,
        percent: first.percent,
        compare_headers: Vec::new(),
    };
    let as_resource = resource(service, Spec::Mirror(mirror.clone()));
    validate::validate(&as_resource, catalog).map_err(|invalid| {
        unsupported(format!(
            "{first_at}.backendRef: translated to a Shoal mirror that is refused: {invalid}"
        ))
    })?;
    Ok(Some(mirror))
}

/// `field` of the route `id`: `HTTPRoute default/web spec.rules[0]`.
fn at(id: &ObjId, field: &str) -> String {
    let (namespace, name) = &id.1;
    format!("{} {namespace}/{name} {field}", WATCHED[id.0].kind)
}

/// Whether `rule` matches every request.
fn catch_all(rule: &RouteRule) -> bool {
    rule.matches.is_empty()
        || rule.matches.iter().any(|m| {
            m.headers.is_empty()
                && m.method.is_none()
                && match &m.path {
                    None => true,
                    Some(PathMatch::Prefix(p)) => p.is_empty() || p == "/",
                    Some(_) => false,
                }
        })
}
