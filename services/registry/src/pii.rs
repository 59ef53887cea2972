//! Personal identifiers at delivery: properties a schema marks `"x-kakehashi-pii": "my-number"`
//! are replaced by a per-department pseudonym (keyed HMAC-SHA-256 over the department and the
//! value), unless the reader's policy grants the raw value. The same person gets the same token
//! inside one department and unrelated tokens in two departments, as with the My Number
//! system's per-agency codes (機関別符号).

use hmac::{Hmac, Mac};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::Sha256;
use std::borrow::Cow;
use std::fmt;

/// One step of a path into a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object property.
    Key(String),
    /// Every item of an array.
    AnyItem,
    /// Every property of an object (`additionalProperties`, `patternProperties`: a key whose
    /// name the schema does not fix; a pattern is not narrowed to its keys, so this fails safe).
    AnyKey,
}

/// Where personal identifiers sit in payloads of one schema.
pub type PiiPaths = Vec<Vec<Step>>;

/// How deep `$ref` chains are followed (schemas may be recursive).
const MAX_DEPTH: usize = 32;

/// A schema whose personal identifiers cannot all be located: refused, never half-pseudonymised.
#[derive(Debug, thiserror::Error)]
#[error(
    "x-kakehashi-pii annotations lie deeper than {MAX_DEPTH} levels of subschemas and $refs (a \
     recursive schema?): the bus could not pseudonymise all of them"
)]
pub struct PiiTooDeep;

/// Finds every annotated property, following `$ref`s (local ones and, through `resolve`, other
/// registered schemas), combinators, conditionals, array items and properties of any name.
/// Fails when an annotation may lie below the depth it follows (a recursive `$ref`).
pub fn find(schema: &Value, resolve: &dyn Fn(&str) -> Option<Value>) -> Result<PiiPaths, PiiTooDeep> {
    let mut out = Vec::new();
    let mut too_deep = false;
    walk(schema, schema, resolve, &mut Vec::new(), (&mut out, &mut too_deep), 0);
    if too_deep {
        return Err(PiiTooDeep);
    }
    out.sort_by_key(|p| format!("{p:?}"));
    out.dedup();
    Ok(out)
}

/// The annotation `walk` looks for, as it appears in a schema's text.
const PII_KEYWORD: &str = "\"x-kakehashi-pii\"";

/// Whether `node`, or the document its `$ref` points into, mentions the annotation at all: what
/// decides whether stopping at the depth limit could miss one.
fn may_hold_pii(node: &Value, root: &Value, resolve: &dyn Fn(&str) -> Option<Value>) -> bool {
    let mentions = |v: &Value| v.to_string().contains(PII_KEYWORD);
    if mentions(node) {
        return true;
    }
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) if r.starts_with('#') => mentions(root),
        Some(r) => resolve(r.split('#').next().unwrap_or(r)).is_none_or(|doc| mentions(&doc)),
        None => false,
    }
}

