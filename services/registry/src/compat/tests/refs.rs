use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use IncompatibilityKind as K;

const PERSON_1: &str = "https://kakehashi.invalid/schemas/common.person/1";
const PERSON_2: &str = "https://kakehashi.invalid/schemas/common.person/2";

fn registry() -> HashMap<String, Value> {
    let person_1 = json!({"$id": PERSON_1, "type": "object",
        "properties": {"name": {"type": "string"}, "my_number": {"$ref": "#/$defs/my_number"}},
        "$defs": {"my_number": {"type": "string", "format": "my-number"}}});
    let person_2 = json!({"$id": PERSON_2, "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 10}},
        "required": ["name"]});
    HashMap::from([(PERSON_1.to_owned(), person_1), (PERSON_2.to_owned(), person_2)])
}

fn with_refs(old: Value, new: Value) -> Vec<Incompatibility> {
    check(Mode::Backward, &new, &[(1, &old)], &registry())
}

#[test]
fn local_defs_ref_is_followed_and_pointer_lands_in_defs() {
    let old = json!({"properties": {"a": {"$ref": "#/$defs/code"}}, "$defs": {"code": {"type": "string"}}});
    let new = json!({"properties": {"a": {"$ref": "#/$defs/code"}}, "$defs": {"code": {"type": "integer"}}});
    assert_has(&backward(old, new), K::TypeNarrowed, "/$defs/code/type");
}

#[test]
fn moving_a_schema_into_definitions_is_compatible() {
    let old = json!({"properties": {"a": {"type": "string"}}});
    let new = json!({"properties": {"a": {"$ref": "#/definitions/code"}}, "definitions": {"code": {"type": "string"}}});
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_compatible(&forward(old, new));
}

#[test]
fn anchor_refs_are_resolved() {
    let old = json!({"properties": {"a": {"type": "string"}}});
    let new = json!({"properties": {"a": {"$ref": "#code"}}, "$defs": {"c": {"$anchor": "code", "type": "string"}}});
    assert_compatible(&backward(old, new));
}

#[test]
fn recursive_schemas_terminate_and_compare() {
    let tree = |leaf: Value| {
        json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
            "properties": {"value": leaf, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}})
    };
    assert_compatible(&backward(tree(json!({"type": "integer"})), tree(json!({"type": "number"}))));
    assert_has(
        &backward(tree(json!({"type": "number"})), tree(json!({"type": "integer"}))),
        K::TypeNarrowed,
        "/$defs/node/properties/value/type",
    );
}

#[test]
fn self_referencing_all_of_does_not_loop() {
    let s =
        json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}], "type": "string"}}, "$ref": "#/$defs/a"});
    assert_compatible(&backward(s.clone(), json!({"type": "string"})));
    assert_compatible(&reads(s.clone(), s));
}

#[test]
fn unresolvable_local_ref_is_reported() {
    let new = json!({"properties": {"a": {"$ref": "#/$defs/missing"}}});
    let found = backward(json!({"properties": {"a": {}}}), new);
    assert_has(&found, K::UnresolvedRef, "/properties/a/$ref");
}

#[test]
fn unresolvable_ref_in_old_schema_is_reported() {
    let old = json!({"properties": {"a": {"$ref": "https://kakehashi.invalid/schemas/nowhere/1"}}});
    let found = backward(old, json!({"properties": {"a": {"type": "string"}}}));
    assert_only(&found, K::UnresolvedRef);
}

#[test]
fn external_ref_is_resolved_through_the_resolver() {
    let old = json!({"properties": {"person": {"$ref": PERSON_1}}});
    let new = json!({"properties": {"person": {"$ref": PERSON_1}, "note": {}}});
    assert_compatible(&with_refs(old, new));
}

#[test]
fn external_ref_with_local_ref_inside_is_followed() {
    let old = json!({"properties": {"n": {"type": "string", "format": "my-number"}}});
    let new = json!({"properties": {"n": {"$ref": format!("{PERSON_1}#/$defs/my_number")}}});
    assert_compatible(&with_refs(old, new));
}

#[test]
fn switching_to_a_stricter_external_version_is_reported_at_the_ref() {
    let old = json!({"properties": {"person": {"$ref": PERSON_1}}});
    let new = json!({"properties": {"person": {"$ref": PERSON_2}}});
    let found = with_refs(old, new);
    assert_has(&found, K::RequiredAdded, "/properties/person/$ref");
    assert!(found.iter().any(|i| i.message.contains(PERSON_2)), "{found:#?}");
}

