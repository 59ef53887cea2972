//! A three-valued validator for single JSON values: valid, invalid (with the keyword that
//! failed), or unknown (a keyword it cannot evaluate, such as a regex `pattern` or `format`).
//!
//! The checker uses it when a writer allows only a fixed set of values (`enum`/`const`):
//! then "does the reader accept everything the writer allows" is decided value by value,
//! exactly. It also proves two schemas disjoint for `oneOf` and `not`.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use super::equiv::is_annotation;
use super::node::{Loc, Node};
use super::pattern;
use super::refs::Docs;
use super::types::{declared, TypeSet};
use super::values::{as_count, contains_value, is_multiple, json_eq, num_cmp, show};

/// Deepest schema nesting followed while validating one value (guards `$ref` loops that do
/// not descend into the value).
const MAX_DEPTH: usize = 64;

/// The outcome of validating one value against one schema.
#[derive(Debug, Clone)]
pub(crate) enum Verdict {
    /// Definitely valid.
    Valid,
    /// Definitely invalid: which keyword failed, where, and why.
    Invalid(Failure),
    /// Undecided because of this keyword.
    Unknown(String),
}

/// A failed keyword.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The failing keyword (`maximum`, `required`, ...); `false` for a false schema.
    pub keyword: String,
    /// Where that keyword is.
    pub loc: Loc,
    /// What was wrong, for messages.
    pub detail: String,
}

impl Verdict {
    fn invalid(node: &Node<'_>, keyword: &str, detail: String) -> Verdict {
        Verdict::invalid_at(node, keyword, detail)
    }
}

/// Folds keyword verdicts: any failure wins, else any unknown, else valid.
#[derive(Default)]
struct Fold {
    unknown: Option<String>,
}

impl Fold {
    /// Records `v`; returns the failure if there is one, to stop early.
    fn add(&mut self, v: Verdict) -> Option<Verdict> {
        match v {
            Verdict::Valid => None,
            Verdict::Unknown(k) => {
                self.unknown.get_or_insert(k);
                None
            }
            invalid @ Verdict::Invalid(_) => Some(invalid),
        }
    }

    fn finish(self) -> Verdict {
        self.unknown.map_or(Verdict::Valid, Verdict::Unknown)
    }
}

macro_rules! fold {
    ($fold:expr, $v:expr) => {
        if let Some(stop) = $fold.add($v) {
            return stop;
        }
    };
}

impl Docs {
    /// Validates `value` against `schema`. `skip` names keywords of the top-level schema to
    /// treat as satisfied (the caller knows the writer guarantees them).
    pub fn validate(&self, schema: &Node<'_>, value: &Value, skip: &dyn Fn(&str) -> bool) -> Verdict {
        self.validate_at(schema, value, skip, 0)
    }

