//! Protobuf payloads published as canonical proto3 JSON (`data_content_type`
//! `application/json` on a protobuf subject): parsed with prost-reflect's serde mapping against
//! the registered message (unknown fields refused unless the version allows them), My Numbers
//! found by the `(kakehashi.v1.my_number)` option exactly as in binary payloads. Paths are JSON
//! pointers into the published document, built from its own keys (`/person/myNumber` or
//! `/person/my_number`, whichever the publisher wrote). Messages never quote payload values.

use super::payload::{ProtoRejected, ProtoSchema};
use kakehashi_proto::v1::FieldViolation;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Value as Json;

/// How deep nested objects are walked (parsing itself is bounded by serde_json's recursion limit).
const MAX_DEPTH: usize = 100;

/// Parses a proto3 JSON payload into the registered message, the version's unknown-field rule
/// applied. The error says where: a JSON pointer when the position maps to one, and always the
/// line and column.
pub fn parse(schema: &ProtoSchema, data: &[u8]) -> Result<DynamicMessage, ProtoRejected> {
    let options = DeserializeOptions::new().deny_unknown_fields(!schema.allow_unknown_fields);
    let mut de = serde_json::Deserializer::from_slice(data);
    DynamicMessage::deserialize_with_options(schema.message.clone(), &mut de, &options)
        .and_then(|msg| de.end().map(|()| msg))
        .map_err(|e| rejected(&schema.message, data, &e))
}

/// Parses and checks a proto3 JSON payload (as [`ProtoSchema::check`] does binary ones): it must
/// be the message in proto3 JSON, and every My Number must have a correct check digit. At most
/// `max` violations.
pub fn check(schema: &ProtoSchema, data: &[u8], max: usize) -> Result<DynamicMessage, ProtoRejected> {
    let msg = parse(schema, data)?;
    if !schema.has_my_numbers() {
        return Ok(msg);
    }
    let mut doc: Json = serde_json::from_slice(data).map_err(|e| rejected(&schema.message, data, &e))?;
    let mut violations = Vec::new();
    let max = max.max(1);
    walk(schema, &schema.message, &mut doc, &mut String::new(), 0, &mut |s, path, field| {
        if violations.len() < max {
            super::payload::bad_my_number(s, path, field, &mut violations);
        }
    });
    if violations.is_empty() {
        return Ok(msg);
    }
    Err(ProtoRejected::of(violations))
}

/// Every check the bus applies to a protobuf subject's payload published as JSON: the size
/// limit, proto3 JSON against the message, unknown fields, My Number check digits.
pub fn check_payload(
    data: &[u8],
    schema: &ProtoSchema,
    limits: crate::validator::CheckLimits,
) -> Result<(), crate::validator::PayloadRejected> {
    super::payload::checked(data, limits, |max| check(schema, data, max))
}

/// The JSON payload with every My Number (found by the field option, as in binary payloads)
/// replaced by `department`'s pseudonym; `None` when there is nothing to replace (the bytes then
/// pass through untouched).
pub fn pseudonymise(
    schema: &ProtoSchema,
    data: &[u8],
    secret: &[u8],
    department: &str,
) -> Result<Option<Vec<u8>>, String> {
    if !schema.has_my_numbers() {
        return Ok(None);
    }
    let mut doc: Json =
        serde_json::from_slice(data).map_err(|e| format!("stored proto3 JSON payload is not JSON: {e}"))?;
    let mut replaced = 0usize;
    walk(schema, &schema.message, &mut doc, &mut String::new(), 0, &mut |s, _, _| {
        if !s.is_empty() {
            *s = crate::pii::pseudonym(secret, department, s);
            replaced += 1;
        }
    });
    if replaced == 0 {
        return Ok(None);
    }
    serde_json::to_vec(&doc).map(Some).map_err(|e| format!("pseudonymised payload: {e}"))
}

