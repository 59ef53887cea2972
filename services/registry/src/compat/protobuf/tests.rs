//! One test per protobuf rule, with both verdicts, per mode direction; and properties: a
//! schema is compatible with itself, and with itself plus a new field at a fresh number.

use super::check;
use crate::compat::{IncompatibilityKind as K, Mode};
use crate::protobuf::compile;
use crate::store::record::ProtoFile;
use proptest::prelude::*;
use prost_reflect::MessageDescriptor;
use std::collections::BTreeMap;

/// Compiles `body` in `package`, returning message `name`.
fn in_package(package: &str, name: &str, body: &str) -> MessageDescriptor {
    let source =
        format!("syntax = \"proto3\";\npackage {package};\nimport \"kakehashi/v1/options.proto\";\n{body}\n");
    let files = [ProtoFile { name: "e.proto".into(), source }];
    match compile(&files, &BTreeMap::new(), &format!("{package}.{name}")) {
        Ok(c) => c.message,
        Err(e) => panic!("test schema does not compile: {e}\n{body}"),
    }
}

fn m(body: &str) -> MessageDescriptor {
    in_package("p", "M", body)
}

/// Kinds found when `new` follows `old` under `mode`.
fn kinds(mode: Mode, old: &str, new: &str) -> Vec<K> {
    check(mode, &m(new), &[(1, m(old))]).into_iter().map(|i| i.kind).collect()
}

/// Asserts `kind` is reported under exactly the `flagged` modes among BACKWARD, FORWARD, FULL
/// (and never under NONE).
fn reported_under(old: &str, new: &str, kind: K, flagged: &[Mode]) {
    for mode in [Mode::None, Mode::Backward, Mode::Forward, Mode::Full] {
        let got = kinds(mode, old, new);
        assert_eq!(
            got.contains(&kind),
            flagged.contains(&mode),
            "{kind} under {mode}: got {got:?}\nold: {old}\nnew: {new}"
        );
    }
}

fn compatible(old: &str, new: &str) {
    for mode in Mode::ALL {
        let got = check(mode, &m(new), &[(1, m(old))]);
        assert!(got.is_empty(), "{mode}: {got:?}\nold: {old}\nnew: {new}");
    }
}

const BOTH: &[Mode] = &[Mode::Backward, Mode::Forward, Mode::Full];
const BACKWARD_ONLY: &[Mode] = &[Mode::Backward, Mode::Full];
const FORWARD_ONLY: &[Mode] = &[Mode::Forward, Mode::Full];

#[test]
fn field_number_reused_with_another_name() {
    reported_under("message M { string a = 1; }", "message M { string b = 1; }", K::FieldNumberReused, BOTH);
    compatible("message M { string a = 1; }", "message M { string a = 1; string b = 2; }");
}

#[test]
fn field_type_changed_outside_its_wire_group() {
    for (old, new) in [
        ("int32", "string"),
        ("int32", "sint32"),
        ("string", "bytes"),
        ("bytes", "string"),
        ("fixed32", "fixed64"),
        ("double", "float"),
        ("int64", "sfixed64"),
        ("sint64", "int64"),
    ] {
        let (o, n) = (format!("message M {{ {old} a = 1; }}"), format!("message M {{ {new} a = 1; }}"));
        reported_under(&o, &n, K::FieldTypeChanged, BOTH);
    }
    for (old, new) in [
        ("int32", "int64"),
        ("int32", "uint32"),
        ("uint64", "int64"),
        ("sint32", "sint64"),
        ("fixed32", "sfixed32"),
        ("fixed64", "sfixed64"),
    ] {
        compatible(&format!("message M {{ {old} a = 1; }}"), &format!("message M {{ {new} a = 1; }}"));
    }
}

#[test]
fn field_message_or_enum_type_changed() {
    let old = "message A { string x = 1; } message B { string x = 1; } message M { A a = 1; }";
    let new = "message A { string x = 1; } message B { string x = 1; } message M { B a = 1; }";
    reported_under(old, new, K::FieldTypeChanged, BOTH);
    let old = "enum E { E_0 = 0; } enum F { F_0 = 0; } message M { E e = 1; }";
    let new = "enum E { E_0 = 0; } enum F { F_0 = 0; } message M { F e = 1; }";
    reported_under(old, new, K::FieldTypeChanged, BOTH);
}

#[test]
fn wire_compatible_but_json_different() {
    reported_under("message M { bool a = 1; }", "message M { int32 a = 1; }", K::FieldJsonTypeChanged, BOTH);
    let old = "enum E { E_0 = 0; } message M { E a = 1; }";
    let new = "enum E { E_0 = 0; } message M { int32 a = 1; }";
    reported_under(old, new, K::FieldJsonTypeChanged, BOTH);
    reported_under(new, old, K::FieldJsonTypeChanged, BOTH);
}

