use serde_json::{json, Value};

use super::*;
use IncompatibilityKind as K;

fn object(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

/// v1 requires `a`; v2 adds optional `b` (closed model); the candidate drops `a`'s requirement.
fn history() -> (Value, Value, Value) {
    let v1 = object(json!({"a": {"type": "string"}}), &["a"]);
    let v2 = object(json!({"a": {"type": "string"}, "b": {"type": "integer"}}), &["a"]);
    let candidate = object(json!({"a": {"type": "string"}, "b": {"type": "integer"}}), &[]);
    (v1, v2, candidate)
}

#[test]
fn mode_names_round_trip_through_display_and_from_str() {
    for mode in Mode::ALL {
        assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
    }
    assert_eq!("FULL_TRANSITIVE".parse::<Mode>(), Ok(Mode::FullTransitive));
    assert_eq!(Mode::BackwardTransitive.to_string(), "BACKWARD_TRANSITIVE");
}

#[test]
fn unknown_mode_name_is_rejected_with_the_input() {
    let err = "SIDEWAYS".parse::<Mode>().expect_err("not a mode");
    assert_eq!(err.input, "SIDEWAYS");
    assert!(err.to_string().contains("BACKWARD_TRANSITIVE"));
}

#[test]
fn default_mode_is_backward() {
    assert_eq!(Mode::default(), Mode::Backward);
}

#[test]
fn none_mode_accepts_anything() {
    let old = json!({"type": "string"});
    let new = json!({"type": "object", "required": ["x"]});
    assert_compatible(&check(Mode::None, &new, &[(1, &old)], &NoExternalRefs));
}

#[test]
fn first_version_is_compatible_in_every_mode() {
    for mode in Mode::ALL {
        assert_compatible(&check(mode, &json!({"type": "string"}), &[], &NoExternalRefs));
    }
}

#[test]
fn backward_forward_and_full_differ_on_the_same_pair() {
    // Adding an optional property to a closed model: new readers fine, old readers not.
    let old = object(json!({"a": {"type": "string"}}), &[]);
    let new = object(json!({"a": {"type": "string"}, "b": {"type": "string"}}), &[]);
    let run = |mode| check(mode, &new, &[(1, &old)], &NoExternalRefs);
    assert_compatible(&run(Mode::Backward));
    assert_only(&run(Mode::Forward), K::PropertyAddedToClosedModel);
    assert_only(&run(Mode::Full), K::PropertyAddedToClosedModel);
}

#[test]
fn full_reports_both_directions_of_a_type_change() {
    let found =
        check(Mode::Full, &json!({"type": "integer"}), &[(1, &json!({"type": "string"}))], &NoExternalRefs);
    assert_has(&found, K::TypeNarrowed, "/type");
    assert_has(&found, K::TypeWidened, "/type");
}

#[test]
fn transitive_mode_catches_an_incompatibility_with_an_older_version() {
    let v1 = json!({"type": "string", "maxLength": 100});
    let v2 = json!({"type": "string", "maxLength": 10});
    let candidate = json!({"type": "string", "maxLength": 10});
    let previous = [(1, &v1), (2, &v2)];
    assert_compatible(&check(Mode::Backward, &candidate, &previous, &NoExternalRefs));
    let found = check(Mode::BackwardTransitive, &candidate, &previous, &NoExternalRefs);
    assert_only(&found, K::MaxLengthDecreased);
    assert!(found.iter().all(|i| i.against_version == Some(1)), "{found:#?}");
}

#[test]
fn forward_transitive_catches_what_forward_misses() {
    let (v1, v2, _) = history();
    // The candidate is v2 again: forward-compatible with v2, but v1 readers (closed model)
    // reject the `b` property the candidate may write.
    let candidate = v2.clone();
    let previous = [(1, &v1), (2, &v2)];
    assert_compatible(&check(Mode::Forward, &candidate, &previous, &NoExternalRefs));
    let found = check(Mode::ForwardTransitive, &candidate, &previous, &NoExternalRefs);
    assert_has(&found, K::PropertyAddedToClosedModel, "/properties/b");
}

#[test]
fn full_transitive_reports_each_version_separately() {
    let (v1, v2, candidate) = history();
    let found = check(Mode::FullTransitive, &candidate, &[(1, &v1), (2, &v2)], &NoExternalRefs);
    assert!(found.iter().any(|i| i.kind == K::RequiredRemoved && i.against_version == Some(1)), "{found:#?}");
    assert!(found.iter().any(|i| i.kind == K::RequiredRemoved && i.against_version == Some(2)), "{found:#?}");
    assert!(
        found.iter().any(|i| i.kind == K::PropertyAddedToClosedModel && i.against_version == Some(1)),
        "{found:#?}"
    );
}

#[test]
fn forward_pointers_point_into_the_new_schema() {
    // The old schema nests the property under `$defs`; the new one inlines it.
    let old = json!({"properties": {"n": {"$ref": "#/$defs/n"}}, "$defs": {"n": {"type": "integer"}}});
    let new = json!({"properties": {"n": {"type": "number"}}});
    let found = forward(old, new);
    assert_has(&found, K::TypeWidened, "/properties/n/type");
}

#[test]
fn direct_check_names_kinds_from_the_readers_side() {
    let found = reads(json!({"type": "object", "required": ["a"]}), json!({"type": "object"}));
    assert_has(&found, K::RequiredAdded, "/required/0");
    assert!(found.iter().all(|i| i.against_version.is_none()));
    assert!(found[0].message.contains("the reader schema"), "{found:#?}");
}

#[test]
fn messages_name_the_version_compared_against() {
    let found = backward(json!({"type": "string"}), json!({"type": "integer"}));
    assert!(found[0].message.contains("version 1"), "{found:#?}");
    assert!(found[0].message.contains("the new schema"), "{found:#?}");
}

#[test]
fn kinds_have_stable_upper_snake_codes() {
    assert_eq!(K::RequiredAdded.code(), "REQUIRED_ADDED");
    assert_eq!(K::PiiAnnotationChanged.to_string(), "PII_ANNOTATION_CHANGED");
    assert_eq!(K::MaximumDecreased.mirrored(), K::MaximumIncreased);
    assert_eq!(K::UnresolvedRef.mirrored(), K::UnresolvedRef);
}
