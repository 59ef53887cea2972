//! Protobuf payloads published as canonical proto3 JSON (`data_content_type`
//! `application/json` on a protobuf subject): parsed with prost-reflect's serde mapping against
//! the registered message (unknown fields refused unless the version allows them), My Numbers
//! found by the `(kakehashi.v1.my_number)` option exactly as in binary payloads. Paths are JSON
//! pointers into the published document, built from its own keys (`/person/myNumber` or
//! `/person/my_number`, whichever the publisher wrote). Messages never quote payload values.
//!
//! A payload that names something twice is refused before prost-reflect reads it. prost-reflect
//! (0.16) silently keeps the last of a key named twice, of a field's two spellings (`myNumber`,
//! `my_number`) and of a numeric map key spelt twice (`"1"`, `"01"`), where other readers may
//! keep the first; two members of one oneof it refuses itself, but without saying where. The
//! reference parsers (protobuf-java's JsonFormat, C++ json_util) refuse a field set twice.

use super::payload::{ProtoRejected, ProtoSchema};
use kakehashi_proto::v1::FieldViolation;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value as Json};
use std::collections::HashSet;

/// How deep nested objects are walked (parsing itself is bounded by `limits.max_json_depth`).
const MAX_DEPTH: usize = 100;

/// Parses a proto3 JSON payload into the registered message, the version's unknown-field rule
/// applied. The error says where: a JSON pointer when the position maps to one, and always the
/// line and column. Names given twice are not looked for ([`check`] does): this reads payloads
/// the bus already accepted.
pub fn parse(schema: &ProtoSchema, data: &[u8]) -> Result<DynamicMessage, ProtoRejected> {
    let options = DeserializeOptions::new().deny_unknown_fields(!schema.allow_unknown_fields);
    let mut de = serde_json::Deserializer::from_slice(data);
    DynamicMessage::deserialize_with_options(schema.message.clone(), &mut de, &options)
        .and_then(|msg| de.end().map(|()| msg))
        .map_err(|e| rejected(&schema.message, data, &e))
}

