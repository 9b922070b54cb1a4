//! A rule's `filters` as the Shoal rule's filters, one to one: `RequestHeaderModifier` → `request_headers`,
//! `ResponseHeaderModifier` → `response_headers`, `RequestRedirect` → `redirect` (docs/resilience.md, "Header
//! edits and redirects"), and `RequestMirror` → the mirror the rule asks for, which `gateway::mirror` turns into
//! the Service's Shoal `Mirror` when every rule asks for the same one (a Shoal mirror is per service).
//!
//! - An `HTTPRoute` rule takes all four; a `GRPCRoute` rule the header modifiers and the mirror (the Gateway
//!   API has no gRPC redirect). The proxy's filter stage edits gRPC requests and responses like any other
//!   (response edits change the response head: the only header block of a trailers-only answer). A
//!   `GRPCRoute`'s edits may not name `grpc-*` headers, which the gRPC protocol reserves.
//! - Headers no route may edit (`shoal_proto::filters::protected_header`) are refused here, naming the
//!   Gateway API field; the other values are checked by `model::validate` like any route's, which names the
//!   Shoal field.
//! - `URLRewrite` and `ExtensionRef` are refused naming the field, saying why: the proxy does not rewrite
//!   requests, and runs no extension filters.

use serde_json::Value;
use shoal_proto::filters::protected_header;

use super::Unsupported;
use crate::model::{HeaderModifier, PathModifier, RequestRedirect, ServiceRef};

/// The Shoal filters of one rule.
#[derive(Debug, Default)]
pub(super) struct Filters {
    pub(super) request_headers: Option<HeaderModifier>,
    pub(super) response_headers: Option<HeaderModifier>,
    pub(super) redirect: Option<RequestRedirect>,
    pub(super) mirror: Option<RuleMirror>,
}

/// A rule's `RequestMirror`: the copies it asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RuleMirror {
    /// Where the filter is written (`spec.rules[0].filters[1].requestMirror`), for messages.
    pub(crate) field: String,
    /// The Service receiving the copies.
    pub(crate) service: ServiceRef,
    /// Its port (`backendRef.port`).
    pub(crate) port: Option<u16>,
    /// Share of requests copied, 0–100 (`percent`, or `fraction` as a percentage; 100 when neither is set).
    pub(crate) percent: f64,
}

impl RuleMirror {
    /// Whether `other` copies the same requests to the same place.
    pub(crate) fn same_as(&self, other: &RuleMirror) -> bool {
        (&self.service, self.port, self.percent) == (&other.service, other.port, other.percent)
    }
}

