//! Gateway API routes attached to a Service (the GAMMA mesh profile): `HTTPRoute` and `GRPCRoute`
//! (`gateway.networking.k8s.io/v1`) whose `parentRefs` name a Service (`kind: Service`, group `""`) become the
//! Shoal route of that service, so manifests written for Linkerd or Istio keep working.
//!
//! - A route applies to every Service its `parentRefs` name; parentRefs naming anything else (a Gateway) are
//!   another controller's and left alone.
//! - The rules of every route attached to one Service are joined in one Shoal route, routes in namespace and
//!   name order.
//! - What translates: path matches (`Exact`, `PathPrefix`, `RegularExpression`), header matches (`Exact`,
//!   `RegularExpression`), `method`; for gRPC, `method.service` / `method.method` (`Exact` or
//!   `RegularExpression`) as the path `/<service>/<method>`; `backendRefs` to Services with `port` and
//!   `weight`; `timeouts.request`; the rule's `name`; the `RequestHeaderModifier` and `ResponseHeaderModifier`
//!   filters of both kinds and an `HTTPRoute`'s `RequestRedirect` ([`filter`]). Anything else (`URLRewrite`,
//!   `ExtensionRef`, a backend's filters, query parameter matches, `timeouts.backendRequest`,
//!   `sessionPersistence`, `hostnames`, a parentRef's `port` or `sectionName`, a backend in another namespace)
//!   refuses the whole route: `Accepted=False`, reason `UnsupportedValue`, naming the field. Nothing is dropped
//!   silently.
//! - `RequestMirror` (both kinds) becomes the Service's Shoal `Mirror` when every rule attached to the Service
//!   mirrors the same way, as a Shoal mirror is per service ([`mirror`]); otherwise, or when a Shoal `Mirror`
//!   for the Service is served (`Conflicted`: it takes precedence), the routes with the filter are refused
//!   for that Service, naming it.
//! - `backendRefs[].port` (required by the Gateway API) is the backend Service's port the proxy calls, as a Shoal
//!   route backend's `port`; one the Service does not have is refused naming the field.
//! - The Shoal route built is checked by `model::validate::validate` like any other; a refusal names the
//!   Shoal field it translated to.
//! - A Shoal `Route` resource for the same Service takes precedence: the Gateway API routes for it are not
//!   served, and say so (`Accepted=False`, reason `Conflicted`, naming the Route).
//! - An update that is refused keeps the last accepted translation of that route served.

mod filter;
mod mirror;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::status::{Condition, StatusPatch};
use super::{GRPC_ROUTES, HTTP_ROUTES, ObjId, Outcome, Watched};
use crate::discovery::hub::contributions;
use crate::model::validate;
use crate::model::{
    HeaderMatch, Metadata, Mirror, PathMatch, Resource, ResourceKey, Route, RouteMatch, RouteRule,
    Service, ServiceRef, Spec, ValueMatch, WeightedBackend,
};
use crate::sources::kubernetes::cluster::Table;

pub(crate) use filter::RuleMirror;

/// The prefix of the catalog sources of routes translated from the Gateway API.
pub(crate) const SOURCE_PREFIX: &str = "kubernetes-gateway/";

/// One route's translation: per Service it attaches to (with the parentRef as written), its rules.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Translated {
    /// `(parentRef, service)` for every Service parent.
    pub(crate) parents: Vec<(Value, ServiceRef)>,
    /// The rules, in order.
    pub(crate) rules: Vec<RouteRule>,
    /// Each rule's `RequestMirror`, if any (a Shoal mirror is per service: see [`mirror`]).
    pub(crate) mirrors: Vec<Option<RuleMirror>>,
}

/// An error at a field of the Gateway API object (`spec.rules[0].filters`).
type Unsupported = String;

/// The Service parents of a route's `spec`, as written and as service references.
pub(crate) fn service_parents(spec: &Value, namespace: &str) -> Vec<(Value, ServiceRef)> {
    let refs = spec["parentRefs"].as_array().cloned().unwrap_or_default();
    refs.into_iter()
        .filter(|p| {
            p["kind"] == "Service" && matches!(p["group"].as_str(), None | Some("" | "core"))
        })
        .filter_map(|p| {
            let name = p["name"].as_str()?.to_owned();
            let ns = p["namespace"].as_str().unwrap_or(namespace).to_owned();
            Some((p, ServiceRef::new(name, ns)))
        })
        .collect()
}

