//! Object and array keywords of the three-valued validator (see `instance.rs`).

use serde_json::Value;

use super::instance::{is_known_keyword, Verdict};
use super::node::Node;
use super::pattern;
use super::refs::Docs;
use super::values::{as_count, json_eq, show};

/// Keywords that make "evaluated" depend on more than the schema's own keywords.
const DYNAMIC: &[&str] = &["allOf", "anyOf", "oneOf", "$ref", "if", "dependentSchemas"];

type Sub<'s> = &'s dyn Fn(&Node<'_>, &Value) -> Verdict;

/// Combines verdicts: invalid wins, then unknown.
fn all(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    let mut unknown = None;
    for v in verdicts {
        match v {
            Verdict::Valid => {}
            Verdict::Unknown(k) => unknown = unknown.or(Some(k)),
            invalid @ Verdict::Invalid(_) => return invalid,
        }
    }
    unknown.map_or(Verdict::Valid, Verdict::Unknown)
}

/// A verdict for a subschema that may or may not apply: if it holds anyway, fine;
/// otherwise we cannot tell.
fn maybe(key: &str, v: Verdict) -> Verdict {
    match v {
        Verdict::Valid => Verdict::Valid,
        _ => Verdict::Unknown(key.to_owned()),
    }
}

fn count_check(schema: &Node<'_>, key: &str, kv: &Value, n: usize, what: &str) -> Verdict {
    let n = n as u64;
    match (key.starts_with("min"), as_count(kv)) {
        (true, Some(m)) if n < m => Verdict::invalid_at(schema, key, format!("{n} {what} is fewer than {m}")),
        (false, Some(m)) if n > m => Verdict::invalid_at(schema, key, format!("{n} {what} is more than {m}")),
        _ => Verdict::Valid,
    }
}

impl Verdict {
    /// An invalid verdict for `key` of `schema`.
    pub(crate) fn invalid_at(schema: &Node<'_>, key: &str, detail: String) -> Verdict {
        Verdict::Invalid(super::instance::Failure {
            keyword: key.to_owned(),
            loc: schema.loc.push(key),
            detail,
        })
    }
}

impl Docs {
    pub(crate) fn object_keyword(
        &self,
        schema: &Node<'_>,
        key: &str,
        kv: &Value,
        value: &Value,
        sub: Sub<'_>,
    ) -> Verdict {
        let Some(obj) = value.as_object() else {
            return Verdict::Valid;
        };
        match key {
            "properties" => {
                all(schema.sub_map(key).iter().filter_map(|(name, s)| obj.get(*name).map(|v| sub(s, v))))
            }
            "patternProperties" => all(obj.iter().flat_map(|(name, v)| {
                schema.sub_map(key).into_iter().map(move |(p, s)| match pattern::matches(p, name) {
                    Some(true) => sub(&s, v),
                    Some(false) => Verdict::Valid,
                    None => maybe(key, sub(&s, v)),
                })
            })),
            "additionalProperties" => self.additional(schema, key, obj, sub),
            "unevaluatedProperties" => {
                if schema.get("additionalProperties").is_some() {
                    Verdict::Valid
                } else if DYNAMIC.iter().any(|k| schema.get(k).is_some()) {
                    Verdict::Unknown(key.to_owned())
                } else {
                    self.additional(schema, key, obj, sub)
                }
            }
            "required" => match kv
                .as_array()
                .and_then(|names| names.iter().filter_map(Value::as_str).find(|n| !obj.contains_key(*n)))
            {
                Some(missing) => Verdict::invalid_at(schema, key, format!("property `{missing}` is missing")),
                None => Verdict::Valid,
            },
            "minProperties" | "maxProperties" => count_check(schema, key, kv, obj.len(), "properties"),
            "propertyNames" => match schema.sub(key) {
                Some(s) => all(obj.keys().map(|k| sub(&s, &Value::String(k.clone())))),
                None => Verdict::Valid,
            },
            "dependentRequired" | "dependencies" | "dependentSchemas" => {
                let Some(deps) = kv.as_object() else {
                    return Verdict::Valid;
                };
                all(deps.iter().filter(|(p, _)| obj.contains_key(*p)).map(|(p, d)| match d {
                    Value::Array(names) => {
                        match names.iter().filter_map(Value::as_str).find(|n| !obj.contains_key(*n)) {
                            Some(n) => Verdict::invalid_at(
                                schema,
                                key,
                                format!("`{p}` is present but `{n}` is missing"),
                            ),
                            None => Verdict::Valid,
                        }
                    }
                    _ => sub(&schema.at(d, &[key, p]), value),
                }))
            }
            _ => unknown_unless_known(key),
        }
    }

    /// `additionalProperties` (and a self-contained `unevaluatedProperties`): applies to
    /// properties not declared in `properties` and matching no `patternProperties`.
    fn additional(
        &self,
        schema: &Node<'_>,
        key: &str,
        obj: &serde_json::Map<String, Value>,
        sub: Sub<'_>,
    ) -> Verdict {
        let Some(extra) = schema.sub(key) else {
            return Verdict::Valid;
        };
        let patterns: Vec<&str> = schema
            .get("patternProperties")
            .and_then(Value::as_object)
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let declared = |n: &str| schema.get("properties").and_then(|p| p.get(n)).is_some();
        all(obj.iter().filter(|(n, _)| !declared(n)).map(|(n, v)| {
            let hits: Vec<Option<bool>> = patterns.iter().map(|p| pattern::matches(p, n)).collect();
            if hits.contains(&Some(true)) {
                Verdict::Valid
            } else if hits.contains(&None) {
                maybe(key, sub(&extra, v))
            } else {
                match sub(&extra, v) {
                    Verdict::Invalid(_) if extra.is_false() => {
                        Verdict::invalid_at(schema, key, format!("property `{n}` is not allowed"))
                    }
                    other => other,
                }
            }
        }))
    }

    pub(crate) fn array_keyword(
        &self,
        schema: &Node<'_>,
        key: &str,
        kv: &Value,
        value: &Value,
        sub: Sub<'_>,
    ) -> Verdict {
        let Some(items) = value.as_array() else {
            return Verdict::Valid;
        };
        let tuple = matches!(schema.get("items"), Some(Value::Array(_)));
        let prefix_len = match (tuple, schema.get("prefixItems")) {
            (true, _) => schema.sub_list("items").len(),
            (false, Some(Value::Array(p))) => p.len(),
            _ => 0,
        };
        let rest_from = |s: Node<'_>| all(items.iter().skip(prefix_len).map(|v| sub(&s, v)));
        match key {
            "prefixItems" | "items" if tuple || key == "prefixItems" => {
                all(schema.sub_list(key).iter().zip(items).map(|(s, v)| sub(s, v)))
            }
            "items" => schema.sub(key).map_or(Verdict::Valid, rest_from),
            "additionalItems" if tuple => schema.sub(key).map_or(Verdict::Valid, rest_from),
            "additionalItems" => Verdict::Valid,
            "unevaluatedItems" => {
                let covered = (!tuple && schema.get("items").is_some())
                    || (tuple && schema.get("additionalItems").is_some());
                if covered {
                    Verdict::Valid
                } else if DYNAMIC.iter().any(|k| schema.get(k).is_some()) {
                    Verdict::Unknown(key.to_owned())
                } else {
                    schema.sub(key).map_or(Verdict::Valid, rest_from)
                }
            }
            "minItems" | "maxItems" => count_check(schema, key, kv, items.len(), "items"),
            "uniqueItems" if kv == &Value::Bool(true) => {
                let dup = items.iter().enumerate().any(|(i, a)| items[i + 1..].iter().any(|b| json_eq(a, b)));
                if dup {
                    Verdict::invalid_at(schema, key, "items are not unique".to_owned())
                } else {
                    Verdict::Valid
                }
            }
            "contains" => self.contains(schema, items, sub),
            _ => unknown_unless_known(key),
        }
    }

    /// `contains` with `minContains`/`maxContains`.
    fn contains(&self, schema: &Node<'_>, items: &[Value], sub: Sub<'_>) -> Verdict {
        let Some(c) = schema.sub("contains") else {
            return Verdict::Valid;
        };
        let min = schema.get("minContains").and_then(as_count).unwrap_or(1);
        let max = schema.get("maxContains").and_then(as_count);
        let (mut hits, mut unknown) = (0u64, 0u64);
        for v in items {
            match sub(&c, v) {
                Verdict::Valid => hits += 1,
                Verdict::Unknown(_) => unknown += 1,
                Verdict::Invalid(_) => {}
            }
        }
        let too_few = hits + unknown < min;
        let too_many = max.is_some_and(|m| hits > m);
        if too_few || too_many {
            let arr = Value::Array(items.to_vec());
            Verdict::invalid_at(schema, "contains", format!("{} has {hits} matching items", show(&arr)))
        } else if hits >= min && max.is_none_or(|m| hits + unknown <= m) {
            Verdict::Valid
        } else {
            Verdict::Unknown("contains".to_owned())
        }
    }
}

fn unknown_unless_known(key: &str) -> Verdict {
    if is_known_keyword(key) {
        Verdict::Valid
    } else {
        Verdict::Unknown(key.to_owned())
    }
}