    fn validate_at(
        &self,
        schema: &Node<'_>,
        value: &Value,
        skip: &dyn Fn(&str) -> bool,
        depth: usize,
    ) -> Verdict {
        if depth > MAX_DEPTH {
            return Verdict::Unknown("$ref".to_owned());
        }
        let map = match schema.value {
            Value::Bool(true) => return Verdict::Valid,
            Value::Bool(false) => {
                return Verdict::Invalid(Failure {
                    keyword: "false".to_owned(),
                    loc: schema.loc.clone(),
                    detail: "the schema `false` accepts nothing".to_owned(),
                })
            }
            Value::Object(m) => m,
            _ => return Verdict::Unknown("schema".to_owned()),
        };
        let sub = |n: &Node<'_>, v: &Value| self.validate_at(n, v, &|_| false, depth + 1);
        let mut fold = Fold::default();
        for (key, kv) in map {
            let ignored = schema.hides(key) || (schema.ref_only() && key != "$ref");
            if is_annotation(key) || skip(key) || ignored {
                continue;
            }
            let verdict = match key.as_str() {
                "$ref" => match kv.as_str().map(|r| self.resolve(schema, r)) {
                    Some(Ok(target)) => sub(&target, value),
                    _ => Verdict::Unknown("$ref".to_owned()),
                },
                "type" => {
                    let allowed = declared(schema);
                    if allowed.has(TypeSet::of_value(value)) {
                        Verdict::Valid
                    } else {
                        let why = format!("{} is not of type {}", show(value), allowed.describe());
                        Verdict::invalid(schema, key, why)
                    }
                }
                "enum" => match kv {
                    Value::Array(vals) if !contains_value(vals, value) => {
                        Verdict::invalid(schema, key, format!("{} is not listed", show(value)))
                    }
                    _ => Verdict::Valid,
                },
                "const" if !json_eq(kv, value) => {
                    Verdict::invalid(schema, key, format!("{} is not {}", show(value), show(kv)))
                }
                "const" => Verdict::Valid,
                "allOf" => {
                    let mut inner = Fold::default();
                    for m in schema.sub_list(key) {
                        fold!(inner, sub(&m, value));
                    }
                    inner.finish()
                }
                "anyOf" | "oneOf" => self.branches(schema, key, value, &sub),
                "not" => match schema.sub(key).map(|n| sub(&n, value)) {
                    Some(Verdict::Valid) => {
                        Verdict::invalid(schema, key, format!("{} matches the negated schema", show(value)))
                    }
                    Some(Verdict::Unknown(k)) => Verdict::Unknown(k),
                    _ => Verdict::Valid,
                },
                "if" => self.conditional(schema, value, &sub),
                "then" | "else" => Verdict::Valid,
                _ => self.by_type(schema, key, kv, value, &sub),
            };
            fold!(fold, verdict);
        }
        fold.finish()
    }

