//! A JSON Schema (draft 2020-12) derived from a protobuf payload message, describing its
//! canonical proto3 JSON form, so JSON-only tools validate the same events
//! (`kakehashi schema derive-json`). Each message is a closed object under `$defs` (open when
//! the version allows unknown fields), fields under their JSON name and their proto name (proto3
//! JSON parsers accept both), 64-bit integers as decimal strings or integers, enums by name or
//! number, bytes as base64, the well-known types in their JSON forms, members of a `oneof`
//! mutually exclusive, and My Number fields with `format: my-number` and `x-kakehashi-pii`.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value};

/// The derived JSON Schema of `message`.
pub fn json_schema(message: &MessageDescriptor, allow_unknown_fields: bool) -> Value {
    let mut defs = Map::new();
    define(message, allow_unknown_fields, &mut defs);
    json!({
        "$schema": crate::store::DRAFT_2020_12,
        "title": message.full_name(),
        "description": format!("Canonical proto3 JSON form of {} (derived by the Kakehashi registry).", message.full_name()),
        "$ref": def_ref(message),
        "$defs": defs,
    })
}

/// [`json_schema`] of a stored descriptor set's message.
pub fn from_descriptor_set(
    descriptor_set: &[u8],
    message: &str,
    allow_unknown_fields: bool,
) -> Result<Value, super::ProtoError> {
    Ok(json_schema(&super::compile::load(descriptor_set, message)?, allow_unknown_fields))
}

fn def_ref(m: &MessageDescriptor) -> String {
    format!("#/$defs/{}", m.full_name())
}

/// Adds `m` (and every message it reaches) to `defs`.
fn define(m: &MessageDescriptor, open: bool, defs: &mut Map<String, Value>) {
    if defs.contains_key(m.full_name()) {
        return;
    }
    // Placeholder first: recursive messages refer to themselves.
    defs.insert(m.full_name().to_string(), Value::Bool(true));
    let mut properties = Map::new();
    for f in m.fields() {
        let schema = field_schema(&f, open, defs);
        properties.insert(f.json_name().to_string(), schema.clone());
        if f.name() != f.json_name() {
            properties.insert(f.name().to_string(), schema);
        }
    }
    // Members of a real oneof exclude each other (under either spelling).
    let mut dependent = Map::new();
    for o in m.oneofs().filter(|o| !o.is_synthetic()) {
        let members: Vec<FieldDescriptor> = o.fields().collect();
        for f in &members {
            let others: Map<String, Value> = members
                .iter()
                .filter(|g| g.number() != f.number())
                .flat_map(|g| [g.json_name().to_string(), g.name().to_string()])
                .map(|n| (n, Value::Bool(false)))
                .collect();
            for name in [f.json_name(), f.name()] {
                dependent.insert(name.to_string(), json!({ "properties": others }));
            }
        }
    }
    let mut def = json!({ "type": "object", "properties": properties, "additionalProperties": open });
    if !dependent.is_empty() {
        def["dependentSchemas"] = Value::Object(dependent);
    }
    defs.insert(m.full_name().to_string(), def);
}

fn field_schema(f: &FieldDescriptor, open: bool, defs: &mut Map<String, Value>) -> Value {
    if f.is_map() {
        let value = match f.kind() {
            Kind::Message(entry) => value_schema(&entry.map_entry_value_field(), open, defs),
            _ => json!({}),
        };
        return json!({ "type": "object", "additionalProperties": value });
    }
    let item = value_schema(f, open, defs);
    if f.is_list() {
        json!({ "type": "array", "items": item })
    } else {
        item
    }
}