fn walk(
    node: &Value,
    root: &Value,
    resolve: &dyn Fn(&str) -> Option<Value>,
    path: &mut Vec<Step>,
    (out, too_deep): (&mut PiiPaths, &mut bool),
    depth: usize,
) {
    let Some(obj) = node.as_object() else { return };
    if depth > MAX_DEPTH {
        *too_deep |= may_hold_pii(node, root, resolve);
        return;
    }
    if obj.get("x-kakehashi-pii").and_then(Value::as_str) == Some("my-number") {
        out.push(path.clone());
    }
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        if let Some(fragment) = r.strip_prefix('#') {
            if let Some(target) = root.pointer(fragment) {
                walk(target, root, resolve, path, (&mut *out, &mut *too_deep), depth + 1);
            }
        } else if let Some(doc) = resolve(r.split('#').next().unwrap_or(r)) {
            let fragment = r.split_once('#').map(|(_, f)| f).unwrap_or("");
            if let Some(target) = doc.pointer(fragment) {
                walk(target, &doc, resolve, path, (&mut *out, &mut *too_deep), depth + 1);
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            path.push(Step::Key(k.clone()));
            walk(v, root, resolve, path, (&mut *out, &mut *too_deep), depth + 1);
            path.pop();
        }
    }
    // Properties whose names the schema does not fix.
    let any_key_schemas = ["additionalProperties", "unevaluatedProperties"]
        .into_iter()
        .filter_map(|k| obj.get(k))
        .chain(obj.get("patternProperties").and_then(Value::as_object).into_iter().flat_map(|m| m.values()));
    for v in any_key_schemas {
        path.push(Step::AnyKey);
        walk(v, root, resolve, path, (&mut *out, &mut *too_deep), depth + 1);
        path.pop();
    }
    let item_schemas = ["items", "contains", "additionalItems", "unevaluatedItems"]
        .into_iter()
        .filter_map(|k| obj.get(k))
        .chain(obj.get("prefixItems").and_then(Value::as_array).into_iter().flatten());
    for items in item_schemas {
        path.push(Step::AnyItem);
        walk(items, root, resolve, path, (&mut *out, &mut *too_deep), depth + 1);
        path.pop();
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for sub in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
            walk(sub, root, resolve, path, (&mut *out, &mut *too_deep), depth + 1);
        }
    }
    // Subschemas that apply to this same instance when their condition holds.
    let conditional = ["if", "then", "else"]
        .into_iter()
        .filter_map(|k| obj.get(k))
        .chain(obj.get("dependentSchemas").and_then(Value::as_object).into_iter().flat_map(|m| m.values()));
    for sub in conditional {
        walk(sub, root, resolve, path, (&mut *out, &mut *too_deep), depth + 1);
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

/// A payload whose personal data could not be pseudonymised (delivery withholds it).
#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    /// The payload is not a JSON document (or a value at a path does not decode).
    #[error("payload with personal data is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// The payload is not UTF-8 text.
    #[error("payload with personal data is not JSON: not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// A located value lies outside the payload or before one already replaced (serde_json
    /// borrowed from somewhere else); never expected, but fails closed.
    #[error("payload with personal data: value at {0} cannot be spliced")]
    Splice(usize),
}

/// Replaces every string found at `paths` in the JSON payload `data` by its pseudonym, splicing
/// the pseudonyms into a copy of the bytes; `Ok(None)` when there is nothing to replace (the
/// payload stands as it is). The whole payload must be JSON (in UTF-8), as for a
/// `serde_json::Value`.
///
/// serde_json locates the values (an object level is read as its `(key, raw value)` pairs, an
/// array as its raw items, and only keys on some path are descended into), so no `Value` tree
/// is built and what passes through is not re-serialised: the bytes outside replaced strings,
/// key order and whitespace stay as they were (the `Value` route returned compact JSON with
/// sorted keys). Keys and strings are decoded as serde_json decodes them, so `"my\u005fnumber"`
/// is the key `my_number` and an escaped My Number gets the pseudonym of its plain form;
/// non-strings at a path are left alone.
///
/// Unlike a `Value`, which keeps the last of duplicate keys, every occurrence of a key on a path
/// is replaced: a reader may keep the first occurrence instead, and a duplicate key must not let
/// a raw My Number through.
pub fn apply_bytes(
    data: &[u8],
    paths: &PiiPaths,
    secret: &[u8],
    department: &str,
) -> Result<Option<Vec<u8>>, PiiError> {
    let text = std::str::from_utf8(data)?;
    let paths: Vec<&[Step]> = paths.iter().map(Vec::as_slice).collect();
    let mut splice = Splice { base: text.as_ptr() as usize, len: text.len(), edits: Vec::new() };
    visit(text, &paths, true, &mut splice, &|value| pseudonym(secret, department, value))?;
    if splice.edits.is_empty() {
        return Ok(None);
    }
    let removed: usize = splice.edits.iter().map(|(start, end, _)| end - start).sum();
    let added: usize = splice.edits.iter().map(|(_, _, token)| token.len()).sum();
    let mut out = Vec::with_capacity(data.len().saturating_sub(removed) + added);
    let mut at = 0;
    for (start, end, token) in &splice.edits {
        out.extend_from_slice(data.get(at..*start).ok_or(PiiError::Splice(*start))?);
        out.extend_from_slice(token.as_bytes());
        at = *end;
    }
    out.extend_from_slice(data.get(at..).ok_or(PiiError::Splice(at))?);
    Ok(Some(out))
}

