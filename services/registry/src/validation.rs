//! Running a compiled validator over a payload and turning its errors into field violations
//! whose messages never quote the payload (a My Number must not reach a dead letter's message).

use kakehashi_proto::ident::mask_my_number_like_str;
use kakehashi_proto::v1::FieldViolation;

/// Validates `instance`, returning at most `max` violations (empty = valid).
pub fn violations(
    validator: &jsonschema::Validator,
    instance: &serde_json::Value,
    max: usize,
) -> Vec<FieldViolation> {
    // Nearly every event is valid: the boolean pass is several times cheaper than collecting
    // errors (which walks the schema through boxed iterators), so errors are collected only
    // for an instance known to have some.
    if validator.is_valid(instance) {
        return Vec::new();
    }
    validator
        .iter_errors(instance)
        .take(max)
        .map(|e| FieldViolation {
            // Object keys are payload too (a My Number used as a key, under patternProperties
            // or an unexpected property): anything that looks like one is masked in both.
            pointer: mask_my_number_like_str(&e.instance_path().to_string()),
            schema_pointer: e.schema_path().to_string(),
            // `masked` replaces the instance value with a placeholder in every message.
            message: mask_my_number_like_str(&e.masked().to_string()),
        })
        .collect()
}

/// One line naming every failing pointer, for logs and the dead letter's message.
pub fn summary(violations: &[FieldViolation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| format!("{}: {}", if v.pointer.is_empty() { "/" } else { &v.pointer }, v.message))
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_my_number_used_as_a_key_reaches_neither_pointer_nor_message() {
        let schema = json!({"type": "object", "properties": {"people": {"type": "object",
            "patternProperties": {"^[0-9]+$": {"type": "string", "maxLength": 1}},
            "additionalProperties": false}}});
        let validator = jsonschema::validator_for(&schema).expect("schema");
        for instance in
            [json!({"people": {"123456789018": "too long"}}), json!({"people": {"x123456789018": 1}})]
        {
            let found = violations(&validator, &instance, 10);
            assert!(!found.is_empty(), "{instance}");
            let text = format!("{found:?}");
            assert!(!text.contains("123456789018"), "{text}");
        }
    }
}