/// Calls `visit` on every string of `value` (an object in proto3 JSON of `desc`) that a My
/// Number-annotated string field holds, with its JSON pointer. Keys are matched as prost-reflect
/// parses them (JSON name, else the field name); anything else is left alone.
fn walk(
    schema: &ProtoSchema,
    desc: &MessageDescriptor,
    value: &mut Json,
    path: &mut String,
    depth: usize,
    visit: &mut dyn FnMut(&mut String, &str, &FieldDescriptor),
) {
    // The well-known types have their own JSON forms and no My Numbers.
    if depth > MAX_DEPTH || desc.package_name() == "google.protobuf" {
        return;
    }
    let Json::Object(fields) = value else { return };
    for (key, v) in fields.iter_mut() {
        let Some(field) = desc.get_field_by_json_name(key).or_else(|| desc.get_field_by_name(key)) else {
            continue;
        };
        let len = path.len();
        path.push('/');
        path.push_str(&escape(key));
        let my_number = matches!(field.kind(), Kind::String) && schema.holds_my_number(&field);
        if field.is_map() {
            // Only message values are walked, as in binary payloads.
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                _ => Kind::Bool,
            };
            if let (Kind::Message(m), Json::Object(entries)) = (value_kind, v) {
                for (k, item) in entries.iter_mut() {
                    let l = path.len();
                    path.push('/');
                    path.push_str(&escape(k));
                    walk(schema, &m, item, path, depth + 1, visit);
                    path.truncate(l);
                }
            }
        } else if field.is_list() {
            if let Json::Array(items) = v {
                for (i, item) in items.iter_mut().enumerate() {
                    let l = path.len();
                    path.push_str(&format!("/{i}"));
                    match (field.kind(), item) {
                        (Kind::Message(m), item) => walk(schema, &m, item, path, depth + 1, visit),
                        (_, Json::String(s)) if my_number => visit(s, path, &field),
                        _ => {}
                    }
                    path.truncate(l);
                }
            }
        } else {
            match (field.kind(), v) {
                (Kind::Message(m), v) => walk(schema, &m, v, path, depth + 1, visit),
                (_, Json::String(s)) if my_number => visit(s, path, &field),
                _ => {}
            }
        }
        path.truncate(len);
    }
}

/// RFC 6901 escaping of one pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn rejected(desc: &MessageDescriptor, data: &[u8], e: &serde_json::Error) -> ProtoRejected {
    let (line, column) = (e.line(), e.column());
    let text = e.to_string();
    let detail = match text.rfind(" at line ") {
        Some(at) if line > 0 => &text[..at],
        _ => text.as_str(),
    };
    let detail = redact(detail);
    let pointer = if line > 0 { pointer_at(data, line, column) } else { None };
    let at = match (&pointer, line) {
        (Some(p), _) if !p.is_empty() => format!("at {p} (line {line} column {column})"),
        (_, 0) => String::new(),
        _ => format!("at line {line} column {column}"),
    };
    let message = format!(
        "JSON payload is not {} in proto3 JSON{}{at}: {detail}",
        desc.full_name(),
        if at.is_empty() { "" } else { " " }
    );
    ProtoRejected {
        violations: vec![FieldViolation {
            pointer: pointer.unwrap_or_default(),
            schema_pointer: desc.full_name().to_string(),
            message: message.clone(),
        }],
        message,
    }
}

/// serde's messages quote the offending value (`invalid type: string "…"`, ``integer `5` ``,
/// `unrecognized enum value '…'`): payload values never reach a dead letter's message. Unknown
/// field names are kept (they are keys, and the point of the message).
fn redact(detail: &str) -> String {
    if detail.starts_with("unrecognized field name") {
        return detail.to_string();
    }
    let mut out = String::with_capacity(detail.len());
    let mut chars = detail.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if matches!(c, '"' | '`' | '\'') {
            // Skip to the matching quote; an unmatched one ends the message.
            if chars.by_ref().any(|d| d == c) {
                out.push('…');
                out.push(c);
            } else {
                out.push('…');
            }
        }
    }
    out
}