/// The replacements found so far: byte ranges of the payload, in order, and their JSON text.
struct Splice {
    base: usize,
    len: usize,
    edits: Vec<(usize, usize, String)>,
}

impl Splice {
    /// Replaces `raw`, a slice of the payload, by `json`.
    fn replace(&mut self, raw: &str, json: String) -> Result<(), PiiError> {
        let start = (raw.as_ptr() as usize).wrapping_sub(self.base);
        let end = start.saturating_add(raw.len());
        let after_last = self.edits.last().is_none_or(|(_, last_end, _)| *last_end <= start);
        if end > self.len || !after_last {
            return Err(PiiError::Splice(start));
        }
        self.edits.push((start, end, json));
        Ok(())
    }
}

/// JSON's insignificant whitespace.
fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Finds the strings at `paths` (what is left of each below this node) inside `raw`, one JSON
/// value of the payload. `root`: `raw` is the whole payload, not yet checked to be JSON.
/// Recurses once per path step, never deeper than the longest path.
fn visit<'a>(
    raw: &'a str,
    paths: &[&[Step]],
    root: bool,
    splice: &mut Splice,
    token: &dyn Fn(&str) -> String,
) -> Result<(), PiiError> {
    let value = raw.trim_matches(is_json_space);
    let leaf = paths.iter().any(|p| p.is_empty());
    match value.as_bytes().first() {
        Some(b'"') if leaf => {
            // Decoded exactly as a `Value` string would be (escapes, surrogate pairs).
            let plain: String = serde_json::from_str(value)?;
            return splice.replace(value, serde_json::to_string(&token(&plain))?);
        }
        Some(b'{' | b'[') if paths.iter().any(|p| !p.is_empty()) => {}
        _ => {
            if root {
                serde_json::from_str::<de::IgnoredAny>(raw)?;
            }
            return Ok(());
        }
    }
    match serde_json::from_str::<Node<'a>>(raw)? {
        Node::Object(pairs) => {
            for (key, child) in pairs {
                let below = below(paths, |step| match step {
                    Step::Key(k) => *k == *key,
                    Step::AnyKey => true,
                    Step::AnyItem => false,
                });
                if !below.is_empty() {
                    visit(child.get(), &below, false, splice, token)?;
                }
            }
        }
        Node::Array(items) => {
            let below = below(paths, |step| matches!(step, Step::AnyItem));
            if !below.is_empty() {
                for item in items {
                    visit(item.get(), &below, false, splice, token)?;
                }
            }
        }
    }
    Ok(())
}

/// What is left of each path whose first step `first` accepts.
fn below<'p>(paths: &[&'p [Step]], first: impl Fn(&Step) -> bool) -> Vec<&'p [Step]> {
    paths
        .iter()
        .filter_map(|p| p.split_first().filter(|(step, _)| first(step)).map(|(_, rest)| rest))
        .collect()
}

/// One level of a JSON object or array (`visit` reads nothing else as a `Node`): the object's
/// pairs in order, duplicate keys included, or the array's items, each left raw (a slice of the
/// payload).
enum Node<'a> {
    Object(Vec<(Cow<'a, str>, &'a RawValue)>),
    Array(Vec<&'a RawValue>),
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object or array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(Key(key)) = map.next_key()? {
            pairs.push((key, map.next_value::<&RawValue>()?));
        }
        Ok(Node::Object(pairs))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<&RawValue>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
}

/// An object key, borrowed from the payload unless it had escapes to decode.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Replaces every string found at `paths` in `data` by its pseudonym; returns how many. The
/// reference for [`apply_bytes`] (which delivery uses) on payloads without duplicate keys.
#[cfg(test)]
pub fn apply(data: &mut Value, paths: &PiiPaths, secret: &[u8], department: &str) -> usize {
    paths.iter().map(|p| replace_at(data, p, secret, department)).sum()
}

