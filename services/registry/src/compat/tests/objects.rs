use serde_json::json;

use super::*;
use IncompatibilityKind as K;

fn open(props: serde_json::Value) -> serde_json::Value {
    json!({"type": "object", "properties": props})
}

fn closed(props: serde_json::Value) -> serde_json::Value {
    json!({"type": "object", "properties": props, "additionalProperties": false})
}

#[test]
fn adding_optional_property_to_closed_model_is_backward_compatible() {
    let old = closed(json!({"a": {"type": "string"}}));
    let new = closed(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    assert_compatible(&backward(old, new));
}

#[test]
fn adding_optional_property_to_closed_model_is_forward_incompatible() {
    let old = closed(json!({"a": {"type": "string"}}));
    let new = closed(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    assert_has(&forward(old, new), K::PropertyAddedToClosedModel, "/properties/b");
}

#[test]
fn adding_optional_property_to_open_model_is_backward_incompatible() {
    // Old data may already carry `b` with any value, since the old model allowed it.
    let old = open(json!({"a": {"type": "string"}}));
    let new = open(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    assert_has(&backward(old, new), K::PropertyAddedToOpenModel, "/properties/b");
}

#[test]
fn adding_optional_property_to_open_model_is_forward_compatible() {
    let old = open(json!({"a": {"type": "string"}}));
    let new = open(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    assert_compatible(&forward(old, new));
}

#[test]
fn adding_unconstrained_property_to_open_model_is_backward_compatible() {
    let old = open(json!({"a": {"type": "string"}}));
    let new = open(json!({"a": {"type": "string"}, "b": {"description": "anything"}}));
    assert_compatible(&backward(old, new));
}

#[test]
fn removing_property_from_open_model_is_backward_compatible() {
    let old = open(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    let new = open(json!({"a": {"type": "string"}}));
    assert_compatible(&backward(old, new));
}

#[test]
fn removing_property_from_open_model_is_forward_incompatible() {
    // New data may carry `b` with any value; old readers expect an integer.
    let old = open(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    let new = open(json!({"a": {"type": "string"}}));
    assert_has(&forward(old, new), K::PropertyRemovedFromOpenModel, "");
}

#[test]
fn removing_property_from_closed_model_is_backward_incompatible() {
    let old = closed(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    let new = closed(json!({"a": {"type": "string"}}));
    assert_has(&backward(old, new), K::PropertyRemovedFromClosedModel, "/additionalProperties");
}

#[test]
fn removing_property_from_closed_model_is_forward_compatible() {
    let old = closed(json!({"a": {"type": "string"}, "b": {"type": "integer"}}));
    let new = closed(json!({"a": {"type": "string"}}));
    assert_compatible(&forward(old, new));
}

#[test]
fn removing_a_false_property_from_closed_model_is_backward_compatible() {
    let old = closed(json!({"a": {"type": "string"}, "b": false}));
    let new = closed(json!({"a": {"type": "string"}}));
    assert_compatible(&backward(old, new));
}

#[test]
fn closing_an_open_model_is_backward_incompatible() {
    let old = open(json!({"a": {"type": "string"}}));
    let new = closed(json!({"a": {"type": "string"}}));
    assert_has(&backward(old, new), K::AdditionalPropertiesNarrowed, "/additionalProperties");
}

#[test]
fn opening_a_closed_model_is_backward_compatible_but_not_forward() {
    let old = closed(json!({"a": {"type": "string"}}));
    let new = open(json!({"a": {"type": "string"}}));
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_has(&forward(old, new), K::AdditionalPropertiesWidened, "");
}

#[test]
fn adding_property_to_model_closed_by_unevaluated_properties_is_backward_compatible() {
    let old =
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "unevaluatedProperties": false});
    let new = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "unevaluatedProperties": false});
    assert_compatible(&backward(old, new));
}

#[test]
fn removing_property_from_model_closed_by_unevaluated_properties_is_backward_incompatible() {
    let old = json!({"type": "object", "properties": {"a": {}, "b": {}}, "unevaluatedProperties": false});
    let new = json!({"type": "object", "properties": {"a": {}}, "unevaluatedProperties": false});
    assert_has(&backward(old, new), K::PropertyRemovedFromClosedModel, "/unevaluatedProperties");
}

#[test]
fn unevaluated_properties_counts_properties_declared_in_all_of_members() {
    let s = |extra: serde_json::Value| {
        json!({
            "allOf": [{"properties": {"base": {"type": "string"}}}],
            "properties": extra,
            "unevaluatedProperties": false
        })
    };
    assert_compatible(&backward(s(json!({})), s(json!({"more": {"type": "string"}}))));
    let found = backward(
        s(json!({"more": {"type": "string"}})),
        json!({"properties": {"more": {"type": "string"}}, "unevaluatedProperties": false}),
    );
    assert_has(&found, K::PropertyRemovedFromClosedModel, "/unevaluatedProperties");
}

#[test]
fn removed_property_covered_by_additional_properties_schema_is_backward_compatible() {
    let old = json!({"properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}});
    let new = json!({"additionalProperties": {"type": "string"}});
    assert_compatible(&backward(old, new));
}

#[test]
fn removed_property_not_covered_by_additional_properties_schema_is_backward_incompatible() {
    let old = json!({"properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"}});
    let new = json!({"additionalProperties": {"type": "string"}});
    assert_has(&backward(old, new), K::AdditionalPropertiesNarrowed, "/additionalProperties");
}

#[test]
fn widening_additional_properties_schema_is_backward_compatible() {
    let old = json!({"additionalProperties": {"type": "integer"}});
    let new = json!({"additionalProperties": {"type": "number"}});
    assert_compatible(&backward(old, new));
}

#[test]
fn narrowing_additional_properties_schema_is_backward_incompatible() {
    let old = json!({"additionalProperties": {"type": "number"}});
    let new = json!({"additionalProperties": {"type": "integer"}});
    assert_has(&backward(old, new), K::AdditionalPropertiesNarrowed, "/additionalProperties");
}

#[test]
fn adding_property_that_fits_old_additional_properties_schema_is_backward_compatible() {
    let old = json!({"additionalProperties": {"type": "string"}});
    let new = json!({"properties": {"name": {"type": "string"}}, "additionalProperties": {"type": "string"}});
    assert_compatible(&backward(old, new));
}

#[test]
fn adding_required_property_is_backward_incompatible() {
    let old = closed(json!({"a": {"type": "string"}}));
    let new = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}}, "required": ["b"], "additionalProperties": false});
    assert_has(&backward(old, new), K::RequiredAdded, "/required/0");
}