/// The rule's `filters` (errors start at `filters`; a mirror's `field` too, the caller prefixes it).
pub(super) fn filters(rule: &Value, namespace: &str, grpc: bool) -> Result<Filters, Unsupported> {
    let mut out = Filters::default();
    let Some(list) = rule["filters"].as_array() else {
        return match &rule["filters"] {
            Value::Null => Ok(out),
            other => Err(format!("filters: {other} is not a list")),
        };
    };
    for (i, filter) in list.iter().enumerate() {
        let at = format!("filters[{i}]");
        let ty = filter["type"].as_str().unwrap_or_default();
        if grpc
            && !matches!(
                ty,
                "RequestHeaderModifier"
                    | "ResponseHeaderModifier"
                    | "RequestMirror"
                    | "ExtensionRef"
            )
        {
            return Err(format!(
                "{at}.type: {ty:?} is not a GRPCRoute filter type (RequestHeaderModifier, ResponseHeaderModifier, \
                 RequestMirror, ExtensionRef)"
            ));
        }
        // The Gateway API allows each of these once per rule; a second one would silently replace the first.
        let once = |slot_set: bool| {
            if slot_set {
                Err(format!(
                    "{at}.type: a second {ty} filter in one rule; merge them"
                ))
            } else {
                Ok(())
            }
        };
        match ty {
            "RequestHeaderModifier" => {
                once(out.request_headers.is_some())?;
                let edits = &filter["requestHeaderModifier"];
                let edits = header_modifier(edits, grpc)
                    .map_err(|e| format!("{at}.requestHeaderModifier{e}"))?;
                out.request_headers = Some(edits);
            }
            "ResponseHeaderModifier" => {
                once(out.response_headers.is_some())?;
                let edits = &filter["responseHeaderModifier"];
                let edits = header_modifier(edits, grpc)
                    .map_err(|e| format!("{at}.responseHeaderModifier{e}"))?;
                out.response_headers = Some(edits);
            }
            "RequestRedirect" => {
                once(out.redirect.is_some())?;
                let redirect = redirect(&filter["requestRedirect"])
                    .map_err(|e| format!("{at}.requestRedirect{e}"))?;
                out.redirect = Some(redirect);
            }
            "RequestMirror" => {
                // Shoal's mirror copies to one shadow; the Gateway API allows several filters.
                once(out.mirror.is_some())?;
                let mut mirror = request_mirror(&filter["requestMirror"], namespace)
                    .map_err(|e| format!("{at}.requestMirror{e}"))?;
                mirror.field = format!("{at}.requestMirror");
                out.mirror = Some(mirror);
            }
            "URLRewrite" => {
                return Err(format!(
                    "{at}.type: URLRewrite is not enforced: shoal-proxy sends a request with the host and \
                     path it was made with, and does not rewrite them"
                ));
            }
            "ExtensionRef" => {
                return Err(format!(
                    "{at}.type: ExtensionRef is not enforced: shoal-proxy runs only the Gateway API's own \
                     filters, no extensions"
                ));
            }
            other => return Err(format!("{at}.type: {other:?} is not a filter type")),
        }
    }
    Ok(out)
}

/// An `HTTPHeaderFilter` (errors start with the field after the filter's, `.set[0].name`); `grpc`: of a
/// `GRPCRoute`.
fn header_modifier(edits: &Value, grpc: bool) -> Result<HeaderModifier, Unsupported> {
    if !edits.is_object() {
        return Err(": required by the filter's type".to_owned());
    }
    let name_of = |value: &Value| -> Result<String, Unsupported> {
        let name = text(value)?;
        if let Some(why) = protected_header(&name) {
            return Err(format!("{name:?} {why}"));
        }
        if grpc && name.to_ascii_lowercase().starts_with("grpc-") {
            return Err(format!(
                "{name:?}: the gRPC protocol reserves grpc-* headers (status, message, timeout), which a route \
                 cannot edit"
            ));
        }
        Ok(name)
    };
    let pairs = |list: &str| -> Result<Vec<(String, String)>, Unsupported> {
        let mut out = Vec::new();
        for (i, header) in items(&edits[list]).iter().enumerate() {
            out.push((
                name_of(&header["name"]).map_err(|e| format!(".{list}[{i}].name: {e}"))?,
                text(&header["value"]).map_err(|e| format!(".{list}[{i}].value: {e}"))?,
            ));
        }
        Ok(out)
    };
    let mut remove = Vec::new();
    for (i, name) in items(&edits["remove"]).iter().enumerate() {
        remove.push(name_of(name).map_err(|e| format!(".remove[{i}]: {e}"))?);
    }
    Ok(HeaderModifier {
        set: pairs("set")?,
        add: pairs("add")?,
        remove,
    })
}