#[cfg(test)]
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
        Some((Step::AnyKey, rest)) => match node {
            Value::Object(o) => o.values_mut().map(|v| replace_at(v, rest, secret, department)).sum(),
            _ => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
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
        let paths = find(&schema, &resolve).expect("found");
        assert_eq!(paths.len(), 2, "{paths:?}");
        let mut data = json!({"person": {"my_number": "123456789018"}, "children": [{"my_number": "111111111118"}, {"my_number": "987654321093"}], "note": "123456789018"});
        assert_eq!(apply(&mut data, &paths, b"k", "mhlw"), 3);
        assert_eq!(data["note"], "123456789018", "unannotated fields are untouched");
        assert!(data["person"]["my_number"].as_str().is_some_and(|s| s.starts_with("kh1:")));
    }

    #[test]
    fn properties_of_any_name_and_conditional_subschemas_are_followed() {
        let person = json!({"$ref": "#/$defs/person"});
        let schema = json!({"type": "object", "properties": {
            "by_name": {"type": "object", "additionalProperties": person},
            "by_pattern": {"type": "object", "patternProperties": {"^p": person}},
            "maybe": {"if": {"required": ["x"]}, "then": {"properties": {"p": person}}, "else": {"properties": {"q": person}}}},
            "$defs": {"person": {"type": "object", "properties": {"my_number": {"x-kakehashi-pii": "my-number"}}}}});
        let paths = find(&schema, &|_| None).expect("found");
        assert_eq!(paths.len(), 4, "{paths:?}");
        let raw = br#"{"by_name": {"a1": {"my_number": "123456789018"}}, "by_pattern": {"p1": {"my_number": "123456789018"}}, "maybe": {"p": {"my_number": "123456789018"}, "q": {"my_number": "123456789018"}}}"#;
        let out = apply_bytes(raw, &paths, b"k", "mhlw").expect("json").expect("replaced");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!text.contains("123456789018"), "every My Number pseudonymised: {text}");
        assert_eq!(text.matches("kh1:").count(), 4, "{text}");
    }

    #[test]
    fn a_recursive_schema_with_my_numbers_is_refused_and_one_without_is_not() {
        let recursive = json!({"type": "object", "properties": {
            "my_number": {"type": "string", "x-kakehashi-pii": "my-number"}, "child": {"$ref": "#"}}});
        assert!(find(&recursive, &|_| None).is_err(), "a My Number could sit below any depth");
        let tree =
            json!({"type": "object", "properties": {"name": {"type": "string"}, "child": {"$ref": "#"}}});
        assert_eq!(find(&tree, &|_| None).expect("nothing to find").len(), 0);
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

    fn key(k: &str) -> Step {
        Step::Key(k.to_owned())
    }

    /// `apply_bytes` with the test key and department, as text.
    fn splice(json: &str, paths: &PiiPaths) -> Option<String> {
        apply_bytes(json.as_bytes(), paths, b"k", "mhlw")
            .expect("JSON")
            .map(|out| String::from_utf8(out).expect("UTF-8"))
    }

    fn token(value: &str) -> String {
        pseudonym(b"k", "mhlw", value)
    }

    #[test]
    fn splices_nested_objects_keeping_every_other_byte() {
        let paths = vec![vec![key("person"), key("my_number")]];
        let json = "{ \"z\" : 1.50,\n  \"person\": {\"my_number\" :\t\"123456789018\" , \"a\":[ ]},\"b\":\"\\u00e9\" }\n";
        let want = json.replace("\"123456789018\"", &format!("\"{}\"", token("123456789018")));
        assert_eq!(splice(json, &paths).as_deref(), Some(want.as_str()));
    }

    #[test]
    fn splices_every_item_of_arrays() {
        let paths = vec![vec![key("kids"), Step::AnyItem, key("my_number")], vec![key("ids"), Step::AnyItem]];
        let json = r#"{"kids":[{"my_number":"111111111118"},{"x":1},{"my_number":"987654321093"},3],"ids":["123456789018",7,"111111111118"]}"#;
        let want = format!(
            r#"{{"kids":[{{"my_number":"{a}"}},{{"x":1}},{{"my_number":"{b}"}},3],"ids":["{c}",7,"{a}"]}}"#,
            a = token("111111111118"),
            b = token("987654321093"),
            c = token("123456789018"),
        );
        assert_eq!(splice(json, &paths), Some(want));
    }

    #[test]
    fn replaces_every_duplicate_key() {
        let paths = vec![vec![key("person"), key("my_number")]];
        let json = r#"{"person":{"my_number":"123456789018","my_number":"111111111118"},"person":{"my_number":"987654321093"}}"#;
        let out = splice(json, &paths).expect("replaced");
        for raw in ["123456789018", "111111111118", "987654321093"] {
            assert!(!out.contains(raw), "{raw} let through: {out}");
            assert!(out.contains(&token(raw)), "{out}");
        }
    }

    #[test]
    fn escaped_keys_and_values_are_decoded_first() {
        let paths = vec![vec![key("my_number")]];
        let out = splice(
            r#"{"my\u005fnumber":"\u0031\u0032\u0033\u0034\u0035\u0036\u0037\u0038\u0039\u0030\u0031\u0038"}"#,
            &paths,
        );
        assert_eq!(out, Some(format!(r#"{{"my\u005fnumber":"{}"}}"#, token("123456789018"))));
        let mut value: Value = serde_json::from_str(r#"{"my_number":"1234567890\u00318"}"#).expect("json");
        apply(&mut value, &paths, b"k", "mhlw");
        assert_eq!(value["my_number"], token("123456789018"), "the reference agrees");
    }

    #[test]
    fn non_strings_at_a_path_and_absent_keys_are_left_alone() {
        let paths = vec![vec![key("my_number")], vec![key("kids"), Step::AnyItem, key("my_number")]];
        for json in [
            r#"{"my_number":123456789018,"kids":[{"my_number":null},{"my_number":["123456789018"]}]}"#,
            r#"{"my_numbers":"123456789018","kids":{"my_number":"123456789018"}}"#,
            r#"["123456789018"]"#,
            r#""123456789018""#,
            "42",
            "{}",
        ] {
            assert_eq!(splice(json, &paths), None, "{json}");
        }
        assert_eq!(splice(r#"{"my_number":"1"}"#, &vec![]), None, "no paths");
    }

    #[test]
    fn the_whole_payload_may_be_the_identifier() {
        assert_eq!(
            splice(" \"123456789018\"\n", &vec![vec![]]),
            Some(format!(" \"{}\"\n", token("123456789018")))
        );
    }

    #[test]
    fn payloads_that_are_not_json_are_errors() {
        let paths = vec![vec![key("person"), key("my_number")]];
        for bad in [
            &b""[..],
            b"{",
            b"{\"person\":{\"my_number\":\"1\"}} x",
            b"{\"person\":{\"my_number\":\"1\",}}",
            b"{\"other\":[1,}",
            b"\"unterminated",
            b"\"1\" \"2\"",
            b"{\"person\":{\"my_number\":\"\\ud800\"}}",
            b"{\"person\":{\"my_number\":\"\xff\"}}",
            b"{\"a\":\"\xc3\"}",
        ] {
            let e = apply_bytes(bad, &paths, b"k", "mhlw").expect_err(&String::from_utf8_lossy(bad));
            assert!(e.to_string().starts_with("payload with personal data is not JSON: "), "{e}");
            assert!(serde_json::from_slice::<Value>(bad).is_err(), "the Value route rejects it too");
        }
        let e = apply_bytes(b"{\"a\":\"\xff\"}", &paths, b"k", "mhlw").expect_err("not UTF-8");
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    /// What the `Value` route rejected anywhere in a payload but splicing only checks on the
    /// paths: numbers beyond `f64`, lone surrogates in strings passed through, nesting beyond
    /// serde_json's recursion limit (128). The schema validator already rejects such payloads at
    /// publication.
    #[test]
    fn only_values_on_the_paths_are_decoded() {
        let paths = vec![vec![key("my_number")]];
        let deep = format!("{{\"x\":{}{},\"my_number\":\"1\"}}", "[".repeat(200), "]".repeat(200));
        for json in [r#"{"x":1e400,"my_number":"1"}"#, r#"{"x":"\ud800","my_number":"1"}"#, &deep] {
            assert!(serde_json::from_str::<Value>(json).is_err(), "{json}");
            assert_eq!(splice(json, &paths), Some(json.replace(r#""1""#, &format!("\"{}\"", token("1")))));
        }
        assert!(
            apply_bytes(br#"{"my_number":"\ud800"}"#, &paths, b"k", "mhlw").is_err(),
            "on a path it is decoded"
        );
        assert!(apply_bytes(br#"{"my_number":1e400}"#, &paths, b"k", "mhlw").is_ok(), "a number is not");
    }

    /// A JSON document for the property tests: objects without duplicate keys, in the order
    /// written; `bool`s ask for every character of a string or key to be written `\uXXXX`.
    #[derive(Debug, Clone)]
    enum Doc {
        Null,
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String, bool),
        Arr(Vec<Doc>),
        Obj(Vec<(String, bool, Doc)>),
    }

    const KEYS: &[&str] = &["my_number", "person", "kids", "a", "b", "k\"1", "é\u{1f600}"];

    fn write_str(s: &str, escape_all: bool, out: &mut String) {
        if escape_all {
            out.push('"');
            for unit in s.encode_utf16() {
                out.push_str(&format!("\\u{unit:04x}"));
            }
            out.push('"');
        } else {
            out.push_str(&serde_json::to_string(s).expect("string"));
        }
    }

    fn write(doc: &Doc, ws: &str, out: &mut String) {
        match doc {
            Doc::Null => out.push_str("null"),
            Doc::Bool(b) => out.push_str(&b.to_string()),
            Doc::Int(i) => out.push_str(&i.to_string()),
            Doc::Float(f) => out.push_str(&serde_json::to_string(f).expect("finite")),
            Doc::Str(s, escape_all) => write_str(s, *escape_all, out),
            Doc::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { ws } else { "," });
                    out.push_str(ws);
                    write(item, ws, out);
                }
                out.push_str(ws);
                out.push(']');
            }
            Doc::Obj(pairs) => {
                out.push('{');
                for (i, (k, escape_all, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws);
                    write_str(k, *escape_all, out);
                    out.push_str(ws);
                    out.push(':');
                    out.push_str(ws);
                    write(v, ws, out);
                }
                out.push_str(ws);
                out.push('}');
            }
        }
    }

    fn text() -> impl Strategy<Value = String> + Clone {
        let chars = prop_oneof![
            Just('1'),
            Just('8'),
            Just('"'),
            Just('\\'),
            Just('\n'),
            Just('\u{1}'),
            Just('é'),
            Just('\u{1f600}'),
            any::<char>(),
        ];
        proptest::collection::vec(chars, 0..14).prop_map(String::from_iter)
    }

    fn doc() -> impl Strategy<Value = Doc> {
        let string = text();
        let leaf = prop_oneof![
            Just(Doc::Null),
            any::<bool>().prop_map(Doc::Bool),
            any::<i64>().prop_map(Doc::Int),
            (-1e6f64..1e6).prop_map(Doc::Float),
            (string.clone(), any::<bool>()).prop_map(|(s, e)| Doc::Str(s, e)),
            (string, any::<bool>()).prop_map(|(s, e)| Doc::Str(s, e)),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Doc::Arr),
                proptest::collection::vec((proptest::sample::select(KEYS), any::<bool>(), inner), 0..6)
                    .prop_map(|pairs| {
                        let mut seen = std::collections::HashSet::new();
                        Doc::Obj(
                            pairs
                                .into_iter()
                                .filter(|(k, _, _)| seen.insert(*k))
                                .map(|(k, e, v)| (k.to_owned(), e, v))
                                .collect(),
                        )
                    }),
            ]
        })
    }

    /// Mostly a string, to be grafted at the end of a path.
    fn identifier() -> impl Strategy<Value = Doc> {
        prop_oneof![4 => (text(), any::<bool>()).prop_map(|(s, e)| Doc::Str(s, e)), 1 => doc()]
    }

    /// Makes `path` exist in `doc` (replacing what is in the way), ending in `leaf`: random
    /// documents seldom hold a path by chance.
    fn graft(doc: &mut Doc, path: &[Step], escape_key: bool, leaf: Doc) {
        match path.split_first() {
            None => *doc = leaf,
            Some((Step::Key(k), rest)) => {
                if !matches!(doc, Doc::Obj(_)) {
                    *doc = Doc::Obj(vec![]);
                }
                let Doc::Obj(pairs) = doc else { unreachable!() };
                let at = match pairs.iter().position(|(key, _, _)| key == k) {
                    Some(at) => at,
                    None => {
                        let at = pairs.len() / 2;
                        pairs.insert(at, (k.clone(), escape_key, Doc::Null));
                        at
                    }
                };
                graft(&mut pairs[at].2, rest, escape_key, leaf);
            }
            Some((Step::AnyItem, rest)) => {
                if !matches!(doc, Doc::Arr(items) if !items.is_empty()) {
                    *doc = Doc::Arr(vec![Doc::Null]);
                }
                let Doc::Arr(items) = doc else { unreachable!() };
                graft(&mut items[0], rest, escape_key, leaf);
            }
            Some((Step::AnyKey, rest)) => {
                if !matches!(doc, Doc::Obj(pairs) if !pairs.is_empty()) {
                    *doc = Doc::Obj(vec![("any".into(), escape_key, Doc::Null)]);
                }
                let Doc::Obj(pairs) = doc else { unreachable!() };
                graft(&mut pairs[0].2, rest, escape_key, leaf);
            }
        }
    }

    fn path_sets() -> Vec<PiiPaths> {
        vec![
            vec![vec![key("my_number")]],
            vec![vec![key("person"), key("my_number")], vec![key("kids"), Step::AnyItem, key("my_number")]],
            vec![vec![]],
            vec![vec![Step::AnyItem]],
            vec![vec![key("people"), Step::AnyKey, key("my_number")], vec![Step::AnyKey]],
            vec![vec![key("kids"), Step::AnyItem, Step::AnyItem], vec![key("k\"1")]],
            vec![
                vec![key("a")],
                vec![key("a"), key("b")],
                vec![key("a"), key("é\u{1f600}"), key("my_number")],
            ],
            vec![
                vec![Step::AnyItem, key("a"), Step::AnyItem, key("b")],
                vec![key("b"), key("b"), key("b"), key("b")],
            ],
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn splicing_agrees_with_the_value_route(
            doc in doc(),
            ws in proptest::sample::select(&["", " ", "\n  ", "\t"][..]),
            set in 0..7usize,
            grafts in proptest::collection::vec((any::<proptest::sample::Index>(), any::<bool>(), identifier()), 0..3),
        ) {
            let paths = &path_sets()[set];
            let mut doc = doc;
            for (path, escape_key, leaf) in grafts {
                graft(&mut doc, &paths[path.index(paths.len())], escape_key, leaf);
            }
            let mut json = String::new();
            write(&doc, ws, &mut json);
            let mut want: Value = serde_json::from_str(&json).expect("generated JSON");
            let replaced = apply(&mut want, paths, b"k", "mhlw");
            let out = apply_bytes(json.as_bytes(), paths, b"k", "mhlw").expect("JSON");
            prop_assert_eq!(out.is_some(), replaced > 0);
            let got: Value = serde_json::from_slice(out.as_deref().unwrap_or(json.as_bytes())).expect("JSON out");
            prop_assert_eq!(got, want, "{}", json);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            doc in doc(),
            cut in any::<proptest::sample::Index>(),
            flip in any::<(proptest::sample::Index, u8)>(),
            set in 0..7usize,
        ) {
            let paths = &path_sets()[set];
            let _ = apply_bytes(&bytes, paths, b"k", "mhlw");
            let mut json = String::new();
            write(&doc, "", &mut json);
            let mut json = json.into_bytes();
            if !json.is_empty() {
                let at = flip.0.index(json.len());
                json[at] = flip.1;
                let _ = apply_bytes(&json, paths, b"k", "mhlw");
                json.truncate(cut.index(json.len()));
            }
            let accepted = apply_bytes(&json, paths, b"k", "mhlw").is_ok();
            prop_assert!(accepted || serde_json::from_slice::<Value>(&json).is_err());
        }
    }
}