    /// `anyOf` (some branch valid) and `oneOf` (exactly one branch valid).
    fn branches(
        &self,
        schema: &Node<'_>,
        key: &str,
        value: &Value,
        sub: &dyn Fn(&Node<'_>, &Value) -> Verdict,
    ) -> Verdict {
        let (mut valid, mut unknown) = (0usize, None);
        for b in schema.sub_list(key) {
            match sub(&b, value) {
                Verdict::Valid => valid += 1,
                Verdict::Unknown(k) => unknown = unknown.or(Some(k)),
                Verdict::Invalid(_) => {}
            }
        }
        match (key, valid, unknown) {
            ("oneOf", n, _) if n > 1 => {
                Verdict::invalid(schema, key, format!("{} matches {n} branches of oneOf", show(value)))
            }
            (_, 0, None) => Verdict::Invalid(Failure {
                // Named apart from "oneOf" so a value matching nothing is not reported as an
                // ambiguity.
                keyword: "noBranch".to_owned(),
                loc: schema.loc.push(key),
                detail: format!("{} matches no branch of {key}", show(value)),
            }),
            ("anyOf", n, _) if n > 0 => Verdict::Valid,
            (_, _, Some(k)) => Verdict::Unknown(k),
            _ => Verdict::Valid,
        }
    }

    /// `if`/`then`/`else`.
    fn conditional(
        &self,
        schema: &Node<'_>,
        value: &Value,
        sub: &dyn Fn(&Node<'_>, &Value) -> Verdict,
    ) -> Verdict {
        let Some(cond) = schema.sub("if") else {
            return Verdict::Valid;
        };
        let branch = match sub(&cond, value) {
            Verdict::Valid => "then",
            Verdict::Invalid(_) => "else",
            Verdict::Unknown(k) => return Verdict::Unknown(k),
        };
        schema.sub(branch).map_or(Verdict::Valid, |n| sub(&n, value))
    }

    /// Keywords that only apply to one JSON type; others pass.
    fn by_type(
        &self,
        schema: &Node<'_>,
        key: &str,
        kv: &Value,
        value: &Value,
        sub: &dyn Fn(&Node<'_>, &Value) -> Verdict,
    ) -> Verdict {
        match value {
            Value::Number(n) => number_keyword(schema, key, kv, n),
            Value::String(s) => string_keyword(schema, key, kv, s),
            Value::Object(_) => self.object_keyword(schema, key, kv, value, sub),
            Value::Array(_) => self.array_keyword(schema, key, kv, value, sub),
            _ => unknown_unless_known(key),
        }
    }
}

/// Every keyword the validator understands somewhere; others make the verdict unknown.
pub(crate) fn is_known_keyword(key: &str) -> bool {
    matches!(
        key,
        "$ref"
            | "type"
            | "enum"
            | "const"
            | "allOf"
            | "anyOf"
            | "oneOf"
            | "not"
            | "if"
            | "then"
            | "else"
            | "minimum"
            | "maximum"
            | "exclusiveMinimum"
            | "exclusiveMaximum"
            | "multipleOf"
            | "minLength"
            | "maxLength"
            | "pattern"
            | "format"
            | "properties"
            | "patternProperties"
            | "additionalProperties"
            | "unevaluatedProperties"
            | "required"
            | "minProperties"
            | "maxProperties"
            | "propertyNames"
            | "dependentRequired"
            | "dependentSchemas"
            | "dependencies"
            | "items"
            | "prefixItems"
            | "additionalItems"
            | "unevaluatedItems"
            | "minItems"
            | "maxItems"
            | "uniqueItems"
            | "contains"
            | "minContains"
            | "maxContains"
    )
}

/// A keyword that does not apply to this value's type: valid if known, unknown otherwise.
fn unknown_unless_known(key: &str) -> Verdict {
    if is_known_keyword(key) {
        Verdict::Valid
    } else {
        Verdict::Unknown(key.to_owned())
    }
}

fn number_keyword(schema: &Node<'_>, key: &str, kv: &Value, n: &Number) -> Verdict {
    let bound = |ok: &dyn Fn(Ordering) -> bool, word: &str| match kv {
        Value::Number(b) => match num_cmp(n, b) {
            Some(o) if ok(o) => Verdict::Valid,
            Some(_) => Verdict::invalid(schema, key, format!("{n} is {word} {b}")),
            None => Verdict::Unknown(key.to_owned()),
        },
        _ => Verdict::Valid,
    };
    // Draft-04 spelled exclusivity as a boolean next to minimum/maximum.
    let draft4 = |k: &str| schema.get(k) == Some(&Value::Bool(true));
    match key {
        "minimum" if draft4("exclusiveMinimum") => bound(&|o| o.is_gt(), "not greater than"),
        "minimum" => bound(&|o| o.is_ge(), "less than"),
        "maximum" if draft4("exclusiveMaximum") => bound(&|o| o.is_lt(), "not less than"),
        "maximum" => bound(&|o| o.is_le(), "greater than"),
        "exclusiveMinimum" => bound(&|o| o.is_gt(), "not greater than"),
        "exclusiveMaximum" => bound(&|o| o.is_lt(), "not less than"),
        "multipleOf" => match kv {
            Value::Number(m) if !is_multiple(n, m) => {
                Verdict::invalid(schema, key, format!("{n} is not a multiple of {m}"))
            }
            _ => Verdict::Valid,
        },
        _ => unknown_unless_known(key),
    }
}

fn string_keyword(schema: &Node<'_>, key: &str, kv: &Value, s: &str) -> Verdict {
    // Lengths count Unicode code points, as JSON Schema specifies.
    let len = s.chars().count() as u64;
    match (key, as_count(kv)) {
        ("minLength", Some(m)) if len < m => {
            Verdict::invalid(schema, key, format!("{s:?} is shorter than {m}"))
        }
        ("maxLength", Some(m)) if len > m => {
            Verdict::invalid(schema, key, format!("{s:?} is longer than {m}"))
        }
        ("pattern", _) => match kv.as_str().and_then(|p| pattern::matches(p, s)) {
            Some(true) => Verdict::Valid,
            Some(false) => Verdict::invalid(schema, key, format!("{s:?} does not match {kv}")),
            None => Verdict::Unknown(key.to_owned()),
        },
        // Formats (including Kakehashi's my-number) are checked by the real validator only.
        ("format", _) => Verdict::Unknown(key.to_owned()),
        _ => unknown_unless_known(key),
    }
}
