//! `$ref` resolution: local references (`#/$defs/x`, `#/definitions/x`, `#anchor`) within a
//! document, and references to other registered schemas through a [`RefResolver`].
//!
//! External documents are fetched once, up front ([`Docs::load`]), so the comparison itself
//! borrows every schema immutably and cannot be surprised by a resolver mid-walk.

use std::collections::HashMap;

use serde_json::Value;

use super::node::{Doc, Loc, Node};

/// Looks up schemas registered under other subjects, for `$ref`s that leave the document.
pub trait RefResolver {
    /// Returns the whole schema document registered at `uri`, or `None` if there is none.
    ///
    /// `uri` is absolute (relative references are resolved against the referring document's
    /// `$id` first) and carries no fragment: for
    /// `https://kakehashi.invalid/schemas/common.person/1#/$defs/name` the resolver is asked
    /// for `https://kakehashi.invalid/schemas/common.person/1` and the checker follows
    /// `#/$defs/name` itself.
    fn resolve(&self, uri: &str) -> Option<Value>;
}

/// A resolver that knows no external schemas: every external `$ref` is unresolvable.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoExternalRefs;

impl RefResolver for NoExternalRefs {
    fn resolve(&self, _uri: &str) -> Option<Value> {
        None
    }
}

/// A fixed table of documents by URI, handy for tests and for a registry snapshot.
impl RefResolver for HashMap<String, Value> {
    fn resolve(&self, uri: &str) -> Option<Value> {
        self.get(uri).cloned()
    }
}

/// Most external documents fetched for one comparison; a guard against reference chains
/// that never end (each registered version pointing at a newer one, say).
const MAX_EXTERNAL_DOCS: usize = 256;

/// The external documents reachable from the schemas under comparison.
#[derive(Debug, Default)]
pub(crate) struct Docs {
    /// Document URI (no fragment) to its content; `None` when the resolver had nothing.
    external: HashMap<String, Option<Value>>,
}

impl Docs {
    /// Fetches, transitively, every external document referenced from `roots`.
    pub fn load(roots: &[&Value], resolver: &dyn RefResolver) -> Docs {
        let mut docs = Docs::default();
        let mut queue: Vec<(Value, Option<String>)> =
            roots.iter().map(|r| ((*r).clone(), id_of(r))).collect();
        while let Some((doc, base)) = queue.pop() {
            let mut refs = Vec::new();
            collect_refs(&doc, &mut refs);
            for reference in refs {
                let (doc_part, _) = split_ref(reference);
                if doc_part.is_empty() {
                    continue;
                }
                let uri = absolutize(doc_part, base.as_deref());
                if Some(uri.as_str()) == base.as_deref() || docs.external.contains_key(&uri) {
                    continue;
                }
                if docs.external.len() >= MAX_EXTERNAL_DOCS {
                    // Left unresolved on purpose: the walk reports it as UnresolvedRef.
                    continue;
                }
                let fetched = resolver.resolve(&uri);
                if let Some(v) = &fetched {
                    queue.push((v.clone(), Some(uri.clone())));
                }
                docs.external.insert(uri, fetched);
            }
        }
        docs
    }

    /// Resolves `reference` as written in `from`, returning the target node.
    ///
    /// The error is a readable reason, used verbatim in the UnresolvedRef message.
    pub fn resolve<'a>(&'a self, from: &Node<'a>, reference: &str) -> Result<Node<'a>, String> {
        let (doc_part, fragment) = split_ref(reference);
        let doc = if doc_part.is_empty() {
            from.doc
        } else {
            let uri = absolutize(doc_part, from.doc.base);
            if Some(uri.as_str()) == from.doc.base {
                from.doc
            } else {
                match self.external.get_key_value(&uri) {
                    Some((key, Some(root))) => Doc {
                        root,
                        base: Some(key.as_str()),
                        external: Some(key.as_str()),
                        dialect: super::node::Dialect::of(root),
                    },
                    Some((_, None)) | None => {
                        return Err(format!("no registered schema is known at `{uri}`"));
                    }
                }
            }
        };
        let (value, pointer) = locate(doc.root, fragment)
            .ok_or_else(|| format!("`{reference}` does not point at anything in its document"))?;
        let loc = match doc.external {
            // Stay frozen at the first `$ref` that left the root document.
            Some(uri) => Loc {
                pointer: match &from.loc.external {
                    Some(_) => from.loc.pointer.clone(),
                    None => from.loc.push("$ref").pointer,
                },
                external: Some((uri.to_owned(), pointer)),
            },
            None => Loc { pointer, external: None },
        };
        Ok(Node { value, doc, loc })
    }
}

