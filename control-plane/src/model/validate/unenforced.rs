//! What shoal-proxy does not enforce yet, in one place.
//!
//! The product's first rule: a setting or policy the control plane accepts is a promise — the proxy enforces
//! it, it is tested and it is visible — or it is refused with an error naming the field. The kinds and fields
//! listed here are part of the API (proto, YAML, model, and their structural checks in the sibling modules,
//! kept for the day they are enforced), but no proxy acts on them yet. So:
//!
//! - [`super::validate`] refuses them at `apply` (Admin API and `shoalctl`), one error per kind or field;
//! - discovery never pushes them ([`enforced`]): a store written before this refusal may still hold them, and
//!   the control plane warns about each such resource at start-up ([`refusals`]) and keeps serving the rest.
//!
//! Each entry is deleted when the proxy enforces what it names, in the same change that lands the proxy's
//! enforcement, its tests and its documentation (docs/shoalctl.md, "Refused until enforced"): lifting a
//! refusal is deleting one line of [`KINDS`] or [`FIELDS`].

use std::borrow::Cow;

use super::FieldError;
use crate::model::{Resource, ResourceKind, Route, Spec};

/// Where an operator reads what is refused and why.
const SEE: &str = "see docs/shoalctl.md#refused-until-enforced";

/// A kind the proxy does not enforce at all.
#[derive(Debug)]
pub struct UnenforcedKind {
    /// The kind.
    pub kind: ResourceKind,
    /// Its name in YAML documents (`kind: BackendPolicy`).
    pub yaml: &'static str,
    /// What it would do and when it arrives, for the message.
    pub arrives: &'static str,
}

/// A field of an enforced kind that the proxy ignores.
#[derive(Debug)]
pub struct UnenforcedField {
    /// The kind it belongs to.
    pub kind: ResourceKind,
    /// Its path in general form, for documentation and tests: `spec.rules[].retry`.
    pub field: &'static str,
    /// Why it is refused, after "not enforced by shoal-proxy yet".
    pub why: &'static str,
    /// The paths where `spec` sets it: `spec.rules[0].retry`.
    pub find: fn(&Spec) -> Vec<String>,
    /// Removes it from `spec`, so what discovery pushes is only what the proxy enforces.
    pub strip: fn(&mut Spec),
}

/// The kinds refused until the proxy enforces them. Delete an entry when it does.
pub const KINDS: &[UnenforcedKind] = &[UnenforcedKind {
    kind: ResourceKind::Mirror,
    yaml: "Mirror",
    arrives: "traffic mirroring arrives after the resilience work",
}];

/// The fields refused until the proxy enforces them. Delete an entry when it does.
pub const FIELDS: &[UnenforcedField] = &[UnenforcedField {
    kind: ResourceKind::Route,
    field: "spec.rules[].backends[].port",
    why: "the proxy calls a backend on the port the request came in on",
    find: route_backend_ports,
    strip: strip_route_backend_ports,
}];

/// One error per unenforced kind or field that `spec` uses; empty when the proxy enforces all of it.
pub fn refusals(spec: &Spec) -> Vec<FieldError> {
    let kind = spec.kind();
    if let Some(refused) = KINDS.iter().find(|k| k.kind == kind) {
        let reason = format!(
            "{} is not enforced by shoal-proxy yet; remove this resource ({}; {SEE})",
            refused.yaml, refused.arrives
        );
        return vec![FieldError::new("kind", reason)];
    }
    FIELDS
        .iter()
        .filter(|f| f.kind == kind)
        .flat_map(|f| {
            let reason = format!(
                "not enforced by shoal-proxy yet; remove it ({}; {SEE})",
                f.why
            );
            (f.find)(spec)
                .into_iter()
                .map(move |field| FieldError::new(field, reason.clone()))
        })
        .collect()
}

/// Whether a structural error at `field` is about what `refusal` refuses anyway (a refused kind covers its
/// whole `spec`): reporting it too would only ask the operator to fix what must go.
pub(super) fn covers(refusal: &FieldError, field: &str) -> bool {
    let scope = if refusal.field == "kind" {
        "spec"
    } else {
        refusal.field.as_str()
    };
    field
        .strip_prefix(scope)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// What discovery may push of `resource`: `None` for a refused kind, a copy without the refused fields when
/// it sets any, the resource itself otherwise. Only a store written before the refusal holds such resources.
pub fn enforced(resource: &Resource) -> Option<Cow<'_, Resource>> {
    let kind = resource.kind();
    if KINDS.iter().any(|k| k.kind == kind) {
        return None;
    }
    let set: Vec<_> = FIELDS
        .iter()
        .filter(|f| f.kind == kind && !(f.find)(&resource.spec).is_empty())
        .collect();
    if set.is_empty() {
        return Some(Cow::Borrowed(resource));
    }
    let mut stripped = resource.clone();
    for field in set {
        (field.strip)(&mut stripped.spec);
    }
    Some(Cow::Owned(stripped))
}

fn route(spec: &Spec) -> Option<&Route> {
    match spec {
        Spec::Route(route) => Some(route),
        _ => None,
    }
}

fn route_backend_ports(spec: &Spec) -> Vec<String> {
    let rules = route(spec).map_or(&[][..], |r| &r.rules);
    let mut found = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        for (j, backend) in rule.backends.iter().enumerate() {
            if backend.port.is_some() {
                found.push(format!("spec.rules[{i}].backends[{j}].port"));
            }
        }
    }
    found
}

fn strip_route_backend_ports(spec: &mut Spec) {
    if let Spec::Route(route) = spec {
        for backend in route.rules.iter_mut().flat_map(|r| &mut r.backends) {
            backend.port = None;
        }
    }
}