/// The schema of one value of the field's type.
fn value_schema(f: &FieldDescriptor, open: bool, defs: &mut Map<String, Value>) -> Value {
    let integer = |min: i64, max: u64| json!({ "type": "integer", "minimum": min, "maximum": max });
    match f.kind() {
        Kind::Double | Kind::Float => {
            json!({ "anyOf": [{ "type": "number" }, { "enum": ["NaN", "Infinity", "-Infinity"] }] })
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => integer(i32::MIN.into(), i32::MAX as u64),
        Kind::Uint32 | Kind::Fixed32 => integer(0, u32::MAX.into()),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": ["string", "integer"], "pattern": "^-?[0-9]+$" })
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({ "type": ["string", "integer"], "pattern": "^[0-9]+$", "minimum": 0 })
        }
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String if super::is_my_number(f) => json!({
            "x-kakehashi-pii": "my-number",
            // Empty is "absent" in proto3; anything else is a My Number with its check digit.
            "anyOf": [{ "const": "" }, { "type": "string", "pattern": "^[0-9]{12}$", "format": "my-number" }],
        }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => {
            json!({ "type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/_-]*={0,2}$" })
        }
        Kind::Enum(e) => {
            let names: Vec<String> = e.values().map(|v| v.name().to_string()).collect();
            json!({ "anyOf": [{ "enum": names }, integer(i32::MIN.into(), i32::MAX as u64)] })
        }
        Kind::Message(m) => well_known(&m).unwrap_or_else(|| {
            define(&m, open, defs);
            json!({ "$ref": def_ref(&m) })
        }),
    }
}

/// The JSON forms proto3 gives the well-known types.
fn well_known(m: &MessageDescriptor) -> Option<Value> {
    let scalar = |kind: &str| json!({ "type": kind });
    Some(match m.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" }),
        "google.protobuf.FieldMask" => scalar("string"),
        "google.protobuf.Struct" | "google.protobuf.Any" => scalar("object"),
        "google.protobuf.ListValue" => scalar("array"),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.Empty" => json!({ "type": "object", "maxProperties": 0 }),
        "google.protobuf.BoolValue" => scalar("boolean"),
        "google.protobuf.StringValue" => scalar("string"),
        "google.protobuf.BytesValue" => json!({ "type": "string", "contentEncoding": "base64" }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            json!({ "anyOf": [{ "type": "number" }, { "enum": ["NaN", "Infinity", "-Infinity"] }] })
        }
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => scalar("integer"),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({ "type": ["string", "integer"], "pattern": "^-?[0-9]+$" })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    //! For the catalogue's protobuf types, a payload is valid in its protobuf form exactly when its
    //! canonical JSON form is valid under the derived JSON Schema.

    use super::*;
    use crate::protobuf::{transcode, ProtoSchema};
    use crate::store::record::ProtoFile;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn catalogue() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
    }

    /// Every catalogue `.pb` subject: (subject, payload message, compiled schema).
    fn protobuf_subjects() -> Vec<(String, ProtoSchema)> {
        let mut files = BTreeMap::new();
        let mut subjects = Vec::new();
        for dir in std::fs::read_dir(catalogue()).expect("catalogue").flatten() {
            let subject = dir.file_name().to_string_lossy().to_string();
            let path = dir.path().join("1.proto");
            if let Ok(source) = std::fs::read_to_string(&path) {
                let message = source
                    .lines()
                    .find_map(|l| l.strip_prefix("// payload:"))
                    .map(|m| m.trim().to_string())
                    .expect("payload line");
                files.insert(format!("{subject}/1.proto"), source);
                subjects.push((subject, message));
            }
        }
        assert!(subjects.len() >= 5, "{subjects:?}");
        subjects
            .into_iter()
            .map(|(subject, message)| {
                let name = format!("{subject}/1.proto");
                let own = [ProtoFile { name: name.clone(), source: files[&name].clone() }];
                let mut imported = files.clone();
                imported.remove(&name);
                let compiled = crate::protobuf::compile(&own, &imported, &message).expect("compiles");
                (subject, ProtoSchema::new(compiled.message, false))
            })
            .collect()
    }

    fn validator(schema: &Value) -> jsonschema::Validator {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .with_format("my-number", kakehashi_proto::ident::is_valid_my_number)
            .build(schema)
            .expect("derived schema compiles")
    }

    #[test]
    fn catalogue_payloads_are_valid_in_one_form_exactly_when_valid_in_the_other() {
        let mut compared = 0;
        for (subject, proto) in protobuf_subjects() {
            let derived = json_schema(&proto.message, false);
            let json_validator = validator(&derived);
            assert!(
                !crate::pii::find(&derived, &|_| None).unwrap_or_default().is_empty()
                    || !proto.has_my_numbers(),
                "{subject}: My Numbers stay annotated in the derived schema"
            );
            let examples = catalogue().join(&subject).join("examples");
            for ex in std::fs::read_dir(&examples).into_iter().flatten().flatten() {
                let bytes = std::fs::read(ex.path()).expect("example");
                // A payload with no JSON form (bytes that do not decode) or with unknown fields
                // (which JSON drops) is judged in protobuf only.
                let Ok(json) = transcode::to_json(&proto.message, &bytes) else { continue };
                let decoded = prost_reflect::DynamicMessage::decode(proto.message.clone(), bytes.as_slice());
                if decoded.as_ref().map(has_unknown).unwrap_or(true) {
                    continue;
                }
                let as_proto = proto.check(&bytes, 10).is_ok();
                let value: Value = serde_json::from_slice(&json).expect("json");
                let as_json = json_validator.is_valid(&value);
                assert_eq!(
                    as_proto,
                    as_json,
                    "{}: protobuf {as_proto}, JSON {as_json}: {value}",
                    ex.path().display()
                );
                // And back: the JSON form is the same message.
                let again = transcode::from_json(&proto.message, &json).expect("JSON form parses back");
                assert_eq!(proto.check(&again, 10).is_ok(), as_proto);
                compared += 1;
            }
        }
        assert!(compared >= 9, "compared {compared} examples");
    }

    /// Per-event cost of the protobuf paths beside JSON ones, on the vaccination example
    /// (`docs/BENCHMARKS.md`). Run optimised:
    /// `cargo test --release -p kakehashi-registry --lib -- --ignored --nocapture per_event_cost`.
    #[test]
    #[ignore = "a measurement, run by hand in release mode"]
    fn per_event_cost_of_protobuf_beside_json() {
        use std::time::Instant;
        let (_, proto) = protobuf_subjects()
            .into_iter()
            .find(|(s, _)| s == "health.vaccination.recorded.pb")
            .expect("vaccination");
        let bytes = std::fs::read(
            catalogue().join("health.vaccination.recorded.pb/examples/valid-mr-second-dose.binpb"),
        )
        .expect("example");
        let json = transcode::to_json(&proto.message, &bytes).expect("json");
        let json_validator = validator(&json_schema(&proto.message, false));
        let derived = json_schema(&proto.message, false);
        let paths = crate::pii::find(&derived, &|_| None).expect("not recursive");
        let n = 20_000u32;
        let time = |what: &str, f: &mut dyn FnMut()| {
            for _ in 0..1_000 {
                f();
            }
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            let per = start.elapsed() / n;
            println!("{what:<52} {:>7.2} µs/event", per.as_nanos() as f64 / 1000.0);
        };
        println!("payload: {} bytes protobuf, {} bytes canonical JSON", bytes.len(), json.len());
        time("validate JSON (parse + derived JSON Schema)", &mut || {
            let v: Value = serde_json::from_slice(&json).expect("json");
            assert!(json_validator.is_valid(&v));
        });
        time("validate protobuf (decode + unknown fields + My Numbers)", &mut || {
            assert!(proto.check(&bytes, 10).is_ok());
        });
        time("pseudonymise JSON (parse + replace + serialise)", &mut || {
            let mut v: Value = serde_json::from_slice(&json).expect("json");
            crate::pii::apply(&mut v, &paths, b"secret", "mhlw");
            std::hint::black_box(serde_json::to_vec(&v).expect("json"));
        });
        time("pseudonymise JSON (splice, as delivery does)", &mut || {
            std::hint::black_box(crate::pii::apply_bytes(&json, &paths, b"secret", "mhlw").expect("json"));
        });
        time("pseudonymise protobuf (decode + replace + encode)", &mut || {
            std::hint::black_box(proto.pseudonymise(&bytes, b"secret", "mhlw").expect("ok"));
        });
        time("transcode protobuf -> canonical JSON", &mut || {
            std::hint::black_box(transcode::to_json(&proto.message, &bytes).expect("json"));
        });
        time("transcode canonical JSON -> protobuf", &mut || {
            std::hint::black_box(transcode::from_json(&proto.message, &json).expect("bytes"));
        });
    }

    fn has_unknown(m: &prost_reflect::DynamicMessage) -> bool {
        m.unknown_fields().next().is_some()
            || m.fields().any(|(_, v)| match v {
                prost_reflect::Value::Message(inner) => has_unknown(inner),
                prost_reflect::Value::List(items) => {
                    items.iter().any(|i| i.as_message().is_some_and(has_unknown))
                }
                _ => false,
            })
    }

    #[test]
    fn derived_schema_shapes() {
        let source = "syntax = \"proto3\"; package t;\nimport \"google/protobuf/timestamp.proto\";\n\
            message M { int64 big = 1; oneof choice { string a = 2; string b = 3; }\n\
            map<string, M> children = 4; google.protobuf.Timestamp at = 5; optional string first_name = 6; }";
        let files = [ProtoFile { name: "t.proto".into(), source: source.into() }];
        let m = crate::protobuf::compile(&files, &BTreeMap::new(), "t.M").expect("compiles").message;
        let v = validator(&json_schema(&m, false));
        assert!(v.is_valid(&json!({"big": "9007199254740993", "a": "x", "at": "2024-01-01T00:00:00Z",
            "children": {"k": {"b": "y"}}, "firstName": "花子"})));
        assert!(v.is_valid(&json!({"first_name": "proto name accepted too"})));
        assert!(!v.is_valid(&json!({"a": "x", "b": "y"})), "oneof members exclude each other");
        assert!(!v.is_valid(&json!({"nobody": 1})), "closed: unknown fields refused");
        assert!(!v.is_valid(&json!({"big": "1.5"})));
        assert!(!v.is_valid(&json!({"at": "yesterday"})));
        assert!(validator(&json_schema(&m, true)).is_valid(&json!({"nobody": 1})), "open when allowed");
    }
}
