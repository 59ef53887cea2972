use serde_json::json;

use super::*;
use IncompatibilityKind as K;

#[test]
fn changing_annotations_is_compatible_both_ways() {
    let old = json!({"type": "object", "title": "A", "description": "old", "$comment": "x",
                     "properties": {"a": {"type": "string", "default": "x", "examples": ["y"], "x-ui-order": 1}}});
    let new = json!({"type": "object", "title": "B", "description": "new",
                     "properties": {"a": {"type": "string", "default": "z", "deprecated": true, "x-ui-order": 2}}});
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_compatible(&forward(old, new));
}

#[test]
fn adding_a_pii_annotation_to_an_existing_property_is_incompatible() {
    let old = json!({"type": "object", "properties": {"n": {"type": "string"}}});
    let new =
        json!({"type": "object", "properties": {"n": {"type": "string", "x-kakehashi-pii": "my-number"}}});
    assert_only(&backward(old.clone(), new.clone()), K::PiiAnnotationChanged);
    assert_has(&forward(old, new), K::PiiAnnotationChanged, "/properties/n/x-kakehashi-pii");
}

#[test]
fn changing_a_pii_category_is_incompatible() {
    let s = |cat: &str| json!({"properties": {"n": {"type": "string", "x-kakehashi-pii": cat}}});
    assert_has(
        &backward(s("my-number"), s("corporate-number")),
        K::PiiAnnotationChanged,
        "/properties/n/x-kakehashi-pii",
    );
}

#[test]
fn keeping_a_pii_annotation_is_compatible() {
    let s = json!({"properties": {"n": {"type": "string", "x-kakehashi-pii": "my-number"}}});
    let mut new = s.clone();
    new["properties"]["m"] = json!({});
    assert_compatible(&backward(s, new));
}

#[test]
fn removing_an_annotated_property_from_an_open_model_is_incompatible() {
    // The value can still arrive, now unannotated, and would be delivered raw.
    let old =
        json!({"type": "object", "properties": {"n": {"type": "string", "x-kakehashi-pii": "my-number"}}});
    let new = json!({"type": "object", "properties": {}});
    assert_has(&backward(old, new), K::PiiAnnotationChanged, "");
}

#[test]
fn adding_an_annotated_property_to_a_closed_model_is_backward_compatible() {
    let old = json!({"type": "object", "properties": {}, "additionalProperties": false});
    let new = json!({"type": "object", "properties": {"n": {"type": "string", "x-kakehashi-pii": "my-number"}}, "additionalProperties": false});
    assert_compatible(&backward(old, new));
}

#[test]
fn pii_annotation_reached_through_a_ref_is_compared() {
    let old = json!({"properties": {"n": {"$ref": "#/$defs/mn"}}, "$defs": {"mn": {"type": "string", "x-kakehashi-pii": "my-number"}}});
    let new = json!({"properties": {"n": {"$ref": "#/$defs/mn"}}, "$defs": {"mn": {"type": "string"}}});
    assert_has(&backward(old, new), K::PiiAnnotationChanged, "/properties/n");
}

#[test]
fn unknown_keyword_added_to_reader_is_reported_as_unsupported() {
    let found = backward(json!({"type": "string"}), json!({"type": "string", "mustBeShouty": true}));
    assert_has(&found, K::UnsupportedKeyword, "/mustBeShouty");
}

#[test]
fn identical_if_then_else_is_compatible_and_a_changed_one_is_unsupported() {
    let s = |then_max: u32| {
        json!({"type": "object",
        "if": {"properties": {"kind": {"const": "short"}}},
        "then": {"properties": {"text": {"maxLength": then_max}}},
        "else": true})
    };
    assert_compatible(&backward(s(10), s(10)));
    let mut widened = s(10);
    widened["minProperties"] = json!(0);
    assert_compatible(&backward(s(10), widened));
    assert_has(&backward(s(10), s(20)), K::UnsupportedKeyword, "/if");
}

#[test]
fn property_names_and_dependent_required_compare_by_identity() {
    let base =
        json!({"type": "object", "propertyNames": {"maxLength": 8}, "dependentRequired": {"a": ["b"]}});
    let mut new = base.clone();
    new["title"] = json!("t");
    assert_compatible(&backward(base.clone(), new));
    let found = backward(json!({"type": "object"}), base);
    assert_has(&found, K::UnsupportedKeyword, "/propertyNames");
    assert_has(&found, K::UnsupportedKeyword, "/dependentRequired");
}

#[test]
fn object_only_keywords_do_not_matter_when_the_writer_cannot_produce_objects() {
    assert_compatible(&backward(json!({"type": "string"}), json!({"propertyNames": {"maxLength": 8}})));
}

#[test]
fn too_many_branch_combinations_are_reported_not_guessed() {
    let branches: Vec<_> = (0..12).map(|i| json!({"const": i})).collect();
    let old =
        json!({"allOf": [{"anyOf": branches.clone()}, {"anyOf": branches.clone()}, {"anyOf": branches}]});
    assert_only(&backward(old, json!({"type": "integer", "minimum": 100})), K::TooComplex);
}
