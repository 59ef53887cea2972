//! Running a compiled validator over a payload and turning its errors into field violations
//! whose messages never quote the payload (a My Number must not reach a dead letter's message).

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
            pointer: e.instance_path().to_string(),
            schema_pointer: e.schema_path().to_string(),
            // `masked` replaces the instance value with a placeholder in every message.
            message: e.masked().to_string(),
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
