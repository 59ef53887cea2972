use serde_json::json;

use super::*;
use IncompatibilityKind as K;

#[test]
fn adding_an_enum_value_is_backward_compatible() {
    assert_compatible(&backward(json!({"enum": ["a", "b"]}), json!({"enum": ["a", "b", "c"]})));
}

#[test]
fn adding_an_enum_value_is_forward_incompatible() {
    let found = forward(json!({"enum": ["a", "b"]}), json!({"enum": ["a", "b", "c"]}));
    assert_only(&found, K::EnumWidened);
    assert_has(&found, K::EnumWidened, "/enum");
}

#[test]
fn removing_an_enum_value_is_backward_incompatible() {
    let found =
        backward(json!({"type": "string", "enum": ["a", "b"]}), json!({"type": "string", "enum": ["a"]}));
    assert_has(&found, K::EnumNarrowed, "/enum");
}

#[test]
fn adding_an_enum_to_an_unrestricted_string_is_backward_incompatible() {
    let found = backward(json!({"type": "string"}), json!({"type": "string", "enum": ["a"]}));
    assert_has(&found, K::EnumNarrowed, "/enum");
}

#[test]
fn removing_an_enum_is_backward_compatible() {
    assert_compatible(&backward(json!({"type": "string", "enum": ["a"]}), json!({"type": "string"})));
}

#[test]
fn enum_values_are_compared_as_json_numbers() {
    assert_compatible(&backward(json!({"enum": [1, 2]}), json!({"enum": [1.0, 2.0, 3]})));
}

#[test]
fn const_to_enum_containing_it_is_backward_compatible() {
    assert_compatible(&backward(json!({"const": "x"}), json!({"enum": ["x", "y"]})));
}

#[test]
fn changing_const_is_incompatible_both_ways() {
    assert_has(&backward(json!({"const": "x"}), json!({"const": "y"})), K::EnumNarrowed, "/const");
    assert_has(&forward(json!({"const": "x"}), json!({"const": "y"})), K::EnumWidened, "/const");
}

#[test]
fn boolean_writer_fits_an_enum_listing_both_booleans() {
    assert_compatible(&backward(json!({"type": "boolean"}), json!({"enum": [true, false]})));
    assert_has(&backward(json!({"type": "boolean"}), json!({"enum": [true]})), K::EnumNarrowed, "/enum");
}

#[test]
fn enum_writer_values_are_checked_against_reader_bounds() {
    assert_compatible(&backward(json!({"enum": [2, 3]}), json!({"type": "integer", "minimum": 2})));
    let found = backward(json!({"enum": [1, 2]}), json!({"type": "integer", "minimum": 2}));
    assert_has(&found, K::MinimumIncreased, "/minimum");
}

#[test]
fn lowering_minimum_is_backward_compatible() {
    assert_compatible(&backward(
        json!({"type": "number", "minimum": 5}),
        json!({"type": "number", "minimum": 0}),
    ));
}

#[test]
fn raising_minimum_is_backward_incompatible_and_forward_compatible() {
    let old = json!({"type": "number", "minimum": 0});
    let new = json!({"type": "number", "minimum": 5});
    assert_has(&backward(old.clone(), new.clone()), K::MinimumIncreased, "/minimum");
    assert_compatible(&forward(old, new));
}

#[test]
fn adding_minimum_is_backward_incompatible() {
    assert_has(
        &backward(json!({"type": "integer"}), json!({"type": "integer", "minimum": 1})),
        K::MinimumIncreased,
        "/minimum",
    );
}

#[test]
fn lowering_maximum_is_backward_incompatible_and_raising_is_compatible() {
    let s = |m: i64| json!({"type": "integer", "maximum": m});
    assert_has(&backward(s(10), s(5)), K::MaximumDecreased, "/maximum");
    assert_compatible(&backward(s(5), s(10)));
    assert_has(&forward(s(5), s(10)), K::MaximumIncreased, "/maximum");
}

#[test]
fn making_a_bound_exclusive_is_backward_incompatible() {
    let old = json!({"type": "number", "maximum": 10});
    let new = json!({"type": "number", "exclusiveMaximum": 10});
    assert_has(&backward(old, new), K::MaximumDecreased, "/exclusiveMaximum");
}

#[test]
fn exclusive_bound_implies_inclusive_bound_at_same_value() {
    let old = json!({"type": "number", "exclusiveMinimum": 0});
    let new = json!({"type": "number", "minimum": 0});
    assert_compatible(&backward(old, new));
}

#[test]
fn draft4_boolean_exclusive_minimum_is_understood() {
    let old = json!({"$schema": "http://json-schema.org/draft-04/schema#", "type": "number", "minimum": 0, "exclusiveMinimum": true});
    let new = json!({"type": "number", "exclusiveMinimum": 0});
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_compatible(&forward(old, new));
}