#[test]
fn cardinality_changed() {
    reported_under(
        "message M { string a = 1; }",
        "message M { repeated string a = 1; }",
        K::FieldCardinalityChanged,
        BOTH,
    );
    reported_under(
        "message M { repeated int32 a = 1; }",
        "message M { int32 a = 1; }",
        K::FieldCardinalityChanged,
        BOTH,
    );
    reported_under(
        "message M { map<string, string> a = 1; }",
        "message M { repeated string a = 1; }",
        K::FieldCardinalityChanged,
        BOTH,
    );
    compatible("message M { map<string, int32> a = 1; }", "message M { map<string, int64> a = 1; }");
}

#[test]
fn presence_is_directional() {
    let implicit = "message M { int32 a = 1; }";
    let explicit = "message M { optional int32 a = 1; }";
    // New readers tracking presence misread old data's omitted zeros: backward only.
    reported_under(implicit, explicit, K::FieldPresenceChanged, BACKWARD_ONLY);
    // Old readers tracking presence read the new writers' omitted zeros as absent: forward only.
    reported_under(explicit, implicit, K::FieldPresenceChanged, FORWARD_ONLY);
    compatible(explicit, explicit);
}

#[test]
fn oneof_membership_is_directional() {
    let plain = "message M { string a = 1; string b = 2; }";
    let oneof = "message M { oneof choice { string a = 1; string b = 2; } }";
    reported_under(plain, oneof, K::FieldOneofChanged, BACKWARD_ONLY);
    reported_under(oneof, plain, K::FieldOneofChanged, FORWARD_ONLY);
    let other = "message M { oneof other { string a = 1; string b = 2; } }";
    reported_under(oneof, other, K::FieldOneofChanged, BOTH);
    // proto3 `optional` is a synthetic oneof, not a real one.
    let optional = "message M { optional string a = 1; string b = 2; }";
    let got = kinds(Mode::Full, "message M { optional string a = 1; string b = 2; }", optional);
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn field_removed_without_reservation() {
    let old = "message M { string a = 1; string b = 2; }";
    reported_under(old, "message M { string a = 1; }", K::FieldRemovedNotReserved, BOTH);
    compatible(old, "message M { string a = 1; reserved 2; }");
    compatible(old, "message M { string a = 1; reserved 2 to 5; reserved \"b\"; }");
}

#[test]
fn reserved_number_taken_again_is_backward() {
    let old = "message M { string a = 1; reserved 2; }";
    let new = "message M { string a = 1; string c = 2; }";
    reported_under(old, new, K::FieldNumberReused, BACKWARD_ONLY);
    compatible(old, "message M { string a = 1; string c = 3; reserved 2; }");
}

#[test]
fn nested_message_fields_are_compared() {
    let old = "message P { string n = 1; string k = 2; } message M { P p = 1; repeated P ps = 2; }";
    let new = "message P { string n = 1; } message M { P p = 1; repeated P ps = 2; }";
    let got = check(Mode::Backward, &m(new), &[(1, m(old))]);
    assert_eq!(got.len(), 1, "reported once however many fields reach P: {got:?}");
    assert_eq!(got[0].kind, K::FieldRemovedNotReserved);
    assert_eq!(got[0].pointer, "e.proto:P.k");
}

#[test]
fn enum_value_removed_without_reservation_or_renamed() {
    let old = "enum E { E_0 = 0; E_A = 1; } message M { E e = 1; }";
    reported_under(old, "enum E { E_0 = 0; } message M { E e = 1; }", K::EnumValueRemovedNotReserved, BOTH);
    compatible(old, "enum E { E_0 = 0; reserved 1; } message M { E e = 1; }");
    reported_under(old, "enum E { E_0 = 0; E_B = 1; } message M { E e = 1; }", K::EnumValueRenamed, BOTH);
    compatible(old, "enum E { E_0 = 0; E_A = 1; E_B = 2; } message M { E e = 1; }");
}

#[test]
fn json_name_changed() {
    let old = "message M { string a = 1; }";
    reported_under(old, "message M { string a = 1 [json_name = \"alpha\"]; }", K::JsonNameChanged, BOTH);
}

#[test]
fn package_changed_and_payload_renamed() {
    let body = "message M { string a = 1; } message N { string a = 1; }";
    for mode in [Mode::Backward, Mode::Forward, Mode::Full] {
        let got = check(mode, &in_package("q", "M", body), &[(1, in_package("p", "M", body))]);
        assert_eq!(got.iter().map(|i| i.kind).collect::<Vec<_>>(), [K::PackageChanged], "{mode}");
        let got = check(mode, &in_package("p", "N", body), &[(1, in_package("p", "M", body))]);
        assert_eq!(got.iter().map(|i| i.kind).collect::<Vec<_>>(), [K::PayloadMessageRenamed], "{mode}");
        assert!(check(mode, &in_package("p", "M", body), &[(1, in_package("p", "M", body))]).is_empty());
    }
    assert!(check(Mode::None, &in_package("q", "N", body), &[(1, in_package("p", "M", body))]).is_empty());
}

#[test]
fn my_number_annotation_changed() {
    let old = "message M { string a = 1; }";
    let new = "message M { string a = 1 [(kakehashi.v1.my_number) = true]; }";
    reported_under(old, new, K::PiiAnnotationChanged, BOTH);
    reported_under(new, old, K::PiiAnnotationChanged, BOTH);
}

#[test]
fn transitive_modes_compare_every_version() {
    let v1 = m("message M { string a = 1; string b = 2; }");
    let v2 = m("message M { string a = 1; reserved 2; }");
    let v3 = m("message M { string a = 1; string c = 2; reserved 3; }");
    let previous = [(1, v1), (2, v2)];
    let against = |mode| {
        check(mode, &v3, &previous).into_iter().map(|i| (i.kind, i.against_version)).collect::<Vec<_>>()
    };
    assert_eq!(against(Mode::Forward), []);
    assert_eq!(against(Mode::ForwardTransitive), [(K::FieldNumberReused, Some(1))]);
    assert_eq!(against(Mode::Backward), [(K::FieldNumberReused, Some(2))]);
    assert_eq!(
        against(Mode::BackwardTransitive),
        [(K::FieldNumberReused, Some(1)), (K::FieldNumberReused, Some(2))]
    );
}

#[test]
fn recursive_messages_terminate_and_paths_name_the_file() {
    let old = "message M { M child = 1; string a = 2; }";
    let got = check(Mode::Full, &m("message M { M child = 1; string b = 2; }"), &[(1, m(old))]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].pointer, "e.proto:M.b");
    assert!(got[0].message.contains("version 1"), "{}", got[0].message);
}

