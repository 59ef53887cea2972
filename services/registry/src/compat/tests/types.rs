use serde_json::json;

use super::*;
use IncompatibilityKind as K;

#[test]
fn identical_schemas_are_compatible_both_ways() {
    let s = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
    assert_compatible(&backward(s.clone(), s.clone()));
    assert_compatible(&forward(s.clone(), s));
}

#[test]
fn widening_integer_to_number_is_backward_compatible() {
    assert_compatible(&backward(json!({"type": "integer"}), json!({"type": "number"})));
}

#[test]
fn widening_integer_to_number_is_forward_incompatible() {
    let found = forward(json!({"type": "integer"}), json!({"type": "number"}));
    assert_has(&found, K::TypeWidened, "/type");
}

#[test]
fn narrowing_number_to_integer_is_backward_incompatible() {
    let found = backward(json!({"type": "number"}), json!({"type": "integer"}));
    assert_has(&found, K::TypeNarrowed, "/type");
}

#[test]
fn changing_string_to_integer_is_incompatible_both_ways() {
    assert_has(&backward(json!({"type": "string"}), json!({"type": "integer"})), K::TypeNarrowed, "/type");
    assert_has(&forward(json!({"type": "string"}), json!({"type": "integer"})), K::TypeWidened, "/type");
}

#[test]
fn adding_a_type_to_a_type_array_is_backward_compatible() {
    assert_compatible(&backward(json!({"type": "string"}), json!({"type": ["string", "null"]})));
}

#[test]
fn removing_a_type_from_a_type_array_is_backward_incompatible() {
    let found = backward(json!({"type": ["string", "null"]}), json!({"type": "string"}));
    assert_has(&found, K::TypeNarrowed, "/type");
}

#[test]
fn adding_type_where_none_was_declared_is_backward_incompatible() {
    assert_has(&backward(json!({}), json!({"type": "string"})), K::TypeNarrowed, "/type");
}

#[test]
fn removing_type_is_backward_compatible() {
    assert_compatible(&backward(json!({"type": "string", "minLength": 2}), json!({})));
}

#[test]
fn empty_and_true_schemas_accept_anything() {
    assert_compatible(&backward(json!({"type": "object"}), json!(true)));
    assert_compatible(&backward(json!({"type": "object"}), json!({})));
    assert_compatible(&backward(json!({}), json!(true)));
}

#[test]
fn false_reader_rejects_any_writer_data() {
    assert_has(&backward(json!({}), json!(false)), K::TypeNarrowed, "");
}

#[test]
fn false_writer_is_accepted_by_any_reader() {
    assert_compatible(&backward(json!(false), json!({"type": "string", "maxLength": 1})));
}

#[test]
fn integer_writer_satisfies_reader_multiple_of_one() {
    assert_compatible(&reads(json!({"type": "number", "multipleOf": 1}), json!({"type": "integer"})));
}

#[test]
fn numbers_restricted_to_integral_multiples_fit_an_integer_reader() {
    assert_compatible(&reads(json!({"type": "integer"}), json!({"type": "number", "multipleOf": 5})));
}

#[test]
fn non_schema_value_is_reported_as_invalid() {
    assert_has(
        &reads(json!({"properties": {"a": 3}}), json!({"properties": {"a": {}}})),
        K::InvalidSchema,
        "/properties/a",
    );
}

#[test]
fn a_writer_admitting_nothing_is_accepted_even_by_false() {
    assert_compatible(&reads(json!(false), json!({"type": "string", "enum": [1]})));
}
