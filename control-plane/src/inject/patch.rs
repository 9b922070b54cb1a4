//! The JSONPatch (RFC 6902) the injector produces: `add` operations only, and their application (what
//! `shoalctl inject` does offline, where no API server applies the patch).

use serde_json::{Value, json};

/// One `add` operation.
pub(crate) fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

/// A JSON pointer token (RFC 6901): `~` → `~0`, `/` → `~1` (`shoal.io/inject` → `shoal.io~1inject`).
pub(crate) fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Applies `add` operations to `doc` in order. An operation this module never produces, or a path whose
/// parent is missing, is an error (never a silent skip).
pub fn apply(doc: &mut Value, ops: &[Value]) -> Result<(), String> {
    for op in ops {
        let (Some("add"), Some(path), Some(value)) = (
            op.get("op").and_then(Value::as_str),
            op.get("path").and_then(Value::as_str),
            op.get("value"),
        ) else {
            return Err(format!("unsupported patch operation {op}"));
        };
        let (parent, last) = path
            .rsplit_once('/')
            .ok_or_else(|| format!("patch path {path:?} is not a JSON pointer"))?;
        let target = doc
            .pointer_mut(parent)
            .ok_or_else(|| format!("patch path {path:?}: {parent:?} does not exist"))?;
        let last = unescape(last);
        match target {
            Value::Object(map) => {
                map.insert(last, value.clone());
            }
            Value::Array(items) => {
                let index = if last == "-" {
                    items.len()
                } else {
                    last.parse::<usize>()
                        .ok()
                        .filter(|i| *i <= items.len())
                        .ok_or_else(|| format!("patch path {path:?}: bad array index"))?
                };
                items.insert(index, value.clone());
            }
            _ => {
                return Err(format!(
                    "patch path {path:?}: {parent:?} is not a container"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn adds_to_objects_and_arrays_with_escaped_keys() {
        let mut doc = json!({"a": {"b": [1, 3]}, "m": {}});
        let ops = [
            add("/a/b/1", json!(2)),
            add("/a/b/-", json!(4)),
            add(&format!("/m/{}", escape("x/y~z")), json!("v")),
        ];
        apply(&mut doc, &ops).unwrap();
        assert_eq!(doc, json!({"a": {"b": [1, 2, 3, 4]}, "m": {"x/y~z": "v"}}));
        let missing = apply(&mut doc, &[add("/nope/x", json!(1))]).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        let out_of_range = apply(&mut doc, &[add("/a/b/9", json!(1))]).unwrap_err();
        assert!(out_of_range.contains("bad array index"), "{out_of_range}");
    }
}