/// Parses and checks a proto3 JSON payload (as [`ProtoSchema::check`] does binary ones): it must
/// be the message in proto3 JSON naming nothing twice and nesting at most `max_depth` arrays and
/// objects deep, and every My Number must have a correct check digit. At most `max` violations.
pub fn check_within(
    schema: &ProtoSchema,
    data: &[u8],
    max: usize,
    max_depth: usize,
) -> Result<DynamicMessage, ProtoRejected> {
    use kakehashi_proto::strict_json::{parse_within, ParseError};
    // Parsed once more than prost-reflect needs, refusing a key named twice and a nesting past
    // our limit (so prost-reflect's parse below stays within serde_json's); the same `Value`
    // then serves the look for other names given twice and the My Number walk.
    let mut doc = parse_within(data, max_depth).map_err(|e| match e {
        ParseError::Json(e) => rejected_where(&schema.message, data, &e, e.is_data()),
        ParseError::TooDeep { max_depth } => ProtoRejected {
            message: format!("payload nests deeper than {max_depth} levels (limits.max_json_depth)"),
            violations: Vec::new(),
        },
    })?;
    named_twice(&schema.message, &doc).map_err(|t| t.rejected(&schema.message))?;
    let msg = parse(schema, data)?;
    if !schema.has_my_numbers() {
        return Ok(msg);
    }
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
/// limit, proto3 JSON against the message, names given twice, unknown fields, My Number check
/// digits.
pub fn check_payload(
    data: &[u8],
    schema: &ProtoSchema,
    limits: crate::validator::CheckLimits,
) -> Result<(), crate::validator::PayloadRejected> {
    super::payload::checked(data, limits, |max| check_within(schema, data, max, limits.max_json_depth))
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

/// Something a document names twice, and where: the pointer's tokens, innermost first (pushed
/// on the way out of the walk, so a document naming nothing twice builds no path).
struct Twice {
    tokens: Vec<String>,
    what: String,
}

impl Twice {
    fn new(what: String) -> Self {
        Self { tokens: Vec::new(), what }
    }

    fn within(mut self, token: &str) -> Self {
        self.tokens.push(escape(token));
        self
    }

    fn rejected(self, desc: &MessageDescriptor) -> ProtoRejected {
        let pointer: String = self.tokens.iter().rev().flat_map(|t| ["/", t.as_str()]).collect();
        let message = format!(
            "JSON payload is not {} in proto3 JSON at {}: {}",
            desc.full_name(),
            if pointer.is_empty() { "/" } else { &pointer },
            self.what
        );
        one_violation(desc, pointer, message)
    }
}

/// The well-known types prost-reflect reads in their own JSON forms (its list), which name no
/// fields; `Any` among them is looked into by [`any_named_twice`].
fn has_own_json_form(full_name: &str) -> bool {
    matches!(
        full_name,
        "google.protobuf.Any"
            | "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.Struct"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.FieldMask"
            | "google.protobuf.ListValue"
            | "google.protobuf.Value"
            | "google.protobuf.Empty"
    )
}

/// The first thing `value` (an object in proto3 JSON of `desc`, keys already unique) names
/// twice in one of its objects, at any depth: a field under both spellings, two members of a
/// oneof, a numeric map key spelt twice (`"1"` and `"01"`). Keys are matched as prost-reflect
/// matches them; shapes that are not the message's are left to prost-reflect. No depth limit:
/// serde_json's recursion limit already bounds the document.
fn named_twice(desc: &MessageDescriptor, value: &Json) -> Result<(), Twice> {
    let Json::Object(object) = value else { return Ok(()) };
    match desc.full_name() {
        "google.protobuf.Any" => any_named_twice(desc, object),
        name if has_own_json_form(name) => Ok(()),
        _ => fields_named_twice(desc, object),
    }
}

fn fields_named_twice(desc: &MessageDescriptor, object: &Map<String, Json>) -> Result<(), Twice> {
    let mut oneofs: Vec<(prost_reflect::OneofDescriptor, FieldDescriptor)> = Vec::new();
    for (key, v) in object {
        if let Some(field) = desc.get_field_by_json_name(key).or_else(|| desc.get_field_by_name(key)) {
            // Reached by its field name, and its JSON name is here too: prost-reflect would set
            // it twice and keep the last.
            if key != field.json_name()
                && object.contains_key(field.json_name())
                && desc.get_field_by_json_name(field.json_name()).as_ref() == Some(&field)
            {
                return Err(Twice::new(format!(
                    "duplicate key: field {} is named twice, as {} and {}",
                    field.full_name(),
                    field.json_name(),
                    field.name()
                )));
            }
            if let Some(oneof) = field.containing_oneof().filter(|_| !absent(&field, v)) {
                if let Some((_, first)) = oneofs.iter().find(|(o, _)| *o == oneof) {
                    return Err(Twice::new(format!(
                        "duplicate oneof: {} is set twice, by {} and {}",
                        oneof.full_name(),
                        first.name(),
                        field.name()
                    )));
                }
                oneofs.push((oneof, field.clone()));
            }
            value_named_twice(field.full_name(), field.kind(), field.is_list(), field.is_map(), v)
                .map_err(|t| t.within(key))?;
        } else if key.starts_with('[') {
            if let Some(ext) = desc.get_extension_by_json_name(key) {
                value_named_twice(ext.full_name(), ext.kind(), ext.is_list(), ext.is_map(), v)
                    .map_err(|t| t.within(key))?;
            }
        }
    }
    Ok(())
}

/// Whether prost-reflect reads `value` as the field left unset: `null`, except where null is a
/// value (`google.protobuf.Value`, `google.protobuf.NullValue`).
fn absent(field: &FieldDescriptor, value: &Json) -> bool {
    value.is_null()
        && match field.kind() {
            Kind::Message(m) => m.full_name() != "google.protobuf.Value",
            Kind::Enum(e) => e.full_name() != "google.protobuf.NullValue",
            _ => true,
        }
}

/// [`named_twice`] for one field's value (`name` is the field's, for the message).
fn value_named_twice(name: &str, kind: Kind, list: bool, map: bool, value: &Json) -> Result<(), Twice> {
    match (kind, value) {
        (Kind::Message(entry), Json::Object(entries)) if map => {
            let key_kind = entry.map_entry_key_field().kind();
            if entries.len() > 1 {
                let mut seen = HashSet::new();
                for k in entries.keys() {
                    if map_key_number(&key_kind, k).is_some_and(|n| !seen.insert(n)) {
                        // The key is not quoted: it is payload.
                        return Err(Twice::new(format!(
                            "duplicate key: map {name} names one key twice, spelt differently"
                        )));
                    }
                }
            }
            if let Kind::Message(m) = entry.map_entry_value_field().kind() {
                for (k, item) in entries {
                    named_twice(&m, item).map_err(|t| t.within(k))?;
                }
            }
            Ok(())
        }
        (Kind::Message(m), Json::Array(items)) if list => {
            for (i, item) in items.iter().enumerate() {
                named_twice(&m, item).map_err(|t| t.within(&i.to_string()))?;
            }
            Ok(())
        }
        (Kind::Message(m), value) if !list && !map => named_twice(&m, value),
        _ => Ok(()),
    }
}

/// A numeric map key as prost-reflect parses it (`str::parse` for the key's type); `None` for
/// string and bool keys (their JSON spellings are the keys themselves) and for keys it refuses.
fn map_key_number(kind: &Kind, key: &str) -> Option<i128> {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => key.parse::<i32>().ok().map(i128::from),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => key.parse::<i64>().ok().map(i128::from),
        Kind::Uint32 | Kind::Fixed32 => key.parse::<u32>().ok().map(i128::from),
        Kind::Uint64 | Kind::Fixed64 => key.parse::<u64>().ok().map(i128::from),
        _ => None,
    }
}

/// An `Any` as prost-reflect reads it: the packed message's fields inline beside `@type`, or a
/// well-known type's JSON form under `value`. An unresolvable `@type` is prost-reflect's to refuse.
fn any_named_twice(desc: &MessageDescriptor, object: &Map<String, Json>) -> Result<(), Twice> {
    let Some(Json::String(url)) = object.get("@type") else { return Ok(()) };
    let Some(packed) =
        url.rsplit_once('/').and_then(|(_, name)| desc.parent_pool().get_message_by_name(name))
    else {
        return Ok(());
    };
    if has_own_json_form(packed.full_name()) {
        return match object.get("value") {
            Some(v) => named_twice(&packed, v).map_err(|t| t.within("value")),
            None => Ok(()),
        };
    }
    fields_named_twice(&packed, object)
}

/// RFC 6901 escaping of one pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn rejected(desc: &MessageDescriptor, data: &[u8], e: &serde_json::Error) -> ProtoRejected {
    rejected_where(desc, data, e, false)
}