/// Translates a route's spec (`grpc`: a `GRPCRoute`); `Ok(None)` when no parentRef names a Service (not a mesh
/// route).
pub(crate) fn translate(
    spec: &Value,
    namespace: &str,
    grpc: bool,
) -> Result<Option<Translated>, Unsupported> {
    let parents = service_parents(spec, namespace);
    if parents.is_empty() {
        return Ok(None);
    }
    let all_refs = spec["parentRefs"].as_array().cloned().unwrap_or_default();
    for (i, p) in all_refs.iter().enumerate() {
        if p["kind"] != "Service" {
            continue;
        }
        for field in ["port", "sectionName"] {
            if !p[field].is_null() {
                return Err(format!(
                    "spec.parentRefs[{i}].{field}: a Shoal route applies to every port of its Service; \
                     attach the route to the whole Service"
                ));
            }
        }
    }
    for field in ["hostnames"] {
        if spec[field].as_array().is_some_and(|h| !h.is_empty()) {
            return Err(format!(
                "spec.{field}: not supported for routes attached to a Service"
            ));
        }
    }
    let empty = Vec::new();
    let rules = spec["rules"].as_array().unwrap_or(&empty);
    let mut out = Vec::with_capacity(rules.len());
    let mut mirrors = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let (rule, mut mirror) =
            rule_of(rule, namespace, grpc).map_err(|e| format!("spec.rules[{i}].{e}"))?;
        if let Some(m) = &mut mirror {
            m.field = format!("spec.rules[{i}].{}", m.field);
        }
        out.push(rule);
        mirrors.push(mirror);
    }
    Ok(Some(Translated {
        parents,
        rules: out,
        mirrors,
    }))
}

