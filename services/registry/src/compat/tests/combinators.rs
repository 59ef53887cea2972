use serde_json::json;

use super::*;
use IncompatibilityKind as K;

#[test]
fn adding_an_any_of_branch_is_backward_compatible() {
    let old = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    let new = json!({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]});
    assert_compatible(&backward(old, new));
}

#[test]
fn adding_an_any_of_branch_is_forward_incompatible() {
    let old = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    let new = json!({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]});
    assert_only(&forward(old, new), K::NoMatchingBranch);
}

#[test]
fn removing_an_any_of_branch_is_backward_incompatible() {
    let old = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    let new = json!({"anyOf": [{"type": "string"}]});
    assert_has(&backward(old, new), K::TypeNarrowed, "/anyOf/0/type");
}

#[test]
fn plain_schema_becoming_one_branch_of_any_of_is_backward_compatible() {
    let old = json!({"type": "string", "maxLength": 5});
    let new = json!({"anyOf": [{"type": "string"}, {"type": "null"}]});
    assert_compatible(&backward(old, new));
}

#[test]
fn reordering_one_of_branches_is_compatible_both_ways() {
    let old = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
    let new = json!({"oneOf": [{"type": "integer"}, {"type": "string"}]});
    assert_compatible(&backward(old.clone(), new.clone()));
    assert_compatible(&forward(old, new));
}

#[test]
fn adding_a_disjoint_one_of_branch_is_backward_compatible() {
    let old = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
    let new = json!({"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]});
    assert_compatible(&backward(old, new));
}

#[test]
fn adding_an_overlapping_one_of_branch_is_backward_incompatible() {
    // An old string would now match two branches, which oneOf rejects.
    let old = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
    let new = json!({"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "string", "maxLength": 3}]});
    assert_has(&backward(old, new), K::OneOfAmbiguous, "/oneOf/2");
}

#[test]
fn discriminated_one_of_with_an_added_variant_is_backward_compatible() {
    let variant = |kind: &str, field: &str| json!({"type": "object", "required": ["kind", field], "properties": {"kind": {"const": kind}, field: {"type": "string"}}});
    let old = json!({"oneOf": [variant("email", "address"), variant("phone", "number")]});
    let new = json!({"oneOf": [variant("email", "address"), variant("phone", "number"), variant("post", "postal_code")]});
    assert_compatible(&backward(old, new));
}

#[test]
fn removing_a_one_of_branch_is_backward_incompatible() {
    let old = json!({"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]});
    let new = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
    assert_has(&backward(old, new), K::NoMatchingBranch, "/oneOf");
}

#[test]
fn all_of_member_added_to_reader_is_backward_incompatible() {
    let old = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let new = json!({"allOf": [old.clone(), {"required": ["a"]}]});
    assert_has(&backward(old, new), K::RequiredAdded, "/allOf/1/required/0");
}

#[test]
fn all_of_member_removed_from_reader_is_backward_compatible() {
    let old = json!({"allOf": [{"type": "object"}, {"required": ["a"]}]});
    let new = json!({"allOf": [{"type": "object"}]});
    assert_compatible(&backward(old, new));
}

#[test]
fn all_of_constraints_combine_on_the_writer_side() {
    // Old data satisfies both members, so it is an object with a string `a`.
    let old =
        json!({"allOf": [{"type": "object", "required": ["a"]}, {"properties": {"a": {"type": "string"}}}]});
    let new = json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}});
    assert_compatible(&backward(old, new));
}

#[test]
fn sibling_keywords_apply_to_every_writer_branch() {
    let old = json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}},
                     "oneOf": [{"required": ["email"]}, {"required": ["phone"]}]});
    let new = json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}});
    assert_compatible(&backward(old, new));
}

#[test]
fn keeping_an_identical_not_is_compatible() {
    let s = json!({"type": "string", "not": {"const": "forbidden"}});
    let mut new = s.clone();
    new["maxLength"] = json!(100);
    assert_compatible(&backward(
        json!({"type": "string", "maxLength": 50, "not": {"const": "forbidden"}}),
        new,
    ));
}

#[test]
fn narrowing_the_negated_schema_is_backward_compatible() {
    let old = json!({"type": "string", "not": {"enum": ["a", "b"]}});
    let new = json!({"type": "string", "not": {"const": "a"}});
    assert_compatible(&backward(old, new));
}

#[test]
fn adding_a_not_that_old_data_may_match_is_backward_incompatible() {
    let old = json!({"type": "string"});
    let new = json!({"type": "string", "not": {"const": "a"}});
    assert_has(&backward(old, new), K::NotUnproven, "/not");
}

#[test]
fn adding_a_not_disjoint_from_old_data_is_backward_compatible() {
    let old = json!({"type": "string"});
    let new = json!({"not": {"type": "integer"}});
    assert_compatible(&backward(old, new));
}

#[test]
fn identical_one_of_with_overlapping_branches_is_compatible() {
    let one_of = json!([{"type": "object", "required": ["a"]}, {"type": "object", "required": ["b"]}]);
    let old = json!({"oneOf": one_of.clone(), "properties": {"a": {"type": "string"}}});
    let new = json!({"oneOf": one_of, "properties": {"a": {"type": "string"}}, "description": "changed"});
    assert_compatible(&backward(old.clone(), new.clone()));
    let mut widened = new;
    widened["properties"]["a"] = json!({"type": ["string", "null"]});
    assert_compatible(&backward(old, widened));
}

#[test]
fn any_of_writer_is_accepted_by_a_plain_reader_covering_every_branch() {
    let old = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    assert_compatible(&backward(old.clone(), json!({"type": ["string", "integer", "null"]})));
    assert_has(&backward(old, json!({"type": "string"})), K::TypeNarrowed, "/type");
}

#[test]
fn problems_inside_a_one_of_branch_point_into_that_branch() {
    let old = json!({"oneOf": [{"type": "string"}, {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}]});
    let new = json!({"oneOf": [{"type": "string"}, {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}]});
    assert_has(&backward(old.clone(), new.clone()), K::NoMatchingBranch, "/oneOf/1/properties/n/type");
    assert_has(&forward(new, old), K::NoMatchingBranch, "/oneOf/1/properties/n/type");
}

#[test]
fn type_union_and_any_of_of_the_same_types_are_interchangeable() {
    let any_of = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    let union = json!({"type": ["string", "integer"]});
    for (old, new) in [(any_of.clone(), union.clone()), (union, any_of)] {
        assert_compatible(&backward(old.clone(), new.clone()));
        assert_compatible(&forward(old, new));
    }
}

#[test]
fn type_union_split_over_one_of_branches_still_needs_exclusive_branches() {
    let old = json!({"type": ["string", "integer"]});
    let new = json!({"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "integer", "minimum": 0}]});
    assert_has(&backward(old, new), K::OneOfAmbiguous, "/oneOf/2");
}
