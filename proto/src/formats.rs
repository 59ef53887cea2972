//! The `format` values Kakehashi asserts, and the unknown ones a schema uses.
//!
//! Every format of JSON Schema draft 2020-12 (§7.3) is asserted, and so are Kakehashi's
//! `my-number`, `corporate-number` and `local-government-code`. Any other format follows the specification (§7.2.3): the
//! schema is accepted, the format is an annotation only (never asserted), and the registry
//! reports it as a warning, so a typo such as `my-numbr` is noticed rather than silently ignored.

use serde_json::Value;
use std::fmt;

/// The formats defined by JSON Schema draft 2020-12 (Validation §7.3), all asserted.
pub const DRAFT_2020_12_FORMATS: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Kakehashi's own formats (checked by [`crate::ident`]), asserted like the standard ones.
pub const KAKEHASHI_FORMATS: &[&str] = &["my-number", "corporate-number", "local-government-code"];

/// Whether a string has a format.
pub type FormatCheck = fn(&str) -> bool;

/// The check of each of [`KAKEHASHI_FORMATS`], in the same order: what every validator of the
/// bus (registry, adapter) registers, so that none of them asserts less than another.
pub const KAKEHASHI_FORMAT_CHECKS: [(&str, FormatCheck); 3] = [
    ("my-number", crate::ident::is_valid_my_number),
    ("corporate-number", crate::ident::is_valid_corporate_number),
    ("local-government-code", crate::ident::is_valid_local_government_code),
];

/// Whether `name` is a format Kakehashi asserts.
pub fn is_known(name: &str) -> bool {
    DRAFT_2020_12_FORMATS.contains(&name) || KAKEHASHI_FORMATS.contains(&name)
}

/// A `format` keyword naming a format that is not asserted (an annotation only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFormat {
    /// JSON Pointer to the `format` keyword inside the schema.
    pub pointer: String,
    /// The format's name.
    pub name: String,
}

impl fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown format \"{}\" at {}: kept as an annotation, not validated",
            self.name, self.pointer
        )
    }
}

/// Every `format` in `schema` (and its subschemas) that is not asserted.
/// Only schema positions are searched: `const`, `enum`, `default`, `examples` and unknown
/// keywords hold data, where a `"format"` member means nothing.
pub fn unknown_formats(schema: &Value) -> Vec<UnknownFormat> {
    let mut out = Vec::new();
    walk(schema, &mut String::new(), &mut out);
    out
}

fn walk(schema: &Value, pointer: &mut String, out: &mut Vec<UnknownFormat>) {
    let Value::Object(map) = schema else { return };
    for (keyword, value) in map {
        let at = pointer.len();
        push_token(pointer, keyword);
        match (keyword.as_str(), value) {
            ("format", Value::String(name)) if !is_known(name) => {
                out.push(UnknownFormat { pointer: pointer.clone(), name: name.clone() });
            }
            (
                "items"
                | "additionalItems"
                | "additionalProperties"
                | "propertyNames"
                | "contains"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contentSchema",
                Value::Object(_),
            ) => walk(value, pointer, out),
            ("items" | "prefixItems" | "allOf" | "anyOf" | "oneOf", Value::Array(items)) => {
                walk_each(items.iter().enumerate().map(|(i, v)| (i.to_string(), v)), pointer, out);
            }
            (
                "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
                | "dependencies",
                Value::Object(members),
            ) => walk_each(members.iter().map(|(k, v)| (k.clone(), v)), pointer, out),
            _ => {}
        }
        pointer.truncate(at);
    }
}

fn walk_each<'a>(
    children: impl Iterator<Item = (String, &'a Value)>,
    pointer: &mut String,
    out: &mut Vec<UnknownFormat>,
) {
    for (token, child) in children {
        let at = pointer.len();
        push_token(pointer, &token);
        walk(child, pointer, out);
        pointer.truncate(at);
    }
}

/// Appends `/token`, escaped as RFC 6901 requires.
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    pointer.push_str(&token.replace('~', "~0").replace('/', "~1"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_standard_and_kakehashi_format_is_known() {
        let props: serde_json::Map<String, Value> = DRAFT_2020_12_FORMATS
            .iter()
            .chain(KAKEHASHI_FORMATS)
            .map(|f| (f.to_string(), json!({"format": f})))
            .collect();
        assert_eq!(unknown_formats(&json!({"properties": props})), Vec::new());
    }

    #[test]
    fn unknown_formats_are_found_in_subschemas_only_with_escaped_pointers() {
        let schema = json!({
            "format": "x-top",
            "properties": {"a/b": {"format": "x-slash"}, "format": {"type": "string"}},
            "prefixItems": [{"format": "date"}, {"format": "x-item"}],
            "$defs": {"d": {"anyOf": [{"format": "x-def"}]}},
            "const": {"format": "x-const"},
            "examples": [{"format": "x-example"}],
            "x-vendor": {"format": "x-vendor"}
        });
        let mut found: Vec<(String, String)> =
            unknown_formats(&schema).into_iter().map(|u| (u.pointer, u.name)).collect();
        let mut expected = vec![
            ("/format".to_string(), "x-top".to_string()),
            ("/properties/a~1b/format".to_string(), "x-slash".to_string()),
            ("/prefixItems/1/format".to_string(), "x-item".to_string()),
            ("/$defs/d/anyOf/0/format".to_string(), "x-def".to_string()),
        ];
        found.sort();
        expected.sort();
        assert_eq!(found, expected);
    }
}