/// Fields that are refused where they are set and non-empty.
fn refuse_set(object: &Value, fields: &[&str], why: &str) -> Result<(), Unsupported> {
    for field in fields {
        let value = &object[*field];
        let set = match value {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        if set {
            return Err(format!("{field}: {why}"));
        }
    }
    Ok(())
}

/// A rule and its `RequestMirror`.
fn rule_of(
    rule: &Value,
    namespace: &str,
    grpc: bool,
) -> Result<(RouteRule, Option<RuleMirror>), Unsupported> {
    refuse_set(
        rule,
        &["sessionPersistence", "retry"],
        "not enforced by shoal-proxy for Gateway API routes",
    )?;
    let mut timeout = None;
    if let Some(timeouts) = rule["timeouts"].as_object() {
        for (field, value) in timeouts {
            match field.as_str() {
                "request" => {
                    let text = value.as_str().unwrap_or_default();
                    let d = duration(text).ok_or_else(|| {
                        format!("timeouts.request: {value} is not a Gateway API duration (1h30m, 10s, 500ms)")
                    })?;
                    // "0s" means no timeout in the Gateway API.
                    timeout = (!d.is_zero()).then_some(d);
                }
                other => {
                    return Err(format!(
                        "timeouts.{other}: not enforced by shoal-proxy (only timeouts.request is)"
                    ));
                }
            }
        }
    }
    let empty = Vec::new();
    let mut matches = Vec::new();
    for (i, m) in rule["matches"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        let translated = if grpc { grpc_match(m) } else { http_match(m) };
        matches.push(translated.map_err(|e| format!("matches[{i}].{e}"))?);
    }
    let mut backends = Vec::new();
    for (i, b) in rule["backendRefs"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .enumerate()
    {
        backends.push(backend(b, namespace).map_err(|e| format!("backendRefs[{i}].{e}"))?);
    }
    let filters = filter::filters(rule, namespace, grpc)?;
    let rule = RouteRule {
        name: rule["name"].as_str().unwrap_or_default().to_owned(),
        matches,
        backends,
        timeout,
        retry: None,
        request_headers: filters.request_headers,
        response_headers: filters.response_headers,
        redirect: filters.redirect,
    };
    Ok((rule, filters.mirror))
}

fn http_match(m: &Value) -> Result<RouteMatch, Unsupported> {
    refuse_set(
        m,
        &["queryParams"],
        "query parameter matches are not enforced by shoal-proxy",
    )?;
    let path = match m.get("path").filter(|p| !p.is_null()) {
        None => None,
        Some(p) => {
            let value = p["value"].as_str().unwrap_or("/").to_owned();
            Some(match p["type"].as_str().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::Prefix(value),
                "RegularExpression" => PathMatch::Regex(value),
                other => return Err(format!("path.type: {other:?} is not supported")),
            })
        }
    };
    let method = m["method"].as_str().map(str::to_owned);
    Ok(RouteMatch {
        path,
        headers: headers(m)?,
        method,
    })
}

fn grpc_match(m: &Value) -> Result<RouteMatch, Unsupported> {
    let path = match m.get("method").filter(|p| !p.is_null()) {
        None => None,
        Some(method) => {
            let (service, name) = (method["service"].as_str(), method["method"].as_str());
            Some(match method["type"].as_str().unwrap_or("Exact") {
                "Exact" => match (service, name) {
                    (Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
                    (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
                    (None, Some(m)) => PathMatch::Regex(format!("/[^/]+/{}", regex_escape(m))),
                    (None, None) => {
                        return Err("method: set service, method or both".to_owned());
                    }
                },
                "RegularExpression" => PathMatch::Regex(format!(
                    "/{}/{}",
                    service.unwrap_or("[^/]+"),
                    name.unwrap_or("[^/]+")
                )),
                other => return Err(format!("method.type: {other:?} is not supported")),
            })
        }
    };
    Ok(RouteMatch {
        path,
        headers: headers(m)?,
        method: None,
    })
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn headers(m: &Value) -> Result<Vec<HeaderMatch>, Unsupported> {
    let empty = Vec::new();
    let mut out = Vec::new();
    for (i, h) in m["headers"].as_array().unwrap_or(&empty).iter().enumerate() {
        let name = h["name"].as_str().unwrap_or_default().to_owned();
        let value = h["value"].as_str().unwrap_or_default().to_owned();
        let value = match h["type"].as_str().unwrap_or("Exact") {
            "Exact" => ValueMatch::Exact(value),
            "RegularExpression" => ValueMatch::Regex(value),
            other => return Err(format!("headers[{i}].type: {other:?} is not supported")),
        };
        out.push(HeaderMatch { name, value });
    }
    Ok(out)
}

/// A `backendRef` to a Service of `namespace` (errors start at the field: `port: ...`).
fn backend(b: &Value, namespace: &str) -> Result<WeightedBackend, Unsupported> {
    refuse_set(
        b,
        &["filters"],
        "not enforced by shoal-proxy for Gateway API routes",
    )?;
    if b["kind"].as_str().is_some_and(|k| k != "Service")
        || b["group"]
            .as_str()
            .is_some_and(|g| !g.is_empty() && g != "core")
    {
        return Err("kind: only Services are supported as backends".to_owned());
    }
    let name = b["name"].as_str().unwrap_or_default().to_owned();
    if let Some(ns) = b["namespace"].as_str()
        && ns != namespace
    {
        return Err(
            "namespace: a backend in another namespace needs a ReferenceGrant, which Shoal does not read"
                .to_owned(),
        );
    }
    let port = match &b["port"] {
        Value::Null => None,
        p => Some(
            p.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port: {p} is not a port"))?,
        ),
    };
    let weight = match &b["weight"] {
        Value::Null => 1,
        w => w
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| format!("weight: {w} is not a weight"))?,
    };
    Ok(WeightedBackend {
        service: ServiceRef::new(name, namespace),
        port,
        weight,
    })
}

/// A Gateway API duration (GEP-2257): up to four `<number><unit>` parts, units `h`, `m`, `s`, `ms`.
pub(crate) fn duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return None;
        };
        total += unit * u32::try_from(n).ok()?;
        rest = &rest[len..];
        parts += 1;
        if parts > 4 {
            return None;
        }
    }
    (parts > 0).then_some(total)
}

/// The Gateway API routes served: the last accepted translation of each route, and per Service the Shoal
/// route built from them.
#[derive(Debug, Default)]
pub(crate) struct Served {
    accepted: BTreeMap<ObjId, Translated>,
    routes: BTreeMap<ServiceRef, ServiceRoute>,
}