const TYPES: &[&str] = &[
    "int32", "int64", "uint32", "sint64", "fixed32", "sfixed64", "bool", "string", "bytes", "double", "E",
    "P",
];

/// A random message `M` (with enum `E` and message `P` to refer to) and its largest field number.
fn arb_schema() -> impl Strategy<Value = (String, u32)> {
    proptest::collection::vec((0..TYPES.len(), 0..4u8, 1..4u32), 0..8).prop_map(|fields| {
        let mut body = String::from(
            "enum E { E_0 = 0; E_1 = 1; } message P { string x = 1; P again = 2; }\nmessage M {\n",
        );
        let mut number = 0;
        let mut oneof = Vec::new();
        for (i, (t, shape, gap)) in fields.into_iter().enumerate() {
            number += gap;
            let ty = TYPES[t];
            let line = match shape {
                0 => format!("  {ty} f{i} = {number};\n"),
                1 => format!("  repeated {ty} f{i} = {number};\n"),
                2 if !matches!(ty, "P") => format!("  optional {ty} f{i} = {number};\n"),
                _ => {
                    oneof.push(format!("    {ty} f{i} = {number};\n"));
                    continue;
                }
            };
            body.push_str(&line);
        }
        if !oneof.is_empty() {
            body.push_str("  oneof choice {\n");
            body.extend(oneof);
            body.push_str("  }\n");
        }
        body.push_str("}\n");
        (body, number)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_schema_is_compatible_with_itself((body, _) in arb_schema()) {
        for mode in Mode::ALL {
            let got = check(mode, &m(&body), &[(1, m(&body)), (2, m(&body))]);
            prop_assert!(got.is_empty(), "{} {:?}\n{}", mode, got, body);
        }
    }

    #[test]
    fn adding_an_optional_field_at_a_fresh_number_is_compatible((body, last) in arb_schema(), gap in 1..100u32, ty in 0..TYPES.len()) {
        let field = format!("  optional {} added = {};\n}}\n", if TYPES[ty] == "P" { "string" } else { TYPES[ty] }, last + gap);
        let Some(cut) = body.rfind("}\n") else { return Err(TestCaseError::fail("no closing brace")) };
        let new = format!("{}{}", &body[..cut], field);
        for mode in Mode::ALL {
            let got = check(mode, &m(&new), &[(1, m(&body))]);
            prop_assert!(got.is_empty(), "{} {:?}\n{}", mode, got, new);
        }
    }
}