#[test]
fn numeric_bounds_do_not_matter_when_the_writer_cannot_produce_numbers() {
    assert_compatible(&backward(
        json!({"type": "string"}),
        json!({"type": ["string", "integer"], "minimum": 3}),
    ));
}

#[test]
fn relaxing_multiple_of_to_a_divisor_is_backward_compatible() {
    assert_compatible(&backward(
        json!({"type": "integer", "multipleOf": 10}),
        json!({"type": "integer", "multipleOf": 5}),
    ));
}

#[test]
fn tightening_multiple_of_is_backward_incompatible() {
    let found =
        backward(json!({"type": "integer", "multipleOf": 5}), json!({"type": "integer", "multipleOf": 10}));
    assert_has(&found, K::MultipleOfChanged, "/multipleOf");
}

#[test]
fn decimal_multiple_of_tolerates_binary_rounding() {
    assert_compatible(&backward(
        json!({"type": "number", "multipleOf": 0.3}),
        json!({"type": "number", "multipleOf": 0.1}),
    ));
}

#[test]
fn raising_min_length_is_backward_incompatible() {
    let found =
        backward(json!({"type": "string", "minLength": 1}), json!({"type": "string", "minLength": 3}));
    assert_has(&found, K::MinLengthIncreased, "/minLength");
}

#[test]
fn lowering_max_length_is_backward_incompatible_and_forward_compatible() {
    let old = json!({"type": "string", "maxLength": 20});
    let new = json!({"type": "string", "maxLength": 10});
    assert_has(&backward(old.clone(), new.clone()), K::MaxLengthDecreased, "/maxLength");
    assert_compatible(&forward(old, new));
}

#[test]
fn removing_length_bounds_is_backward_compatible() {
    assert_compatible(&backward(
        json!({"type": "string", "minLength": 1, "maxLength": 5}),
        json!({"type": "string"}),
    ));
}

#[test]
fn keeping_the_same_pattern_is_compatible() {
    let s = json!({"type": "string", "pattern": "^[0-9]{7}$"});
    let mut with_doc = s.clone();
    with_doc["description"] = json!("postal code");
    assert_compatible(&backward(s.clone(), with_doc.clone()));
    assert_compatible(&forward(s, with_doc));
}

#[test]
fn changing_a_pattern_is_incompatible_even_if_it_looks_wider() {
    let old = json!({"type": "string", "pattern": "^[0-9]{7}$"});
    let new = json!({"type": "string", "pattern": "^[0-9]{3}-?[0-9]{4}$"});
    assert_has(&backward(old, new), K::PatternChanged, "/pattern");
}

#[test]
fn adding_a_pattern_is_backward_incompatible_and_removing_one_is_compatible() {
    let plain = json!({"type": "string"});
    let patterned = json!({"type": "string", "pattern": "^a"});
    assert_has(&backward(plain.clone(), patterned.clone()), K::PatternChanged, "/pattern");
    assert_compatible(&backward(patterned, plain));
}

#[test]
fn literal_pattern_is_checked_against_enum_values() {
    assert_compatible(&backward(
        json!({"enum": ["x-a", "x-b"]}),
        json!({"type": "string", "pattern": "^x-"}),
    ));
    assert_has(
        &backward(json!({"enum": ["x-a", "y"]}), json!({"type": "string", "pattern": "^x-"})),
        K::PatternChanged,
        "/pattern",
    );
}

#[test]
fn adding_a_format_is_backward_incompatible() {
    let found = backward(json!({"type": "string"}), json!({"type": "string", "format": "date"}));
    assert_has(&found, K::FormatChanged, "/format");
}

#[test]
fn changing_a_format_is_backward_incompatible() {
    let found = backward(
        json!({"type": "string", "format": "date-time"}),
        json!({"type": "string", "format": "date"}),
    );
    assert_has(&found, K::FormatChanged, "/format");
}

#[test]
fn removing_a_format_is_backward_compatible_and_forward_incompatible() {
    let old = json!({"type": "string", "format": "my-number"});
    let new = json!({"type": "string"});
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_has(&forward(old, new), K::FormatChanged, "");
}

#[test]
fn exclusive_bounds_follow_the_spelling_of_the_declared_draft() {
    // Under draft-04 a numeric exclusiveMaximum is not a keyword: old data was unbounded.
    let old = json!({"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "exclusiveMaximum": 0});
    let new = json!({"type": "integer", "exclusiveMaximum": 0});
    assert_has(&backward(old, new), K::MaximumDecreased, "/exclusiveMaximum");
    // ...and under 2020-12 a boolean one is not a keyword either.
    let old = json!({"type": "integer", "maximum": 0, "exclusiveMaximum": true});
    let new = json!({"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "maximum": 0, "exclusiveMaximum": true});
    assert_has(&backward(old, new), K::MaximumDecreased, "/maximum");
}