/// What the Gateway API routes attached to one Service serve: its Shoal route, and its mirror when the
/// routes' `RequestMirror` filters translate ([`mirror`]).
#[derive(Debug, Clone, PartialEq)]
struct ServiceRoute {
    route: Route,
    mirror: Option<Mirror>,
}

impl Served {
    /// Re-evaluates every `HTTPRoute` and `GRPCRoute` (see the module's doc) against the known `services` and
    /// the services with a Shoal Route (`shoal_routes`) or Mirror (`shoal_mirrors`); adds changed catalog
    /// sources and wanted conditions to `outcome`.
    pub(crate) fn evaluate(
        &mut self,
        tables: &[Table<Watched>; 10],
        services: &BTreeMap<String, Service>,
        shoal_routes: &BTreeMap<ServiceRef, ResourceKey>,
        shoal_mirrors: &BTreeMap<ServiceRef, ResourceKey>,
        outcome: &mut Outcome,
    ) {
        let mut objects: Vec<(ObjId, &Watched)> = Vec::new();
        for index in [HTTP_ROUTES, GRPC_ROUTES] {
            if !tables[index].synced() {
                // Not listed yet: keep what it served.
                continue;
            }
            objects.extend((tables[index].iter()).map(|(key, w)| ((index, key.clone()), w)));
            self.accepted
                .retain(|(i, key), _| *i != index || tables[index].get(key).is_some());
        }
        // Namespace and name order across both kinds.
        objects.sort_by(|a, b| (&a.0.1, a.0.0).cmp(&(&b.0.1, b.0.0)));
        // Per route: its own refusal, if any.
        let mut refused: BTreeMap<ObjId, String> = BTreeMap::new();
        let mut parents_of: BTreeMap<ObjId, Vec<(Value, ServiceRef)>> = BTreeMap::new();
        for (id, object) in &objects {
            let (namespace, _) = &id.1;
            match translate(&object.spec, namespace, id.0 == GRPC_ROUTES) {
                Ok(None) => {
                    self.accepted.remove(id);
                }
                Ok(Some(translated)) => {
                    parents_of.insert(id.clone(), translated.parents.clone());
                    self.accepted.insert(id.clone(), translated);
                }
                Err(message) => {
                    parents_of.insert(id.clone(), service_parents(&object.spec, namespace));
                    refused.insert(id.clone(), message);
                }
            }
        }
        // Per Service: the routes attached (accepted translations), in order.
        let mut attached: BTreeMap<ServiceRef, Vec<ObjId>> = BTreeMap::new();
        let mut ordered: Vec<&ObjId> = self.accepted.keys().collect();
        ordered.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
        for id in ordered {
            for (_, service) in &self.accepted[id].parents {
                attached
                    .entry(service.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
        let catalog: Vec<Service> = services.values().cloned().collect();
        // Per (route, service): the condition.
        let mut conditions: BTreeMap<(ObjId, ServiceRef), (&'static str, String)> = BTreeMap::new();
        let mut routes: BTreeMap<ServiceRef, ServiceRoute> = BTreeMap::new();
        for (service, ids) in &attached {
            if let Some(route) = shoal_routes.get(service) {
                for id in ids {
                    let message = format!(
                        "the Shoal {route} routes service {service}, and takes precedence over Gateway API routes"
                    );
                    conditions.insert((id.clone(), service.clone()), ("Conflicted", message));
                }
                continue;
            }
            // Each route's rules for this Service (backend ports checked), then the mirror they ask for together.
            let mut own_rules: Vec<(&ObjId, Vec<RouteRule>)> = Vec::new();
            for id in ids {
                let own = &self.accepted[id].rules;
                match backend_ports(own, services) {
                    Ok(()) => own_rules.push((id, own.clone())),
                    Err(message) => {
                        conditions
                            .insert((id.clone(), service.clone()), ("UnsupportedValue", message));
                    }
                }
            }
            let with_rules: Vec<(&ObjId, &Translated)> = (own_rules.iter())
                .map(|(id, _)| (*id, &self.accepted[*id]))
                .collect();
            let mirror = match mirror::of_service(service, &with_rules, shoal_mirrors, &catalog) {
                Ok(mirror) => mirror,
                Err((reason, message)) => {
                    // The routes asking for the mirror are not served for this Service; the others are.
                    for (id, translated) in &with_rules {
                        if translated.mirrors.iter().any(Option::is_some) {
                            let key = ((*id).clone(), service.clone());
                            conditions.insert(key, (reason, message.clone()));
                        }
                    }
                    None
                }
            };
            own_rules.retain(|(id, _)| !conditions.contains_key(&((*id).clone(), service.clone())));
            let ids: Vec<&ObjId> = own_rules.iter().map(|(id, _)| *id).collect();
            let rules: Vec<RouteRule> = own_rules.into_iter().flat_map(|(_, own)| own).collect();
            let route = Route {
                parent: service.clone(),
                rules,
            };
            let as_resource = resource(service, Spec::Route(route.clone()));
            match validate::validate(&as_resource, &catalog) {
                Ok(()) => {
                    routes.insert(service.clone(), ServiceRoute { route, mirror });
                }
                Err(invalid) => {
                    let message = format!("translated to a Shoal route that is refused: {invalid}");
                    for id in ids {
                        conditions.insert(
                            (id.clone(), service.clone()),
                            ("UnsupportedValue", message.clone()),
                        );
                    }
                }
            }
        }
        // Status: one entry per Service parent.
        for (id, object) in &objects {
            let Some(parents) = parents_of.get(id) else {
                continue;
            };
            let own = refused.get(id).map(|m| {
                let kept = if self.accepted.contains_key(id) {
                    " (the last accepted version is still served)"
                } else {
                    " (nothing of it is served)"
                };
                format!("{m}{kept}")
            });
            let entries = (parents.iter())
                .map(|(parent_ref, service)| {
                    let condition = match (&own, conditions.get(&(id.clone(), service.clone()))) {
                        (Some(message), _) => Condition::refused(
                            object.generation,
                            "UnsupportedValue",
                            message.clone(),
                        ),
                        (None, Some((reason, message))) => {
                            Condition::refused(object.generation, reason, message.clone())
                        }
                        (None, None) => Condition::accepted(
                            object.generation,
                            &format!("served as the route of service {service}"),
                        ),
                    };
                    (parent_ref.clone(), condition)
                })
                .collect();
            let (namespace, name) = &id.1;
            outcome.patches.push(StatusPatch::gateway(
                id.0,
                namespace,
                name,
                &object.status,
                entries,
            ));
        }
        for service in self.routes.keys().chain(routes.keys()) {
            let (old, new) = (self.routes.get(service), routes.get(service));
            if old == new {
                continue;
            }
            let source = format!("{SOURCE_PREFIX}{service}");
            if outcome.sources.iter().any(|(s, _)| *s == source) {
                continue;
            }
            let contributed = new
                .map(|served| {
                    let mut out =
                        contributions(&resource(service, Spec::Route(served.route.clone())));
                    if let Some(mirror) = &served.mirror {
                        out.extend(contributions(&resource(
                            service,
                            Spec::Mirror(mirror.clone()),
                        )));
                    }
                    out
                })
                .unwrap_or_default();
            outcome.sources.push((source, contributed));
        }
        self.routes = routes;
    }
}

/// Checks that every `backendRefs[].port` (required by the Gateway API) is a port of its backend Service, so the
/// refusal names the Gateway API field, before the mirror is decided (a route refused here cannot lend its
/// catch-all rule to another route's mirror). An unknown backend is left to the Shoal validation.
fn backend_ports(rules: &[RouteRule], services: &BTreeMap<String, Service>) -> Result<(), String> {
    for (i, rule) in rules.iter().enumerate() {
        for (j, backend) in rule.backends.iter().enumerate() {
            let (Some(port), Some(service)) =
                (backend.port, services.get(&backend.service.to_string()))
            else {
                continue;
            };
            if !service.ports.iter().any(|p| p.port == port) {
                let ports: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
                return Err(format!(
                    "spec.rules[{i}].backendRefs[{j}].port: {port} is not a port of Service {} ({})",
                    service.qualified(),
                    ports.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// A Shoal policy for `service` as a resource named after it.
fn resource(service: &ServiceRef, spec: Spec) -> Resource {
    Resource {
        metadata: Metadata {
            name: service.name.clone(),
            namespace: service.namespace.clone(),
            ..Metadata::default()
        },
        spec,
    }
}

#[cfg(test)]
mod tests;