/// [`rejected`]; `in_object` when the error is about the object whose key was just read (the
/// only data error `strict_json` raises, a key named twice): the pointer is then the object's,
/// without the key.
fn rejected_where(
    desc: &MessageDescriptor,
    data: &[u8],
    e: &serde_json::Error,
    in_object: bool,
) -> ProtoRejected {
    let (line, column) = (e.line(), e.column());
    let text = e.to_string();
    let detail = match text.rfind(" at line ") {
        Some(at) if line > 0 => &text[..at],
        _ => text.as_str(),
    };
    let detail = redact(detail);
    let mut pointer = if line > 0 { pointer_at(data, line, column) } else { None };
    if let (true, Some(p)) = (in_object, pointer.as_mut()) {
        p.truncate(p.rfind('/').unwrap_or(0));
    }
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
    one_violation(desc, pointer.unwrap_or_default(), message)
}

/// A rejection with one violation at `pointer` whose message is the whole `message`.
fn one_violation(desc: &MessageDescriptor, pointer: String, message: String) -> ProtoRejected {
    ProtoRejected {
        violations: vec![FieldViolation {
            pointer,
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
    use proptest::prelude::*;
    use prost::Message as _;
    use std::collections::BTreeMap;

    const SOURCE: &str = r#"syntax = "proto3";
package t;
import "kakehashi/v1/options.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/any.proto";
message Person { string my_number = 1 [(kakehashi.v1.my_number) = true]; string name = 2; }
message Rec { Person person = 1; repeated Person children = 2; string note = 3; int32 doses = 4;
  repeated string other_numbers = 5 [(kakehashi.v1.my_number) = true]; map<string, Person> by_id = 6;
  google.protobuf.Timestamp at = 7; int64 big = 8;
  oneof contact { string email = 9; int32 phone_number = 10; } map<int32, Person> by_number = 11;
  google.protobuf.Any extra = 12; }
"#;

    fn schema(allow_unknown: bool) -> ProtoSchema {
        let files = [ProtoFile { name: "t.proto".into(), source: SOURCE.into() }];
        let c = super::super::compile(&files, &BTreeMap::new(), "t.Rec").expect("compiles");
        ProtoSchema::new(c.message, allow_unknown)
    }

    /// [`check_within`] at the highest nesting limit the bus allows.
    fn check(s: &ProtoSchema, data: &[u8], max: usize) -> Result<DynamicMessage, ProtoRejected> {
        check_within(s, data, max, kakehashi_proto::strict_json::MAX_DEPTH_CEILING)
    }

    #[test]
    fn a_payload_nested_past_the_limit_is_refused_with_the_limits_own_message() {
        // An object around `levels - 1` arrays, under a field the version allows unknown.
        let deep =
            |levels: usize| format!(r#"{{"unknown": {}{}}}"#, "[".repeat(levels - 1), "]".repeat(levels - 1));
        let s = schema(true);
        assert!(check_within(&s, deep(4).as_bytes(), 10, 4).is_ok(), "at the limit");
        // One level more, and far past serde_json's own recursion limit: our answer both times.
        for levels in [5, 1000] {
            let e = check_within(&s, deep(levels).as_bytes(), 10, 4).expect_err("too deep");
            assert_eq!(e.message, "payload nests deeper than 4 levels (limits.max_json_depth)");
            assert!(e.violations.is_empty());
        }
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

    /// `check`'s refusal of `json`, which must be for something named twice, at `pointer`.
    fn refused_as_named_twice(json: &str, pointer: &str) -> ProtoRejected {
        let e = check(&schema(false), json.as_bytes(), 10).expect_err(json);
        assert_eq!(e.violations.len(), 1, "{json}: {e:?}");
        assert_eq!(e.violations[0].pointer, pointer, "{json}: {}", e.message);
        assert!(e.message.contains("duplicate"), "{json}: {}", e.message);
        for value in ["first-value", "second-value", "123456789018", "271828182841"] {
            assert!(!e.message.contains(value), "{json}: no payload value: {}", e.message);
        }
        e
    }

    #[test]
    fn a_key_named_twice_is_refused_with_the_pointer_of_its_object() {
        for (json, pointer) in [
            (r#"{"note": "first-value", "note": "second-value"}"#, ""),
            (r#"{"person": {"name": "first-value", "name": "second-value"}}"#, "/person"),
            (
                r#"{"children": [{}, {"name": "first-value",
  "name": "second-value"}]}"#,
                "/children/1",
            ),
            (r#"{"byId": {"k": {"name": "first-value"}, "k": {"name": "second-value"}}}"#, "/byId"),
            (r#"{"byId": {"a/b": {"name": "first-value", "name": "second-value"}}}"#, "/byId/a~1b"),
            // Escapes decode to the same key.
            (r#"{"person": {"myNumber": "123456789018", "my\u004eumber": "271828182841"}}"#, "/person"),
            (
                r#"{"extra": {"@type": "type.googleapis.com/t.Person", "name": "first-value", "name": ""}}"#,
                "/extra",
            ),
        ] {
            let e = refused_as_named_twice(json, pointer);
            assert!(e.message.contains("duplicate key") && e.message.contains("line "), "{}", e.message);
        }
    }

    #[test]
    fn a_field_named_by_both_its_spellings_is_refused() {
        for (json, pointer) in [
            // prost-reflect keeps the last: the bad check digit would be read by a first-keeper.
            (r#"{"person": {"myNumber": "271828182841", "my_number": "123456789018"}}"#, "/person"),
            (r#"{"person": {"my_number": "", "myNumber": "123456789018"}}"#, "/person"),
            (r#"{"person": {"myNumber": null, "my_number": "123456789018"}}"#, "/person"),
            (r#"{"otherNumbers": [], "other_numbers": ["123456789018"]}"#, ""),
            (r#"{"children": [{"name": "first-value"}, {"my_number": "", "myNumber": ""}]}"#, "/children/1"),
            (r#"{"byNumber": {"7": {"myNumber": "", "my_number": ""}}}"#, "/byNumber/7"),
            (r#"{"byId": {}, "by_id": {}}"#, ""),
            (r#"{"phoneNumber": 1, "phone_number": 2}"#, ""),
            (
                r#"{"extra": {"@type": "type.googleapis.com/t.Person", "myNumber": "", "my_number": ""}}"#,
                "/extra",
            ),
            (
                r#"{"extra": {"@type": "type.googleapis.com/google.protobuf.Any",
                "value": {"@type": "type.googleapis.com/t.Rec", "person": {"myNumber": "", "my_number": ""}}}}"#,
                "/extra/value/person",
            ),
        ] {
            let e = refused_as_named_twice(json, pointer);
            assert!(e.message.contains("duplicate key: field t."), "{}", e.message);
        }
    }

    #[test]
    fn a_numeric_map_key_spelt_twice_is_refused() {
        for json in [
            r#"{"byNumber": {"1": {}, "01": {"name": "second-value"}}}"#,
            r#"{"byNumber": {"+1": {}, "1": {}}}"#,
        ] {
            let e = refused_as_named_twice(json, "/byNumber");
            assert!(e.message.contains("map t.Rec.by_number names one key twice"), "{}", e.message);
        }
        assert!(check(&schema(false), br#"{"byNumber": {"1": {}, "2": {}, "-1": {}}}"#, 10).is_ok());
    }

    #[test]
    fn a_oneof_set_by_two_members_is_refused() {
        for json in [r#"{"email": "first-value", "phoneNumber": 1}"#, r#"{"phone_number": 0, "email": ""}"#] {
            let e = refused_as_named_twice(json, "");
            assert!(e.message.contains("duplicate oneof: t.Rec.contact is set twice"), "{}", e.message);
        }
        // null leaves a member unset (prost-reflect and JsonFormat alike): one member is set.
        assert!(check(&schema(false), br#"{"email": "x", "phoneNumber": null}"#, 10).is_ok());
    }

    /// Why the check is the bus's own: prost-reflect 0.16 keeps the last of a key named twice,
    /// of a field's two spellings and of a map key's two spellings; a oneof's second member it
    /// refuses, but without a pointer (its error comes after the object closed).
    #[test]
    fn prost_reflect_alone_keeps_the_last() {
        let s = schema(false);
        let last = |json: &str| serde_json::to_value(parse(&s, json.as_bytes()).expect(json)).expect("json");
        assert_eq!(last(r#"{"note": "a", "note": "b"}"#), serde_json::json!({"note": "b"}));
        assert_eq!(
            last(r#"{"person": {"myNumber": "271828182841", "my_number": "123456789018"}}"#),
            serde_json::json!({"person": {"myNumber": "123456789018"}})
        );
        assert_eq!(
            last(r#"{"byNumber": {"1": {"name": "a"}, "01": {"name": "b"}}}"#),
            serde_json::json!({"byNumber": {"1": {"name": "b"}}})
        );
        let e = parse(&s, br#"{"email": "x", "phoneNumber": 1}"#).expect_err("oneof");
        assert!(e.message.contains("multiple fields provided for oneof"), "{}", e.message);
        assert_eq!(e.violations[0].pointer, "");
    }

    #[test]
    fn documents_naming_nothing_twice_read_as_prost_reflect_reads_them() {
        let s = schema(false);
        for json in [
            rec("123456789018"),
            r#"{"person": {"name": "x"}, "children": [{"name": "x"}, {"name": "x"}], "byId": {"x": {"name": "x"}}}"#.into(),
            r#"{"email": "x", "byNumber": {"1": {}, "2": {}}, "extra": {"@type": "type.googleapis.com/t.Person", "myNumber": ""}}"#.into(),
            r#"{"extra": {"@type": "type.googleapis.com/google.protobuf.Timestamp", "value": "2024-10-15T00:00:00Z"}}"#.into(),
        ] {
            let checked = check(&s, json.as_bytes(), 10).unwrap_or_else(|e| panic!("{json}: {e:?}"));
            assert_eq!(checked, parse(&s, json.as_bytes()).expect("parses"), "{json}");
        }
    }

    /// A `t.Rec` document as written: entries in order, each key in either spelling, so that it
    /// can be written with one entry given twice.
    #[derive(Debug, Clone)]
    enum Doc {
        Object { map: bool, entries: Vec<(String, Doc)> },
        Array(Vec<Doc>),
        Raw(String),
    }

    const SPELLINGS: [(&str, &str); 5] = [
        ("myNumber", "my_number"),
        ("otherNumbers", "other_numbers"),
        ("byId", "by_id"),
        ("phoneNumber", "phone_number"),
        ("byNumber", "by_number"),
    ];

    fn other_spelling(key: &str) -> Option<&'static str> {
        SPELLINGS.iter().find_map(|&(a, b)| {
            if key == a {
                Some(b)
            } else if key == b {
                Some(a)
            } else {
                None
            }
        })
    }

    fn spelt(json: &'static str) -> impl Strategy<Value = String> {
        let other = other_spelling(json).unwrap_or(json);
        prop_oneof![Just(json.to_string()), Just(other.to_string())]
    }

    fn text() -> impl Strategy<Value = Doc> {
        ".{0,8}".prop_map(|s| Doc::Raw(serde_json::to_string(&s).expect("string")))
    }

    fn message(entries: Vec<Option<(String, Doc)>>) -> Doc {
        Doc::Object { map: false, entries: entries.into_iter().flatten().collect() }
    }

    fn person() -> impl Strategy<Value = Doc> {
        let number = prop_oneof![Just(""), Just("123456789018")].prop_map(|n| Doc::Raw(format!("\"{n}\"")));
        (prop::option::of((spelt("myNumber"), number)), prop::option::of(text()))
            .prop_map(|(n, name)| message(vec![n, name.map(|t| ("name".into(), t))]))
    }

    fn rec_doc() -> impl Strategy<Value = Doc> {
        let map = |entries: Vec<(String, Doc)>| Doc::Object { map: true, entries };
        let contact = prop_oneof![
            Just(None),
            text().prop_map(|t| Some(("email".to_string(), t))),
            (spelt("phoneNumber"), any::<i32>()).prop_map(|(k, n)| Some((k, Doc::Raw(n.to_string())))),
        ];
        (
            (prop::option::of(person()), prop::collection::vec(person(), 0..3), text(), any::<i32>()),
            (
                prop::option::of((spelt("otherNumbers"), 0..3usize)),
                prop::option::of((spelt("byId"), prop::collection::btree_map(".{0,4}", person(), 0..3))),
                prop::option::of((
                    spelt("byNumber"),
                    prop::collection::btree_map(any::<i32>(), person(), 0..3),
                )),
                contact,
                any::<i64>(),
            ),
        )
            .prop_map(
                move |((p, children, note, doses), (numbers, by_id, by_number, contact, big))| {
                    message(vec![
                        p.map(|p| ("person".into(), p)),
                        Some(("children".into(), Doc::Array(children))),
                        Some(("note".into(), note)),
                        Some(("doses".into(), Doc::Raw(doses.to_string()))),
                        numbers.map(|(k, n)| (k, Doc::Array(vec![Doc::Raw("\"123456789018\"".into()); n]))),
                        by_id.map(|(k, m)| (k, map(m.into_iter().collect()))),
                        by_number
                            .map(|(k, m)| (k, map(m.into_iter().map(|(n, p)| (n.to_string(), p)).collect()))),
                        contact,
                        Some(("big".into(), Doc::Raw(format!("\"{big}\"")))),
                    ])
                },
            )
    }

    /// Which entry to give twice: of the `object`-th non-empty object (pre-order), its
    /// `entry`-th, under its other spelling when `respell` and it has one.
    #[derive(Debug, Clone, Copy)]
    struct Again {
        object: usize,
        entry: usize,
        respell: bool,
    }

    /// Writes `doc`; with `again`, one entry twice, and `at` gets its object's pointer.
    fn write(
        doc: &Doc,
        out: &mut String,
        path: &str,
        again: Option<Again>,
        seen: &mut usize,
        at: &mut Option<String>,
    ) {
        match doc {
            Doc::Raw(s) => out.push_str(s),
            Doc::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { ",\n " });
                    write(item, out, &format!("{path}/{i}"), again, seen, at);
                }
                out.push(']');
            }
            Doc::Object { map, entries } => {
                let me = (!entries.is_empty()).then(|| {
                    *seen += 1;
                    *seen - 1
                });
                out.push('{');
                let mut twice = None;
                if let (Some(a), Some(me)) = (again, me) {
                    if a.object == me {
                        let (k, v) = &entries[a.entry % entries.len()];
                        let k = if a.respell && !map { other_spelling(k).unwrap_or(k) } else { k };
                        twice = Some((k.to_string(), v));
                        *at = Some(path.to_string());
                    }
                }
                let all = entries.iter().map(|(k, v)| (k.clone(), v)).chain(twice);
                for (i, (k, v)) in all.enumerate() {
                    out.push_str(if i == 0 { "" } else { ", " });
                    out.push_str(&serde_json::to_string(&k).expect("key"));
                    out.push_str(": ");
                    write(v, out, &format!("{path}/{}", escape(&k)), again, seen, at);
                }
                out.push('}');
            }
        }
    }

    proptest! {
        /// Any entry of any object given twice, under the same key or the field's other
        /// spelling, is refused with that object's pointer; written once, the document reads
        /// as prost-reflect reads it.
        #[test]
        fn an_entry_given_twice_anywhere_is_refused(
            doc in rec_doc(),
            object in any::<prop::sample::Index>(),
            entry in any::<usize>(),
            respell in any::<bool>(),
        ) {
            let s = schema(false);
            let mut once = String::new();
            let mut objects = 0;
            write(&doc, &mut once, "", None, &mut objects, &mut None);
            let checked = check(&s, once.as_bytes(), 10);
            prop_assert_eq!(checked.ok(), parse(&s, once.as_bytes()).ok(), "{}", once);
            prop_assume!(objects > 0);
            let again = Again { object: object.index(objects), entry, respell };
            let (mut twice, mut at) = (String::new(), None);
            write(&doc, &mut twice, "", Some(again), &mut 0, &mut at);
            let e = check(&s, twice.as_bytes(), 10).expect_err(&twice);
            prop_assert!(e.message.contains("duplicate"), "{}: {}", twice, e.message);
            prop_assert_eq!(Some(&e.violations[0].pointer), at.as_ref(), "{}: {}", twice, e.message);
        }
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