#[test]
fn missing_external_schema_is_reported() {
    let new =
        json!({"properties": {"person": {"$ref": "https://kakehashi.invalid/schemas/common.person/9"}}});
    let found = with_refs(json!({"properties": {"person": {}}}), new);
    assert_has(&found, K::UnresolvedRef, "/properties/person/$ref");
}

#[test]
fn relative_ref_resolves_against_the_schema_id() {
    let old = json!({"properties": {"p": {"type": "object", "properties": {"name": {"type": "string"}}}}});
    let new = json!({"$id": "https://kakehashi.invalid/schemas/resident.moved/1",
                     "properties": {"p": {"$ref": "common.person/1"}}});
    let found = with_refs(old, new);
    // Resolves to .../schemas/resident.moved/common.person/1, which is not registered.
    assert_has(&found, K::UnresolvedRef, "/properties/p/$ref");
    let new = json!({"$id": "https://kakehashi.invalid/schemas/resident.moved/1",
                     "properties": {"p": {"$ref": "/schemas/common.person/1"}}});
    let old = json!({"properties": {"p": {"type": "object", "properties": {"name": {"type": "string"}, "my_number": {"type": "string", "format": "my-number"}}}}});
    assert_compatible(&with_refs(old, new));
}

#[test]
fn reader_recursion_that_never_descends_is_not_assumed_compatible() {
    let looping = json!({"anyOf": [{"type": "string"}, {"$ref": "#"}]});
    assert_only(&backward(json!({"type": "integer"}), looping), K::NoMatchingBranch);
}

#[test]
fn pointer_into_an_external_schema_stays_at_the_ref_and_the_message_names_the_inner_location() {
    let old = json!({"properties": {"person": {"$ref": PERSON_1}}});
    let new = json!({"properties": {"person": {"$ref": PERSON_2}}});
    let found = with_refs(old, new);
    let max_len = found
        .iter()
        .find(|i| i.kind == K::MaxLengthDecreased)
        .expect("maxLength narrowed inside common.person/2");
    assert_eq!(max_len.pointer, "/properties/person/$ref");
    assert!(max_len.message.contains(&format!("{PERSON_2}#/properties/name/maxLength")), "{max_len:#?}");
}

#[test]
fn draft07_ignores_keywords_beside_ref_on_the_writer_side() {
    // Under draft-07, old data was never held to maxLength 3: `$ref` replaced the object.
    let old = json!({"$schema": "http://json-schema.org/draft-07/schema#",
                     "definitions": {"s": {"type": "string"}},
                     "$ref": "#/definitions/s", "maxLength": 3});
    let new = json!({"type": "string", "maxLength": 3});
    assert_has(&backward(old, new), K::MaxLengthDecreased, "/maxLength");
}

#[test]
fn keywords_beside_ref_apply_under_2020_12() {
    let old = json!({"$defs": {"s": {"type": "string"}}, "$ref": "#/$defs/s", "maxLength": 3});
    let new = json!({"type": "string", "maxLength": 3});
    assert_compatible(&backward(old, new));
}

#[test]
fn the_same_text_under_draft07_and_2020_12_is_not_treated_as_unchanged() {
    let body = |schema: Option<&str>| {
        let mut s =
            json!({"definitions": {"s": {"type": "string"}}, "$ref": "#/definitions/s", "maxLength": 3});
        if let Some(uri) = schema {
            s["$schema"] = json!(uri);
        }
        s
    };
    let found = backward(body(Some("http://json-schema.org/draft-07/schema#")), body(None));
    assert_has(&found, K::MaxLengthDecreased, "/maxLength");
}

#[test]
fn keywords_a_draft_does_not_define_are_not_writer_constraints() {
    // draft-07 has no prefixItems: old data's first item was never checked.
    let old = json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
                     "prefixItems": [{"type": "string"}]});
    let new = json!({"type": "array", "prefixItems": [{"type": "string"}]});
    assert_has(&backward(old, new), K::TypeNarrowed, "/prefixItems/0/type");
}

#[test]
fn draft07_items_schema_applies_to_every_item_of_the_reader() {
    let old = json!({"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "null"}});
    let new = json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
                     "prefixItems": [{"type": "integer"}], "items": {"type": "null"}});
    assert_has(&backward(old, new), K::TypeNarrowed, "/items/type");
}

#[test]
fn additional_items_has_no_effect_under_2020_12() {
    let old = json!({"type": "array", "prefixItems": [{}], "additionalItems": false});
    let new = json!({"type": "array", "prefixItems": [{}], "maxItems": 1});
    assert_has(&backward(old, new), K::MaxItemsDecreased, "/maxItems");
}
