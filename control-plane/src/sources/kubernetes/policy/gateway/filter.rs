//! An `HTTPRoute` rule's `filters` as the Shoal rule's filters, one to one: `RequestHeaderModifier` →
//! `request_headers`, `ResponseHeaderModifier` → `response_headers`, `RequestRedirect` → `redirect`
//! (docs/resilience.md, "Header edits and redirects"). The translation is structural; the values are checked by
//! `model::validate` like any route's, which names the Shoal field. Filters the proxy does not enforce
//! (`URLRewrite`, `RequestMirror`, `ExtensionRef`) and every filter of a `GRPCRoute` are refused naming the
//! field.

use serde_json::Value;

use super::Unsupported;
use crate::model::{HeaderModifier, PathModifier, RequestRedirect};

/// The Shoal filters of one rule.
#[derive(Debug, Default)]
pub(super) struct Filters {
    pub(super) request_headers: Option<HeaderModifier>,
    pub(super) response_headers: Option<HeaderModifier>,
    pub(super) redirect: Option<RequestRedirect>,
}

/// The rule's `filters` (errors start at `filters`).
pub(super) fn filters(rule: &Value, grpc: bool) -> Result<Filters, Unsupported> {
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
        if grpc {
            return Err(format!(
                "{at}.type: {ty:?}: GRPCRoute filters are not enforced by shoal-proxy"
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
                let edits =
                    header_modifier(edits).map_err(|e| format!("{at}.requestHeaderModifier{e}"))?;
                out.request_headers = Some(edits);
            }
            "ResponseHeaderModifier" => {
                once(out.response_headers.is_some())?;
                let edits = &filter["responseHeaderModifier"];
                let edits = header_modifier(edits)
                    .map_err(|e| format!("{at}.responseHeaderModifier{e}"))?;
                out.response_headers = Some(edits);
            }
            "RequestRedirect" => {
                once(out.redirect.is_some())?;
                let redirect = redirect(&filter["requestRedirect"])
                    .map_err(|e| format!("{at}.requestRedirect{e}"))?;
                out.redirect = Some(redirect);
            }
            "URLRewrite" | "RequestMirror" | "ExtensionRef" => {
                return Err(format!("{at}.type: {ty} is not enforced by shoal-proxy"));
            }
            other => return Err(format!("{at}.type: {other:?} is not a filter type")),
        }
    }
    Ok(out)
}

/// An `HTTPHeaderFilter` (errors start with the field after the filter's, `.set[0].name`).
fn header_modifier(edits: &Value) -> Result<HeaderModifier, Unsupported> {
    if !edits.is_object() {
        return Err(": required by the filter's type".to_owned());
    }
    let pairs = |list: &str| -> Result<Vec<(String, String)>, Unsupported> {
        let mut out = Vec::new();
        for (i, header) in items(&edits[list]).iter().enumerate() {
            out.push((
                text(&header["name"]).map_err(|e| format!(".{list}[{i}].name: {e}"))?,
                text(&header["value"]).map_err(|e| format!(".{list}[{i}].value: {e}"))?,
            ));
        }
        Ok(out)
    };
    let mut remove = Vec::new();
    for (i, name) in items(&edits["remove"]).iter().enumerate() {
        remove.push(text(name).map_err(|e| format!(".remove[{i}]: {e}"))?);
    }
    Ok(HeaderModifier {
        set: pairs("set")?,
        add: pairs("add")?,
        remove,
    })
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