/// The JSON pointer of the innermost value open at serde_json's error position (line from 1,
/// column in bytes from the line's start): a small scan of the text before it tracking objects'
/// current keys and arrays' indices. `None` when the position is outside the text.
fn pointer_at(data: &[u8], line: usize, column: usize) -> Option<String> {
    enum Frame {
        Object { key: Option<String>, want_key: bool },
        Array { index: usize },
    }
    let mut start = 0usize;
    for _ in 1..line {
        start += data.get(start..)?.iter().position(|&b| b == b'\n')? + 1;
    }
    let text = data.get(..start.saturating_add(column).min(data.len()))?;
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' => stack.push(Frame::Object { key: None, want_key: true }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { key, want_key }) => {
                    *key = None;
                    *want_key = true;
                }
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { want_key, .. }) = stack.last_mut() {
                    *want_key = false;
                }
            }
            b'"' => {
                let begin = i;
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    if text[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if let Some(Frame::Object { key, want_key: true }) = stack.last_mut() {
                    let decoded = text
                        .get(begin..=i)
                        .and_then(|raw| serde_json::from_slice::<String>(raw).ok())
                        .unwrap_or_else(|| {
                            String::from_utf8_lossy(text.get(begin + 1..).unwrap_or_default()).into_owned()
                        });
                    *key = Some(decoded);
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut pointer = String::new();
    for frame in &stack {
        match frame {
            Frame::Object { key: Some(k), .. } => {
                pointer.push('/');
                pointer.push_str(&escape(k));
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => pointer.push_str(&format!("/{index}")),
        }
    }
    Some(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::ProtoFile;
    use prost::Message as _;
    use std::collections::BTreeMap;

    const SOURCE: &str = r#"syntax = "proto3";
package t;
import "kakehashi/v1/options.proto";
import "google/protobuf/timestamp.proto";
message Person { string my_number = 1 [(kakehashi.v1.my_number) = true]; string name = 2; }
message Rec { Person person = 1; repeated Person children = 2; string note = 3; int32 doses = 4;
  repeated string other_numbers = 5 [(kakehashi.v1.my_number) = true]; map<string, Person> by_id = 6;
  google.protobuf.Timestamp at = 7; int64 big = 8; }
"#;

    fn schema(allow_unknown: bool) -> ProtoSchema {
        let files = [ProtoFile { name: "t.proto".into(), source: SOURCE.into() }];
        let c = super::super::compile(&files, &BTreeMap::new(), "t.Rec").expect("compiles");
        ProtoSchema::new(c.message, allow_unknown)
    }

    fn rec(n: &str) -> String {
        format!(
            r#"{{"person":{{"myNumber":"{n}","name":"山田"}},"children":[{{"my_number":"{n}"}}],"note":"{n}",
"otherNumbers":["{n}"],"byId":{{"a/b":{{"myNumber":"{n}"}}}},"at":"2024-10-15T00:00:00Z","big":"123"}}"#
        )
    }

    #[test]
    fn valid_json_parses_to_the_same_message_as_binary() {
        let s = schema(false);
        let msg = check(&s, rec("123456789018").as_bytes(), 10).expect("valid");
        let bytes = msg.encode_to_vec();
        let back = s.check(&bytes, 10).expect("binary form valid");
        assert_eq!(back, msg);
    }

    #[test]
    fn unknown_fields_refused_with_their_pointer_unless_allowed() {
        let json = br#"{"person": {"name": "x",
  "nobody": 1}}"#;
        let e = check(&schema(false), json, 10).expect_err("unknown");
        assert_eq!(e.violations[0].pointer, "/person/nobody", "{e:?}");
        assert!(e.message.contains("nobody") && e.message.contains("line 2"), "{}", e.message);
        assert!(check(&schema(true), json, 10).is_ok());
    }

    #[test]
    fn wrong_types_are_refused_with_the_pointer_and_without_the_value() {
        for (json, pointer) in [
            (&br#"{"doses": "two"}"#[..], "/doses"),
            (br#"{"children": [{}, {"name": 7}]}"#, "/children/1/name"),
            (br#"{"person": {"myNumber": 123456789018}}"#, "/person/myNumber"),
            (br#"{"at": "yesterday"}"#, "/at"),
        ] {
            let e = check(&schema(false), json, 10).expect_err("wrong type");
            assert_eq!(e.violations[0].pointer, pointer, "{}: {e:?}", String::from_utf8_lossy(json));
            assert!(!e.message.contains("two") && !e.message.contains("yesterday"), "{}", e.message);
        }
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"{", b"[]", b"{} {}", b"\xff", br#"{"person": {"name": "#, b"null"] {
            let e = check(&schema(false), bad, 10).expect_err("refused");
            assert_eq!(e.violations.len(), 1, "{e:?}");
            assert!(e.message.contains("proto3 JSON"), "{}", e.message);
        }
    }

    #[test]
    fn bad_my_number_check_digits_are_refused_where_the_publisher_wrote_them() {
        let e = check(&schema(false), rec("123456789012").as_bytes(), 10).expect_err("refused");
        let mut pointers: Vec<&str> = e.violations.iter().map(|v| v.pointer.as_str()).collect();
        pointers.sort();
        assert_eq!(
            pointers,
            ["/byId/a~1b/myNumber", "/children/0/my_number", "/otherNumbers/0", "/person/myNumber"]
        );
        assert!(!e.message.contains("123456789012"));
        assert_eq!(
            check(&schema(false), rec("123456789012").as_bytes(), 2).expect_err("max").violations.len(),
            2
        );
    }

    #[test]
    fn json_and_binary_get_the_same_pseudonyms_in_exactly_the_annotated_fields() {
        let s = schema(false);
        let json = rec("123456789018");
        let out = pseudonymise(&s, json.as_bytes(), b"k", "mhlw").expect("ok").expect("replaced");
        let doc: Json = serde_json::from_slice(&out).expect("json");
        let token = crate::pii::pseudonym(b"k", "mhlw", "123456789018");
        assert_eq!(doc["person"]["myNumber"], token.as_str());
        assert_eq!(doc["children"][0]["my_number"], token.as_str());
        assert_eq!(doc["otherNumbers"][0], token.as_str());
        assert_eq!(doc["byId"]["a/b"]["myNumber"], token.as_str());
        assert_eq!(doc["note"], "123456789018", "not annotated");
        assert_eq!(doc["big"], "123", "a string in JSON, but not annotated");
        assert_eq!(doc["person"]["name"], "山田");
        // The binary form of the same payload gets the same token in the same fields.
        let bytes = parse(&s, json.as_bytes()).expect("parses").encode_to_vec();
        let binary = s.pseudonymise(&bytes, b"k", "mhlw").expect("ok").expect("replaced");
        let from_binary: Json =
            serde_json::from_slice(&super::super::transcode::to_json(&s.message, &binary).expect("json"))
                .expect("json");
        let from_json: Json = serde_json::from_slice(
            &super::super::transcode::to_json(&s.message, &parse(&s, &out).expect("parses").encode_to_vec())
                .expect("json"),
        )
        .expect("json");
        assert_eq!(from_binary, from_json);
        let nothing = br#"{"note": "123456789018"}"#;
        assert_eq!(pseudonymise(&s, nothing, b"k", "mhlw"), Ok(None), "nothing to replace: bytes untouched");
    }

    #[test]
    fn pointers_at_positions() {
        let text = br#"{"a": [1, {"b~/": {"c": tru"#;
        assert_eq!(pointer_at(text, 1, text.len()).as_deref(), Some("/a/1/b~0~1/c"));
        assert_eq!(pointer_at(b"{\n\"x\": 1,\n}", 3, 1).as_deref(), Some(""));
        assert_eq!(pointer_at(b"{}", 9, 1), None);
        assert_eq!(
            redact(r#"invalid type: string "secret", expected i32"#),
            r#"invalid type: string "…", expected i32"#
        );
        assert_eq!(redact("unrecognized enum value 'X"), "unrecognized enum value '…");
    }
}
