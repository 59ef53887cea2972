//! Personal identifiers at delivery: properties a schema marks `"x-kakehashi-pii": "my-number"`
//! are replaced by a per-department pseudonym (keyed HMAC-SHA-256 over the department and the
//! value), unless the reader's policy grants the raw value. The same person gets the same token
//! inside one department and unrelated tokens in two departments, as with the My Number
//! system's per-agency codes (機関別符号).

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One step of a path into a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object property.
    Key(String),
    /// Every item of an array.
    AnyItem,
}

/// Where personal identifiers sit in payloads of one schema.
pub type PiiPaths = Vec<Vec<Step>>;

/// How deep `$ref` chains are followed (schemas may be recursive).
const MAX_DEPTH: usize = 32;

/// Finds every annotated property, following `$ref`s (local ones and, through `resolve`, other
/// registered schemas), combinators and array items.
pub fn find(schema: &Value, resolve: &dyn Fn(&str) -> Option<Value>) -> PiiPaths {
    let mut out = Vec::new();
    walk(schema, schema, resolve, &mut Vec::new(), &mut out, 0);
    out.sort_by_key(|p| format!("{p:?}"));
    out.dedup();
    out
}

fn walk(
    node: &Value,
    root: &Value,
    resolve: &dyn Fn(&str) -> Option<Value>,
    path: &mut Vec<Step>,
    out: &mut PiiPaths,
    depth: usize,
) {
    let Some(obj) = node.as_object() else { return };
    if depth > MAX_DEPTH {
        return;
    }
    if obj.get("x-kakehashi-pii").and_then(Value::as_str) == Some("my-number") {
        out.push(path.clone());
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        if let Some(fragment) = r.strip_prefix('#') {
            if let Some(target) = root.pointer(fragment) {
                walk(target, root, resolve, path, out, depth + 1);
            }
        } else if let Some(doc) = resolve(r.split('#').next().unwrap_or(r)) {
            let fragment = r.split_once('#').map(|(_, f)| f).unwrap_or("");
            if let Some(target) = doc.pointer(fragment) {
                walk(target, &doc, resolve, path, out, depth + 1);
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            path.push(Step::Key(k.clone()));
            walk(v, root, resolve, path, out, depth + 1);
            path.pop();
        }
    }
    let item_schemas = obj
        .get("items")
        .into_iter()
        .chain(obj.get("prefixItems").and_then(Value::as_array).into_iter().flatten());
    for items in item_schemas {
        path.push(Step::AnyItem);
        walk(items, root, resolve, path, out, depth + 1);
        path.pop();
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for sub in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
            walk(sub, root, resolve, path, out, depth + 1);
        }
    }
}

/// The pseudonym of `value` for `department`: `kh1:` + 32 hex digits of
/// HMAC-SHA-256(secret, department ‖ 0x00 ‖ value).
pub fn pseudonym(secret: &[u8], department: &str, value: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(department.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("{}{}", kakehashi_proto::ident::PSEUDONYM_PREFIX, hex::encode(&digest[..16]))
}

/// Replaces every string found at `paths` in `data` by its pseudonym; returns how many.
pub fn apply(data: &mut Value, paths: &PiiPaths, secret: &[u8], department: &str) -> usize {
    paths.iter().map(|p| replace_at(data, p, secret, department)).sum()
}

fn replace_at(node: &mut Value, path: &[Step], secret: &[u8], department: &str) -> usize {
    match path.split_first() {
        None => match node {
            Value::String(s) => {
                *s = pseudonym(secret, department, s);
                1
            }
            _ => 0,
        },
        Some((Step::Key(k), rest)) => {
            node.get_mut(k.as_str()).map_or(0, |child| replace_at(child, rest, secret, department))
        }
        Some((Step::AnyItem, rest)) => match node {
            Value::Array(items) => items.iter_mut().map(|i| replace_at(i, rest, secret, department)).sum(),
            _ => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn person() -> Value {
        json!({"type": "object", "properties": {"my_number": {"type": "string", "x-kakehashi-pii": "my-number"}}})
    }

    #[test]
    fn finds_annotated_properties_through_refs_and_arrays() {
        let schema = json!({"type": "object", "properties": {
            "person": {"$ref": "https://kakehashi.invalid/schemas/common.person/1"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/child"}},
            "note": {"type": "string"}},
            "$defs": {"child": {"type": "object", "properties": {"my_number": {"x-kakehashi-pii": "my-number"}}}}});
        let resolve = |uri: &str| (uri == "https://kakehashi.invalid/schemas/common.person/1").then(person);
        let paths = find(&schema, &resolve);
        assert_eq!(paths.len(), 2, "{paths:?}");
        let mut data = json!({"person": {"my_number": "123456789018"}, "children": [{"my_number": "111111111118"}, {"my_number": "987654321093"}], "note": "123456789018"});
        assert_eq!(apply(&mut data, &paths, b"k", "mhlw"), 3);
        assert_eq!(data["note"], "123456789018", "unannotated fields are untouched");
        assert!(data["person"]["my_number"].as_str().is_some_and(|s| s.starts_with("kh1:")));
    }

    #[test]
    fn same_department_same_token_other_department_unrelated_token() {
        let a1 = pseudonym(b"secret", "mhlw", "123456789018");
        let a2 = pseudonym(b"secret", "mhlw", "123456789018");
        let b = pseudonym(b"secret", "nta", "123456789018");
        let other_person = pseudonym(b"secret", "mhlw", "111111111118");
        assert_eq!(a1, a2);
        assert_ne!(a1, b);
        assert_ne!(a1, other_person);
        assert!(!a1.contains("123456789018"));
        assert_ne!(pseudonym(b"other-secret", "mhlw", "123456789018"), a1, "the key matters");
    }
}