/// An `HTTPRequestMirrorFilter` (errors start with the field after the filter's, `.percent`): a `backendRef`
/// to a Service of the route's namespace, and `percent` or `fraction` (`numerator` / `denominator`, 100 by
/// default); neither means every request.
fn request_mirror(filter: &Value, namespace: &str) -> Result<RuleMirror, Unsupported> {
    if !filter.is_object() {
        return Err(": required by the filter's type".to_owned());
    }
    let backend_ref = &filter["backendRef"];
    if !backend_ref.is_object() {
        return Err(".backendRef: required".to_owned());
    }
    refuse_unknown(
        backend_ref,
        &["group", "kind", "name", "namespace", "port"],
        ".backendRef",
    )?;
    let backend = super::backend(backend_ref, namespace).map_err(|e| format!(".backendRef.{e}"))?;
    if backend.service.name.is_empty() {
        return Err(".backendRef.name: required".to_owned());
    }
    let whole = |field: &str, value: &Value| {
        value
            .as_u64()
            .ok_or_else(|| format!(".{field}: {value} is not a whole number"))
    };
    let percent = match (&filter["percent"], &filter["fraction"]) {
        (Value::Null, Value::Null) => 100.0,
        (percent, Value::Null) => {
            let n = whole("percent", percent)?;
            if n > 100 {
                return Err(format!(".percent: {n} is more than 100"));
            }
            n as f64
        }
        (Value::Null, fraction) => {
            let numerator = whole("fraction.numerator", &fraction["numerator"])?;
            let denominator = match &fraction["denominator"] {
                Value::Null => 100,
                d => whole("fraction.denominator", d)?,
            };
            if denominator == 0 {
                return Err(".fraction.denominator: 0; it must be positive".to_owned());
            }
            if numerator > denominator {
                return Err(format!(
                    ".fraction.numerator: {numerator} is more than the denominator, {denominator}"
                ));
            }
            numerator as f64 * 100.0 / denominator as f64
        }
        _ => return Err(".fraction: set percent or fraction, not both".to_owned()),
    };
    Ok(RuleMirror {
        field: String::new(),
        service: backend.service,
        port: backend.port,
        percent,
    })
}

/// Fields of `object` other than `known` are refused (`at` starts the message).
fn refuse_unknown(object: &Value, known: &[&str], at: &str) -> Result<(), Unsupported> {
    let fields = object.as_object().into_iter().flat_map(|o| o.keys());
    match fields.into_iter().find(|f| !known.contains(&f.as_str())) {
        Some(field) => Err(format!(
            "{at}.{field}: not a field of a mirror's backendRef"
        )),
        None => Ok(()),
    }
}

/// An `HTTPRequestRedirectFilter` (errors start with the field after the filter's, `.port`).
fn redirect(filter: &Value) -> Result<RequestRedirect, Unsupported> {
    if !filter.is_object() {
        return Err(": required by the filter's type".to_owned());
    }
    let optional = |field: &str| -> Result<Option<String>, Unsupported> {
        match &filter[field] {
            Value::Null => Ok(None),
            value => text(value).map(Some).map_err(|e| format!(".{field}: {e}")),
        }
    };
    let number = |field: &str| -> Result<Option<u16>, Unsupported> {
        match &filter[field] {
            Value::Null => Ok(None),
            value => (value.as_u64())
                .and_then(|n| u16::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!(".{field}: {value} is not a number from 0 to 65535")),
        }
    };
    let path = match &filter["path"] {
        Value::Null => None,
        path => Some(path_modifier(path).map_err(|e| format!(".path{e}"))?),
    };
    Ok(RequestRedirect {
        scheme: optional("scheme")?,
        hostname: optional("hostname")?,
        port: number("port")?,
        path,
        status_code: number("statusCode")?,
    })
}

/// An `HTTPPathModifier` of a redirect: `ReplaceFullPath` or `ReplacePrefixMatch`.
fn path_modifier(path: &Value) -> Result<PathModifier, Unsupported> {
    let value = |field: &str| text(&path[field]).map_err(|e| format!(".{field}: {e}"));
    match path["type"].as_str() {
        Some("ReplaceFullPath") => Ok(PathModifier::ReplaceFullPath(value("replaceFullPath")?)),
        Some("ReplacePrefixMatch") => Ok(PathModifier::ReplacePrefixMatch(value(
            "replacePrefixMatch",
        )?)),
        _ => Err(format!(
            ".type: {} is not ReplaceFullPath or ReplacePrefixMatch",
            path["type"]
        )),
    }
}

/// The items of an optional list.
fn items(list: &Value) -> &[Value] {
    list.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A required string.
fn text(value: &Value) -> Result<String, Unsupported> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{value} is not a string"))
}