#[test]
fn adding_required_property_with_default_is_still_backward_incompatible() {
    // Validation does not fill defaults, so old data without `b` fails the new schema.
    let old = closed(json!({"a": {"type": "string"}}));
    let new = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "default": "x"}}, "required": ["b"], "additionalProperties": false});
    assert_has(&backward(old, new), K::RequiredAdded, "/required/0");
}

#[test]
fn making_existing_property_required_is_backward_incompatible_and_forward_compatible() {
    let old = open(json!({"a": {"type": "string"}}));
    let new = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
    assert_has(&backward(old.clone(), new.clone()), K::RequiredAdded, "/required/0");
    assert_compatible(&forward(old, new));
}

#[test]
fn removing_required_is_backward_compatible_and_forward_incompatible() {
    let old = json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
    let new = open(json!({"a": {"type": "string"}}));
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_has(&forward(old, new), K::RequiredRemoved, "/properties/a");
}

#[test]
fn nested_property_type_change_points_at_the_nested_property() {
    let old = open(json!({"address": open(json!({"postal_code": {"type": "string"}}))}));
    let new = open(json!({"address": open(json!({"postal_code": {"type": "integer"}}))}));
    assert_has(&backward(old, new), K::TypeNarrowed, "/properties/address/properties/postal_code/type");
}

#[test]
fn nested_property_widening_is_backward_compatible() {
    let old = open(json!({"address": open(json!({"postal_code": {"type": "string", "maxLength": 8}}))}));
    let new = open(json!({"address": open(json!({"postal_code": {"type": "string"}}))}));
    assert_compatible(&backward(old, new));
}

#[test]
fn property_names_with_slash_and_tilde_are_escaped_in_pointers() {
    let old = open(json!({"a/b~c": {"type": "string"}}));
    let new = open(json!({"a/b~c": {"type": "integer"}}));
    assert_has(&backward(old, new), K::TypeNarrowed, "/properties/a~1b~0c/type");
}

#[test]
fn raising_min_properties_is_backward_incompatible() {
    let found = backward(json!({"type": "object"}), json!({"type": "object", "minProperties": 1}));
    assert_has(&found, K::MinPropertiesIncreased, "/minProperties");
}

#[test]
fn min_properties_implied_by_required_is_compatible() {
    let old = json!({"type": "object", "required": ["a", "b"]});
    let new = json!({"type": "object", "minProperties": 2});
    assert_compatible(&backward(old, new));
}

#[test]
fn lowering_max_properties_is_backward_incompatible_and_raising_is_compatible() {
    let s = |n: u32| json!({"type": "object", "maxProperties": n});
    assert_has(&backward(s(5), s(3)), K::MaxPropertiesDecreased, "/maxProperties");
    assert_compatible(&backward(s(3), s(5)));
}

#[test]
fn max_properties_implied_by_closed_model_is_compatible() {
    let old = closed(json!({"a": {}, "b": {}}));
    let new = json!({"type": "object", "maxProperties": 2});
    assert_compatible(&backward(old, new));
}

#[test]
fn identical_pattern_properties_with_added_declared_property_is_backward_compatible() {
    let old = json!({"patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": false});
    let new = json!({"properties": {"id": {"type": "string"}}, "patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": false});
    assert_compatible(&backward(old, new));
}

#[test]
fn narrowing_a_pattern_property_schema_is_backward_incompatible() {
    let old = json!({"patternProperties": {"^x-": {"type": "string"}}});
    let new = json!({"patternProperties": {"^x-": {"type": "string", "maxLength": 3}}});
    assert_has(&backward(old, new), K::MaxLengthDecreased, "/patternProperties/^x-/maxLength");
}

#[test]
fn adding_pattern_properties_to_open_model_is_backward_incompatible() {
    let old = json!({"type": "object"});
    let new = json!({"type": "object", "patternProperties": {"^n_": {"type": "number"}}});
    assert_has(&backward(old, new), K::AdditionalPropertiesNarrowed, "/patternProperties/^n_");
}

#[test]
fn pattern_that_cannot_be_analysed_is_reported_conservatively() {
    let old = json!({"properties": {"abc": {"type": "string"}}});
    let new = json!({"properties": {"abc": {"type": "string"}}, "patternProperties": {"^[a-z]+$": {"type": "integer"}}});
    assert_has(&backward(old, new), K::PatternPropertiesUnproven, "/patternProperties/^[a-z]+$");
}

#[test]
fn literal_pattern_that_does_not_match_a_declared_name_is_ignored_for_it() {
    let old = json!({"properties": {"abc": {"type": "string"}}, "additionalProperties": false});
    let new = json!({"properties": {"abc": {"type": "string"}}, "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": false});
    assert_compatible(&backward(old, new));
}
