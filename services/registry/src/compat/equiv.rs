//! Structural equivalence of two schemas: equal up to annotations, key order, number
//! spelling, and `$ref`s that lead to equivalent targets. Used as a fast, exact shortcut
//! ("unchanged, so compatible") and to recognize keywords the checker only compares for
//! identity (`pattern`, `if`/`then`/`else`, `propertyNames`, ...).

use std::collections::HashSet;

use serde_json::Value;

use super::node::Node;
use super::refs::Docs;
use super::values::json_eq;

/// Keywords without effect on validation (and `$defs`, whose content matters only through the
/// `$ref`s that are followed). `x-kakehashi-pii` is deliberately NOT listed: it changes
/// delivery, so two schemas differing in it are not equivalent.
pub(crate) fn is_annotation(key: &str) -> bool {
    matches!(
        key,
        "title"
            | "description"
            | "examples"
            | "default"
            | "$comment"
            | "deprecated"
            | "readOnly"
            | "writeOnly"
            | "$schema"
            | "$id"
            | "$anchor"
            | "$dynamicAnchor"
            | "$vocabulary"
            | "$defs"
            | "definitions"
            | "contentMediaType"
            | "contentEncoding"
            | "contentSchema"
    ) || (key.starts_with("x-") && key != super::PII_KEYWORD)
}

/// Keywords whose value is a map of subschemas.
const SCHEMA_MAPS: &[&str] = &["properties", "patternProperties", "dependentSchemas", "$defs"];
/// Keywords whose value is a list of subschemas.
const SCHEMA_LISTS: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value is one subschema.
const SCHEMAS: &[&str] = &[
    "additionalProperties",
    "unevaluatedProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "additionalItems",
    "unevaluatedItems",
];

impl Docs {
    /// Whether `a` and `b` accept exactly the same data (sufficient, not necessary: two
    /// schemas written differently but meaning the same are simply not recognized here).
    pub fn equivalent(&self, a: &Node<'_>, b: &Node<'_>) -> bool {
        self.schema_eq(a, b, &mut HashSet::new())
    }

    /// Whether keyword `key` has equivalent values in `a` and `b` (both absent counts).
    pub fn keyword_equivalent(&self, key: &str, a: &Node<'_>, b: &Node<'_>) -> bool {
        // `get` hides keywords a dialect lacks, so "absent" covers "not a keyword here".
        match (a.get(key), b.get(key)) {
            (None, None) => true,
            (Some(x), Some(y)) => self.keyword_eq(key, a, x, b, y, &mut HashSet::new()),
            _ => false,
        }
    }

    fn schema_eq(&self, a: &Node<'_>, b: &Node<'_>, seen: &mut HashSet<(usize, usize)>) -> bool {
        // Revisiting a pair means we are inside a recursive schema: assuming equality there
        // is the standard co-inductive reading and is sound for finite JSON documents.
        if !seen.insert((a.addr(), b.addr())) {
            return true;
        }
        // A draft-07 `$ref` hides its siblings; a 2020-12 one does not.
        if a.ref_only() != b.ref_only() {
            return false;
        }
        match (a.value, b.value) {
            (Value::Bool(x), Value::Bool(y)) => x == y,
            (Value::Object(ma), Value::Object(mb)) => {
                let keys: HashSet<&String> =
                    ma.keys().chain(mb.keys()).filter(|k| !is_annotation(k)).collect();
                keys.into_iter().all(|k| match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => self.keyword_eq(k, a, x, b, y, seen),
                    _ => false,
                })
            }
            _ => false,
        }
    }

    fn keyword_eq(
        &self,
        key: &str,
        a: &Node<'_>,
        x: &Value,
        b: &Node<'_>,
        y: &Value,
        seen: &mut HashSet<(usize, usize)>,
    ) -> bool {
        if key == "$ref" {
            return match (x.as_str(), y.as_str()) {
                (Some(rx), Some(ry)) => match (self.resolve(a, rx), self.resolve(b, ry)) {
                    (Ok(ta), Ok(tb)) => self.schema_eq(&ta, &tb, seen),
                    _ => false,
                },
                _ => false,
            };
        }
        if SCHEMA_MAPS.contains(&key) {
            return match (x.as_object(), y.as_object()) {
                (Some(mx), Some(my)) => {
                    mx.len() == my.len()
                        && mx.iter().all(|(k, vx)| {
                            my.get(k).is_some_and(|vy| {
                                self.schema_eq(&a.at(vx, &[key, k]), &b.at(vy, &[key, k]), seen)
                            })
                        })
                }
                _ => false,
            };
        }
        let list_eq = |seen: &mut HashSet<(usize, usize)>, lx: &Vec<Value>, ly: &Vec<Value>| {
            lx.len() == ly.len()
                && lx.iter().zip(ly).enumerate().all(|(i, (vx, vy))| {
                    let i = i.to_string();
                    self.schema_eq(&a.at(vx, &[key, &i]), &b.at(vy, &[key, &i]), seen)
                })
        };
        match (key, x, y) {
            (k, Value::Array(lx), Value::Array(ly)) if SCHEMA_LISTS.contains(&k) || k == "items" => {
                list_eq(seen, lx, ly)
            }
            (k, _, _) if SCHEMA_LISTS.contains(&k) => false,
            (k, _, _) if SCHEMAS.contains(&k) || k == "items" => {
                self.schema_eq(&a.at(x, &[key]), &b.at(y, &[key]), seen)
            }
            // Draft-07 `dependencies`: each entry is a list of names or a schema.
            ("dependencies", Value::Object(mx), Value::Object(my)) => {
                mx.len() == my.len()
                    && mx.iter().all(|(k, vx)| match (vx, my.get(k)) {
                        (Value::Array(_), Some(vy)) => json_eq(vx, vy),
                        (_, Some(vy)) => self.schema_eq(&a.at(vx, &[key, k]), &b.at(vy, &[key, k]), seen),
                        _ => false,
                    })
            }
            // Everything else (type, enum, bounds, pattern, unknown keywords) is plain data.
            _ => json_eq(x, y),
        }
    }
}
