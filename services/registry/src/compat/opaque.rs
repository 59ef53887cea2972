//! Reader keywords the checker does not reason about, only compares: `if`/`then`/`else`,
//! `propertyNames`, `dependentRequired`, `dependentSchemas`, `dependencies`,
//! `unevaluatedItems`, `maxContains`, dynamic references, and unknown keywords. They pass only
//! when the writer has an equivalent keyword; otherwise they are reported as
//! UnsupportedKeyword, because the checker cannot prove them.

use super::equiv::is_annotation;
use super::node::{Loc, Node};
use super::report::IncompatibilityKind as Kind;
use super::types::TypeSet;
use super::walker::Checker;

/// Keywords the walk handles itself (anywhere in `walker.rs`, `object.rs`, ...).
fn is_structural(key: &str) -> bool {
    matches!(
        key,
        "$ref"
            | "allOf"
            | "anyOf"
            | "oneOf"
            | "not"
            | "type"
            | "enum"
            | "const"
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
            | "items"
            | "prefixItems"
            | "additionalItems"
            | "minItems"
            | "maxItems"
            | "uniqueItems"
            | "contains"
            | "minContains"
            | "then"
            | "else"
            | super::PII_KEYWORD
    )
}

/// Siblings a keyword's meaning depends on. An identical keyword in the writer guarantees the
/// reader's only when these are equivalent too: `unevaluatedItems` applies to the positions no
/// `prefixItems`/`items`/`contains` (here or in an in-place applicator) evaluated, and
/// `maxContains` counts the matches of `contains`. Empty for self-contained keywords.
/// (`unevaluatedProperties` is modelled in `object_model.rs`; `additionalItems` in `array.rs`.)
fn depends_on(key: &str) -> &'static [&'static str] {
    match key {
        "unevaluatedItems" => &[
            "prefixItems",
            "items",
            "additionalItems",
            "contains",
            "allOf",
            "anyOf",
            "oneOf",
            "not",
            "if",
            "then",
            "else",
            "$ref",
            "$dynamicRef",
            "$recursiveRef",
            "dependentSchemas",
        ],
        "maxContains" => &["contains"],
        _ => &[],
    }
}

/// The JSON type an identity-only keyword applies to, if only one.
fn applies_to(key: &str) -> Option<TypeSet> {
    match key {
        "propertyNames" | "dependentRequired" | "dependentSchemas" | "dependencies" => Some(TypeSet::OBJECT),
        "unevaluatedItems" | "maxContains" => Some(TypeSet::ARRAY),
        _ => None,
    }
}

impl<'a> Checker<'a> {
    /// Identity-only keywords of `reader`. `common` is the set of types both sides allow.
    pub(crate) fn check_opaque(&mut self, reader: &Node<'a>, alt: &[Node<'a>], wloc: &Loc, common: TypeSet) {
        let Some(map) = reader.map() else { return };
        for key in map.keys() {
            if is_annotation(key) || is_structural(key) || reader.hides(key) {
                continue;
            }
            if applies_to(key).is_some_and(|t| !common.has(t)) {
                continue;
            }
            // `then`/`else` only mean something together with their `if`.
            let group: &[&str] = if key == "if" { &["if", "then", "else"] } else { &[key.as_str()] };
            let docs = self.docs;
            let same = alt.iter().any(|w| group.iter().all(|k| docs.keyword_equivalent(k, reader, w)));
            let siblings = depends_on(key);
            if same && !siblings.is_empty() {
                // The keyword itself is unchanged; it still holds only in the same context.
                let same_context = alt.iter().any(|w| {
                    docs.keyword_equivalent(key, reader, w)
                        && siblings.iter().all(|k| docs.keyword_equivalent(k, reader, w))
                });
                if same_context {
                    continue;
                }
                let wl = alt.iter().find_map(|w| w.sub(key)).map_or_else(|| wloc.clone(), |n| n.loc);
                let msg = format!(
                    "`{key}` in {} depends on its sibling keywords ({}), which differ from {}; \
                     the checker cannot compare it on its own, so compatibility cannot be proven",
                    self.r(),
                    siblings.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
                    self.w()
                );
                self.report(Kind::UnprovableDependentKeyword, reader.loc.push(key), wl, msg);
                continue;
            }
            if same {
                continue;
            }
            let wl = alt.iter().find_map(|w| w.sub(key)).map_or_else(|| wloc.clone(), |n| n.loc);
            let msg = format!(
                "{} uses `{key}`, which the checker only accepts when {} has an identical `{key}`; \
                 compatibility cannot be proven",
                self.r(),
                self.w()
            );
            self.report(Kind::UnsupportedKeyword, reader.loc.push(key), wl, msg);
        }
    }
}
