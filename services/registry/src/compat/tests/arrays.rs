use serde_json::json;

use super::*;
use IncompatibilityKind as K;

fn list_of(item: serde_json::Value) -> serde_json::Value {
    json!({"type": "array", "items": item})
}

#[test]
fn widening_item_type_is_backward_compatible() {
    assert_compatible(&backward(list_of(json!({"type": "integer"})), list_of(json!({"type": "number"}))));
}

#[test]
fn narrowing_item_type_is_backward_incompatible_with_pointer_into_items() {
    let found = backward(list_of(json!({"type": "number"})), list_of(json!({"type": "integer"})));
    assert_has(&found, K::TypeNarrowed, "/items/type");
}

#[test]
fn adding_items_constraint_is_backward_incompatible() {
    let found = backward(json!({"type": "array"}), list_of(json!({"type": "string"})));
    assert_has(&found, K::TypeNarrowed, "/items/type");
}

#[test]
fn nested_object_inside_items_reports_precise_pointer() {
    let old = list_of(
        json!({"type": "object", "properties": {"code": {"type": "string"}}, "additionalProperties": false}),
    );
    let new = list_of(json!({"type": "object", "properties": {}, "additionalProperties": false}));
    assert_has(&backward(old, new), K::PropertyRemovedFromClosedModel, "/items/additionalProperties");
}

#[test]
fn extending_a_closed_tuple_is_backward_compatible_but_not_forward() {
    let old = json!({"type": "array", "prefixItems": [{"type": "string"}], "items": false});
    let new =
        json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false});
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_has(&forward(old, new), K::MaxItemsIncreased, "/prefixItems/1");
}

#[test]
fn shortening_a_closed_tuple_is_backward_incompatible() {
    let old =
        json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false});
    let new = json!({"type": "array", "prefixItems": [{"type": "string"}], "items": false});
    assert_has(&backward(old, new), K::MaxItemsDecreased, "/items");
}

#[test]
fn changing_a_tuple_position_type_is_backward_incompatible() {
    let old = json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]});
    let new = json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "string"}]});
    assert_has(&backward(old, new), K::TypeNarrowed, "/prefixItems/1/type");
}

#[test]
fn draft07_tuple_items_and_additional_items_are_understood() {
    let draft07 = "http://json-schema.org/draft-07/schema#";
    let old =
        json!({"$schema": draft07, "type": "array", "items": [{"type": "string"}], "additionalItems": false});
    let new = json!({"$schema": draft07, "type": "array", "items": [{"type": "string"}], "additionalItems": {"type": "integer"}});
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_has(&forward(old, new), K::MaxItemsIncreased, "/additionalItems");
}

#[test]
fn raising_min_items_is_backward_incompatible_and_lowering_is_compatible() {
    let s = |n: u32| json!({"type": "array", "minItems": n});
    assert_has(&backward(s(1), s(2)), K::MinItemsIncreased, "/minItems");
    assert_compatible(&backward(s(2), s(1)));
}

#[test]
fn lowering_max_items_is_backward_incompatible_and_raising_is_compatible() {
    let s = |n: u32| json!({"type": "array", "maxItems": n});
    assert_has(&backward(s(5), s(2)), K::MaxItemsDecreased, "/maxItems");
    assert_compatible(&backward(s(2), s(5)));
}

#[test]
fn adding_unique_items_is_backward_incompatible_and_removing_is_compatible() {
    let plain = json!({"type": "array"});
    let unique = json!({"type": "array", "uniqueItems": true});
    assert_has(&backward(plain.clone(), unique.clone()), K::UniqueItemsAdded, "/uniqueItems");
    assert_compatible(&backward(unique.clone(), plain.clone()));
    assert_has(&forward(unique, plain), K::UniqueItemsRemoved, "");
}

#[test]
fn unique_items_is_implied_by_at_most_one_item() {
    assert_compatible(&backward(
        json!({"type": "array", "maxItems": 1}),
        json!({"type": "array", "uniqueItems": true}),
    ));
}

#[test]
fn keeping_or_widening_contains_is_backward_compatible() {
    let old = json!({"type": "array", "contains": {"type": "integer"}});
    let new = json!({"type": "array", "contains": {"type": "number"}});
    assert_compatible(&backward(old.clone(), old.clone()));
    assert_compatible(&backward(old, new));
}

#[test]
fn adding_contains_is_backward_incompatible() {
    let found = backward(json!({"type": "array"}), json!({"type": "array", "contains": {"const": "x"}}));
    assert_has(&found, K::ContainsAdded, "/contains");
}

#[test]
fn contains_is_implied_when_every_item_matches_and_one_is_required() {
    let old = json!({"type": "array", "items": {"type": "integer"}, "minItems": 1});
    let new = json!({"type": "array", "contains": {"type": "integer"}});
    assert_compatible(&backward(old, new));
}

#[test]
fn raising_min_contains_is_backward_incompatible() {
    let old = json!({"type": "array", "contains": {"type": "integer"}});
    let new = json!({"type": "array", "contains": {"type": "integer"}, "minContains": 2});
    assert_has(&backward(old, new), K::ContainsAdded, "/contains");
}

/// Issue 12, item 1: `unevaluatedItems` depends on its sibling `prefixItems`; with the third
/// prefix entry gone it now applies to position 2, where version 1 allowed numbers.
#[test]
fn dropping_a_prefix_item_under_unevaluated_items_is_backward_incompatible() {
    let old = json!({
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "number"}, {"type": "number"}],
        "unevaluatedItems": {"type": "string"}
    });
    let new = json!({
        "type": "array",
        "prefixItems": [{"type": "string"}, {"type": "number"}],
        "unevaluatedItems": {"type": "string"}
    });
    let found = backward(old, new);
    assert!(!found.is_empty(), "[\"a\",1,1] is valid under version 1 but not under the new schema");
    assert_has(&found, K::UnprovableDependentKeyword, "/unevaluatedItems");
}

#[test]
fn max_contains_with_a_widened_contains_is_backward_incompatible() {
    let old = json!({"type": "array", "contains": {"type": "string", "minLength": 1}, "maxContains": 1});
    let new = json!({"type": "array", "contains": {"type": "string"}, "maxContains": 1});
    // ["", "a"] has one match under version 1 and two under the new schema.
    assert_has(&backward(old, new), K::UnprovableDependentKeyword, "/maxContains");
}

#[test]
fn unevaluated_items_with_unchanged_siblings_stays_compatible() {
    let tuple = json!([{"type": "string"}, {"type": "number"}]);
    let old = json!({"type": "array", "prefixItems": tuple, "unevaluatedItems": false, "minItems": 2});
    let new = json!({"type": "array", "prefixItems": tuple, "unevaluatedItems": false});
    assert_compatible(&backward(old, new));
}