/// The `$id` of a document, if it declares one.
fn id_of(doc: &Value) -> Option<String> {
    doc.get("$id").and_then(Value::as_str).map(str::to_owned)
}

/// Splits `a/b#/c` into `("a/b", "/c")`.
fn split_ref(reference: &str) -> (&str, &str) {
    reference.split_once('#').unwrap_or((reference, ""))
}

/// Makes `reference` absolute against `base` (enough of RFC 3986 for registry URIs:
/// absolute URIs pass through, `/path` keeps the base's origin, `name` replaces the base's
/// last segment).
fn absolutize(reference: &str, base: Option<&str>) -> String {
    if reference.contains("://") || reference.starts_with("urn:") {
        return reference.to_owned();
    }
    let Some(base) = base else {
        return reference.to_owned();
    };
    let base = split_ref(base).0;
    if let Some(path) = reference.strip_prefix('/') {
        let origin_end =
            base.find("://").and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j)).unwrap_or(base.len());
        return format!("{}/{}", &base[..origin_end], path);
    }
    match base.rfind('/') {
        Some(i) => format!("{}{}", &base[..=i], reference),
        None => reference.to_owned(),
    }
}

/// Every `$ref` string in a document, wherever it sits.
fn collect_refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(s)) => out.push(s),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Finds the target of a fragment in `root`: empty (the root), a JSON pointer, or an anchor
/// name. Returns the value and its JSON pointer.
fn locate<'a>(root: &'a Value, fragment: &str) -> Option<(&'a Value, String)> {
    let fragment = percent_decode(fragment);
    if fragment.is_empty() {
        return Some((root, String::new()));
    }
    if fragment.starts_with('/') {
        return root.pointer(&fragment).map(|v| (v, fragment.clone()));
    }
    find_anchor(root, &fragment, String::new())
}

/// Searches for a subschema declaring `"$anchor": name` (or a draft-07 style `"$id": "#name"`).
fn find_anchor<'a>(value: &'a Value, name: &str, here: String) -> Option<(&'a Value, String)> {
    match value {
        Value::Object(map) => {
            let anchor = map.get("$anchor").and_then(Value::as_str);
            let legacy = map.get("$id").and_then(Value::as_str).and_then(|id| id.strip_prefix('#'));
            if anchor == Some(name) || legacy == Some(name) {
                return Some((value, here));
            }
            map.iter().find_map(|(k, v)| find_anchor(v, name, format!("{here}/{}", super::node::escape(k))))
        }
        Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, v)| find_anchor(v, name, format!("{here}/{i}")))
        }
        _ => None,
    }
}

/// Decodes `%XX` escapes, which URI fragments may use for characters such as `%25` or `%22`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn relative_reference_replaces_last_segment_of_base() {
        assert_eq!(
            absolutize("common.person/1", Some("https://k.invalid/schemas/a.b/2")),
            "https://k.invalid/schemas/a.b/common.person/1"
        );
        assert_eq!(
            absolutize("/schemas/x/1", Some("https://k.invalid/schemas/a.b/2")),
            "https://k.invalid/schemas/x/1"
        );
    }

    #[test]
    fn percent_escapes_in_fragments_are_decoded() {
        assert_eq!(percent_decode("/%24defs/a%20b"), "/$defs/a b");
        assert_eq!(percent_decode("/x%2"), "/x%2");
    }
}
